"""Random valid IRs and inputs, for property tests and fuzz benches."""

from __future__ import annotations

import numpy as np

from .build import IntLayer, build_ir
from .ir import IR

__all__ = ["random_ir", "random_pixels"]


def random_ir(rng: np.random.Generator, sizes: list[int] | None = None, samples: int | None = None,
              pe: list[int] | None = None, weight_bits: int | None = None,
              p: list[float] | None = None, seed: int | None = None,
              lfsr_width: int | None = None, name: str = "nsm",
              lanes: list[int] | None = None, simd: list[int] | None = None) -> IR:
    """A random network; anything not given is drawn from ``rng``, except ``simd``: drawn only
    when ``lanes`` is drawn too (so that networks given their lanes keep their random stream),
    else 1. A sampling layer's lanes are raised to its simd."""
    if sizes is None:
        depth = int(rng.integers(2, 4))
        sizes = [int(rng.integers(3, 24))] + [int(rng.integers(2, 20)) for _ in range(depth)]
    n_layers = len(sizes) - 1
    wb = weight_bits if weight_bits is not None else int(rng.choice([1, 2, 3, 4, 8]))
    ps = p if p is not None else [float(rng.choice([1.0, 0.5, 0.75, 0.25, 0.9]))
                                  for _ in range(n_layers)]
    layers = []
    for i in range(n_layers):
        n_in, n_out = sizes[i], sizes[i + 1]
        if wb == 1:
            w = rng.choice([-1, 1], size=(n_out, n_in))
        else:
            q = (1 << (wb - 1)) - 1
            w = rng.integers(-q, q + 1, size=(n_out, n_in))
        span = max(1, int(np.abs(w).sum(axis=1).max()) // 3)
        o = rng.integers(-span, span + 1, size=n_out)
        layers.append(IntLayer(weights=w, offsets=o, p=ps[i], weight_bits=wb))
    if pe is None:
        pe = [int(rng.integers(1, sizes[i + 1] + 1)) for i in range(n_layers)]
    if lanes is None:
        lanes = [int(rng.choice([1, 1, 2, 4, 8, 16])) for _ in range(n_layers)]
        if simd is None:
            simd = [int(rng.choice([1, 1, 2, 4])) for _ in range(n_layers)]
    return build_ir(layers, input_size=sizes[0], input_threshold=int(rng.integers(1, 256)),
                    samples=samples if samples is not None else int(rng.integers(1, 6)),
                    pe=pe, seed=seed if seed is not None else int(rng.integers(1, 2**31)),
                    lfsr_width=lfsr_width if lfsr_width is not None
                    else int(rng.choice([16, 24, 32])), name=name, lanes=lanes,
                    simd=simd if simd is not None else 1)


def random_pixels(rng: np.random.Generator, ir: IR, count: int) -> np.ndarray:
    return rng.integers(0, 1 << ir.input.pixel_bits, size=(count, ir.input.size))
