"""The stopping rule in hardware: at each boundary of an image's samples, stop or go on.

:mod:`nsm_export.early_exit` defines the rule: the leader ``a`` (first maximum of the scores)
must lead every other class ``c`` by ``need[b][a][c]`` (plus one where ``c < a``) at boundary
``b``. The ``need`` table of the IR's rule sits in a ROM of ``B * C * C`` words (``B``: the
boundaries before the last); a verdict takes :func:`nsm_export.plan.decide_cycles` cycles:

``start``   cycle ``d`` (the output engine's last cycle of a pass that is not its image's last):
            the argmax scan is cleared and the boundary ``bound`` latched.
``SCAN``    ``C + 1`` cycles (:class:`hw.argmax.ArgmaxScan`, the result path's own scan).
``LEAD``    one cycle: the leader's score is registered.
``CHECK``   ``C`` cycles: class ``c``'s score and ``need`` word are fetched; a cycle later the
            lead ``S_a - S_c`` and ``need + (c < a)`` are formed, and a cycle after that
            compared into the verdict (``FLUSH1``, ``FLUSH2``: the last class's).
``VERDICT`` one cycle, ``d + 2C + 5``: ``stop`` or ``go_on`` high.

The scores must hold still from ``d + 1`` to the verdict (the core runs no pass meanwhile: the
first engine waits for the verdict on its previous pass).
"""

from __future__ import annotations

from amaranth.hdl import Array, Module, Signal, signed
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from nsm_export.early_exit import ir_table
from .argmax import ArgmaxScan

__all__ = ["ExitRule"]


class ExitRule(wiring.Component):
    """Members: ``scores`` In(C * score_bits), ``start`` In(1), ``bound`` In (the boundary
    index, with ``start``), ``stop``/``go_on`` Out(1) (the verdict, one cycle)."""

    def __init__(self, ir):
        self._ir = ir
        bounds, need = ir_table(ir)
        self._need = need
        self._B = max(1, len(bounds) - 1)
        C = ir.n_classes
        super().__init__({"scores": In(C * ir.score_bits), "start": In(1),
                          "bound": In(range(max(2, self._B))), "stop": Out(1),
                          "go_on": Out(1)})

    def elaborate(self, platform):
        m = Module()
        ir = self._ir
        C, sb = ir.n_classes, ir.score_bits
        nb = sb + 1                                   # need <= 2**sb ("never")
        words = [int(v) for v in self._need.reshape(-1).tolist()] or [0]
        m.submodules.rom = rom = memory.Memory(shape=nb, depth=max(2, len(words)),
                                               init=words + [0] * (max(2, len(words)) - len(words)))
        rp = rom.read_port()
        m.submodules.scan = scan = ArgmaxScan(C, sb)
        scores = Array([self.scores[k * sb:(k + 1) * sb].as_signed() for k in range(C)])
        m.d.comb += scan.scores.eq(self.scores)

        b = Signal(range(max(2, self._B)))
        c = Signal(range(C + 1))
        a = scan.index
        v1, v2, ok, lower = Signal(), Signal(), Signal(), Signal()
        sa, sc = Signal(signed(sb)), Signal(signed(sb))
        lead = Signal(signed(sb + 1))
        need = Signal(nb + 1)
        m.d.comb += rp.addr.eq(b * (C * C) + a * C + c)
        # three stages a class: its score and need word fetched, the lead and the need (plus
        # the tie rule's one) formed, compared
        m.d.sync += [v1.eq(0), v2.eq(v1)]
        with m.If(v1):
            m.d.sync += [lead.eq(sa - sc), need.eq(rp.data + lower)]
        short = v2 & (lead < need)
        with m.If(short):
            m.d.sync += ok.eq(0)
        # the verdict straight from flip-flops: it fans out to every engine and drawer
        stop, go_on = Signal(), Signal()
        m.d.sync += [stop.eq(0), go_on.eq(0)]
        m.d.comb += [self.stop.eq(stop), self.go_on.eq(go_on)]
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.comb += scan.clear.eq(1)
                    m.d.sync += b.eq(self.bound)
                    m.next = "SCAN"
            with m.State("SCAN"):
                m.d.comb += scan.en.eq(1)
                with m.If(scan.last):
                    m.next = "LEAD"
            with m.State("LEAD"):
                m.d.sync += [sa.eq(scores[a]), c.eq(0), ok.eq(1)]
                m.next = "CHECK"
            with m.State("CHECK"):
                m.d.sync += [v1.eq(1), sc.eq(scores[c]), lower.eq(c < a), c.eq(c + 1)]
                with m.If(c == C - 1):
                    m.next = "FLUSH1"
            with m.State("FLUSH1"):
                m.next = "FLUSH2"
            with m.State("FLUSH2"):                 # the last class's compare
                m.d.sync += [stop.eq(ok & ~short), go_on.eq(~ok | short)]
                m.next = "VERDICT"
            with m.State("VERDICT"):
                m.next = "IDLE"
        return m
