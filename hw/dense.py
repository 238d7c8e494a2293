"""Folded dense-layer engine: ``pe`` neuron lanes, one input per clock, adders and comparators.

Schedule for one sample (cycle counts are mirrored by :mod:`nsm_export.schedule` and checked
against simulation):

``IDLE``  1 cycle, the one in which ``start`` is seen.
``MASK``  ``n_in`` cycles, only when the layer samples (p < 1): one LFSR draw per input,
          ``xi_j = low_p_bits(next) < p_num``, shifted into the mask register.
then, for each of the ``ceil(n_out / pe)`` neuron groups:
``ACC``   ``n_in`` cycles: read the weight word of input ``j`` (one ``pe``-lane word per address),
          add ``+w`` / ``-w`` / ``0`` per lane one cycle later, when the word arrives.
``DRAIN`` 1 cycle: the last word is accumulated.
``WRITE`` 1 cycle: hidden layers compare ``acc >= threshold`` and shift ``pe`` spikes into the
          output register; the output layer adds ``acc + bias`` to its class scores.
          ``done`` is high in the last group's ``WRITE``.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from nsm_export.ir import DenseLayer
from .lfsr import Lfsr

__all__ = ["DenseEngine", "pack_lanes"]


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
        sig = {"start": In(1), "done": Out(1), "spikes_in": In(layer.n_in)}
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

        m.submodules.wmem = wmem = memory.Memory(shape=pe * wb, depth=len(w_init), init=w_init)
        m.submodules.omem = omem = memory.Memory(shape=pe * L.offset_bits, depth=G, init=o_init)
        wport = wmem.read_port()
        oport = omem.read_port()

        j = Signal(range(n_in + 1))
        addr = Signal(range(len(w_init) + 1))
        g = Signal(range(G + 1))
        d_valid = Signal()
        d_j = Signal(range(n_in))
        mask = Signal(n_in)
        accs = [Signal(signed(L.acc_bits), name=f"acc{k}") for k in range(pe)]

        m.d.comb += [wport.addr.eq(addr), oport.addr.eq(g)]

        if L.sampling:
            m.submodules.rng = rng = Lfsr(L.rng.width, L.rng.seed, L.rng.leap)
            draw = Signal(L.p_bits)
            m.d.comb += draw.eq(rng.next[:L.p_bits])
            keep = draw < L.p_num
        else:
            m.d.comb += mask.eq(Const((1 << n_in) - 1, n_in))

        # Accumulate the word read in the previous cycle (ACC and DRAIN).
        x_keep = mask.bit_select(d_j, 1)
        x_pos = self.spikes_in.bit_select(d_j, 1)
        with m.If(d_valid & x_keep):
            for k in range(pe):
                if wb == 1:
                    w = Mux(wport.data[k], Const(1, signed(2)), Const(-1, signed(2)))
                else:
                    w = wport.data[k * wb:(k + 1) * wb].as_signed()
                m.d.sync += accs[k].eq(accs[k] + Mux(x_pos, w, -w))

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

        with m.FSM():
            with m.State("IDLE"):
                m.d.sync += [j.eq(0), addr.eq(0), g.eq(0), d_valid.eq(0)]
                with m.If(self.start):
                    m.next = "MASK" if L.sampling else "ACC"
            if L.sampling:
                with m.State("MASK"):
                    m.d.comb += rng.en.eq(1)
                    m.d.sync += [mask.eq(Cat(mask[1:], keep)), j.eq(j + 1)]
                    with m.If(j == n_in - 1):
                        m.d.sync += j.eq(0)
                        m.next = "ACC"
            with m.State("ACC"):
                m.d.sync += [d_valid.eq(1), d_j.eq(j), j.eq(j + 1), addr.eq(addr + 1)]
                with m.If(j == n_in - 1):
                    m.d.sync += j.eq(0)
                    m.next = "DRAIN"
            with m.State("DRAIN"):
                m.d.sync += d_valid.eq(0)
                m.next = "WRITE"
            with m.State("WRITE"):
                m.d.sync += [a.eq(0) for a in accs]
                if L.output:
                    for c in range(L.n_out):
                        with m.If(g == c // pe):
                            k = c % pe
                            m.d.sync += scores[c].eq(scores[c] + accs[k] + lane_off[k])
                else:
                    fired = Cat(*[accs[k] >= lane_off[k] for k in range(pe)])
                    if G > 1:
                        m.d.sync += out.eq(Cat(out[pe:], fired))
                    else:
                        m.d.sync += out.eq(fired)
                with m.If(g == G - 1):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += g.eq(g + 1)
                    m.next = "ACC"
        return m
