"""Leap-forward Galois LFSR in hardware.

The XOR network is derived from the one-step software model :func:`nsm_export.lfsr.step` by
running it on basis vectors (:func:`nsm_export.lfsr.leap_matrix`), never typed in by hand.
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from nsm_export import lfsr as model

__all__ = ["Lfsr"]


class Lfsr(wiring.Component):
    """Galois LFSR advancing ``leap`` steps per enabled clock.

    Parameters
    ----------
    width : int
        State width, 8 to 32 bits.
    seed : int
        Reset state; must be non-zero (zero is the lock-up state).
    leap : int
        Steps per enabled clock (at least the number of bits read per draw).

    Members
    -------
    en : In(1)
        Advance the state at the next clock edge.
    load : In(1)
        Load ``load_value`` at the next clock edge instead (it must not be zero).
    load_value : In(width)
        The state to load.
    state : Out(width)
        The current state.
    next : Out(width)
        The state ``leap`` steps ahead of ``state``: what a draw made this cycle reads.
    """

    def __init__(self, width: int, seed: int, leap: int = 1):
        mask = model.galois_mask(width)        # raises ValueError for unsupported widths
        if not isinstance(seed, int) or not 0 < seed < (1 << width):
            raise ValueError(f"LFSR seed {seed!r} must be in [1, {(1 << width) - 1}] "
                             f"(zero is the lock-up state)")
        if not isinstance(leap, int) or leap < 1:
            raise ValueError(f"LFSR leap {leap!r} must be a positive integer")
        self._width = width
        self._mask = mask
        self._seed = seed
        self._leap = leap
        super().__init__({"en": In(1), "load": In(1), "load_value": In(width),
                          "state": Out(width), "next": Out(width)})

    @property
    def width(self) -> int:
        return self._width

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def leap(self) -> int:
        return self._leap

    def elaborate(self, platform):
        m = Module()
        reg = Signal(self._width, init=self._seed)
        columns = model.leap_matrix(self._width, self._mask, self._leap)
        for i in range(self._width):
            taps = [reg[k] for k in range(self._width) if (columns[k] >> i) & 1]
            bit = taps[0] if taps else 0
            for t in taps[1:]:
                bit = bit ^ t
            m.d.comb += self.next[i].eq(bit)
        m.d.comb += self.state.eq(reg)
        with m.If(self.load):
            m.d.sync += reg.eq(self.load_value)
        with m.Elif(self.en):
            m.d.sync += reg.eq(self.next)
        return m
