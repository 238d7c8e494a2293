"""Folded, event-driven convolution engine on binary spike maps, with the pooling after it fused.

The input map lives in a memory of *pixel words* (``c_in`` spikes of one pixel, address
``y * W + x``), written by the producer while the engine is idle; a second memory of the same
shape holds this sample's blank-out bits. Each output position is a small dense layer: the
engine walks the ``k × k`` window of pixel words (a streaming window over the map, so every
window pixel is one memory read), appends the kept inputs of the window to a list, and the
neuron groups (``pe`` filters each) then spend one cycle per *kept* input, exactly as
:class:`hw.dense.DenseEngine` does. Blanked-out inputs cost no accumulate cycles.

A pooling layer after the convolution is computed on the fly: the engine visits the conv
positions pool window by pool window, ORs each window's spikes per filter, and writes one
pooled pixel per window; conv outputs that no pool window covers are never computed.

Schedule for one sample (mirrored by ``ConvLayer.cycles`` in :mod:`nsm_export.layers.conv`,
checked in simulation):

``IDLE``     1 cycle, the one in which ``start`` is seen.
``MASK``     ``n_in + 1`` cycles, only when the layer samples: one LFSR draw per cycle in the
             IR's order (channel-major: ``(c*H + y)*W + x``), each written as bit ``c`` of
             pixel word ``y*W + x`` of the mask memory; one cycle for the last write.
then for every pooled pixel, for each of its ``P × P`` conv positions:
``BUILD``    ``k² · ceil(c_in / lanes) + 4`` cycles: per window pixel, ``lanes`` channels a
             cycle are tested (inside the map and kept) and appended to the kept list, banked
             ``lanes`` ways; four cycles empty the address-read-select-write pipeline.
``ACC`` ``DRAIN`` ``WRITE``  per neuron group, ``K + 4`` cycles for ``K`` kept window inputs
             (as in the dense engine); ``WRITE`` ORs the group's spikes into the pooled pixel.
then ``OUT``: the pooled pixel goes to the next layer: 1 cycle as one pixel word (a conv
consumer), or ``c_out`` cycles, one spike each at its channel-major index (a dense consumer's
spike memory). ``FIN``: 1 cycle, ``done`` high.

With a line buffer on either side (``ConvLayer.line_rows``: the input map is a ring of R rows
that the conv engine before writes while this one runs the same sample; or this engine writes
such a ring), each pooled output row starts in ``ROW``, one cycle or until the top's row
handshake lets it go, and with a line buffer in, ``TAIL`` waits (one cycle at least) before
``FIN`` for the producer to end the sample (:func:`nsm_export.schedule.pipeline_end` models the
waits). The blank-out mask memory stays a whole map: ``MASK`` draws in the IR's channel-major
order.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from nsm_export.ir import ConvLayer, PoolLayer
from nsm_export.plan import BUILD_FLUSH, DRAIN
from .dense import (LOAD_BEAT_BITS, SPIKE_WORD, SPIKE_WORD_BITS, accumulate, memory_words,
                    read_kept_list, weight_memory)
from .lfsr import Lfsr

__all__ = ["ConvEngine", "CONSUMERS"]

#: How the engine hands its output on: ``map`` = pixel words to a conv engine; ``bits`` = one
#: spike a cycle into a dense engine's 16-bit spike memory (channel-major index).
CONSUMERS = ("map", "bits")


class ConvEngine(wiring.Component):
    """One conv layer (and the pooling layer after it, if any), folded over ``layer.pe``
    filters.

    Members
    -------
    start : In(1)
        Begin one sample; looked at only while idle.
    done : Out(1)
        High for one cycle, in the last cycle of the sample.
    map_we, map_addr, map_data : In
        Write pixel word ``map_addr`` (``y * W + x``) of the input map: bit ``c`` = channel
        ``c`` (1 = +1), where bit ``c`` of ``map_we`` is set. Only while the engine is idle.
    out_we, out_addr, out_data, out_mask : Out
        The pooled output. ``consumer="map"``: pixel word ``out_addr`` (``c_out`` bits);
        ``consumer="bits"``: 16-bit word ``out_addr`` of a spike memory, the bits set in
        ``out_mask`` (one) taking ``out_data``.
    in_done : In(1)
        ``double=True`` only: the producer has written a whole sample's map. The input map is
        then double-buffered: the producer fills one half while this engine reads the other,
        so the layers before and after work on consecutive samples at once.
    row_go, row_done : In(1), Out(1)
        Only with a line buffer on either side (``layer.line_rows`` > 0: the input map is a
        ring of that many rows, pixel word ``(y mod R) * W + x``, written by a conv engine
        while this one runs; ``ring_out`` R' > 0: this engine writes such a ring, pooled pixel
        ``(y mod R') * W' + x``). Before each pooled output row the engine waits in ``ROW``
        (at least one cycle) until ``row_go`` is high (the top's row handshake: the input rows
        the row reads are written, the ring slots the row overwrites are free);
        ``row_done`` is high in the last ``OUT`` cycle of each pooled row.
    in_end : In(1)
        Only with a line buffer in (``layer.line_rows`` > 0): the producer has ended this
        sample. After its last pooled row the engine waits in ``TAIL`` (at least one cycle)
        for it, so that no engine before it is still busy (writing rows no pooled row reads)
        when this one is done.
    reseed, seed, loading, load_en, load_data : In
        As in :class:`hw.dense.DenseEngine` (the last three only for ``weight_store: ram``:
        the weight words of :func:`hw.dense.memory_words` in 16-bit beats, low slice first).
    """

    def __init__(self, layer: ConvLayer, pool: PoolLayer | None = None, consumer: str = "map",
                 double: bool = False, ring_out: int = 0, rom_name: str | None = None):
        if not isinstance(layer, ConvLayer):
            raise TypeError(f"layer must be a ConvLayer, not {type(layer).__name__}")
        layer.validate("layer")
        if pool is not None:
            if not isinstance(pool, PoolLayer) or pool.in_shape != layer.out_shape:
                raise ValueError("pool must be the PoolLayer that takes this layer's output")
            if pool.mode != "or":
                raise ValueError(f"{pool.mode} pooling has no hardware engine (OR pooling has)")
        if consumer not in CONSUMERS:
            raise ValueError(f"consumer must be one of {CONSUMERS}, got {consumer!r}")
        self._layer, self._pool, self._consumer = layer, pool, consumer
        self._ring_in = layer.line_rows
        self._double = bool(double) and not self._ring_in
        self._ring_out = int(ring_out)
        self._gated = bool(self._ring_in or self._ring_out)
        self._rom_name = rom_name
        P = pool.size if pool else 1
        self._hp, self._wp = layer.h_out // P, layer.w_out // P
        n_pix = layer.h_in * layer.w_in
        n_pool = self._hp * self._wp
        if consumer == "map":
            out = dict(out_we=Out(1), out_addr=Out(range(max(2, n_pool))),
                       out_data=Out(layer.c_out))
        else:
            words = -(-layer.c_out * n_pool // SPIKE_WORD)
            out = dict(out_we=Out(1), out_addr=Out(range(max(2, words))),
                       out_data=Out(SPIKE_WORD), out_mask=Out(SPIKE_WORD))
        if layer.weight_store == "ram":
            out.update(loading=In(1), load_en=In(1), load_data=In(LOAD_BEAT_BITS))
        if self._gated:
            out.update(row_go=In(1), row_done=Out(1))
        if self._ring_in:
            out.update(in_end=In(1))
        super().__init__({"start": In(1), "done": Out(1), "reseed": In(1), "seed": In(32),
                          "map_we": In(layer.c_in), "map_addr": In(range(max(2, n_pix))),
                          "map_data": In(layer.c_in), "in_done": In(1), **out})

    @property
    def layer(self) -> ConvLayer:
        return self._layer

    @property
    def pool(self) -> PoolLayer | None:
        return self._pool

    @property
    def out_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of what the engine writes (after the fused pooling)."""
        return (self._layer.c_out, self._hp, self._wp)

    def elaborate(self, platform):
        m = Module()
        L = self._layer
        pe, wb, k, s, pad = L.pe, L.weight_bits, L.kernel, L.stride, L.padding
        c_in, H, W = L.c_in, L.h_in, L.w_in
        G = -(-L.c_out // pe)
        Q = c_in * k * k                       # window inputs
        P = self._pool.size if self._pool else 1
        hp, wp = self._hp, self._wp
        lanes = L.lanes
        sh = lanes.bit_length() - 1
        chunks = -(-c_in // lanes)
        n_pix = H * W

        # --- memories ----------------------------------------------------------------------
        w_init, o_init = memory_words(L)
        depth = max(2, len(w_init))
        waddr = Signal(range(depth))
        # ``ram``: uninitialized single-port 16-bit RAMs, one per slice of the word, written once
        # while loading (SPRAM on iCE40), as in the dense engine.
        (wdata,), laddr = weight_memory(m, L, w_init, [waddr], self, self._rom_name)
        m.submodules.omem = omem = memory.Memory(shape=pe * L.offset_bits, depth=max(2, G),
                                                 init=o_init)
        oport = omem.read_port()
        m.submodules.smem = smem = memory.Memory(
            shape=c_in, depth=L.map_depth(self._double), init=[])
        s_wr, s_rd = smem.write_port(granularity=1), smem.read_port()
        wsel, rsel = Signal(), Signal()        # the halves written and read (double buffer)
        m.d.comb += [s_wr.en.eq(self.map_we), s_wr.data.eq(self.map_data),
                     s_wr.addr.eq(Cat(self.map_addr, wsel) if self._double else self.map_addr)]
        if self._double:
            with m.If(self.in_done):
                m.d.sync += wsel.eq(~wsel)
            with m.If(self.done):
                m.d.sync += rsel.eq(~rsel)
        if L.sampling:
            m.submodules.mmem = mmem = memory.Memory(shape=c_in, depth=max(2, n_pix), init=[])
            m_wr, m_rd = mmem.write_port(granularity=1), mmem.read_port()
            m.submodules.rng = rng = Lfsr(L.rng.width, L.rng.seed, L.rng.leap)
            m.d.comb += [rng.reseed.eq(self.reseed), rng.run_seed.eq(self.seed)]

        # The kept list: entry n is word n >> sh of bank n % lanes: (window input q, spike).
        qbits = (max(2, Q) - 1).bit_length()
        banks = []
        for b in range(lanes):
            mem = memory.Memory(shape=qbits + 1, depth=max(2, -(-Q // lanes)), init=[])
            m.submodules[f"imem{b}"] = mem
            banks.append((mem.write_port(), mem.read_port()))

        # --- MASK: draws in channel-major order into pixel words -----------------------------
        if L.sampling:
            mc = Signal(range(c_in + 1))
            mpix = Signal(range(n_pix + 1))
            mn = Signal(range(L.n_in + 1))      # draws made
            mlast = Signal()                    # this draw is the last one
            mw_en, mw_addr, mw_c, mw_bit = Signal(), Signal(range(max(2, n_pix))), \
                Signal(range(max(2, c_in))), Signal()
            m.d.comb += [m_wr.addr.eq(mw_addr),
                         m_wr.data.eq(Mux(mw_bit, (1 << c_in) - 1, 0)),
                         m_wr.en.eq(Mux(mw_en, Const(1, c_in) << mw_c, 0))]
            m.d.sync += mw_en.eq(0)

        # --- position counters --------------------------------------------------------------
        py, px = Signal(range(max(2, hp))), Signal(range(max(2, wp)))
        a, b_ = Signal(range(max(2, P))), Signal(range(max(2, P)))
        ppix = Signal(range(max(2, hp * wp)))  # py * wp + px
        ybase = Signal(signed(16))             # (py*P + a) * s - pad
        xbase = Signal(signed(16))
        # ybase * W, kept beside ybase so that no multiplier forms the window's addresses
        ybw = Signal(signed(24))
        first = Signal()                       # the first conv position of the pool window

        # --- BUILD: window pixel (i, j), channel chunk ch -----------------------------------
        bi, bj, bch = Signal(range(k + 1)), Signal(range(k + 1)), Signal(range(chunks + 1))
        bq = Signal(range(k * k + 1))          # i*k + j
        biw = Signal(range(k * W + 1))          # bi * W
        bchq = Signal(range(chunks * lanes * k * k + 1))   # bch * lanes * k * k
        rv, rq = Signal(), Signal(range(k * k + 1))
        rch, rchq = Signal(range(max(2, chunks))), Signal(len(bchq))
        raddr = Signal(range(max(2, n_pix)))
        y_in = Signal(signed(17))
        x_in = Signal(signed(17))
        m.d.comb += [y_in.eq(ybase + bi), x_in.eq(xbase + bj)]
        inside = (y_in >= 0) & (y_in < H) & (x_in >= 0) & (x_in < W)
        building = Signal()
        # Stage 0 (registered): the window pixel's address (adders only) and where it sits in
        # the window.
        m.d.sync += [rv.eq(building & inside), rq.eq(bq), rch.eq(bch), rchq.eq(bchq),
                     raddr.eq((ybw + biw + x_in)[:len(raddr)])]
        if self._ring_in:
            # Ring row of window row bi: (ybase + bi) mod R, kept as yr (of ybase) and byr,
            # with yrw = yr * W and byrw = byr * W beside them (adders and compares only).
            R = self._ring_in
            yr, byr = Signal(range(max(2, R))), Signal(range(max(2, R)))
            yrw, byrw = Signal(range(max(2, R * W))), Signal(range(max(2, R * W)))
            rraddr = Signal(range(max(2, R * W)))
            m.d.sync += rraddr.eq((byrw + x_in)[:len(rraddr)])
            m.d.comb += s_rd.addr.eq(rraddr)
        else:
            m.d.comb += s_rd.addr.eq(Cat(raddr, rsel) if self._double else raddr)
        if L.sampling:
            m.d.comb += m_rd.addr.eq(raddr)
        # Stage A: the pixel's spike and mask words arrive (read ports); carry the metadata.
        vA, qA, chA = Signal(), Signal(range(k * k + 1)), Signal(range(max(2, chunks)))
        chqA = Signal(len(bchq))
        m.d.sync += [vA.eq(rv), qA.eq(rq), chA.eq(rch), chqA.eq(rchq)]
        spk_pad = Cat(s_rd.data, Const(0, chunks * lanes - c_in))
        msk_pad = Cat(m_rd.data if L.sampling else Const((1 << c_in) - 1, c_in),
                      Const(0, chunks * lanes - c_in))
        # Stage B: this chunk's keep bits, spikes and the first entry's window index.
        vB = Signal()
        keepB, sB = Signal(lanes), Signal(lanes)
        qB = Signal(qbits + 1)
        kk = k * k
        m.d.sync += [vB.eq(vA),
                     keepB.eq(Mux(vA, msk_pad.word_select(chA, lanes) if chunks > 1
                                  else msk_pad, 0)),
                     sB.eq(spk_pad.word_select(chA, lanes) if chunks > 1 else spk_pad),
                     qB.eq(chqA + qA)]
        kept = Signal(range(Q + 1))
        klast = Signal(len(kept), init=(1 << len(kept)) - 1)
        before = [Const(0, range(lanes + 1))]
        for lane in range(1, lanes + 1):
            before.append(before[-1] + keepB[lane - 1])
        m.d.sync += [kept.eq(kept + before[lanes]), klast.eq(klast + before[lanes])]
        for bank, (wp_, _) in enumerate(banks):
            sel = [keepB[lane] & ((kept + before[lane])[:sh] == bank) if sh else keepB[lane]
                   for lane in range(lanes)]
            data = 0
            for lane in range(lanes):
                data = data | Mux(sel[lane], Cat((qB + lane * kk)[:qbits], sB[lane]), 0)
            row = kept >> sh
            if bank < lanes - 1:
                row = row + (Const(bank, sh) < kept[:sh])
            # Stage C: the bank writes are registered, then made.
            en_c, data_c = Signal(name=f"wen{bank}"), Signal(qbits + 1, name=f"wdata{bank}")
            row_c = Signal(len(wp_.addr), name=f"wrow{bank}")
            m.d.sync += [en_c.eq(Cat(*sel).any()), data_c.eq(data), row_c.eq(row)]
            m.d.comb += [wp_.en.eq(en_c), wp_.data.eq(data_c), wp_.addr.eq(row_c)]

        # --- ACC: as the dense engine, over the kept window inputs ---------------------------
        c = Signal(range(Q + 1))
        g = Signal(range(G + 1))
        base = Signal(range(G * Q + 1))
        (entry,) = read_kept_list(m, banks, c)
        v1, va, za, v2, z2 = Signal(), Signal(), Signal(), Signal(), Signal()
        addr = Signal(range(depth))
        m.d.sync += [v1.eq(0), va.eq(v1), za.eq(entry[qbits]), addr.eq(base + entry[:qbits]),
                     v2.eq(va), z2.eq(za)]
        m.d.comb += [waddr.eq(Mux(self.loading, laddr, addr) if laddr is not None else addr),
                     oport.addr.eq(g)]
        accs = [Signal(signed(L.acc_bits), name=f"acc{n}") for n in range(pe)]
        accumulate(m, accs, v2, wdata, z2, wb)
        lane_off = [oport.data[n * L.offset_bits:(n + 1) * L.offset_bits].as_signed()
                    for n in range(pe)]
        out = Signal(G * pe)                   # the pooled pixel, group g in bits [g*pe, ...)
        fired = Cat(*[accs[n] >= lane_off[n] for n in range(pe)])
        merged = fired | Mux(first, 0, out[:pe])

        # --- OUT ----------------------------------------------------------------------------
        oc = Signal(range(L.c_out + 1))
        oidx = Signal(range(L.c_out * hp * wp + 1))
        if self._consumer == "map":
            m.d.comb += [self.out_addr.eq(ppix), self.out_data.eq(out[:L.c_out])]
        else:
            m.d.comb += [self.out_addr.eq(oidx >> SPIKE_WORD_BITS),
                         self.out_mask.eq(Const(1, SPIKE_WORD) << oidx[:SPIKE_WORD_BITS]),
                         self.out_data.eq(Mux(out[0], (1 << SPIKE_WORD) - 1, 0))]

        def start_position(m, step=0):
            """``step``: ybase moves by that many rows in this cycle too (ring_step)."""
            m.d.sync += [bi.eq(0), bj.eq(0), bch.eq(0), bq.eq(0), biw.eq(0), bchq.eq(0),
                         kept.eq(0), klast.eq(klast.init)]
            if self._ring_in:
                m.d.sync += [byr.eq(ring_next(step)[0]), byrw.eq(ring_next(step)[1])]
            m.next = "BUILD"

        def start_row(m):
            """The first position of a pooled row: through ROW when rows are handed over."""
            if self._gated:
                m.next = "ROW"
            else:
                start_position(m)

        def ring_next(step):
            """yr and yrw once ybase has moved by ``step`` rows (modulo R)."""
            c = step % R
            if not c:
                return yr, yrw
            wrap = yr + c >= R
            return Mux(wrap, yr + c - R, yr + c), Mux(wrap, yrw + (c - R) * W, yrw + c * W)

        def ring_step(step):
            """ybase moves by ``step`` rows: yr and yrw follow."""
            if not self._ring_in or not step % R:
                return []
            yn, ywn = ring_next(step)
            return [yr.eq(yn), yrw.eq(ywn)]

        with m.FSM():
            with m.State("IDLE"):
                m.d.sync += [py.eq(0), px.eq(0), a.eq(0), b_.eq(0), ppix.eq(0), first.eq(1),
                             ybase.eq(-pad), xbase.eq(-pad), ybw.eq(-pad * W), c.eq(0), g.eq(0),
                             base.eq(0)]
                if self._ring_in:
                    m.d.sync += [yr.eq(-pad % R), yrw.eq(-pad % R * W)]
                if L.sampling:
                    m.d.sync += [mc.eq(0), mpix.eq(0), mn.eq(0), mlast.eq(int(L.n_in == 1))]
                with m.If(self.start):
                    if L.sampling:
                        m.next = "MASK"
                    else:
                        start_row(m)
            if L.sampling:
                with m.State("MASK"):
                    m.d.comb += rng.en.eq(1)
                    m.d.sync += [mw_en.eq(1), mw_addr.eq(mpix), mw_c.eq(mc),
                                 mw_bit.eq(rng.next[:L.p_bits] < L.p_num),
                                 mpix.eq(mpix + 1), mn.eq(mn + 1), mlast.eq(mn == L.n_in - 2)]
                    with m.If(mpix == n_pix - 1):
                        m.d.sync += [mpix.eq(0), mc.eq(mc + 1)]
                    with m.If(mlast):
                        m.next = "MFLUSH"
                with m.State("MFLUSH"):             # the last draw is written now
                    start_row(m)
            if self._gated:
                with m.State("ROW"):                # wait for the row handshake
                    with m.If(self.row_go):
                        start_position(m)
            with m.State("BUILD"):
                m.d.comb += building.eq(1)
                m.d.sync += [bch.eq(bch + 1), bchq.eq(bchq + lanes * kk)]
                with m.If(bch == chunks - 1):
                    m.d.sync += [bch.eq(0), bchq.eq(0), bj.eq(bj + 1), bq.eq(bq + 1)]
                    with m.If(bj == k - 1):
                        m.d.sync += [bj.eq(0), bi.eq(bi + 1), biw.eq(biw + W)]
                        if self._ring_in:
                            with m.If(byr == R - 1):
                                m.d.sync += [byr.eq(0), byrw.eq(0)]
                            with m.Else():
                                m.d.sync += [byr.eq(byr + 1), byrw.eq(byrw + W)]
                        with m.If(bi == k - 1):
                            m.next = "BFLUSH1"
            for n in range(1, BUILD_FLUSH):
                with m.State(f"BFLUSH{n}"):
                    m.next = f"BFLUSH{n + 1}"
            with m.State(f"BFLUSH{BUILD_FLUSH}"):   # the last kept inputs are written now
                with m.If(kept == 0):
                    m.next = "DRAIN1"
                with m.Else():
                    m.next = "ACC"
            with m.State("ACC"):
                m.d.sync += [v1.eq(1), c.eq(c + 1)]
                with m.If(c == klast):
                    m.d.sync += c.eq(0)
                    m.next = "DRAIN1"
            for n in range(1, DRAIN):
                with m.State(f"DRAIN{n}"):
                    m.next = f"DRAIN{n + 1}"
            with m.State(f"DRAIN{DRAIN}"):
                m.next = "WRITE"
            with m.State("WRITE"):
                m.d.sync += [acc.eq(0) for acc in accs]
                m.d.sync += out.eq(Cat(out[pe:], merged) if G > 1 else merged)
                with m.If(g == G - 1):
                    m.d.sync += [g.eq(0), base.eq(0), first.eq(0)]
                    # next conv position of this pool window, or hand the pooled pixel on
                    with m.If(b_ == P - 1):
                        m.d.sync += [b_.eq(0), xbase.eq(xbase - (P - 1) * s)]
                        with m.If(a == P - 1):
                            m.d.sync += [a.eq(0), ybase.eq(ybase - (P - 1) * s),
                                         ybw.eq(ybw - (P - 1) * s * W), oc.eq(0),
                                         oidx.eq(ppix), *ring_step(-(P - 1) * s)]
                            m.next = "OUT"
                        with m.Else():
                            m.d.sync += [a.eq(a + 1), ybase.eq(ybase + s), ybw.eq(ybw + s * W),
                                         *ring_step(s)]
                            start_position(m, s)
                    with m.Else():
                        m.d.sync += [b_.eq(b_ + 1), xbase.eq(xbase + s)]
                        start_position(m)
                with m.Else():
                    m.d.sync += [g.eq(g + 1), base.eq(base + Q)]
                    with m.If(kept == 0):
                        m.next = "DRAIN1"
                    with m.Else():
                        m.next = "ACC"
            with m.State("OUT"):
                m.d.comb += self.out_we.eq(1)
                more_out = Const(0)
                if self._consumer == "bits":
                    m.d.sync += [oc.eq(oc + 1), oidx.eq(oidx + hp * wp), out.eq(out >> 1)]
                    more_out = oc != L.c_out - 1
                with m.If(~more_out):
                    m.d.sync += [first.eq(1), ppix.eq(ppix + 1)]
                    if self._ring_out:              # pooled pixel (y mod R') * W' + x
                        with m.If(ppix == self._ring_out * wp - 1):
                            m.d.sync += ppix.eq(0)
                    with m.If(px == wp - 1):
                        if self._gated:
                            m.d.comb += self.row_done.eq(1)
                        m.d.sync += [px.eq(0), xbase.eq(-pad), ybase.eq(ybase + P * s),
                                     ybw.eq(ybw + P * s * W), *ring_step(P * s)]
                        with m.If(py == hp - 1):
                            m.next = "TAIL" if self._ring_in else "FIN"
                        with m.Else():
                            m.d.sync += py.eq(py + 1)
                            start_row(m)
                    with m.Else():
                        m.d.sync += [px.eq(px + 1), xbase.eq(xbase + P * s)]
                        start_position(m)
            if self._ring_in:
                with m.State("TAIL"):               # wait for the producer to end the sample
                    with m.If(self.in_end):
                        m.next = "FIN"
            with m.State("FIN"):
                m.d.comb += self.done.eq(1)
                m.next = "IDLE"
        return m
