"""Folded, event-driven dense-layer engine: ``pe`` neuron lanes, adders and comparators.

Blanked-out inputs cost no cycles: the layer first draws its per-input keep bits and writes the
indices of the kept inputs into a small index memory, then every neuron group walks that list
only. Schedule for one sample (mirrored by :mod:`nsm_export.schedule`, checked in simulation):

``IDLE``    1 cycle, the one in which ``start`` is seen.
``MASK``    ``ceil(n_in / lanes) + 2`` cycles, only when the layer samples (p < 1): ``lanes``
            LFSR draws per cycle (consecutive draws of the one stream, by jump-ahead),
            ``keep_j = low_p_bits(draw_j) < p_num``; kept ``j`` are appended, with their spikes,
            to the index memory, banked ``lanes`` ways so that every bank takes at most one
            entry a cycle (the input spikes hold still while the layer runs); the last two
            cycles flush the draw-and-lookup pipeline.
            Without sampling every input is kept and no index memory exists.
then, for each of the ``ceil(n_out / pe)`` neuron groups, with ``K`` kept inputs:
``ACC``     ``K`` cycles, a three-stage pipeline: read the index (and spike) of the ``k``-th
            kept input; read its weight word (``pe`` lanes); add ``+w`` or ``-w`` per lane.
``DRAIN``   2 cycles: the last two kept inputs leave the pipeline.
``WRITE``   1 cycle: hidden layers compare ``acc >= threshold`` and shift ``pe`` spikes into the
            output register; the output layer adds ``acc + bias`` to its class scores.
            ``done`` is high in the last group's ``WRITE``.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from nsm_export.ir import DenseLayer
from .lfsr import Lfsr

__all__ = ["DenseEngine", "pack_lanes"]

SPIKE_WORD_BITS = 4
SPIKE_WORD = 1 << SPIKE_WORD_BITS


def pack_lanes(values, bits: int) -> int:
    """Pack integers (two's complement, ``bits`` wide) into one word, lane 0 lowest."""
    word = 0
    for k, v in enumerate(values):
        word |= (int(v) & ((1 << bits) - 1)) << (k * bits)
    return word


class DenseEngine(wiring.Component):
    """One dense NSM layer, folded over ``layer.pe`` neuron lanes.

    Parameters
    ----------
    layer : DenseLayer
        The layer from a validated IR.
    score_bits : int
        Width of the class scores (output layer only).

    Members
    -------
    start : In(1)
        Begin one sample; looked at only while idle.
    done : Out(1)
        High for one cycle, in the last cycle of the sample.
    spikes_in : In(n_in)
        Input spikes, bit ``j`` is input ``j`` (1 = +1, 0 = -1); must hold still while busy.
    spikes_out : Out(groups * pe)
        Hidden layers: output spikes, bit ``i`` is neuron ``i`` (bits past ``n_out`` are padding).
    reseed : In(1)
        Load the LFSR from ``seed`` (see :meth:`nsm_export.ir.LfsrSpec.reseeded`); only while idle.
    seed : In(32)
        The run seed.
    clear : In(1)
        Output layer: zero the scores.
    scores : Out(n_out * score_bits)
        Output layer: the class scores, class ``c`` in bits ``[c*score_bits, (c+1)*score_bits)``.
    """

    def __init__(self, layer: DenseLayer, score_bits: int = 1):
        if not isinstance(layer, DenseLayer):
            raise TypeError(f"layer must be a DenseLayer, not {type(layer).__name__}")
        layer.validate("layer")
        self._layer = layer
        self._score_bits = score_bits
        sig = {"start": In(1), "done": Out(1), "spikes_in": In(layer.n_in),
               "reseed": In(1), "seed": In(32)}
        if layer.output:
            sig["clear"] = In(1)
            sig["scores"] = Out(layer.n_out * score_bits)
        else:
            sig["spikes_out"] = Out(layer.groups * layer.pe)
        super().__init__(sig)

    @property
    def layer(self) -> DenseLayer:
        return self._layer

    def _rom_init(self):
        L = self._layer
        pe, wb, G = L.pe, L.weight_bits, L.groups
        weights, offsets = [], []
        for g in range(G):
            rows = range(g * pe, (g + 1) * pe)
            for j in range(L.n_in):
                lane_w = [L.weights[i, j] if i < L.n_out else 0 for i in rows]
                if wb == 1:
                    lane_w = [1 if w > 0 else 0 for w in lane_w]
                weights.append(pack_lanes(lane_w, wb))
            offsets.append(pack_lanes([L.offsets[i] if i < L.n_out else 0 for i in rows],
                                      L.offset_bits))
        return weights, offsets

    def elaborate(self, platform):
        m = Module()
        L = self._layer
        pe, wb, G, n_in = L.pe, L.weight_bits, L.groups, L.n_in
        w_init, o_init = self._rom_init()

        # Depth at least 2: a one-word memory has a 0-bit address, which yosys writes as [-1:0].
        m.submodules.wmem = wmem = memory.Memory(shape=pe * wb, depth=max(2, len(w_init)),
                                                 init=w_init)
        m.submodules.omem = omem = memory.Memory(shape=pe * L.offset_bits, depth=max(2, G),
                                                 init=o_init)
        wport = wmem.read_port()
        oport = omem.read_port()

        j = Signal(range(n_in + 16))           # MASK: first input of the batch being drawn
        kept = Signal(range(n_in + 1))         # K: kept inputs this sample
        c = Signal(range(n_in + 1))            # ACC: position in the kept list
        g = Signal(range(G + 1))
        base = Signal(range(G * n_in + 1))     # g * n_in, the group's first weight address
        v1 = Signal()                          # stage 1 (index known) valid
        v2 = Signal()                          # stage 2 (weight word known) valid
        z2 = Signal()                          # the spike that goes with the stage-2 word
        accs = [Signal(signed(L.acc_bits), name=f"acc{k}") for k in range(pe)]

        if L.sampling:
            lanes = L.lanes
            sh = lanes.bit_length() - 1                    # lanes is a power of two
            chunks = -(-n_in // lanes)
            tail = n_in - (chunks - 1) * lanes             # draws in the last chunk
            m.submodules.rng = rng = Lfsr(L.rng.width, L.rng.seed, L.rng.leap, lanes, tail)
            # The kept list lives in ``lanes`` banks: entry q is word q >> sh of bank q % lanes,
            # so each bank takes at most one of the (up to ``lanes``) entries a cycle appends.
            # Each entry: the kept input's index and its spike, looked up while drawing (from a
            # counter) so that no wide multiplexer follows the memory's read port.
            ibits = (max(2, n_in) - 1).bit_length()
            depth = max(2, -(-n_in // lanes))
            banks = []
            for b in range(lanes):
                mem = memory.Memory(shape=ibits + 1, depth=depth, init=[])
                m.submodules[f"imem{b}"] = mem
                banks.append((mem.write_port(), mem.read_port()))
            # The draws and the spike lookup are pipelined (A: keep bits and the 16-input word
            # holding inputs j..j+lanes-1; B: their spikes; then the writes), so that no wide
            # multiplexer sits in one clock cycle.
            words = -(-n_in // SPIKE_WORD)
            padded = Cat(self.spikes_in, Const(0, words * SPIKE_WORD - n_in))
            vA, jA = Signal(), Signal(range(n_in + lanes))
            keepA = Signal(lanes)
            wordA = Signal(SPIKE_WORD)
            vB, jB = Signal(), Signal(range(n_in + lanes))
            keepB, sB = Signal(lanes), Signal(lanes)
            keep_now = []
            for k in range(lanes):
                draw = rng.ahead[k * L.rng.width:k * L.rng.width + L.p_bits]
                keep_now.append((draw < L.p_num) & (j + k < n_in))
            m.d.sync += [vA.eq(0), keepA.eq(Cat(*keep_now)), jA.eq(j),
                         wordA.eq(padded.word_select(j >> SPIKE_WORD_BITS, SPIKE_WORD)
                                  if words > 1 else padded),
                         vB.eq(vA), keepB.eq(keepA), jB.eq(jA),
                         sB.eq(wordA.word_select(jA[sh:SPIKE_WORD_BITS], lanes)
                               if lanes < SPIKE_WORD else wordA)]
            # Entry for lane k goes to position kept + (kept lanes before k).
            before = [Const(0, range(lanes + 1))]
            for k in range(1, lanes + 1):
                before.append(before[-1] + keepB[k - 1])
            written = Signal(range(lanes + 1))
            m.d.comb += written.eq(Mux(vB, before[lanes], 0))
            m.d.sync += kept.eq(kept + written)
            for b, (wp, _) in enumerate(banks):
                sel = [vB & keepB[k] & ((kept + before[k])[:sh] == b) if sh else vB & keepB[k]
                       for k in range(lanes)]
                data = 0
                for k in range(lanes):
                    data = data | Mux(sel[k], Cat((jB + k)[:ibits], sB[k]), 0)
                row = kept >> sh
                if b < lanes - 1:                      # (b < kept % lanes is never true for the last)
                    row = row + (Const(b, sh) < kept[:sh])
                m.d.comb += [wp.en.eq(Cat(*sel).any()), wp.data.eq(data), wp.addr.eq(row)]
            csel = Signal(max(1, sh))
            for _, rp in banks:
                m.d.comb += rp.addr.eq(c >> sh)
            if sh:
                m.d.sync += csel.eq(c[:sh])
                entry = Array(rp.data for _, rp in banks)[csel]
            else:
                entry = banks[0][1].data
            mixed = Signal(L.rng.width)
            m.d.comb += [mixed.eq(self.seed[:L.rng.width] ^ L.rng.seed),
                         rng.load.eq(self.reseed),
                         rng.load_value.eq(Mux(mixed == 0, L.rng.seed, mixed))]
            idx = entry[:ibits]
            z1 = entry[ibits]
        else:
            idx = Signal(range(max(2, n_in)))
            z1 = Signal()
            m.d.sync += [idx.eq(c), z1.eq(self.spikes_in.bit_select(c, 1))]
            m.d.comb += kept.eq(n_in)

        # Stage 1: the index is known; fetch its weight word and its spike.
        m.d.comb += [wport.addr.eq(base + idx), oport.addr.eq(g)]
        m.d.sync += [v2.eq(v1), z2.eq(z1)]
        # Stage 2: the weight word is here; add it with the spike's sign.
        with m.If(v2):
            for k in range(pe):
                if wb == 1:
                    w = Mux(wport.data[k], Const(1, signed(2)), Const(-1, signed(2)))
                else:
                    w = wport.data[k * wb:(k + 1) * wb].as_signed()
                m.d.sync += accs[k].eq(accs[k] + Mux(z2, w, -w))

        lane_off = [oport.data[k * L.offset_bits:(k + 1) * L.offset_bits].as_signed()
                    for k in range(pe)]
        if L.output:
            scores = [Signal(signed(self._score_bits), name=f"score{c}") for c in range(L.n_out)]
            m.d.comb += self.scores.eq(Cat(*scores))
            with m.If(self.clear):
                m.d.sync += [s.eq(0) for s in scores]
        else:
            out = Signal(G * pe)
            m.d.comb += self.spikes_out.eq(out)

        m.d.sync += v1.eq(0)
        with m.FSM():
            with m.State("IDLE"):
                m.d.sync += [j.eq(0), c.eq(0), g.eq(0), base.eq(0)]
                if L.sampling:
                    m.d.sync += kept.eq(0)
                with m.If(self.start):
                    m.next = "MASK" if L.sampling else "ACC"
            if L.sampling:
                with m.State("MASK"):
                    m.d.sync += [j.eq(j + lanes), vA.eq(1)]
                    with m.If(j == (chunks - 1) * lanes):
                        m.d.comb += rng.en_tail.eq(1)
                        m.next = "FLUSH1"
                    with m.Else():
                        m.d.comb += rng.en.eq(1)
                with m.State("FLUSH1"):
                    m.next = "FLUSH2"
                with m.State("FLUSH2"):                  # the last kept inputs are written now
                    with m.If((kept == 0) & (written == 0)):
                        m.next = "DRAIN1"
                    with m.Else():
                        m.next = "ACC"
            with m.State("ACC"):
                m.d.sync += [v1.eq(1), c.eq(c + 1)]
                with m.If(c == kept - 1):
                    m.d.sync += c.eq(0)
                    m.next = "DRAIN1"
            with m.State("DRAIN1"):
                m.next = "DRAIN2"
            with m.State("DRAIN2"):
                m.next = "WRITE"
            with m.State("WRITE"):
                m.d.sync += [a.eq(0) for a in accs]
                if L.output:
                    for cls in range(L.n_out):
                        with m.If(g == cls // pe):
                            k = cls % pe
                            m.d.sync += scores[cls].eq(scores[cls] + accs[k] + lane_off[k])
                else:
                    fired = Cat(*[accs[k] >= lane_off[k] for k in range(pe)])
                    m.d.sync += out.eq(Cat(out[pe:], fired) if G > 1 else fired)
                with m.If(g == G - 1):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += [g.eq(g + 1), base.eq(base + n_in)]
                    with m.If(kept == 0):
                        m.next = "DRAIN1"
                    with m.Else():
                        m.next = "ACC"
        return m
