"""Test and fuzz helpers: random valid IRs, weights and inputs, for the property tests and the
fuzz benches (``benchmarks/fuzz.py``); nothing in the flow itself uses them."""

from __future__ import annotations

import numpy as np

from .build import IntConv, IntLayer, IntPool, bernoulli_probs, build_ir
from .ir import IR, use_line_buffers
from .layers import conv_out

__all__ = ["random_ir", "random_pop_ir", "random_conv_ir", "random_pop_conv_ir", "random_pixels",
           "random_weights"]


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


def random_pop_ir(rng: np.random.Generator, sizes: list[int] | None = None,
                  samples: int | None = None, pass_samples: int | None = None,
                  levels: int | None = None, weight_bits: int | None = None,
                  name: str = "nsm") -> IR:
    """A random dense network for the popcount core: ``sizes`` (pixels first), ``T`` and
    ``T'``, a threshold or thermometer code (``levels`` > 1), weight bits, blank-out, and a
    folding it builds (``simd`` a power of two that the levels divide, ``lanes <= simd``,
    each hidden ``pe`` and the next ``simd`` dividing one another); anything not given is
    drawn from ``rng``."""
    if sizes is None:
        sizes = [int(rng.integers(3, 24))] + [int(rng.integers(2, 20))
                                              for _ in range(int(rng.integers(1, 4)))]
    levels = levels if levels is not None else int(rng.choice([1, 1, 2, 4]))
    wb = weight_bits if weight_bits is not None else int(rng.choice([1, 2, 3, 4, 8]))
    T = samples if samples is not None else int(rng.integers(1, 7))
    tp = pass_samples if pass_samples is not None else int(rng.integers(1, T + 1))
    n_in = [sizes[0] * levels] + sizes[1:-1]
    layers, simd, lanes, pe = [], [], [], []
    for i, (a, b) in enumerate(zip(n_in, sizes[1:])):
        w = random_weights(rng, wb, (b, a))
        span = max(1, int(np.abs(w).sum(axis=1).max()) // 3)
        p = float(rng.choice([1.0, 0.5, 0.75, 0.25, 0.9]))
        layers.append(IntLayer(weights=w, offsets=rng.integers(-span, span + 1, size=b), p=p,
                               weight_bits=wb))
        s = int(rng.choice([x for x in (1, 2, 4, 8, 16) if x % levels == 0 or i]))
        simd.append(s)
        lanes.append(int(rng.choice([x for x in (1, 2, 4, 8, 16) if x <= s])))
    for i, b in enumerate(sizes[1:]):
        if i == len(layers) - 1:
            pe.append(int(rng.integers(1, b + 1)))
            continue
        sn = simd[i + 1]
        pe.append(int(rng.choice([x for x in range(1, b + 1) if x % sn == 0 or sn % x == 0])))
    thresholds = sorted(int(t) for t in rng.choice(np.arange(1, 256), levels, replace=False)) \
        if levels > 1 else None
    return build_ir(layers, input_size=sizes[0], input_threshold=int(rng.integers(1, 256)),
                    samples=T, pe=pe, seed=int(rng.integers(1, 2**31)),
                    lfsr_width=int(rng.choice([16, 24, 32])), name=name, lanes=lanes,
                    simd=simd, pass_samples=tp, thresholds=thresholds)


def random_weights(rng, wb: int, shape) -> np.ndarray:
    """Uniform symmetric ``wb``-bit integer weights of ``shape`` (``wb = 1``: ±1)."""
    if wb == 1:
        return rng.choice([-1, 1], size=shape)
    q = (1 << (wb - 1)) - 1
    return rng.integers(-q, q + 1, size=shape)


def random_conv_ir(rng: np.random.Generator, name: str = "nsm", max_conv: int = 2,
                   line_buffer: bool = False) -> IR:
    """A random conv net the hardware builds: an image of 1 to 3 channel-major channels
    (threshold or stochastic Bernoulli code) or a thermometer with its levels as channels, one
    to ``max_conv`` conv layers
    (kernel, stride, padding, filters, blank-out, ``pe``, ``lanes``, ROM or RAM weights), each
    followed or not by an OR pooling, then one or two dense layers. ``line_buffer``: every conv
    layer that a conv layer writes gets a line buffer of its fewest rows plus 0 to 2 (drawn
    after the net, so that the nets themselves do not change)."""
    code = str(rng.choice(["threshold", "thermometer", "bernoulli"]))
    thermo = code == "thermometer"
    c = int(rng.integers(2, 5)) if thermo else int(rng.integers(1, 4))
    h, w = int(rng.integers(4, 10)), int(rng.integers(4, 10))
    wb = int(rng.choice([1, 2, 3, 4]))
    layers, pes, lanes, stores = [], [], [], []
    for n in range(int(rng.integers(1, max_conv + 1))):
        k = int(rng.integers(1, min(4, h, w) + 1))
        stride = int(rng.integers(1, 3))
        pad = int(rng.integers(0, k))
        ho, wo = conv_out(h, k, stride, pad), conv_out(w, k, stride, pad)
        if ho < 1 or wo < 1:
            break
        f = int(rng.integers(1, 9))
        wt = random_weights(rng, wb, (f, c, k, k))
        span = max(1, int(np.abs(wt).reshape(f, -1).sum(axis=1).max()) // 3)
        layers.append(IntConv(wt, rng.integers(-span, span + 1, f),
                              p=float(rng.choice([1.0, 0.5, 0.75, 0.25])), weight_bits=wb,
                              h_in=h, w_in=w, stride=stride, padding=pad))
        pes.append(int(rng.integers(1, f + 1)))
        lanes.append(int(rng.choice([1, 2, 4, 8])))
        stores.append(str(rng.choice(["rom", "rom", "ram"])))
        c, h, w = f, ho, wo
        if min(h, w) >= 2 and rng.integers(0, 2):
            layers.append(IntPool(c, h, w, 2, "or"))
            pes.append(1)
            lanes.append(1)
            stores.append("rom")
            h, w = h // 2, w // 2
        if min(h, w) < 2:
            break
    n_in = c * h * w
    for n_out in [int(rng.integers(2, 12)) for _ in range(int(rng.integers(0, 2)))] + \
            [int(rng.integers(2, 6))]:
        wt = random_weights(rng, wb, (n_out, n_in))
        span = max(1, int(np.abs(wt).sum(axis=1).max()) // 3)
        layers.append(IntLayer(wt, rng.integers(-span, span + 1, n_out),
                               p=float(rng.choice([1.0, 0.5, 0.75])), weight_bits=wb))
        pes.append(int(rng.choice([1, 2, 4, 8, 16, 3, 5])))
        lanes.append(int(rng.choice([1, 2, 4])))
        stores.append(str(rng.choice(["rom", "rom", "ram"])))
        n_in = n_out
    c0 = layers[0]
    levels = c0.weights.shape[1]
    size = c0.h_in * c0.w_in
    extra = dict(thresholds=sorted(int(t) for t in rng.choice(np.arange(1, 256), levels,
                                                                replace=False)),
                 layout="level-major") if thermo else {}
    if code == "bernoulli":
        extra = dict(probs=bernoulli_probs(255, 8, 8), prob_bits=8)
    ir = build_ir(layers, input_size=size if thermo else size * levels,
                  input_threshold=int(rng.integers(1, 256)),
                  samples=int(rng.integers(1, 5)), pe=pes, lanes=lanes, weight_store=stores,
                  seed=int(rng.integers(1, 2**31)), lfsr_width=int(rng.choice([16, 24, 32])),
                  name=name, **extra)
    if line_buffer:
        for i in use_line_buffers(ir):
            layer = ir.layers[i]
            layer.line_rows = min(layer.line_rows + int(rng.integers(0, 3)), layer.h_in)
        ir.validate()
    return ir


def random_pop_conv_ir(rng: np.random.Generator, name: str = "nsm", convs: int | None = None,
                       samples: int | None = None, pass_samples: int | None = None) -> IR:
    """A random conv network for the popcount core: one or two conv layers (kernel, stride,
    zero padding, an OR pooling or none, channels that the next ``simd`` divides), then one or
    two dense layers; a one-channel image as a threshold or level-major thermometer code; T and
    T'; weight bits, blank-out and a folding it builds (hidden ``pe`` and the next ``simd``
    dividing one another, ``lanes <= simd``, the first conv layer's ``simd`` its channels)."""
    levels = int(rng.choice([1, 2, 4]))
    wb = int(rng.choice([1, 2, 3, 4]))
    T = samples if samples is not None else int(rng.integers(1, 6))
    tp = pass_samples if pass_samples is not None else int(rng.integers(1, T + 1))
    h = int(rng.integers(6, 13))
    c, layers, fold = levels, [], []      # fold: (pe, simd, lanes) per layer

    def ps(p):
        return p if rng.random() < 0.85 else 1.0

    for k_conv in range(convs if convs is not None else int(rng.integers(1, 3))):
        k = int(rng.integers(1, min(4, h) + 1))
        pad = int(rng.integers(0, k)) if rng.random() < 0.4 else 0
        stride = int(rng.choice([1, 1, 2]))
        ho = conv_out(h, k, stride, pad)
        if ho < 1:
            break
        co = int(rng.choice([2, 4, 6, 8]))
        w = random_weights(rng, wb, (co, c, k, k))
        span = max(1, int(np.abs(w).reshape(co, -1).sum(axis=1).max()) // 3)
        layers.append(IntConv(w, rng.integers(-span, span + 1, co),
                              ps(float(rng.choice([0.5, 0.75, 0.9]))), wb, h_in=h, w_in=h,
                              stride=stride, padding=pad))
        simds = [x for x in (1, 2, 4, 8) if c % x == 0] if k_conv else [c]
        fold.append([None, int(rng.choice(simds)), None])
        h = ho
        P = int(rng.choice([1, 2, 2])) if ho >= 2 else 1
        if P > 1:
            layers.append(IntPool(co, h, h, P, "or"))
            fold.append(None)
            h //= P
        c = co
    n = c * h * h
    sizes = [int(rng.integers(3, 12)) for _ in range(int(rng.integers(0, 2)))] + \
        [int(rng.integers(2, 6))]
    for b in sizes:
        w = random_weights(rng, wb, (b, n))
        span = max(1, int(np.abs(w).sum(axis=1).max()) // 3)
        layers.append(IntLayer(w, rng.integers(-span, span + 1, b),
                               ps(float(rng.choice([0.5, 0.75, 0.9]))), wb))
        fold.append([None, int(rng.choice([1, 2, 4, 8])), None])
        n = b
    weighted = [i for i, f in enumerate(fold) if f is not None]
    for j, i in enumerate(weighted):
        la, f = layers[i], fold[i]
        f[2] = int(rng.choice([x for x in (1, 2, 4, 8) if x <= f[1]]))
        outs = la.weights.shape[0]
        if j == len(weighted) - 1 or (isinstance(la, IntConv)
                                      and isinstance(layers[weighted[j + 1]], IntLayer)):
            f[0] = int(rng.integers(1, outs + 1))
        else:
            sn = fold[weighted[j + 1]][1]
            f[0] = int(rng.choice([x for x in range(1, outs + 1) if x % sn == 0 or sn % x == 0]))
    thresholds = sorted(int(t) for t in rng.choice(np.arange(1, 256), levels, replace=False)) \
        if levels > 1 else None
    pick = [(f or [1, 1, 1]) for f in fold]
    return build_ir(layers, input_size=layers[0].h_in * layers[0].w_in,
                    input_threshold=int(rng.integers(1, 256)), samples=T,
                    pe=[f[0] for f in pick], simd=[f[1] for f in pick],
                    lanes=[f[2] for f in pick], seed=int(rng.integers(1, 2**31)),
                    lfsr_width=int(rng.choice([16, 24, 32])), name=name, pass_samples=tp,
                    thresholds=thresholds, layout="level-major" if levels > 1 else "pixel-major")


def random_pixels(rng: np.random.Generator, ir: IR, count: int) -> np.ndarray:
    return rng.integers(0, 1 << ir.input.pixel_bits, size=(count, ir.input.size))
