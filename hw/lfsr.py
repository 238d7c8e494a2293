"""Leap-forward Galois LFSR in hardware.

The XOR network is derived from the one-step software model :func:`nsm_export.lfsr.step` by
running it on basis vectors (:func:`nsm_export.lfsr.leap_matrix`), never typed in by hand.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from nsm_export import lfsr as model

__all__ = ["Lfsr"]


class Lfsr(wiring.Component):
    """Galois LFSR advancing ``lanes * leap`` steps per enabled clock: ``lanes`` draws at once.

    Parameters
    ----------
    width : int
        State width, 8 to 32 bits.
    seed : int
        Reset state; must be non-zero (zero is the lock-up state).
    leap : int
        Steps per draw (at least the number of bits read per draw).
    lanes : int
        Draws per clock: lane ``k`` reads the state ``(k + 1) * leap`` steps ahead, so the lanes
        together are ``lanes`` consecutive draws of the one stream.
    tail : int
        Draws taken by ``en_tail`` (1 to ``lanes``), for a last, partial batch of draws.

    Members
    -------
    en : In(1)
        Advance ``lanes`` draws at the next clock edge.
    en_tail : In(1)
        Advance ``tail`` draws instead.
    reseed : In(1)
        Restart from the run seed at the next clock edge instead: the state becomes
        ``(run_seed XOR seed)`` on ``width`` bits, or ``seed`` where that would be the lock-up
        state 0 (exactly :meth:`nsm_export.ir.LfsrSpec.reseeded`).
    run_seed : In(32)
        The run seed.
    load, load_state : In(1), In(width) (``loadable`` only)
        Take ``load_state`` as the state at the next clock edge (after ``reseed``, before
        ``en``): the early-exit drawers start each image from a state they keep.
    state : Out(width)
        The current state.
    next : Out(width)
        The state ``leap`` steps ahead of ``state``: what a draw made this cycle reads.
    ahead : Out(width * lanes)
        Lane ``k`` in bits ``[k*width, (k+1)*width)``: the state ``(k + 1) * leap`` steps ahead.
    """

    def __init__(self, width: int, seed: int, leap: int = 1, lanes: int = 1,
                 tail: int | None = None, loadable: bool = False):
        mask = model.galois_mask(width)        # raises ValueError for unsupported widths
        if not isinstance(seed, int) or not 0 < seed < (1 << width):
            raise ValueError(f"LFSR seed {seed!r} must be in [1, {(1 << width) - 1}] "
                             f"(zero is the lock-up state)")
        if not isinstance(leap, int) or leap < 1:
            raise ValueError(f"LFSR leap {leap!r} must be a positive integer")
        if not isinstance(lanes, int) or lanes < 1:
            raise ValueError(f"LFSR lanes {lanes!r} must be a positive integer")
        tail = lanes if tail is None else tail
        if not isinstance(tail, int) or not 1 <= tail <= lanes:
            raise ValueError(f"LFSR tail {tail!r} must be in [1, {lanes}]")
        self._width = width
        self._mask = mask
        self._seed = seed
        self._leap = leap
        self._lanes = lanes
        self._tail = tail
        self._loadable = bool(loadable)
        load = {"load": In(1), "load_state": In(width)} if loadable else {}
        super().__init__({"en": In(1), "en_tail": In(1), "reseed": In(1), "run_seed": In(32),
                          **load, "state": Out(width), "next": Out(width),
                          "ahead": Out(width * lanes)})

    @property
    def width(self) -> int:
        return self._width

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def leap(self) -> int:
        return self._leap

    @property
    def lanes(self) -> int:
        return self._lanes

    def elaborate(self, platform):
        m = Module()
        w = self._width
        reg = Signal(w, init=self._seed)
        step = model.leap_matrix(w, self._mask, self._leap)
        columns = step
        lanes = []
        for k in range(self._lanes):
            if k:
                columns = model.compose(step, columns)       # (k + 1) * leap steps
            lane = Signal(w, name=f"ahead{k}")
            for i in range(w):
                taps = [reg[b] for b in range(w) if (columns[b] >> i) & 1]
                bit = taps[0] if taps else 0
                for t in taps[1:]:
                    bit = bit ^ t
                m.d.comb += lane[i].eq(bit)
            lanes.append(lane)
        m.d.comb += [self.state.eq(reg), self.next.eq(lanes[0]), self.ahead.eq(Cat(*lanes))]
        mixed = Signal(w)
        m.d.comb += mixed.eq(self.run_seed[:w] ^ self._seed)
        with m.If(self.reseed):
            m.d.sync += reg.eq(Mux(mixed == 0, self._seed, mixed))
        if self._loadable:
            with m.Elif(self.load):
                m.d.sync += reg.eq(self.load_state)
        with m.Elif(self.en):
            m.d.sync += reg.eq(lanes[-1])
        with m.Elif(self.en_tail):
            m.d.sync += reg.eq(lanes[self._tail - 1])
        return m
