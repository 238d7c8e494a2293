"""Top level: stream in pixels, run ``T`` samples through the layer engines, stream out the class.

States (cycle counts mirrored by :mod:`nsm_export.schedule`):

``LOAD``    one pixel per accepted beat: ``z = pixel >= threshold`` is shifted into the input
            spike register; after ``n_in`` beats the core starts.
``RUN_l``   layer ``l`` runs one sample; after the last layer the next sample starts at once,
            ``T`` samples in all.
``ARGMAX``  ``C + 1`` cycles: scan the scores through a two-stage pipeline (fetch, compare),
            keeping the first maximum (ties: lowest index).
``OUT``     ``m_axis_tvalid`` high with the class and all scores until accepted; then scores
            clear and the core accepts the next image.

The LFSRs are reset only by ``rst``, never between images.
"""

from __future__ import annotations

from amaranth.back import verilog
from amaranth.hdl import Cat, Module, Signal, signed, Array
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from nsm_export.ir import IR, unsigned_bits
from .dense import DenseEngine

__all__ = ["NsmCore", "generate_verilog"]


class NsmCore(wiring.Component):
    """A whole NSM classifier built from an IR.

    Members
    -------
    s_axis_tvalid : In(1)
        A pixel is offered.
    s_axis_tready : Out(1)
        The core accepts a pixel this cycle.
    s_axis_tdata : In(pixel_bits)
        The pixel, unsigned; pixels arrive in input order, ``n_in`` per image.
    s_axis_tlast : In(1)
        Marks the last pixel of an image (informational; the image length is fixed by the IR).
    m_axis_tvalid : Out(1)
        A result is offered.
    m_axis_tready : In(1)
        The consumer takes the result this cycle.
    m_axis_tdata : Out(class_bits)
        The winning class.
    m_axis_tuser : Out(n_classes * score_bits)
        All class scores, class ``c`` in bits ``[c*score_bits, (c+1)*score_bits)``, signed.
    seed_valid : In(1)
        A run seed is offered on ``seed``.
    seed_ready : Out(1)
        The core takes the seed this cycle: only between images (no pixel of the next image
        accepted yet). Every LFSR then restarts from the seed (see ``nsm_export.ir``).
    seed : In(32)
        The run seed.
    dbg_valid : Out(1)
        Only with ``debug=True``: high for one cycle after a hidden layer finished a sample.
    dbg_layer : Out(range(hidden layers))
        Only with ``debug=True``: which hidden layer ``dbg_spikes`` shows.
    dbg_spikes : Out(widest hidden layer)
        Only with ``debug=True``: that layer's output spikes, bit ``i`` = neuron ``i`` (1 = +1).
    """

    def __init__(self, ir: IR, debug: bool = False):
        if not isinstance(ir, IR):
            raise TypeError(f"ir must be an nsm_export.ir.IR, not {type(ir).__name__}")
        ir.validate()
        why = hardware_unsupported(ir)
        if why:
            raise HardwareError(why)
        self._ir = ir
        self._debug = bool(debug)
        hidden = ir.layers[:-1]
        dbg = {"dbg_valid": Out(1), "dbg_layer": Out(unsigned_bits(max(1, len(hidden) - 1))),
               "dbg_spikes": Out(max([layer.n_out for layer in hidden] or [1]))} if debug else {}
        super().__init__({**dbg, 
            "s_axis_tvalid": In(1), "s_axis_tready": Out(1),
            "s_axis_tdata": In(ir.input.pixel_bits), "s_axis_tlast": In(1),
            "m_axis_tvalid": Out(1), "m_axis_tready": In(1),
            "m_axis_tdata": Out(ir.class_bits),
            "m_axis_tuser": Out(ir.n_classes * ir.score_bits),
            "seed_valid": In(1), "seed_ready": Out(1), "seed": In(32),
        })

    @property
    def ir(self) -> IR:
        return self._ir

    @property
    def debug(self) -> bool:
        return self._debug

    def elaborate(self, platform):
        m = Module()
        ir = self._ir
        n0, C, T = ir.input.size, ir.n_classes, ir.samples
        engines = []
        for i, layer in enumerate(ir.layers):
            eng = DenseEngine(layer, ir.score_bits)
            m.submodules[f"layer{i}"] = eng
            engines.append(eng)

        for eng in engines:
            m.d.comb += [eng.seed.eq(self.seed),
                         eng.reseed.eq(self.seed_valid & self.seed_ready)]

        spk0 = Signal(n0)
        m.d.comb += engines[0].spikes_in.eq(spk0)
        for prev, eng in zip(engines, engines[1:]):
            m.d.comb += eng.spikes_in.eq(prev.spikes_out[:eng.layer.n_in])
        out_eng = engines[-1]
        scores = Array(out_eng.scores[c * ir.score_bits:(c + 1) * ir.score_bits].as_signed()
                       for c in range(C))

        px = Signal(range(n0 + 1))
        t = Signal(range(T + 1))
        c = Signal(range(C + 1))
        best = Signal(signed(ir.score_bits))
        best_idx = Signal(ir.class_bits)
        cand = Signal(signed(ir.score_bits))
        cand_idx = Signal(range(C + 1))
        cand_valid = Signal()
        m.d.comb += [self.m_axis_tdata.eq(best_idx), self.m_axis_tuser.eq(out_eng.scores)]

        if self._debug:
            m.d.sync += self.dbg_valid.eq(0)
            for i, eng in enumerate(engines[:-1]):
                with m.If(eng.done):
                    m.d.sync += [self.dbg_valid.eq(1), self.dbg_layer.eq(i)]
                with m.If(self.dbg_layer == i):
                    m.d.comb += self.dbg_spikes.eq(eng.spikes_out[:eng.layer.n_out])

        with m.FSM():
            with m.State("LOAD"):
                m.d.comb += [self.s_axis_tready.eq(1), self.seed_ready.eq(px == 0)]
                with m.If(self.s_axis_tvalid):
                    bit = self.s_axis_tdata >= ir.input.threshold
                    m.d.sync += [spk0.eq(Cat(spk0[1:], bit) if n0 > 1 else bit), px.eq(px + 1)]
                    with m.If(px == n0 - 1):
                        m.d.sync += [px.eq(0), t.eq(0)]
                        m.next = "RUN_0"
            for i, eng in enumerate(engines):
                with m.State(f"RUN_{i}"):
                    m.d.comb += eng.start.eq(1)
                    with m.If(eng.done):
                        if i + 1 < len(engines):
                            m.next = f"RUN_{i + 1}"
                        else:
                            with m.If(t == T - 1):
                                m.d.sync += [c.eq(0), cand_valid.eq(0)]
                                m.next = "ARGMAX"
                            with m.Else():
                                m.d.sync += t.eq(t + 1)
                                m.next = "RUN_0"
            with m.State("ARGMAX"):
                # Two stages, so the score multiplexer and the comparator sit in different
                # clock cycles: fetch score c, then compare the one fetched a cycle earlier.
                m.d.sync += [cand.eq(scores[c]), cand_idx.eq(c), cand_valid.eq(c < C),
                             c.eq(c + 1)]
                with m.If(cand_valid & ((cand_idx == 0) | (cand > best))):
                    m.d.sync += [best.eq(cand), best_idx.eq(cand_idx)]
                with m.If(c == C):
                    m.next = "OUT"
            with m.State("OUT"):
                m.d.comb += self.m_axis_tvalid.eq(1)
                with m.If(self.m_axis_tready):
                    m.d.comb += out_eng.clear.eq(1)
                    m.next = "LOAD"
        return m


class HardwareError(ValueError):
    """A valid IR that this hardware generator cannot build yet (one line naming the layer)."""


def hardware_unsupported(ir: IR) -> str | None:
    """Why :class:`NsmCore` cannot build ``ir`` (one line naming the first such layer), or None.

    Conv and pool layers (IR version 2) run in the golden model but have no engine here yet.
    """
    for i, layer in enumerate(ir.layers):
        if layer.kind != "dense":
            shape = "x".join(map(str, layer.in_shape))
            return (f"layers[{i}] ({layer.kind} on a {shape} map) has no hardware engine yet; "
                    f"the IR and the golden model run it, Verilog is generated for dense "
                    f"layers only")
    return None


def generate_verilog(ir: IR, debug: bool = False) -> str:
    """Plain Verilog for the core; the top module is named ``ir.name``.

    ``debug=True`` adds the ``dbg_*`` ports that expose every hidden spike vector.
    """
    core = NsmCore(ir, debug=debug)
    return verilog.convert(core, name=ir.name, emit_src=False)
