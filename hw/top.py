"""Top level: stream in pixels, run ``T`` samples through the layer engines, stream out the class.

States (cycle counts mirrored by :mod:`nsm_export.schedule`):

``WLOAD``   only for cores with ``ram`` weights, once after configuration: take the weight image
            (:func:`weight_image`) on ``w_axis``, one 16-bit beat per transfer. The weights
            survive ``rst``: after a reset the core goes straight on to ``LOAD`` (one cycle);
            a reset in the middle of the weight image makes the host send it again from the
            start.
``LOAD``    one pixel per accepted beat: the input encoder's spikes go into the first layer's
            spike memory (16 spikes to a word; the stochastic code keeps the pixels instead);
            after ``size`` beats the core starts.
``RUN``     the layers work as a pipeline, ``T`` samples each: engine ``l`` starts its next
            sample as soon as its input is ready (engine 0: the spike memory, re-encoded per
            sample for the stochastic code; engine ``l > 0``: engine ``l-1``'s finished
            output) and the next engine has taken over its previous output (it latches its
            input when it starts). So while layer ``l+1`` works on sample ``t``, layer ``l``
            already works on sample ``t+1``. Where a conv layer has a line buffer
            (``line_rows``), it and the conv engine before it work on the same sample instead,
            handing rows over (a row-level handshake, see ``hw.conv``). ``RUN`` ends when the
            output layer finishes its ``T``-th sample.
``ARGMAX``  ``C + 1`` cycles: scan the scores through a two-stage pipeline (fetch, compare),
            keeping the first maximum (ties: lowest index).
``OUT``     ``m_axis_tvalid`` high with the class and all scores until accepted; then scores
            clear and the core accepts the next image.

The LFSRs are reset only by ``rst``, never between images.
"""

from __future__ import annotations

from amaranth.back import verilog
from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import Out

from nsm_export.ir import IR
from nsm_export.plan import ENCODE_FLUSH, plan
from nsm_export.plan import unsupported as hardware_unsupported
from .argmax import ArgmaxScan
from .dense import (RAM16_MODULE, load_beats, n_load_beats, rom_module, rom_module_name,
                    weight_width, weight_words)
from .lfsr import Lfsr
from .ports import core_ports
from .ptop import PopcountCore

__all__ = ["NsmCore", "build_core", "generate_verilog", "convert", "weight_image", "HardwareError",
           "hardware_unsupported"]


def weight_image(ir: IR) -> list[int]:
    """The 16-bit beats a core with ``ram`` weights takes on ``w_axis`` after configuration:
    layer by layer (``ram`` layers only), word by word, low slice first. Empty for ROM-only
    cores."""
    return [b for layer in ir.layers if layer.weight_store == "ram" for b in load_beats(layer)]


