"""Bit-exact golden model of the hardware: executes an IR in numpy.

This is the one executable definition of a layer's semantics (see :mod:`nsm_export.ir`). The RTL
is checked against it bit for bit; training checks itself against it; nothing re-implements it.

The model is stateful in exactly the way the hardware is: each layer's LFSR starts at its seed
after reset and runs on across images, so ``run(ir, images)`` equals feeding ``images`` to a freshly
reset core in that order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import lfsr
from .ir import IR, DenseLayer

__all__ = ["GoldenResult", "GoldenModel", "run", "encode_input"]


@dataclass
class GoldenResult:
    scores: np.ndarray           # (N, C) int64: output scores summed over T samples
    classes: np.ndarray          # (N,) int64: argmax, ties to the lowest index
    spikes: list[np.ndarray] | None = None   # per hidden layer (N, T, n_out) bool, if asked
    masks: list[np.ndarray] | None = None    # per layer (N, T, n_in) bool, if asked


def encode_input(ir: IR, pixels: np.ndarray) -> np.ndarray:
    """Pixels (N, n_in) unsigned → spikes as bool (True = +1, False = -1)."""
    px = np.asarray(pixels)
    if px.ndim != 2 or px.shape[1] != ir.input.size:
        raise ValueError(f"input has shape {px.shape}, the IR expects (N, {ir.input.size})")
    if px.size and (px.min() < 0 or px.max() >= (1 << ir.input.pixel_bits)):
        raise ValueError(f"input pixels fall outside [0, {(1 << ir.input.pixel_bits) - 1}]")
    return px.astype(np.int64) >= ir.input.threshold


class GoldenModel:
    """Holds the LFSR states between calls, like the hardware between images."""

    def __init__(self, ir: IR):
        ir.validate()
        self.ir = ir
        self.reset()

    def reset(self) -> None:
        self.states = [layer.rng.seed if layer.rng else 0 for layer in self.ir.layers]

    def reseed(self, seed: int) -> None:
        """What the core's ``seed`` port does between images (see :mod:`nsm_export.ir`)."""
        if not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 1 << 32:
            raise ValueError(f"run seed {seed!r} must be an unsigned 32-bit integer")
        self.states = [layer.rng.reseeded(int(seed)) if layer.rng else 0
                       for layer in self.ir.layers]

    def _masks(self, i: int, layer: DenseLayer, n_images: int) -> np.ndarray:
        t = self.ir.samples
        if not layer.sampling:
            return np.ones((n_images, t, layer.n_in), dtype=bool)
        spec = layer.rng
        u, self.states[i] = lfsr.draws(spec.width, spec.mask, spec.leap, self.states[i],
                                       n_images * t * layer.n_in, layer.p_bits)
        return (u < layer.p_num).reshape(n_images, t, layer.n_in)

    def run(self, pixels: np.ndarray, record: bool = False) -> GoldenResult:
        ir = self.ir
        z0 = encode_input(ir, pixels)                      # (N, n_in)
        n = z0.shape[0]
        t = ir.samples
        masks = [self._masks(i, layer, n) for i, layer in enumerate(ir.layers)]
        z = np.broadcast_to(z0[:, None, :], (n, t, z0.shape[1]))
        spikes = []
        scores = None
        for layer, m in zip(ir.layers, masks):
            x = np.where(m, np.where(z, 1, -1), 0).astype(np.int64)    # (N, T, n_in)
            acc = x @ layer.weights.T.astype(np.int64)                  # (N, T, n_out)
            if layer.output:
                scores = (acc + layer.offsets[None, None, :]).sum(axis=1)
            else:
                z = acc >= layer.offsets[None, None, :]
                spikes.append(z)
        classes = np.argmax(scores, axis=1)   # numpy returns the first maximum: lowest index
        return GoldenResult(scores=scores, classes=classes,
                            spikes=spikes if record else None, masks=masks if record else None)


def run(ir: IR, pixels: np.ndarray, record: bool = False) -> GoldenResult:
    """Run ``pixels`` (N, n_in) through a freshly reset core."""
    return GoldenModel(ir).run(pixels, record=record)
