"""The pooling layer kind: binary-spike pooling on non-overlapping windows. No engine of its own:
the conv engine before it computes an OR pooling on the fly (``hw.conv``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..schema import MAX_KERNEL, IRError, check_fields, shown, spec
from .base import Layer

__all__ = ["PoolLayer", "POOL_MODES"]

POOL_MODES = ("or", "majority")


@dataclass
class PoolLayer(Layer):
    """Binary-spike pooling on non-overlapping ``size × size`` windows (IR version 2)."""
    channels: int = spec(1, 1 << 16)
    h_in: int = spec(1, 1 << 16)
    w_in: int = spec(1, 1 << 16)
    size: int = spec(1, MAX_KERNEL)
    mode: str = spec()                       # "or" or "majority"
    kind = "pool"
    DERIVED = ("h_out", "w_out", "n_in", "n_out", "output")
    JSON_ORDER = ("kind", "mode", "channels", "h_in", "w_in", "size", "h_out", "w_out",
                  "n_in", "n_out", "output")

    @property
    def h_out(self) -> int:
        return self.h_in // self.size

    @property
    def w_out(self) -> int:
        return self.w_in // self.size

    @property
    def n_in(self) -> int:
        return self.channels * self.h_in * self.w_in

    @property
    def n_out(self) -> int:
        return self.channels * self.h_out * self.w_out

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.h_in, self.w_in)

    @property
    def out_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.h_out, self.w_out)

    def validate(self, where: str) -> None:
        check_fields(self, where, ("channels", "h_in", "w_in", "size"))
        if self.mode not in POOL_MODES:
            raise IRError(f"{where}.mode {shown(self.mode)} is not one of {', '.join(POOL_MODES)}")
        if self.h_out < 1 or self.w_out < 1:
            raise IRError(f"{where}: a {self.size}x{self.size} window does not fit the "
                          f"{self.h_in}x{self.w_in} map")

    def execute(self, z: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """OR or majority over non-overlapping windows of spikes ``z`` (N, T, n_in) bool."""
        n, t = z.shape[:2]
        c, k = self.channels, self.size
        ho, wo = self.h_out, self.w_out
        zm = z.reshape(n, t, c, self.h_in, self.w_in)[:, :, :, :ho * k, :wo * k]
        win = zm.reshape(n, t, c, ho, k, wo, k)
        if self.mode == "or":
            out = win.any(axis=(4, 6))
        else:                              # at least half +1  <=>  sum of ±1 >= 0
            out = 2 * win.sum(axis=(4, 6), dtype=np.int64) >= k * k
        return out.reshape(n, t, self.n_out)

    def synaptic_ops(self) -> int:
        return 0

    # The conv engine before computes it: no cycles, no cost, nothing to fold.
    def own(self) -> tuple:
        return (1, 1, 1, "rom")

    def options(self, target) -> list[tuple]:
        return [self.own()]

    def free_options(self, target, fixed: dict) -> list[tuple]:
        return [self.own()]

    def folded(self, opt: tuple) -> "PoolLayer":
        return self

    def mean_cycles(self, engine, opt: tuple) -> float:
        return 0.0

    def cost(self, target, *opt) -> dict:
        return {"luts": 0, "ffs": 0, "bram": 0, "spram": 0}

    def report_row(self, i: int, engine) -> dict:
        """``engine``: the conv engine that computes it."""
        return {"layer": i, "n_in": self.n_in, "n_out": self.n_out, "kind": "pool",
                "mode": self.mode, "size": self.size, "in_shape": list(self.in_shape),
                "out_shape": list(self.out_shape),
                "engine": engine.index if engine is not None else None, "weights": 0,
                "weight_bits_total": 0, "memories": {}, "memory_bits": 0, "pe": 0,
                "lfsr_width": None}

    def hw_unsupported(self, i: int, ir) -> str | None:
        prev = ir.layers[i - 1].kind if i else None
        if prev != "conv2d":
            return (f"layers[{i}] (pool) follows a {prev or 'input'} layer; the hardware "
                    f"pools only right after a conv layer")
        if self.mode != "or":
            return (f"layers[{i}] ({self.mode} pooling) has no hardware engine; OR "
                    f"pooling has (spec token pK)")
        return None
