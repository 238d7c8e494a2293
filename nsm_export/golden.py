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
from .ir import IR, ConvLayer, PoolLayer

__all__ = ["GoldenResult", "GoldenModel", "run", "encode_input"]


@dataclass
class GoldenResult:
    scores: np.ndarray           # (N, C) int64: output scores summed over T samples
    classes: np.ndarray          # (N,) int64: argmax, ties to the lowest index
    spikes: list[np.ndarray] | None = None   # per hidden layer (N, T, n_out) bool, if asked
    masks: list[np.ndarray] | None = None    # per layer (N, T, n_in) bool, if asked
    # (conv and pool layers: ``n_in``/``n_out`` are their maps flattened channel-major; a pool
    # layer's mask is all True: it draws nothing)


def _check_pixels(ir: IR, pixels: np.ndarray) -> np.ndarray:
    px = np.asarray(pixels)
    if px.ndim != 2 or px.shape[1] != ir.input.size:
        raise ValueError(f"input has shape {px.shape}, the IR expects (N, {ir.input.size})")
    if px.size and (px.min() < 0 or px.max() >= (1 << ir.input.pixel_bits)):
        raise ValueError(f"input pixels fall outside [0, {(1 << ir.input.pixel_bits) - 1}]")
    return px.astype(np.int64)


def encode_input(ir: IR, pixels: np.ndarray) -> np.ndarray:
    """Pixels (N, size) unsigned → input spikes (N, n_spikes) as bool (True = +1, False = -1)."""
    px = _check_pixels(ir, pixels)
    spec = ir.input
    if spec.encoding == "bernoulli":
        raise ValueError("a bernoulli input code is random: GoldenModel.run draws it")
    if spec.encoding == "thermometer":
        t = np.asarray(spec.thresholds, dtype=np.int64)
        ge = px.astype(np.int64)[:, :, None] >= t[None, None, :]       # (N, pixel, level)
        if spec.layout == "level-major":
            ge = ge.transpose(0, 2, 1)
        return ge.reshape(px.shape[0], spec.n_spikes)
    return px.astype(np.int64) >= spec.threshold


class GoldenModel:
    """Holds the LFSR states between calls, like the hardware between images."""

    def __init__(self, ir: IR):
        ir.validate()
        self.ir = ir
        self.reset()

    def reset(self) -> None:
        self.states = [layer.rng.seed if layer.rng else 0 for layer in self.ir.layers]
        self.enc_state = self.ir.input.rng.seed if self.ir.input.rng else 0

    def reseed(self, seed: int) -> None:
        """What the core's ``seed`` port does between images (see :mod:`nsm_export.ir`)."""
        if not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 1 << 32:
            raise ValueError(f"run seed {seed!r} must be an unsigned 32-bit integer")
        self.states = [layer.rng.reseeded(int(seed)) if layer.rng else 0
                       for layer in self.ir.layers]
        self.enc_state = self.ir.input.rng.reseeded(int(seed)) if self.ir.input.rng else 0

    def _encode(self, pixels: np.ndarray) -> np.ndarray:
        """Input spikes (N, T, n_spikes): fixed codes repeat, the bernoulli code draws anew."""
        ir, spec, t = self.ir, self.ir.input, self.ir.samples
        if spec.encoding != "bernoulli":
            z0 = encode_input(ir, pixels)
            return np.broadcast_to(z0[:, None, :], (z0.shape[0], t, z0.shape[1]))
        px = _check_pixels(ir, pixels)
        n = px.shape[0]
        u, self.enc_state = lfsr.draws(spec.rng.width, spec.rng.mask, spec.rng.leap,
                                       self.enc_state, n * t * spec.size, spec.prob_bits)
        q = np.asarray(spec.probs, dtype=np.int64)[px]                     # (N, size)
        return u.reshape(n, t, spec.size) < q[:, None, :]

    def _masks(self, i: int, layer, n_images: int) -> np.ndarray:
        t = self.ir.samples
        if not layer.sampling:
            return np.ones((n_images, t, layer.n_in), dtype=bool)
        spec = layer.rng
        u, self.states[i] = lfsr.draws(spec.width, spec.mask, spec.leap, self.states[i],
                                       n_images * t * layer.n_in, layer.p_bits)
        return (u < layer.p_num).reshape(n_images, t, layer.n_in)

    def run(self, pixels: np.ndarray, record: bool = False) -> GoldenResult:
        ir = self.ir
        z = self._encode(pixels)                           # (N, T, n_spikes)
        n = z.shape[0]
        masks = [self._masks(i, layer, n) for i, layer in enumerate(ir.layers)]
        spikes = []
        scores = None
        for layer, m in zip(ir.layers, masks):
            if isinstance(layer, PoolLayer):
                z = _pool(layer, z)
                spikes.append(z)
                continue
            x = np.where(m, np.where(z, 1, -1), 0).astype(np.int64)    # (N, T, n_in)
            if isinstance(layer, ConvLayer):
                acc = _conv(layer, x)                                   # (N, T, n_out)
                th = np.repeat(layer.offsets, layer.h_out * layer.w_out)
                z = acc >= th[None, None, :]
                spikes.append(z)
                continue
            acc = x @ layer.weights.T.astype(np.int64)                  # (N, T, n_out)
            if layer.output:
                scores = (acc + layer.offsets[None, None, :]).sum(axis=1)
            else:
                z = acc >= layer.offsets[None, None, :]
                spikes.append(z)
        classes = np.argmax(scores, axis=1)   # numpy returns the first maximum: lowest index
        return GoldenResult(scores=scores, classes=classes,
                            spikes=spikes if record else None, masks=masks if record else None)


def _conv(layer: ConvLayer, x: np.ndarray) -> np.ndarray:
    """``acc`` of a conv layer for ±1/0 inputs ``x`` (N, T, n_in), flattened (N, T, n_out).

    Computed in float64 with BLAS: every product and partial sum is an integer far below 2**53,
    so the result is exact; it is cast back to int64.
    """
    n, t = x.shape[:2]
    k, s, pad = layer.kernel, layer.stride, layer.padding
    ho, wo = layer.h_out, layer.w_out
    xm = x.reshape(n * t, layer.c_in, layer.h_in, layer.w_in).astype(np.float64)
    if pad:
        xm = np.pad(xm, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    w = layer.weights.astype(np.float64)
    acc = np.zeros((n * t, layer.c_out, ho, wo))
    for i in range(k):
        for j in range(k):
            patch = xm[:, :, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s]
            acc += np.einsum("bchw,oc->bohw", patch, w[:, :, i, j], optimize=True)
    return acc.astype(np.int64).reshape(n, t, layer.n_out)


def _pool(layer: PoolLayer, z: np.ndarray) -> np.ndarray:
    """OR or majority over non-overlapping windows of spikes ``z`` (N, T, n_in) bool."""
    n, t = z.shape[:2]
    c, k = layer.channels, layer.size
    ho, wo = layer.h_out, layer.w_out
    zm = z.reshape(n, t, c, layer.h_in, layer.w_in)[:, :, :, :ho * k, :wo * k]
    win = zm.reshape(n, t, c, ho, k, wo, k)
    if layer.mode == "or":
        out = win.any(axis=(4, 6))
    else:                                  # at least half +1  <=>  sum of ±1 >= 0
        out = 2 * win.sum(axis=(4, 6), dtype=np.int64) >= k * k
    return out.reshape(n, t, layer.n_out)


def run(ir: IR, pixels: np.ndarray, record: bool = False) -> GoldenResult:
    """Run ``pixels`` (N, n_in) through a freshly reset core."""
    return GoldenModel(ir).run(pixels, record=record)
