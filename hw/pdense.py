"""Sample-parallel dense engine: each weight word read serves ``T'`` samples at once.

A pass runs ``count <= T'`` samples of one image (``T'`` = the layer's ``pass_samples``; the
last pass of an image holds the rest where ``T'`` does not divide ``T``). Every beat reads one
weight word (``pe`` neurons x ``simd`` consecutive inputs), the keep bits of those inputs for
all ``T'`` samples from the mask drawer (:class:`hw.maskdraw.MaskDrawer`, which draws the next
pass meanwhile) and their spikes from this engine's spike store, and the popcount accumulator
(:class:`hw.popcount.PopcountAccumulator`) adds ``pe x simd`` gated ``±w`` synapses for every
sample. Blanked inputs are gated, not skipped: a pass costs the same cycles whatever is drawn.

Schedule of a pass (:meth:`nsm_export.layers.DenseLayer.pass_cycles`, checked in simulation):

``IDLE``    1 cycle, the one in which ``start`` is seen (the mask drawer swaps banks in it).
then for each of the ``G = ceil(n_out / pe)`` neuron groups:
``BEAT``    ``W = ceil(n_in / simd)`` cycles: issue word ``w`` of the weight ROM (group base
            plus ``w``), of the mask drawer's front bank and of the spike store; a cycle later
            the words reach the accumulator (the first with ``clear``), which registers its
            gated synapse bits first.
``DRAIN``   :data:`nsm_export.plan.POP_DRAIN` cycles (one more with the IR's ``input_stage``):
            the last beat reaches the accumulators.
``WRITE``   hidden layer: the spikes (the accumulators start at ``-threshold``, so a spike is
            a sign bit) go into the next engine's spike store, ``next_simd`` neurons a cycle
            (one per bank); output layer: one cycle adds each neuron's pass sum to its class
            score. ``done`` is high in the last group's last ``WRITE`` cycle.

The output layer's accumulator adds the samples of a pass together (``samples = 1`` and
``simd * T'`` inputs a beat, the weight word repeated per sample): its class scores need the
sum over samples only. Its scores start at ``T x bias`` (``clear``), so no bias is added per
sample.

Spike stores (owned by the engine that reads them, written by the one before or the loader):
two halves, selected by the parity of the pass (hidden input) or image (the first layer's
input) they hold; half ``h``'s word ``w`` at address ``h * 2**wbits + w``. The first layer's
store has one bank of ``simd`` spikes a word (every sample sees the same code); a hidden
layer's has ``simd`` banks of ``T'`` bits, bank ``s`` holding inputs ``w*simd + s``, sample
``t`` at bit ``t``.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from nsm_export.early_exit import jump_columns
from nsm_export.plan import images_in_flight, store_wbits
from .dense import pop_weight_words, weight_memory
from .maskdraw import MaskDrawer
from .popcount import PopcountAccumulator

__all__ = ["PopcountDenseEngine", "store_wbits", "engine_ports", "spike_store", "draw_keep",
           "threshold_rom"]


class PopcountDenseEngine(wiring.Component):
    """One dense layer on the popcount datapath (module docstring). Built from an IR layer
    and its :class:`nsm_export.plan.Engine` (``next_simd``: the next layer's spike-store
    banks).

    Members
    -------
    start : In(1)
        Run the next pass (taken in ``IDLE``; the top raises it only when ``ready``).
    ready : Out(1)
        The next pass's keep bits are drawn (always, for a layer without blank-out).
    done : Out(1)
        High in the pass's last cycle.
    last : Out(1)
        The pass in progress (or the next one) is its image's last.
    in_half : Out(1)
        The spike-store half the next (or current) pass reads.
    img_in : In(1)
        An image's last pixel is taken: the mask drawer may draw that image's first pass.
    reseed, seed : In(1), In(32)
        Restart the mask drawer's LFSR from ``seed`` (only while the core is empty).
    st_we, st_addr, st_data
        The spike store's write port(s): first layer, one bank (``st_we`` 1 bit, ``simd``
        spikes); hidden layer, ``simd`` banks (``st_we`` bit ``s``, address ``s``, ``T'`` bits
        of data ``s``).
    out_we, out_addr, out_data : hidden layers
        Into the next engine's spike store (its ``st_*``).
    stop : In(1) (early exit)
        The image ended after the pass just done (a stopping rule's verdict, while every
        engine is idle): the next pass is the next image's first; a drawn next batch is
        dropped.
    scores : Out(n_out * score_bits), clear : In(1) : the output layer
        The class scores of the image so far; ``clear`` sets them to ``T x bias``.
    loading, load_en, load_data : ``ram`` weights
        While ``loading``, each ``load_en`` writes the next 16-bit beat of the weight image
        (:func:`hw.dense.load_beats`); the engine starts no pass before it is complete.
    """

    def __init__(self, layer, ir, engine, rom_name: str | None = None):
        self._layer, self._ir = layer, ir
        self._first = engine.index == 0
        self._next_simd = engine.next_simd
        self._drain, self._input_stage = engine.pop_drain, engine.input_stage
        self._rom_name = rom_name
        self._tp = min(layer.pass_samples, ir.samples)
        self._counts = layer.pass_counts(ir.samples)
        self._ab = layer.pop_acc_bits(ir.samples)
        W = layer.words
        self._wbits = store_wbits(W)
        tp = self._tp
        ports = engine_ports(layer, self._first, tp, self._wbits, ir.early_exit.active)
        if layer.output:
            ports.update(scores=Out(layer.n_out * ir.score_bits), clear=In(1))
        else:
            sn = self._next_simd
            nbits = store_wbits(-(-layer.n_out // sn)) + 1
            ports.update(out_we=Out(sn), out_addr=Out(nbits), out_data=Out(sn * tp))
        super().__init__(ports)

    @property
    def layer(self):
        return self._layer

    def elaborate(self, platform):
        m = Module()
        layer, ir = self._layer, self._ir
        tp, simd, pe, wb, ab = self._tp, layer.simd, layer.pe, layer.weight_bits, self._ab
        G, W, P = layer.groups, layer.words, len(self._counts)
        wbits = self._wbits
        out = layer.output

        # --- spike store ----------------------------------------------------------------------
        ppar = Signal()                       # the pass's parity: the half of a pass store
        ipar = Signal()                       # the image's parity (the first layer's store)
        half = ipar if self._first else ppar  # the half this engine reads
        w = Signal(range(max(2, W)))          # the beat's word
        spikes = spike_store(m, self, self._first, simd, tp, wbits, W, w[:wbits], half)

        # --- weights (ROM, or RAM loaded through the top's w_axis) -----------------------------
        waddr = Signal(range(max(2, G * W)))
        addr = Signal(range(max(2, G * W)))
        (wdata,), laddr = weight_memory(m, layer, pop_weight_words(layer), [addr], self,
                                        self._rom_name)
        wdata = wdata[:pe * simd * wb]            # RAM: whole 16-bit slices
        m.d.comb += addr.eq(Mux(self.loading, laddr, waddr) if laddr is not None else waddr)

        # --- pass bookkeeping ------------------------------------------------------------------
        ek = Signal(range(max(2, P)))         # the engine's pass in its image
        m.d.comb += self.last.eq(ek == P - 1)
        cnt = Signal(range(tp + 1))           # samples of the pass in progress
        count_of = (lambda k: Mux(k == P - 1, self._counts[-1], tp)) if P > 1 \
            else (lambda k: self._counts[0])

        # --- mask drawer -----------------------------------------------------------------------
        # Keep bits: the drawer's front bank, or, without blank-out, every input of the word
        # that exists and every sample of the pass (rdata's timing: a cycle after the issue).
        w1 = Signal(range(max(2, W)))
        if layer.sampling:
            keep = draw_keep(m, self, layer, ir, tp, count_of, P, w)
        else:
            m.d.comb += self.ready.eq(1)
            tail = layer.n_in - (W - 1) * simd
            word_keep = Mux(w1 == W - 1, (1 << tail) - 1, (1 << simd) - 1)
            keep = Cat(*[word_keep & Mux(cnt > t, (1 << simd) - 1, 0) for t in range(tp)])

        # --- accumulator: its gated synapse bits registered first (gate_stage) ----------------
        v1, first1 = Signal(), Signal()
        g = Signal(range(max(2, G)))
        if out:
            m.submodules.acc = acc = PopcountAccumulator(pe, simd * tp, 1, wb, ab,
                                                         gate_stage=True,
                                                         input_stage=self._input_stage)
            m.d.comb += [acc.weights.eq(wdata.replicate(tp)),
                         acc.spikes.eq(spikes.replicate(tp) if self._first else spikes)]
        else:
            m.submodules.acc = acc = PopcountAccumulator(pe, simd, tp, wb, ab,
                                                         shared_spikes=self._first,
                                                         gate_stage=True,
                                                         input_stage=self._input_stage)
            m.d.comb += [acc.weights.eq(wdata), acc.spikes.eq(spikes)]
            m.d.comb += acc.init.eq(threshold_rom(m, layer, pe, ab, g))
        m.d.comb += [acc.valid.eq(v1), acc.clear.eq(first1), acc.keep.eq(keep)]

        wc = layer.write_cycles(self._next_simd)
        k = Signal(range(max(2, wc)))          # the WRITE cycle of a group
        m.d.sync += [v1.eq(0), first1.eq(0), w1.eq(w)]

        # --- outputs -----------------------------------------------------------------------------
        def lane(t: int, n: int):
            return acc.acc[(t * pe + n) * ab:(t * pe + n + 1) * ab]

        writing = Signal()
        if out:
            sb = ir.score_bits
            init = [int(ir.samples * int(b)) for b in layer.offsets]
            scores = [Signal(range(-(1 << (sb - 1)), 1 << (sb - 1)), name=f"score{c}",
                             init=v) for c, v in enumerate(init)]
            m.d.comb += self.scores.eq(Cat(*scores))
            for c, sc in enumerate(scores):
                with m.If(self.clear):
                    m.d.sync += sc.eq(init[c])
                with m.Elif(writing & (g == c // pe)):
                    m.d.sync += sc.eq(sc + lane(0, c % pe).as_signed())
        else:
            sn = self._next_simd
            Wn = -(-layer.n_out // sn)
            nbits = store_wbits(Wn)
            we, addrs, datas = [], [], []
            for b in range(sn):
                if pe % sn == 0:                                   # pe // sn chunks a group
                    chunks = pe // sn
                    bits = [Cat(*[~lane(t, kk * sn + b)[ab - 1] for t in range(tp)])
                            for kk in range(chunks)]
                    data = bits[0]
                    for kk in range(1, chunks):
                        data = Mux(k == kk, bits[kk], data)
                    word = g * chunks + k if chunks > 1 else g
                    enable = writing
                else:                                             # sn // pe groups a word
                    per = sn // pe
                    word = g >> (per.bit_length() - 1)
                    data = Cat(*[~lane(t, b % pe)[ab - 1] for t in range(tp)])
                    enable = writing & ((g & (per - 1)) == b // pe)
                # wide enough for the words of the last group's padding lanes, refused below
                wsig = Signal(range(max(Wn, G * max(1, pe // sn)) + 1), name=f"oword{b}")
                ok = Signal(name=f"ok{b}")
                limit = layer.n_out - (Wn - 1) * sn
                m.d.comb += [wsig.eq(word),
                             ok.eq((wsig < Wn - 1) | ((wsig == Wn - 1) & (b < limit)))]
                we.append(enable & ok)
                addrs.append(Cat(wsig[:nbits], ppar))
                datas.append(data)
            # every bank's word is the same: the store is one memory (see spike_store)
            m.d.comb += [self.out_we.eq(Cat(*we)), self.out_addr.eq(addrs[0]),
                         self.out_data.eq(Cat(*datas))]

        # --- the pass --------------------------------------------------------------------------
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [cnt.eq(count_of(ek)), g.eq(0), w.eq(0), waddr.eq(0), k.eq(0)]
                    m.next = "BEAT"
            with m.State("BEAT"):
                m.d.sync += [v1.eq(1), first1.eq(w == 0), w.eq(w + 1), waddr.eq(waddr + 1)]
                with m.If(w == W - 1):
                    m.d.sync += w.eq(0)
                    m.next = "DRAIN1"
            for i in range(1, self._drain + 1):
                with m.State(f"DRAIN{i}"):
                    m.next = f"DRAIN{i + 1}" if i < self._drain else "WRITE"
            with m.State("WRITE"):
                m.d.comb += writing.eq(1)
                m.d.sync += k.eq(k + 1)
                with m.If(k == wc - 1):
                    m.d.sync += [k.eq(0), g.eq(g + 1)]
                    with m.If(g == G - 1):
                        m.d.comb += self.done.eq(1)
                        m.d.sync += [g.eq(0), ek.eq(Mux(ek == P - 1, 0, ek + 1)),
                                     ppar.eq(~ppar)]
                        if self._first:
                            m.d.sync += ipar.eq(Mux(ek == P - 1, ~ipar, ipar))
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "BEAT"
        stop_image(m, self, ir, ek, ipar if self._first else None)
        m.d.comb += self.in_half.eq(half)
        return m


def stop_image(m: Module, eng, ir, ek, ipar) -> None:
    """Early exit: ``eng.stop`` (seen while idle) makes the next pass its image's first (and
    the first engine's next image's input half the other)."""
    if not ir.early_exit.active:
        return
    with m.If(eng.stop):
        m.d.sync += ek.eq(0)
        if ipar is not None:
            m.d.sync += ipar.eq(~ipar)


def engine_ports(layer, first: bool, tp: int, wbits: int, early: bool = False) -> dict:
    """The ports every popcount engine (dense or conv) has: the pass handshake, the drawer's
    image tokens and seed, the ``w_axis`` load ports of ``ram`` weights, and the write ports of
    its spike store (:func:`spike_store`): the first layer's ``st_we`` 1 bit and ``simd`` spikes
    of data; a hidden layer's ``st_we`` one bit per bank ``s`` (``T'`` bits of data ``s``); one
    address (half and word) for every bank."""
    simd = layer.simd
    ports = {"start": In(1), "ready": Out(1), "done": Out(1), "last": Out(1),
             "in_half": Out(1), "img_in": In(1), "reseed": In(1), "seed": In(32),
             "st_we": In(1 if first else simd), "st_addr": In(wbits + 1),
             "st_data": In(simd if first else simd * tp)}
    if layer.weight_store == "ram":
        ports.update(loading=In(1), load_en=In(1), load_data=In(16))
    if early:
        ports["stop"] = In(1)
    return ports


def spike_store(m: Module, eng, first: bool, simd: int, tp: int, wbits: int, words: int,
                word, half):
    """The spike store an engine reads (module docstring; ``words`` a half), written through
    ``eng.st_*``: one memory, a hidden layer's ``simd`` banks side by side (bank ``s``'s
    ``T'`` bits at ``s*T'``, each with its own write enable: every writer writes its banks at
    one address a cycle). Returns the spikes of word ``word`` of half ``half`` a cycle later,
    sample ``t`` input ``s`` at bit ``t*simd + s`` (the first layer: ``simd`` spikes that every
    sample shares)."""
    width = simd if first else simd * tp
    m.submodules.store = store = memory.Memory(shape=width, depth=(1 << wbits) + words, init=[])
    wp = store.write_port(granularity=width if first else tp)
    rp = store.read_port()
    m.d.comb += [wp.en.eq(eng.st_we),
                 wp.addr.eq(eng.st_addr), wp.data.eq(eng.st_data), rp.addr.eq(Cat(word, half))]
    if first:
        return rp.data
    return Cat(*[rp.data[s * tp + t] for t in range(tp) for s in range(simd)])


def draw_keep(m: Module, eng, layer, ir, tp: int, count_of, passes: int, raddr):
    """The engine's :class:`MaskDrawer`: it draws an image's first batch once the image's
    last pixel is taken (``eng.img_in`` tokens) and each next batch a cycle after the swap
    (``eng.start``), so ``eng.ready`` says the next pass's keep bits are drawn. Returns the
    keep bits of word ``raddr`` of the front bank, a cycle later."""
    early = ir.early_exit.active
    spec = layer.rng
    jump = jump_columns(spec.width, spec.mask, spec.leap, ir.samples * layer.n_in) \
        if early else None
    m.submodules.draw = d = MaskDrawer(spec, layer.p_num, layer.p_bits, layer.n_in, tp,
                                       layer.simd, layer.lanes, jump=jump)
    tokens = Signal(range(images_in_flight(len(ir.layers)) + 1))  # first batches owed
    dk = Signal(range(max(2, passes)))    # the drawer's next batch in its image
    have = Signal()                       # a drawn batch waits in the back bank
    take = Signal()
    go_d = Signal()
    # The next batch starts a cycle after the swap (registered flags only: the go logic of
    # the top stays out of the drawer's).
    # (a stop never meets a free drawer: it is drawing the next batch, or has it)
    m.d.comb += [go_d.eq(~d.busy & ~have & ~d.done & ((dk != 0) | (tokens != 0))),
                 take.eq(go_d & (dk == 0)),
                 d.start.eq(go_d), d.count.eq(count_of(dk)), d.swap.eq(eng.start),
                 d.raddr.eq(raddr), d.reseed.eq(eng.reseed), d.run_seed.eq(eng.seed),
                 eng.ready.eq(have)]
    m.d.sync += tokens.eq(tokens + eng.img_in - take)
    with m.If(go_d):
        m.d.sync += dk.eq(Mux(dk == passes - 1, 0, dk + 1))
    if early:
        # An image's first batch draws from the drawer's image-start state (d.image); a stop
        # drops the next batch: drawn, or aborted while being drawn.
        m.d.comb += [d.image.eq(dk == 0), d.abort.eq(eng.stop)]
    with m.If(d.done):
        m.d.sync += have.eq(1)
    with m.Elif(eng.start):
        m.d.sync += have.eq(0)
    if early:
        with m.If(eng.stop):
            m.d.sync += [dk.eq(0), have.eq(0)]
    return d.rdata


def threshold_rom(m: Module, layer, pe: int, ab: int, g):
    """``-threshold`` of each lane of neuron group ``g`` (a cycle later): the accumulators
    start there, so a spike is the sign bit."""
    G = -(-layer.offsets.shape[0] // pe)
    thr = [[-int(layer.offsets[k * pe + n]) if k * pe + n < layer.offsets.shape[0] else 0
            for n in range(pe)] for k in range(G)]
    m.submodules.trom = trom = memory.Memory(
        shape=pe * ab, depth=max(2, G),
        init=[sum((v & ((1 << ab) - 1)) << (n * ab) for n, v in enumerate(row)) for row in thr])
    port = trom.read_port()
    m.d.comb += port.addr.eq(g)
    return port.data
