"""Sample-parallel conv engine: each weight word read serves ``T'`` samples at once, with the
window gathered while it accumulates and the OR pooling after it fused.

A pass runs ``count <= T'`` samples of one image, as in :mod:`hw.pdense`. The input map lives
in a spike store of *pixel-chunk words*: word ``pix * chunks + ch`` holds channels
``ch*simd .. ch*simd+simd-1`` of pixel ``pix = y*W + x`` (``chunks = c_in / simd``), for every
sample of the pass (``simd`` banks of ``T'`` bits, bank ``s`` channel ``ch*simd + s``, sample
``t`` at bit ``t``); the first layer's store holds the pixel's whole code (``c_in = simd``
spikes that every sample shares). The layer draws its keep bits in ``hwc`` order
(:mod:`nsm_export.ir`), so the mask drawer's word ``pix * chunks + ch`` holds the same inputs
(:class:`hw.maskdraw.MaskDrawer`, unchanged).

Every beat reads one weight word (``pe`` filters x ``simd`` channels of one window pixel
``(i, j)``), the keep bits and the spikes of that pixel's channel chunk, and adds
``pe x simd`` gated synapses for each of the ``T'`` samples (:class:`hw.popcount.
PopcountAccumulator`); window pixels in the zero padding are gated like blanked inputs. The
window streamer :class:`hw.window.WindowWalk` gives each beat's words (a running sum, no
multiplier) and flags, in the order of :func:`hw.window.walk_model`.

Schedule of a pass (:meth:`nsm_export.layers.ConvLayer.pass_cycles`, checked in simulation):

``IDLE``    1 cycle, the one in which ``start`` is seen.
then for each pooled pixel ``(py, px)`` (row-major) and each of its ``G`` filter groups:
``BEAT``    ``P² · k² · chunks`` cycles: the ``P x P`` conv positions of the pooling window,
            each its ``k x k`` window pixels (row-major) and their chunks, back to back; the
            first beat of a position clears the accumulators to ``-threshold``. When a
            position's last beat has reached the accumulators (``DRAIN + 1`` cycles
            later) their sign bits are ORed into the pooling register (``pe x T'``).
``DRAIN``   :data:`nsm_export.plan.POP_DRAIN` cycles, one more with the IR's
            ``input_stage`` (:attr:`nsm_export.plan.Engine.pop_drain`).
``WRITE``   the pooled spikes go into the next engine's spike store: a conv engine's,
            ``next_simd`` filters a cycle (its banks); a dense engine's (channel-major inputs
            ``f * Hp*Wp + pixel``), one filter a cycle. ``done`` is high in the last
            ``WRITE`` cycle of the pass.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

from .dense import pop_weight_words, weight_memory
from .pdense import (draw_keep, engine_ports, spike_store, stop_image, store_wbits,
                     threshold_rom)
from .popcount import PopcountAccumulator
from .window import WindowWalk

__all__ = ["PopcountConvEngine"]


class PopcountConvEngine(wiring.Component):
    """One conv layer (and its OR pooling) on the popcount datapath (module docstring). Built
    from an IR layer and its :class:`nsm_export.plan.Engine` (``pool``, ``consumer``,
    ``next_simd``). The members are :class:`hw.pdense.PopcountDenseEngine`'s for a hidden
    layer; the first layer's store (``st_*``, one bank) holds one word of ``c_in`` spikes per
    pixel."""

    def __init__(self, layer, ir, engine, rom_name: str | None = None):
        self._layer, self._ir = layer, ir
        self._first = engine.index == 0
        self._pool = engine.pool.size if engine.pool else 1
        self._consumer = engine.consumer
        self._next_simd = engine.next_simd
        self._drain, self._input_stage = engine.pop_drain, engine.input_stage
        self._rom_name = rom_name
        self._tp = min(layer.pass_samples, ir.samples)
        self._counts = layer.pass_counts(ir.samples)
        self._ab = layer.pop_acc_bits(ir.samples)
        self._wc = layer.write_cycles(engine)
        if self._first and layer.simd != layer.c_in:
            raise ValueError(f"the first popcount conv layer reads a whole pixel a beat: simd "
                             f"{layer.simd} must be its {layer.c_in} channels")
        P = self._pool
        self._hp, self._wp = layer.h_out // P, layer.w_out // P
        words = layer.h_in * layer.w_in * layer.chunks
        self._wbits = store_wbits(words)
        tp = self._tp
        ports = engine_ports(layer, self._first, tp, self._wbits, ir.early_exit.active)
        sn = self._next_simd
        nbits = store_wbits(self._next_words()) + 1
        ports.update(out_we=Out(sn), out_addr=Out(nbits), out_data=Out(sn * tp))
        super().__init__(ports)

    @property
    def layer(self):
        return self._layer

    def _next_words(self) -> int:
        """Words of a half of the next engine's spike store."""
        sn, n = self._next_simd, self._layer.c_out * self._hp * self._wp
        return -(-n // sn)

    def elaborate(self, platform):
        m = Module()
        layer, ir = self._layer, self._ir
        tp, simd, pe, wb, ab = self._tp, layer.simd, layer.pe, layer.weight_bits, self._ab
        G, B, NP = layer.groups, layer.words, len(self._counts)
        P, H, W, chunks = self._pool, layer.h_in, layer.w_in, layer.chunks
        hp, wp = self._hp, self._wp
        wbits = self._wbits

        # --- the window walk (hw.window): the beat's store word, weight word and flags ------
        m.submodules.walk = walk = WindowWalk(layer, P)
        g = Signal(range(max(2, G)))          # the group being written (and its thresholds)

        # --- spike store, weights, keep bits --------------------------------------------------
        ppar, ipar = Signal(), Signal()
        half = ipar if self._first else ppar
        word = walk.word[:wbits]
        spikes = spike_store(m, self, self._first, simd, tp, wbits,
                             H * W * chunks, word, half)
        waddr = walk.waddr
        wsel = Signal(range(max(2, G * B)))
        (wdata,), laddr = weight_memory(m, layer, pop_weight_words(layer), [wsel], self,
                                        self._rom_name)
        wdata = wdata[:pe * simd * wb]
        m.d.comb += wsel.eq(Mux(self.loading, laddr, waddr) if laddr is not None else waddr)

        ek = Signal(range(max(2, NP)))
        m.d.comb += self.last.eq(ek == NP - 1)
        cnt = Signal(range(tp + 1))
        count_of = (lambda q: Mux(q == NP - 1, self._counts[-1], tp)) if NP > 1 \
            else (lambda q: self._counts[0])

        inside1 = Signal()                    # the beat's pixel lies inside the map
        m.d.sync += inside1.eq(walk.inside)
        if layer.sampling:
            keep = draw_keep(m, self, layer, ir, tp, count_of, NP, word)
            keep = keep & inside1.replicate(tp * simd)
        else:
            m.d.comb += self.ready.eq(1)
            keep = Cat(*[Mux((cnt > t) & inside1, (1 << simd) - 1, 0) for t in range(tp)])

        # --- accumulator and pooling -------------------------------------------------------------
        v1, first1 = Signal(), Signal()
        m.submodules.acc = acc = PopcountAccumulator(pe, simd, tp, wb, ab,
                                                     shared_spikes=self._first, gate_stage=True,
                                                     input_stage=self._input_stage)
        m.d.comb += [acc.weights.eq(wdata), acc.spikes.eq(spikes), acc.keep.eq(keep),
                     acc.valid.eq(v1), acc.clear.eq(first1),
                     acc.init.eq(threshold_rom(m, layer, pe, ab, g))]
        m.d.sync += [v1.eq(0), first1.eq(0)]
        # A position's last beat reaches ``acc`` drain + 1 cycles after its issue.
        drain = self._drain
        land = [Signal(name=f"land{d}") for d in range(drain + 1)]
        landf = [Signal(name=f"landf{d}") for d in range(drain + 1)]
        issue_last, issue_first = Signal(), Signal()
        m.d.sync += [land[0].eq(issue_last), landf[0].eq(issue_first)]
        m.d.sync += [land[d].eq(land[d - 1]) for d in range(1, drain + 1)]
        m.d.sync += [landf[d].eq(landf[d - 1]) for d in range(1, drain + 1)]
        here, here_first = land[-1], landf[-1]
        sp = Cat(*[~acc.acc[(t * pe + n) * ab + ab - 1] for t in range(tp) for n in range(pe)])
        pool = Signal(tp * pe)                # sample t filter n at bit t*pe + n
        pooled = Signal(tp * pe)
        m.d.comb += pooled.eq(Mux(here, Mux(here_first, sp, pool | sp), pool))
        with m.If(here):
            m.d.sync += pool.eq(pooled)

        def spikes_of(n: int):
            """Filter ``n`` of the group: its ``T'`` pooled spikes."""
            return Cat(*[pooled[t * pe + n] for t in range(tp)])

        # --- the hand-over into the next engine's spike store -----------------------------------
        sn = self._next_simd
        Wn = self._next_words()
        nbits = store_wbits(Wn)
        kw = Signal(range(max(2, self._wc)))  # the WRITE cycle of a group
        gf = Signal(range(G * pe + 1))        # g * pe: the group's first filter
        writing = Signal()
        we, addrs, datas = [], [], []
        if self._consumer == "map":
            cn = -(-layer.c_out // sn)        # the next layer's chunks a pixel
            obase = Signal(range(max(2, hp * wp * cn + 1)))   # pooled pixel * cn
            for bk in range(sn):
                if pe % sn == 0:              # pe // sn words a group, all banks
                    per = pe // sn
                    data = spikes_of(bk)
                    for kk in range(1, per):
                        data = Mux(kw == kk, spikes_of(kk * sn + bk), data)
                    lsn = sn.bit_length() - 1
                    filt = gf + (kw << lsn) + bk
                    wsig = obase + (gf >> lsn) + kw
                    enable = writing
                else:                         # sn // pe groups a word
                    per = sn // pe
                    filt = gf + (bk % pe)
                    wsig = obase + (g >> (per.bit_length() - 1))
                    data = spikes_of(bk % pe)
                    enable = writing & ((g & (per - 1)) == bk // pe)
                fsig = Signal(range(G * pe + 1), name=f"ofilt{bk}")
                osig = Signal(range(max(2, Wn + G * pe)), name=f"oword{bk}")
                m.d.comb += [fsig.eq(filt), osig.eq(wsig)]
                we.append(enable & (fsig < layer.c_out))
                addrs.append(Cat(osig[:nbits], ppar))
                datas.append(data)
        else:
            HW = hp * wp
            jw = Signal(range(max(2, (G * pe + 1) * HW)))   # the dense input f*Hp*Wp + pixel
            pix = Signal(range(max(2, HW)))
            sh = sn.bit_length() - 1
            data = spikes_of(0)
            for kk in range(1, pe):
                data = Mux(kw == kk, spikes_of(kk), data)
            fsig = Signal(range(G * pe + 1), name="ofilt")
            m.d.comb += fsig.eq(gf + kw)
            jword = Signal(nbits, name="jword")   # jw // sn (jw may be narrower than sn)
            m.d.comb += jword.eq(jw >> sh)
            for bk in range(sn):
                we.append(writing & (fsig < layer.c_out) & (jw[:sh] == bk if sh else 1))
                addrs.append(Cat(jword, ppar))
                datas.append(data)
        m.d.comb += [self.out_we.eq(Cat(*we)), self.out_addr.eq(addrs[0]),
                     self.out_data.eq(Cat(*datas))]

        # --- the pass --------------------------------------------------------------------------
        final = Signal()                      # the group being written is the pass's last
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.comb += walk.start.eq(1)
                    m.d.sync += [cnt.eq(count_of(ek)), g.eq(0), gf.eq(0), kw.eq(0)]
                    if self._consumer == "map":
                        m.d.sync += obase.eq(0)
                    else:
                        m.d.sync += [jw.eq(0), pix.eq(0)]
                    m.next = "BEAT"
            with m.State("BEAT"):
                m.d.comb += [walk.en.eq(1), issue_last.eq(walk.last),
                             issue_first.eq(walk.pool_first)]
                m.d.sync += [v1.eq(1), first1.eq(walk.first)]
                with m.If(walk.group_last):
                    m.d.sync += final.eq(walk.pass_last)
                    m.next = "DRAIN1"
            for d in range(1, drain + 1):
                with m.State(f"DRAIN{d}"):
                    m.next = f"DRAIN{d + 1}" if d < drain else "WRITE"
            with m.State("WRITE"):
                m.d.comb += writing.eq(1)
                m.d.sync += kw.eq(kw + 1)
                if self._consumer != "map":
                    m.d.sync += jw.eq(jw + hp * wp)
                with m.If(kw == self._wc - 1):
                    m.d.sync += [kw.eq(0), g.eq(g + 1), gf.eq(gf + pe)]
                    with m.If(g == G - 1):
                        m.d.sync += [g.eq(0), gf.eq(0)]
                        if self._consumer == "map":
                            m.d.sync += obase.eq(obase + -(-layer.c_out // sn))
                        else:
                            m.d.sync += [pix.eq(pix + 1), jw.eq(pix + 1)]
                        with m.If(final):
                            m.d.comb += self.done.eq(1)
                            m.d.sync += [ek.eq(Mux(ek == NP - 1, 0, ek + 1)), ppar.eq(~ppar)]
                            if self._first:
                                m.d.sync += ipar.eq(Mux(ek == NP - 1, ~ipar, ipar))
                            m.next = "IDLE"
                        with m.Else():
                            m.next = "BEAT"
                    with m.Else():
                        m.next = "BEAT"
        stop_image(m, self, ir, ek, ipar if self._first else None)
        m.d.comb += self.in_half.eq(half)
        return m