class NsmCore(wiring.Component):
    """A whole NSM classifier built from an IR.

    ``rom_modules`` (default): weight ROMs are instances of Verilog modules that :func:`convert`
    appends (``hw.dense.rom_module``); ``False``: Amaranth memories, which Amaranth's own
    simulator runs (the board tests do) but whose contents its Verilog backend writes slowly.

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
    w_axis_tvalid, w_axis_tready, w_axis_tdata (16), w_axis_tlast
        Only where some layer keeps its weights in ``ram``: the weight image, once after
        configuration (see ``WLOAD``); ``s_axis_tready`` stays low until it is complete.
    dbg_valid : Out(hidden layers)
        Only with ``debug=True``: bit ``h`` high for one cycle after hidden layer ``h`` finished
        a sample (layers overlap, so several bits may be high at once).
    dbg_spikes : Out(sum of the hidden layers' sizes)
        Only with ``debug=True``: every hidden layer's output spikes, layer after layer (layer
        ``h`` valid while ``dbg_valid[h]`` is high), bit ``i`` of a layer = neuron ``i``.
    """

    def __init__(self, ir: IR, debug: bool = False, rom_modules: bool = True):
        if not isinstance(ir, IR):
            raise TypeError(f"ir must be an nsm_export.ir.IR, not {type(ir).__name__}")
        ir.validate()
        why = hardware_unsupported(ir)
        if why:
            raise HardwareError(why)
        if plan(ir).popcount:
            raise HardwareError("the layers run on the popcount engine (pass_samples): that is "
                                "hw.ptop.PopcountCore (hw.top.build_core picks the core)")
        if debug and any(layer.kind != "dense" for layer in ir.layers):
            raise HardwareError("debug ports (every hidden spike vector) exist for dense-only "
                                "cores; a conv core is checked on its scores and cycles")
        self._ir = ir
        self._debug = bool(debug)
        self._rom_modules = bool(rom_modules)
        hidden = ir.layers[:-1]
        dbg = {"dbg_valid": Out(max(1, len(hidden))),
               "dbg_spikes": Out(max(1, sum(layer.n_out for layer in hidden)))} if debug else {}
        super().__init__({**dbg, **core_ports(ir)})

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
        # The engines of the hardware plan (nsm_export.plan): a conv engine computes the pooling
        # layer after it; an engine writes into the next one's memory (the engines overlap)
        # where the plan links them, else it hands a register over, which the next one latches;
        # a conv engine whose layer has a line buffer takes its input from the conv engine
        # before it row by row, into a ring of rows, on the same sample.
        stages = plan(ir, debug=self._debug)
        linked = [st.linked for st in stages]
        stream = [st.streams for st in stages]
        engines = []
        for st in stages:
            rom = rom_module_name(ir.name, st.index) if self._rom_modules else None
            eng = st.layer.engine(st, ir, rom)
            m.submodules[f"layer{st.index}"] = eng
            engines.append(eng)
        conv0 = stages[0].layer.kind == "conv2d"
        if conv0:
            n_map = engines[0].layer.h_in * engines[0].layer.w_in
            lpix = Signal(range(max(2, n_map)))
            lc = Signal(range(max(2, engines[0].layer.c_in)))

        for eng in engines:
            m.d.comb += [eng.seed.eq(self.seed),
                         eng.reseed.eq(self.seed_valid & self.seed_ready)]

        # Input spikes go to the first engine's spike memory, 16 to a word, as pixels arrive:
        # ``per`` spikes per pixel (thermometer levels, pixel-major), ``16 // per`` pixels a word.
        per = ir.input.levels
        sword = Signal(16)
        wpos = Signal(range(16 // per))
        waddr = Signal(len(engines[0].map_addr if conv0 else engines[0].spk_addr))
        tail = n0 * per % 16
        spk = engines[0]

        def put_spikes(bits, last):
            """Append ``per`` spikes to the word being assembled; write it when full or last."""
            word = Cat(sword[per:], bits) if per < 16 else bits   # input 16*w + i in bit i
            full = wpos == 16 // per - 1
            m.d.sync += [sword.eq(word), wpos.eq(wpos + 1)]
            m.d.comb += [spk.spk_we.eq(Mux(full | last, (1 << 16) - 1, 0)),
                         spk.spk_addr.eq(waddr),
                         spk.spk_data.eq(Mux(last, word[16 - tail:], word) if tail else word)]
            with m.If(full):
                m.d.sync += [waddr.eq(waddr + 1), wpos.eq(0)]
            with m.If(last):
                m.d.sync += [wpos.eq(0), waddr.eq(0)]

        def put_map(bit, last):
            """A conv first layer: spike ``bit`` of the next channel-major input (channel
            ``lc``, pixel ``lpix``) into its map memory."""
            c_in = spk.layer.c_in
            m.d.comb += [spk.map_we.eq(Const(1, c_in) << lc), spk.map_addr.eq(lpix),
                         spk.map_data.eq(Mux(bit, (1 << c_in) - 1, 0))]
            m.d.sync += lpix.eq(lpix + 1)
            with m.If(lpix == n_map - 1):
                m.d.sync += [lpix.eq(0), lc.eq(lc + 1)]
            with m.If(last):
                m.d.sync += [lpix.eq(0), lc.eq(0)]

        stoch = ir.input.encoding == "bernoulli"
        if stoch:
            # Stochastic code: the pixels are kept; every sample re-encodes them (state ENC):
            # read pixel j, look up its probability numerator, compare with a fresh draw.
            spec = ir.input
            m.submodules.pmem = pmem = memory.Memory(shape=spec.pixel_bits, depth=max(2, n0),
                                                     init=[])
            m.submodules.qmem = qmem = memory.Memory(shape=spec.prob_bits + 1,
                                                     depth=1 << spec.pixel_bits,
                                                     init=list(spec.probs))
            pw, pr, qr = pmem.write_port(), pmem.read_port(), qmem.read_port()
            m.submodules.enc_rng = enc_rng = Lfsr(spec.rng.width, spec.rng.seed, spec.rng.leap)
            m.d.comb += [enc_rng.reseed.eq(self.seed_valid & self.seed_ready),
                         enc_rng.run_seed.eq(self.seed), qr.addr.eq(pr.data)]
            ej = Signal(range(n0 + 2))
            ev1, ev2 = Signal(), Signal()
        for prev, eng, link, ring in zip(engines, engines[1:], linked, stream):
            if link and not ring:
                m.d.comb += eng.in_done.eq(prev.done)
            if prev.layer.kind == "conv2d" and eng.layer.kind == "conv2d":
                m.d.comb += [eng.map_we.eq(Mux(prev.out_we, (1 << eng.layer.c_in) - 1, 0)),
                             eng.map_addr.eq(prev.out_addr),
                             eng.map_data.eq(prev.out_data)]
            elif link:                                # into the dense engine's spike memory
                m.d.comb += [eng.spk_we.eq(Mux(prev.out_we, prev.out_mask, 0)),
                             eng.spk_addr.eq(prev.out_addr), eng.spk_data.eq(prev.out_data)]
            else:
                m.d.comb += eng.spikes_in.eq(prev.spikes_out[:eng.layer.n_in])
        out_eng = engines[-1]

        px = Signal(range(n0 + 1))
        fresh = Signal(init=1)      # no pixel of the next image taken yet (a register: px == 0)
        m.submodules.argmax = scan = ArgmaxScan(C, ir.score_bits)
        m.d.comb += [scan.scores.eq(out_eng.scores), self.m_axis_tdata.eq(scan.index),
                     self.m_axis_tuser.eq(out_eng.scores)]

        if self._debug:
            m.d.sync += self.dbg_valid.eq(Cat(*[eng.done for eng in engines[:-1]]))
            m.d.comb += self.dbg_spikes.eq(Cat(*[eng.spikes_out[:eng.layer.n_out]
                                                 for eng in engines[:-1]]))

        # The layers overlap (a dataflow pipeline): engine i runs its next sample as soon as its
        # input is there (the first engine: the spike memory; the others: the previous engine's
        # finished output) and its own output has been taken over (a dense engine latches its
        # input when it starts; a conv engine writes into one half of the next engine's double
        # buffer while that engine reads the other). Every decision reads registered flags only.
        L = len(engines)
        in_run = Signal()                                        # a register: the state is RUN
        busy = [Signal(name=f"busy{i}") for i in range(L)]       # engine i is running
        cnt = [Signal(range(T + 1), name=f"started{i}") for i in range(L)]
        more = [Signal(name=f"more{i}") for i in range(L)]       # a register: cnt[i] != T
        # full[i]: engine i's output waits for engine i+1; where engine i+1 streams engine i's
        # rows (a line buffer), ahead: engine i has started a sample that engine i+1 has not.
        full = [Signal(name=f"ahead{i}" if stream[i] else f"full{i}") for i in range(L - 1)]
        gos = []
        if stoch:
            enc_busy, enc_full = Signal(), Signal()              # encoder running / code ready
            enc_cnt = Signal(range(T + 1))
        for i, eng in enumerate(engines):
            source = (enc_full if stoch else 1) if i == 0 else full[i - 1]
            free = ~full[i] if i < L - 1 else 1
            go = Signal(name=f"go{i}")
            m.d.comb += [go.eq(in_run & ~busy[i] & more[i] & source & free),
                         eng.start.eq(go)]
            gos.append(go)
            with m.If(go):
                m.d.sync += [busy[i].eq(1), cnt[i].eq(cnt[i] + 1), more[i].eq(cnt[i] != T - 1)]
                if i > 0:
                    m.d.sync += full[i - 1].eq(0)
                elif stoch:
                    m.d.sync += enc_full.eq(0)
                if i < L - 1 and stream[i]:
                    m.d.sync += full[i].eq(1)
            with m.If(eng.done):
                m.d.sync += busy[i].eq(0)
                if i < L - 1 and not stream[i]:
                    m.d.sync += full[i].eq(1)
        # The row handshake of a line buffer between conv engines i (producer) and i+1: rows
        # = the rows of the current sample engine i has written; need = the rows engine i+1's
        # next pooled row reads (min(need, H)); lim - R = the first row that a pooled row engine
        # i+1 has still to do reads. Engine i+1 may start a pooled row once its rows are
        # written (or engine i is on a later sample); engine i may start pooled row ``rows``
        # unless engine i+1 is still busy with the previous sample, and then only into a free
        # ring slot: rows < R (the slot holds the previous sample) or rows < lim. Engine i+1
        # ends its sample only once engine i has (in_end), so the output layer is the last.
        row_ok = [[] for _ in range(L)]
        for i in range(L - 1):
            if not stream[i]:
                continue
            st = stages[i + 1]
            cl = st.layer
            step = (st.pool.size if st.pool else 1) * cl.stride
            H, R, pad = cl.h_in, cl.line_rows, cl.padding
            span = step - cl.stride + cl.kernel
            bits = (cl.h_in * step + span + R + H).bit_length() + 2
            rows = Signal(range(H + 1), name=f"rows{i}")
            need = Signal(signed(bits), name=f"need{i + 1}")
            lim = Signal(signed(bits), name=f"lim{i + 1}")
            with m.If(gos[i]):
                m.d.sync += rows.eq(0)
            with m.If(engines[i].row_done):
                m.d.sync += rows.eq(rows + 1)
            with m.If(gos[i + 1]):
                m.d.sync += [need.eq(span - pad), lim.eq(R - pad)]
            with m.If(engines[i + 1].row_done):
                m.d.sync += [need.eq(need + step), lim.eq(lim + step)]
            row_ok[i + 1].append(full[i] | (rows >= need) | (rows == H))
            m.d.comb += engines[i + 1].in_end.eq(full[i] | ~busy[i])
            row_ok[i].append(Mux(full[i], ~busy[i + 1] & (rows < R),
                                 ~busy[i + 1] | (rows < R) | (rows < lim)))
        for eng, oks in zip(engines, row_ok):
            if oks:
                m.d.comb += eng.row_go.eq(oks[0] & oks[1] if len(oks) == 2 else oks[0])
        if stoch:
            # The encoder rewrites the spike memory, so it waits until engine 0 has finished
            # reading the previous code. Three stages (pixel address; pixel -> probability
            # address; probability and a fresh draw -> spike): size + 3 cycles with its go cycle.
            enc_go = Signal()
            enc_more = Signal()
            m.d.comb += enc_go.eq(in_run & ~enc_busy & enc_more & ~enc_full & ~busy[0])
            with m.If(enc_go):
                m.d.sync += [enc_busy.eq(1), enc_cnt.eq(enc_cnt + 1), ej.eq(0), ev1.eq(0),
                             ev2.eq(0), enc_more.eq(enc_cnt != T - 1)]
            with m.If(enc_busy):
                m.d.comb += pr.addr.eq(ej)
                m.d.sync += [ej.eq(ej + 1), ev1.eq(ej < n0), ev2.eq(ev1)]
                with m.If(ev2):
                    m.d.comb += enc_rng.en.eq(1)
                    (put_map if conv0 else put_spikes)(enc_rng.next[:spec.prob_bits] < qr.data,
                                                       ej == n0 + ENCODE_FLUSH - 2)
                with m.If(ej == n0 + ENCODE_FLUSH - 2):    # the go cycle and ev1, ev2
                    m.d.sync += [enc_busy.eq(0), enc_full.eq(1)]

        ram = [(i, eng) for i, eng in enumerate(engines) if eng.layer.weight_store == "ram"]
        with m.FSM(init="WLOAD" if ram else "LOAD"):
            if ram:
                # The flag is not reset by rst: the weights stay in their memories.
                loaded = Signal(reset_less=True)
                wl = Signal(range(len(ram) + 1))
                beat = Signal(range(max(n_load_beats(eng.layer) for _, eng in ram) + 1))
                for k, (i, eng) in enumerate(ram):
                    m.d.comb += [eng.loading.eq(~loaded), eng.load_data.eq(self.w_axis_tdata),
                                 eng.load_en.eq(~loaded & self.w_axis_tvalid & (wl == k))]
                # wlast: the next beat is the last of the layer being loaded (a register, so
                # that no counter comparison sits in front of the state logic).
                counts = [n_load_beats(eng.layer) for _, eng in ram]
                wlast = Signal(init=int(counts[0] == 1))
                with m.State("WLOAD"):
                    with m.If(loaded):
                        m.next = "LOAD"
                    with m.Else():
                        m.d.comb += self.w_axis_tready.eq(1)
                        with m.If(self.w_axis_tvalid):
                            m.d.sync += beat.eq(beat + 1)
                            for k, n in enumerate(counts):
                                with m.If(wl == k):
                                    m.d.sync += wlast.eq(beat == n - 2)
                            with m.If(wlast):
                                m.d.sync += [beat.eq(0), wl.eq(wl + 1)]
                                for k, n in enumerate(counts[1:], start=1):
                                    with m.If(wl == k - 1):
                                        m.d.sync += wlast.eq(int(n == 1))
                                with m.If(wl == len(ram) - 1):
                                    m.d.sync += loaded.eq(1)
                                    m.next = "LOAD"
            with m.State("LOAD"):
                m.d.comb += [self.s_axis_tready.eq(1), self.seed_ready.eq(fresh)]
                with m.If(self.s_axis_tvalid):
                    last = px == n0 - 1
                    m.d.sync += [px.eq(px + 1), fresh.eq(0)]
                    if stoch:
                        m.d.comb += [pw.en.eq(1), pw.addr.eq(px), pw.data.eq(self.s_axis_tdata)]
                    elif conv0 and ir.input.encoding == "thermometer":
                        # one pixel word: channel c = level c
                        m.d.comb += [spk.map_we.eq((1 << spk.layer.c_in) - 1),
                                     spk.map_addr.eq(px),
                                     spk.map_data.eq(Cat(*[self.s_axis_tdata >= t
                                                           for t in ir.input.thresholds]))]
                    elif conv0:           # channel-major pixels: channel lc, pixel lpix
                        put_map(self.s_axis_tdata >= ir.input.threshold, last)
                    elif ir.input.encoding == "thermometer":
                        put_spikes(Cat(*[self.s_axis_tdata >= t for t in ir.input.thresholds]),
                                   last)
                    else:
                        put_spikes(self.s_axis_tdata >= ir.input.threshold, last)
                    with m.If(last):
                        m.d.sync += [px.eq(0), fresh.eq(1), in_run.eq(1),
                                     *[n.eq(0) for n in cnt], *[f.eq(1) for f in more]]
                        if stoch:
                            m.d.sync += [ej.eq(0), ev1.eq(0), ev2.eq(0), enc_cnt.eq(0),
                                         enc_more.eq(1)]
                        m.next = "RUN"
            with m.State("RUN"):
                with m.If(engines[-1].done & ~more[-1]):
                    m.d.comb += scan.clear.eq(1)
                    m.d.sync += in_run.eq(0)
                    m.next = "ARGMAX"
            with m.State("ARGMAX"):
                m.d.comb += scan.en.eq(1)
                with m.If(scan.last):
                    m.next = "OUT"
            with m.State("OUT"):
                m.d.comb += self.m_axis_tvalid.eq(1)
                with m.If(self.m_axis_tready):
                    m.d.comb += out_eng.clear.eq(1)
                    m.next = "LOAD"
        return m


class HardwareError(ValueError):
    """A valid IR that this hardware generator cannot build yet (one line naming the layer)."""


def build_core(ir: IR, debug: bool = False, rom_modules: bool = True):
    """The core for ``ir``: :class:`hw.ptop.PopcountCore` where its layers run on the popcount
    engine (``pass_samples``), else :class:`NsmCore`."""
    if not isinstance(ir, IR):
        raise TypeError(f"ir must be an nsm_export.ir.IR, not {type(ir).__name__}")
    ir.validate()
    if plan(ir).popcount:
        why = hardware_unsupported(ir)
        if why:
            raise HardwareError(why)
        if debug:
            raise HardwareError("debug ports (every hidden spike vector) exist for the "
                                "kept-list engines; a popcount core is checked on its scores "
                                "and cycles")
        return PopcountCore(ir, rom_modules=rom_modules)
    return NsmCore(ir, debug=debug, rom_modules=rom_modules)


def generate_verilog(ir: IR, debug: bool = False) -> str:
    """Plain Verilog for the core; the top module is named ``ir.name``.

    ``debug=True`` adds the ``dbg_*`` ports that expose every hidden spike vector.
    """
    return convert(build_core(ir, debug=debug), ir, ir.name)


def convert(component, ir: IR, name: str) -> str:
    """Verilog for ``component`` (the core, or a design around it), top module ``name``, with
    the modules the core instantiates: one weight ROM per layer of ``ir`` that keeps its
    weights in ROM, and the RAM module when some layer keeps them in RAM."""
    text = verilog.convert(component, name=name, emit_src=False)
    for st in plan(ir):
        if st.layer.weight_store != "rom":
            continue
        text += "\n" + rom_module(rom_module_name(ir.name, st.index), weight_width(st.layer),
                                  weight_words(st.layer))
    if any(layer.weight_store == "ram" for layer in ir.layers):
        text += "\n" + RAM16_MODULE
    return text
