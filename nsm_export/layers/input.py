"""The input encoder: how pixels become the first layer's ±1 spikes (golden model, cycles,
resources and the checks the hardware encoder makes)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..devices import blocks
from ..plan import ENCODE_FLUSH
from ..schema import (MAX_P_BITS, IRError, LfsrSpec, check_fields, check_int, from_json,
                      parse_list, shown, spec)

__all__ = ["InputSpec", "ENCODINGS", "LAYOUTS"]

ENCODINGS = ("threshold", "thermometer", "bernoulli")
MAX_PROB_PIXEL_BITS = 12
LAYOUTS = ("pixel-major", "level-major")


@dataclass(frozen=True)
class InputSpec:
    """How ``size`` unsigned ``pixel_bits``-bit pixels become ±1 input spikes.

    ``threshold``: one spike per pixel, ``+1 iff pixel >= threshold``.
    ``thermometer``: one spike per pixel and level ``k``, ``+1 iff pixel >= thresholds[k]``;
    ``layout`` ``pixel-major`` numbers them ``j * levels + k`` (pixel ``j``; what the hardware
    builds), ``level-major`` ``k * size + j`` (channels of an image: conv networks).
    ``bernoulli`` (stochastic): one spike per pixel, drawn anew for every sample: for pixels
    ``j = 0 .. size-1`` in order, ``u_j`` = the low ``prob_bits`` bits of the encoder LFSR
    ``rng`` after ``leap`` more steps, and ``z_j = +1 iff u_j < probs[x_j]`` (so
    ``P(+1) = probs[x] / 2**prob_bits``), image after image, sample after sample. The encoder's
    LFSR is its own; like the layers' it is reset only by reset and reseeded by a run seed.
    """
    size: int = spec(1, 1 << 20)
    threshold: int = spec(0, lambda s: 1 << s.pixel_bits)
    pixel_bits: int = spec(1, 16, default=8)
    encoding: str = spec(default="threshold")
    thresholds: tuple = spec(default=(), parse=parse_list)
    layout: str = spec(choices=LAYOUTS, default="pixel-major")
    prob_bits: int = spec(1, MAX_P_BITS, default=0)
    probs: tuple = spec(default=(), parse=parse_list)
    rng: "LfsrSpec | None" = spec(default=None, parse=LfsrSpec.parse)

    @property
    def levels(self) -> int:
        return len(self.thresholds) if self.encoding == "thermometer" else 1

    @property
    def n_spikes(self) -> int:
        """Input spikes per image: what the first layer reads."""
        return self.size * self.levels

    def validate(self) -> None:
        check_fields(self, "input", ("size", "pixel_bits"))
        if self.encoding not in ENCODINGS:
            raise IRError(f"input.encoding {shown(self.encoding)} is not supported "
                          f"({', '.join(ENCODINGS)})")
        check_fields(self, "input", ("threshold", "layout"))
        if self.encoding == "thermometer":
            if (not isinstance(self.thresholds, (list, tuple))
                    or not 1 <= len(self.thresholds) <= 64):
                raise IRError("input.thresholds: thermometer encoding needs 1 to 64 thresholds")
            for k, t in enumerate(self.thresholds):
                check_int(f"input.thresholds[{k}]", t, 0, 1 << self.pixel_bits)
        elif self.thresholds:
            raise IRError("input.thresholds are given but the encoding is not 'thermometer'")
        if self.encoding == "bernoulli":
            if self.pixel_bits > MAX_PROB_PIXEL_BITS:
                raise IRError(f"input.pixel_bits {self.pixel_bits}: bernoulli encoding takes at "
                              f"most {MAX_PROB_PIXEL_BITS}-bit pixels (one probability each)")
            check_fields(self, "input", ("prob_bits",))
            if not isinstance(self.probs, (list, tuple)) or len(self.probs) != 1 << self.pixel_bits:
                raise IRError(f"input.probs must list {1 << self.pixel_bits} values, one per "
                              f"pixel value")
            for k, q in enumerate(self.probs):
                check_int(f"input.probs[{k}]", q, 0, 1 << self.prob_bits)
            if not isinstance(self.rng, LfsrSpec):
                raise IRError("input.rng: bernoulli encoding needs an LFSR spec")
            self.rng.validate("input.rng", self.prob_bits)
        elif self.probs or self.rng is not None or self.prob_bits:
            raise IRError("input.probs/prob_bits/rng are given but the encoding is not 'bernoulli'")
        else:
            check_int("input.prob_bits", self.prob_bits, 0, 0)

    @classmethod
    def record(cls, m: dict) -> "InputSpec":
        return from_json(cls, m, "input")

    def check_pixels(self, pixels) -> np.ndarray:
        px = np.asarray(pixels)
        if px.ndim != 2 or px.shape[1] != self.size:
            raise ValueError(f"input has shape {px.shape}, the IR expects (N, {self.size})")
        if px.size and (px.min() < 0 or px.max() >= (1 << self.pixel_bits)):
            raise ValueError(f"input pixels fall outside [0, {(1 << self.pixel_bits) - 1}]")
        return px.astype(np.int64)

    def encode(self, pixels) -> np.ndarray:
        """Pixels (N, size) unsigned → input spikes (N, n_spikes) as bool (True = +1) for a
        fixed code (the bernoulli code is random: :meth:`encode_drawn`)."""
        px = self.check_pixels(pixels)
        if self.encoding == "bernoulli":
            raise ValueError("a bernoulli input code is random: GoldenModel.run draws it")
        if self.encoding == "thermometer":
            t = np.asarray(self.thresholds, dtype=np.int64)
            ge = px[:, :, None] >= t[None, None, :]                      # (N, pixel, level)
            if self.layout == "level-major":
                ge = ge.transpose(0, 2, 1)
            return ge.reshape(px.shape[0], self.n_spikes)
        return px >= self.threshold

    def encode_drawn(self, pixels, u: np.ndarray, samples: int) -> np.ndarray:
        """The bernoulli code: spikes (N, T, size) from the encoder LFSR's draws ``u`` (N*T*size,
        in draw order)."""
        px = self.check_pixels(pixels)
        q = np.asarray(self.probs, dtype=np.int64)[px]                     # (N, size)
        return u.reshape(px.shape[0], samples, self.size) < q[:, None, :]

    def cycles(self) -> int:
        """Per sample: the stochastic code is drawn anew (``size`` + the encoder's pipeline);
        fixed codes are encoded once while the pixels arrive (no cycles)."""
        return self.size + ENCODE_FLUSH if self.encoding == "bernoulli" else 0

    def cost(self, target) -> dict:
        """The stochastic code's pixel memory and probability ROM (fixed codes: none)."""
        bram = 0
        if self.encoding == "bernoulli":
            bram = blocks(self.pixel_bits, self.size, target) \
                + blocks(self.prob_bits + 1, 1 << self.pixel_bits, target)
        return {"luts": 0, "ffs": 0, "bram": bram, "spram": 0}

    def describe(self) -> str:
        """How the code turns pixels into spikes, in words (the report)."""
        if self.encoding == "thermometer":
            return (f"thermometer code, {self.levels} spikes per pixel (+1 iff pixel ≥ "
                    f"{', '.join(map(str, self.thresholds))})")
        if self.encoding == "bernoulli":
            return (f"stochastic code, a fresh spike per sample with P(+1) = probs[pixel] / "
                    f"2^{self.prob_bits} from the encoder's own {self.rng.width}-bit LFSR")
        return f"spike +1 iff pixel ≥ {self.threshold}"

    def hw_unsupported(self, ir) -> str | None:
        """Why the hardware encoder cannot build this code before ``ir``'s first layer."""
        conv0 = ir.layers[0].kind == "conv2d"
        if self.encoding == "thermometer" and not conv0:
            if self.levels not in (1, 2, 4, 8, 16):
                return (f"input: a thermometer code with {self.levels} levels; the hardware "
                        f"encoder takes 1, 2, 4, 8 or 16 levels (retrain with --levels 4, say)")
            if self.layout != "pixel-major":
                return "input: a level-major thermometer code before a dense layer has no encoder"
        if self.encoding == "thermometer" and conv0 and self.levels > 1 \
                and self.layout != "level-major":
            return "input: a conv net's thermometer levels must be its channels (level-major)"
        return None
