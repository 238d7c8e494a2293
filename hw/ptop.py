"""The popcount core: a pipeline of sample-parallel dense engines (:mod:`hw.pdense`) that
overlaps images.

Stages, each handing over through double-buffered memories (cycle counts mirrored by
:func:`nsm_export.schedule.pop_events`):

Loader      takes a pixel every cycle in which the half of the first engine's spike store it
            fills is free (``s_axis_tready``): the threshold or thermometer code of a pixel
            goes into a word of ``simd`` spikes, written when full or at the image's last
            pixel; after the last pixel the half is full (the first engine may start the
            image a cycle later) and the loader fills the other half with the next image.
Engines     engine ``i`` starts its next pass (``ready``: its keep bits are drawn) once its
            input is there (engine 0: the image's half; engine ``i > 0``: engine ``i - 1``
            ended that pass) and engine ``i + 1`` has taken over its previous pass (it started
            it): while engine ``i + 1`` reads one half of its spike store, engine ``i`` writes
            the other. Passes follow each other across images. Engine 0 frees its image's
            half when it ends the image's last pass.
Result      when the output engine ends an image's last pass, its scores are copied into the
            result register (at once, or once the previous result is taken) and cleared;
            the output engine starts nothing while a copy waits. ``ArgmaxScan`` then takes
            ``C + 1`` cycles, and ``m_axis_tvalid`` holds the class and scores until taken.

Early exit (an IR with a stopping rule, :mod:`nsm_export.early_exit`): after each pass of the
output engine that is not its image's last, :class:`hw.exitrule.ExitRule` gives a verdict on
the scores so far (:func:`nsm_export.plan.decide_cycles` cycles later); engine 0 starts no pass
after one that was not its image's last before that verdict, so no pass is ever run in vain.
``stop`` ends the image there: every engine's next pass is the next image's first, each drawer
drops the batch it drew ahead, engine 0 frees its input half, and the scores are copied into
the result with the samples used (``m_axis_tuser`` above the scores). Each drawer starts every
image from the LFSR state all ``T`` samples of the image before would have left
(:class:`hw.maskdraw.MaskDrawer`'s ``jump``), so an image's draws never depend on where the one
before stopped.

A mask drawer draws an image's first pass only from the second cycle after the image's last
pixel was taken (a registered token), so every pass's timing follows from the pixel handshakes
alone. A run seed is taken only while no image is in the core (none loading, none computing, no
result waiting): every LFSR then restarts from it. The LFSRs are reset only by ``rst``.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import wiring

from nsm_export.ir import IR
from nsm_export.plan import images_in_flight, plan
from .argmax import ArgmaxScan
from .exitrule import ExitRule
from .dense import n_load_beats, rom_module_name
from .pdense import store_wbits
from .ports import core_ports

__all__ = ["PopcountCore"]


class PopcountCore(wiring.Component):
    """A dense NSM classifier on popcount engines; the ports are :class:`hw.top.NsmCore`'s
    (without the debug ports): ``w_axis`` where a layer keeps its weights in ``ram`` takes the
    weight image (:func:`hw.top.weight_image`) once after configuration, before any pixel; the
    weights survive ``rst``, and a reset in the middle of the image makes the host send it again
    from the start."""

    def __init__(self, ir: IR, rom_modules: bool = True):
        self._ir = ir
        self._rom_modules = bool(rom_modules)
        super().__init__(core_ports(ir))

    @property
    def ir(self) -> IR:
        return self._ir

    def _load_weights(self, m: Module, stages, engines):
        """The ``w_axis`` weight image into the ``ram`` layers, layer by layer, beat by beat;
        returns the flag (kept through ``rst``) that it is complete (1 without ``ram``)."""
        ram = [eng for st, eng in zip(stages, engines) if st.layer.weight_store == "ram"]
        if not ram:
            return 1
        loaded = Signal(reset_less=True)
        counts = [n_load_beats(eng.layer) for eng in ram]
        wl = Signal(range(len(ram)))
        beat = Signal(range(max(counts)))
        m.d.comb += self.w_axis_tready.eq(~loaded)
        for k, eng in enumerate(ram):
            m.d.comb += [eng.loading.eq(~loaded), eng.load_data.eq(self.w_axis_tdata),
                         eng.load_en.eq(~loaded & self.w_axis_tvalid & (wl == k))]
        with m.If(~loaded & self.w_axis_tvalid):
            m.d.sync += beat.eq(beat + 1)
            for k, n in enumerate(counts):
                with m.If((wl == k) & (beat == n - 1)):
                    m.d.sync += [beat.eq(0), wl.eq(wl + 1)]
                    if k == len(ram) - 1:
                        m.d.sync += loaded.eq(1)
        return loaded

    def elaborate(self, platform):
        m = Module()
        ir = self._ir
        stages = plan(ir)
        engines = []
        for st in stages:
            rom = rom_module_name(ir.name, st.index) if self._rom_modules else None
            eng = st.layer.engine(st, ir, rom)
            m.submodules[f"layer{st.index}"] = eng
            engines.append(eng)
        L = len(engines)
        first, out_eng = engines[0], engines[-1]
        n0 = ir.input.size

        # --- loader ---------------------------------------------------------------------------
        spec = ir.input
        conv0 = stages[0].layer.kind == "conv2d"
        levels, simd0 = spec.levels, stages[0].layer.simd
        # pixels a word: a conv layer's word is one pixel's code (its channels)
        per = 1 if conv0 else simd0 // levels
        words0 = n0 if conv0 else stages[0].layer.words
        wbits0 = store_wbits(words0)
        tail = 0 if conv0 else n0 * levels % simd0
        px = Signal(range(n0 + 1))
        lhalf = Signal()                            # the half the loader fills
        lfull = Signal(2)                           # half h holds a whole image
        inflight = Signal(range(images_in_flight(L) + 1))   # taken and not handed over
        sword = Signal(simd0)
        wpos = Signal(range(max(2, per)))
        waddr = Signal(range(max(2, words0)))
        in_ready = Signal()
        m.d.comb += [in_ready.eq(~(lfull.bit_select(lhalf, 1)) & self._load_weights(m, stages,
                                                                                    engines)),
                     self.s_axis_tready.eq(in_ready)]
        take = in_ready & self.s_axis_tvalid
        last_px = take & (px == n0 - 1)
        if spec.encoding == "thermometer":
            bits = Cat(*[self.s_axis_tdata >= t for t in spec.thresholds])
        else:
            bits = self.s_axis_tdata >= spec.threshold
        word = Cat(sword[levels:], bits) if per > 1 else bits     # input per*w + i in bit i
        full = wpos == per - 1
        m.d.comb += [first.st_we.eq(take & (full | last_px)),
                     first.st_addr.eq(Cat(waddr[:wbits0], lhalf)),
                     first.st_data.eq(Mux(last_px, word >> (simd0 - tail), word) if tail
                                      else word)]
        with m.If(take):
            m.d.sync += [sword.eq(word), wpos.eq(wpos + 1), px.eq(px + 1)]
            with m.If(full):
                m.d.sync += [waddr.eq(waddr + 1), wpos.eq(0)]
            with m.If(last_px):
                m.d.sync += [wpos.eq(0), waddr.eq(0), px.eq(0), lhalf.eq(~lhalf)]
        img_in = Signal()                  # a registered copy: the pixel handshake's logic
        m.d.sync += img_in.eq(last_px)     # stays out of the drawers' token counters
        for eng in engines:
            m.d.comb += [eng.img_in.eq(img_in), eng.seed.eq(self.seed),
                         eng.reseed.eq(self.seed_valid & self.seed_ready)]
        m.d.comb += self.seed_ready.eq((inflight == 0) & (px == 0))

        # --- engines: a pipeline of passes --------------------------------------------------------
        busy = [Signal(name=f"busy{i}") for i in range(L)]
        full_ = [Signal(name=f"full{i}") for i in range(L - 1)]   # engine i's pass waits
        fin = Signal()                                            # scores wait for the copy
        release = Signal(2)
        early = ir.early_exit.active
        verdict_stop = Signal()
        pending = Signal()       # early exit: engine 0 waits for the verdict on its last pass
        for i, eng in enumerate(engines):
            src = lfull.bit_select(eng.in_half, 1) if i == 0 else full_[i - 1]
            free = ~full_[i] if i < L - 1 else ~fin
            go = Signal(name=f"go{i}")
            m.d.comb += [go.eq(~busy[i] & src & free & eng.ready
                               & (~pending if early and i == 0 else 1)), eng.start.eq(go)]
            if early:
                m.d.comb += eng.stop.eq(verdict_stop)
            with m.If(go):
                m.d.sync += busy[i].eq(1)
                if i > 0:
                    m.d.sync += full_[i - 1].eq(0)
            with m.If(eng.done):
                m.d.sync += busy[i].eq(0)
                if i < L - 1:
                    m.d.sync += full_[i].eq(1)
            if i > 0:
                m.d.comb += [eng.st_we.eq(engines[i - 1].out_we),
                             eng.st_addr.eq(engines[i - 1].out_addr),
                             eng.st_data.eq(engines[i - 1].out_data)]
        m.d.comb += release.eq(Mux((first.done & first.last) | verdict_stop,
                                   1 << first.in_half, 0))
        m.d.sync += lfull.eq((lfull & ~release)
                             | Mux(last_px, Mux(lhalf, 0b10, 0b01), 0))
        with m.If((out_eng.done & out_eng.last) | verdict_stop):
            m.d.sync += fin.eq(1)

        # --- early exit: a verdict after every pass but an image's last -------------------------
        T, P = ir.samples, len(stages[0].layer.pass_counts(ir.samples))
        if early:
            used = Signal(range(T + 1), init=T)  # samples of the image whose scores wait
            tp = min(stages[0].layer.pass_samples, T)
            m.submodules.exit = rule = ExitRule(ir)
            ob = Signal(range(max(2, P)))        # the output engine's next pass in its image
            m.d.comb += [rule.scores.eq(out_eng.scores),
                         rule.start.eq(out_eng.done & ~out_eng.last), rule.bound.eq(ob),
                         verdict_stop.eq(rule.stop)]
            with m.If(first.done & ~first.last):
                m.d.sync += pending.eq(1)
            with m.If(rule.stop | rule.go_on):
                m.d.sync += pending.eq(0)
            with m.If(out_eng.done):
                m.d.sync += ob.eq(Mux(out_eng.last, 0, ob + 1))
                with m.If(out_eng.last):
                    m.d.sync += used.eq(T)
            with m.If(rule.stop):
                m.d.sync += [ob.eq(0), used.eq(ob * tp)]

        # --- result -----------------------------------------------------------------------------
        C, sb = ir.n_classes, ir.score_bits
        res = Signal(C * sb)
        res_used = Signal(range(T + 1)) if early else None
        m.submodules.argmax = scan = ArgmaxScan(C, sb)
        m.d.comb += [scan.scores.eq(res), self.m_axis_tdata.eq(scan.index),
                     self.m_axis_tuser.eq(Cat(res, res_used) if early else res)]
        handed = Signal()
        with m.FSM():
            with m.State("IDLE"):
                with m.If(fin):
                    m.d.comb += [out_eng.clear.eq(1), scan.clear.eq(1)]
                    m.d.sync += [res.eq(out_eng.scores), fin.eq(0)]
                    if early:
                        m.d.sync += res_used.eq(used)
                    m.next = "SCAN"
            with m.State("SCAN"):
                m.d.comb += scan.en.eq(1)
                with m.If(scan.last):
                    m.next = "OUT"
            with m.State("OUT"):
                m.d.comb += self.m_axis_tvalid.eq(1)
                with m.If(self.m_axis_tready):
                    m.d.comb += handed.eq(1)
                    m.next = "IDLE"
        m.d.sync += inflight.eq(inflight + last_px - handed)
        return m
