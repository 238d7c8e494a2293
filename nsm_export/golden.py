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

from . import early_exit, lfsr
from .ir import IR

__all__ = ["GoldenResult", "GoldenModel", "run"]


@dataclass
class GoldenResult:
    scores: np.ndarray           # (N, C) int64: output scores summed over T samples
    classes: np.ndarray          # (N,) int64: argmax, ties to the lowest index
    spikes: list[np.ndarray] | None = None   # per hidden layer (N, T, n_out) bool, if asked
    masks: list[np.ndarray] | None = None    # per layer (N, T, n_in) bool, if asked
    samples: np.ndarray | None = None        # (N,) samples used (T without early exit)
    partial: np.ndarray | None = None        # (N, B, C) the scores at each boundary, if asked
    # (conv and pool layers: ``n_in``/``n_out`` are their maps flattened channel-major; a pool
    # layer's mask is all True: it draws nothing)


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
        spec, t = self.ir.input, self.ir.samples
        if spec.encoding != "bernoulli":
            z0 = spec.encode(pixels)
            return np.broadcast_to(z0[:, None, :], (z0.shape[0], t, z0.shape[1]))
        n = spec.check_pixels(pixels).shape[0]
        u, self.enc_state = lfsr.draws(spec.rng.width, spec.rng.mask, spec.rng.leap,
                                       self.enc_state, n * t * spec.size, spec.prob_bits)
        return spec.encode_drawn(pixels, u, t)

    def _masks(self, i: int, layer, n_images: int) -> np.ndarray:
        t = self.ir.samples
        if not layer.sampling:
            return np.ones((n_images, t, layer.n_in), dtype=bool)
        spec = layer.rng
        u, self.states[i] = lfsr.draws(spec.width, spec.mask, spec.leap, self.states[i],
                                       n_images * t * layer.n_in, layer.p_bits)
        return layer.keep_in_order((u < layer.p_num).reshape(n_images, t, layer.n_in))

    def run(self, pixels: np.ndarray, record: bool = False) -> GoldenResult:
        ir = self.ir
        z = self._encode(pixels)                           # (N, T, n_spikes)
        n = z.shape[0]
        masks = [self._masks(i, layer, n) for i, layer in enumerate(ir.layers)]
        spikes = []
        for layer, m in zip(ir.layers[:-1], masks):
            z = layer.execute(z, m)
            spikes.append(z)
        # The full-T run cut short where the rule says (the LFSRs start every image where all T
        # samples leave them: nsm_export.early_exit); rule none ends every image at the last
        # boundary. Classes: the first maximum (numpy's argmax), ties to the lowest index.
        bounds, need = early_exit.ir_table(ir)
        partial = early_exit.partial_scores(ir, ir.layers[-1].sample_sums(z, masks[-1]), bounds)
        cut = early_exit.decide(partial, need, bounds)
        return GoldenResult(scores=cut.scores, classes=cut.classes,
                            spikes=spikes if record else None, masks=masks if record else None,
                            samples=cut.samples, partial=partial if record else None)


def run(ir: IR, pixels: np.ndarray, record: bool = False) -> GoldenResult:
    """Run ``pixels`` (N, n_in) through a freshly reset core."""
    return GoldenModel(ir).run(pixels, record=record)
