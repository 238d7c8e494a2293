"""The class scan both cores end with: the first maximum of the scores (ties: lowest index)."""

from __future__ import annotations

from amaranth.hdl import Array, Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from nsm_export.ir import unsigned_bits

__all__ = ["ArgmaxScan"]


class ArgmaxScan(wiring.Component):
    """Scans ``n`` signed scores in ``n + 1`` cycles through two stages (fetch score ``c``, then
    compare the one fetched a cycle earlier), so the score multiplexer and the comparator sit in
    different clock cycles.

    Members
    -------
    scores : In(n * score_bits)
        Score ``c`` in bits ``[c*score_bits, (c+1)*score_bits)``; must hold still while scanning.
    clear : In(1)
        Restart the scan at the next clock edge (the cycle before the first ``en``).
    en : In(1)
        Scan one step.
    last : Out(1)
        High in the scan's last step (the ``n + 1``-th after ``clear``).
    index : Out(class bits)
        The winner, valid once ``last`` has been seen; it holds until the next scan.
    """

    def __init__(self, n: int, score_bits: int):
        self._n, self._bits = n, score_bits
        super().__init__({"scores": In(n * score_bits), "clear": In(1), "en": In(1),
                          "last": Out(1), "index": Out(unsigned_bits(max(1, n - 1)))})

    def elaborate(self, platform):
        m = Module()
        n, sb = self._n, self._bits
        scores = [self.scores[k * sb:(k + 1) * sb].as_signed() for k in range(n)]
        c = Signal(range(n + 1))
        best = Signal(signed(sb))
        cand = Signal(signed(sb))
        cand_idx = Signal(range(n + 1))
        cand_valid = Signal()
        m.d.comb += self.last.eq(c == n)
        with m.If(self.clear):
            m.d.sync += [c.eq(0), cand_valid.eq(0)]
        with m.Elif(self.en):
            m.d.sync += [cand.eq(Array(scores)[c] if n > 1 else scores[0]), cand_idx.eq(c),
                         cand_valid.eq(c < n), c.eq(c + 1)]
            with m.If(cand_valid & ((cand_idx == 0) | (cand > best))):
                m.d.sync += [best.eq(cand), self.index.eq(cand_idx)]
        return m
