"""Reference design for the benchmarks: the same MLP as a conventional int8 multiply-accumulate core.

The NSM core (:mod:`hw.top`) claims that a sampling network needs only adders, comparators and
LFSRs. This module builds what it is measured against (``benchmarks/hardware.py``): a
deterministic integer network of the same layer sizes, run once per image (no samples, no noise)
on multipliers, the way an int8-quantized MLP runs on a conventional accelerator.

Semantics (:func:`mac_reference` is the model; the hardware equals it exactly):

* input: the 8-bit pixels, unsigned, as they arrive on ``s_axis_tdata``;
* layer ``l``: ``v_i = sum_j w_ij * a_j + b_i`` with signed weights of ``weight_bits`` (at most
  8, sign-extended to 8 bits at the multiplier) and unsigned 8-bit activations ``a_j``;
* hidden layers: 8-bit ReLU, ``a_i = clamp(v_i >> shift_l, 0, 255)`` (arithmetic shift, i.e. the
  floor of ``v_i / 2**shift_l``): the power-of-two requantization of integer-only inference;
* output layer: the scores are ``v_c``; the class is the first maximum (ties: lowest index).

Why 8-bit ReLU and not ±1 activations: a fair baseline is the network a deterministic
accelerator would deploy, an int8 MLP whose every multiply is 8 x 8 bits; ±1 activations would
turn its multipliers into adders and make it a binary network, which is the NSM's own trick.

Hardware: one array of ``pe`` multiply-accumulate lanes, shared by the layers in turn (they run
one after another, as in the NSM core). Neuron ``g * pe + k`` of a layer is computed by lane
``k`` in group ``g``; a group walks all ``n_in`` inputs, one per cycle. Weights are in block RAM
(one ``pe``-lane word per group and input, the NSM core's layout); ``ram`` layers are loaded on
``w_axis`` after configuration, as in the NSM core (SPRAM on iCE40). Pixels go to an input
memory, each hidden layer's activations to a memory of ``pe``-lane words. Schedule, mirrored by
:func:`mac_latency_cycles`:

``LOAD``       one pixel per accepted beat, ``n_in`` beats.
``ACC_l``      per group, ``n_in`` cycles: a four-stage pipeline (address; weight word and
               activation read; operands registered; product registered) ends in
               ``acc_k += w_k * a`` (the group's first product adds to the bias ``b_k``).
``DRAIN_l``    3 cycles: the last products reach the accumulators.
``WRITE_l``    1 cycle: hidden layers write the group's ReLU outputs, the output layer its
               scores.
``ARGMAX``     ``C + 1`` cycles, as in the NSM core; then ``OUT`` until the result is taken.

The multipliers (``w_k * a``: signed 8 x unsigned 8 bits) are what ``synth_ice40 -dsp`` maps to
SB_MAC16 and ``synth_ecp5`` to MULT18X18D.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from amaranth.back import verilog
from amaranth.hdl import Array, Cat, ClockSignal, Const, Instance, Module, Mux, Signal, signed
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from nsm_export.ir import signed_bits, unsigned_bits
from .argmax import ArgmaxScan
from .dense import LOAD_BEAT_BITS, RAM16_MODULE, RAM16_NAME, pack_lanes

__all__ = ["MacLayer", "MacNet", "MacCore", "MacError", "random_mac_net", "mac_reference",
           "mac_latency_cycles", "mac_cycles_per_inference", "mac_dense_bound",
           "mac_weight_image", "generate_mac_verilog"]

ACT_BITS = 8
ACT_MAX = (1 << ACT_BITS) - 1
DRAIN = 3


class MacError(ValueError):
    """A network the MAC core cannot be built for (one line naming the value)."""


@dataclass(frozen=True)
class MacLayer:
    """One dense layer: ``weights`` ``(n_out, n_in)``, ``bias`` ``(n_out,)``, the hidden
    layer's requantization ``shift`` and where its weights live (``rom`` or ``ram``)."""
    weights: np.ndarray
    bias: np.ndarray
    shift: int = 0
    weight_store: str = "rom"

    @property
    def n_in(self) -> int:
        return self.weights.shape[1]

    @property
    def n_out(self) -> int:
        return self.weights.shape[0]


@dataclass(frozen=True)
class MacNet:
    """An integer MLP for :class:`MacCore`: layers, ``pe`` lanes, weight width, top name."""
    layers: tuple
    pe: int
    weight_bits: int = 8
    name: str = "mac"

    def validate(self) -> None:
        if not self.layers:
            raise MacError("a MAC network needs at least one layer")
        if not isinstance(self.pe, int) or self.pe < 1:
            raise MacError(f"pe {self.pe!r} must be a positive integer")
        if self.weight_bits not in range(2, 9):
            raise MacError(f"weight_bits {self.weight_bits!r} must be in [2, 8]")
        q = 1 << (self.weight_bits - 1)
        for i, layer in enumerate(self.layers):
            w, b = np.asarray(layer.weights), np.asarray(layer.bias)
            if w.ndim != 2 or b.shape != (w.shape[0],):
                raise MacError(f"layers[{i}]: weights {w.shape} and bias {b.shape} do not match")
            if i and w.shape[1] != self.layers[i - 1].n_out:
                raise MacError(f"layers[{i}] takes {w.shape[1]} inputs, layer {i - 1} gives "
                               f"{self.layers[i - 1].n_out}")
            if w.min() < -q or w.max() >= q:
                raise MacError(f"layers[{i}]: weights outside [{-q}, {q - 1}] "
                               f"({self.weight_bits} bits)")
            if not 0 <= layer.shift < 32:
                raise MacError(f"layers[{i}].shift {layer.shift} must be in [0, 31]")
            if layer.weight_store not in ("rom", "ram"):
                raise MacError(f"layers[{i}].weight_store {layer.weight_store!r} must be rom "
                               f"or ram")

    @property
    def n_in(self) -> int:
        return self.layers[0].n_in

    @property
    def n_classes(self) -> int:
        return self.layers[-1].n_out

    def groups(self, layer: MacLayer) -> int:
        return -(-layer.n_out // self.pe)

    def acc_bits(self) -> int:
        """Signed width that holds ``sum w a + b`` of every neuron of every layer."""
        worst = max(int((np.abs(np.asarray(lay.weights)).sum(axis=1) * ACT_MAX
                         + np.abs(np.asarray(lay.bias))).max()) for lay in self.layers)
        return signed_bits(-worst - 1, worst)

    def bias_bits(self, layer: MacLayer) -> int:
        m = int(np.abs(np.asarray(layer.bias)).max(initial=0))
        return signed_bits(-m - 1, m)

    @property
    def class_bits(self) -> int:
        return unsigned_bits(max(1, self.n_classes - 1))


def random_mac_net(rng: np.random.Generator, sizes: list[int], pe: int, weight_bits: int = 8,
                   weight_store: str | list[str] = "rom", name: str = "mac") -> MacNet:
    """Random weights and biases; each hidden shift puts a typical neuron (``sqrt(n_in)``
    random terms of mean activation) in the middle of the 8-bit range, so that the ReLU both
    clips and passes."""
    q = 1 << (weight_bits - 1)
    stores = list(weight_store) if isinstance(weight_store, (list, tuple)) \
        else [weight_store] * (len(sizes) - 1)
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        w = rng.integers(-q, q, (n_out, n_in))
        b = rng.integers(-q * 64, q * 64 + 1, n_out)
        typical = q * 128 * np.sqrt(n_in) / 2
        shift = max(0, int(np.ceil(np.log2(typical / 128)))) if i < len(sizes) - 2 else 0
        layers.append(MacLayer(w, b, shift, stores[i]))
    net = MacNet(tuple(layers), pe, weight_bits, name)
    net.validate()
    return net


def mac_reference(net: MacNet, pixels) -> tuple[np.ndarray, np.ndarray]:
    """The integer network on ``pixels`` ``(N, n_in)``: classes ``(N,)`` and scores ``(N, C)``."""
    a = np.asarray(pixels, dtype=np.int64)
    if a.ndim != 2 or a.shape[1] != net.n_in or a.min(initial=0) < 0 or a.max(initial=0) > ACT_MAX:
        raise MacError(f"pixels must be (N, {net.n_in}) integers in [0, {ACT_MAX}], "
                       f"not {a.shape}")
    for i, layer in enumerate(net.layers):
        v = a @ np.asarray(layer.weights, dtype=np.int64).T + np.asarray(layer.bias, np.int64)
        a = np.clip(v >> layer.shift, 0, ACT_MAX) if i < len(net.layers) - 1 else v
    return np.argmax(a, axis=1), a


def mac_latency_cycles(net: MacNet) -> int:
    """Clock edges from the last pixel's handshake to ``m_axis_tvalid`` going high."""
    return sum(net.groups(lay) * (lay.n_in + DRAIN + 1) for lay in net.layers) \
        + net.n_classes + 1


def mac_cycles_per_inference(net: MacNet) -> int:
    """Per image, back to back: load the pixels, compute, hand over the result."""
    return net.n_in + mac_latency_cycles(net) + 1


def mac_dense_bound(net: MacNet) -> float:
    """Multiplies over lanes: what a dense schedule of this core needs at best."""
    return sum(lay.n_in * lay.n_out for lay in net.layers) / net.pe


def _weight_words(net: MacNet, layer: MacLayer) -> list[int]:
    pe, out = net.pe, []
    w = np.asarray(layer.weights)
    for g in range(net.groups(layer)):
        rows = [g * pe + k for k in range(pe)]
        for j in range(layer.n_in):
            out.append(pack_lanes([w[i, j] if i < layer.n_out else 0 for i in rows],
                                  net.weight_bits))
    return out


def _slices(net: MacNet) -> int:
    return -(-net.pe * net.weight_bits // LOAD_BEAT_BITS)


def mac_weight_image(net: MacNet) -> list[int]:
    """The 16-bit beats a core with ``ram`` layers takes on ``w_axis``: ``ram`` layers in order,
    word by word, low slice first (the NSM core's order)."""
    n, mask = _slices(net), (1 << LOAD_BEAT_BITS) - 1
    return [(word >> (LOAD_BEAT_BITS * s)) & mask
            for layer in net.layers if layer.weight_store == "ram"
            for word in _weight_words(net, layer) for s in range(n)]


class MacCore(wiring.Component):
    """The int8 MAC classifier for ``net``.

    Parameters
    ----------
    net : MacNet
    ram_model : bool
        Build ``ram`` weight memories from Amaranth memories with the same exclusive
        write-or-read behaviour instead of the ``nsm_ram16`` Verilog module, so that the
        Amaranth simulator can run them. Verilog output always uses the module.

    Members
    -------
    s_axis_tvalid, s_axis_tready, s_axis_tdata (8), s_axis_tlast
        Pixels in, ``n_in`` per image (``tlast`` is informational).
    m_axis_tvalid, m_axis_tready
        A result is offered / taken.
    m_axis_tdata : Out(class_bits)
        The class (first maximum).
    m_axis_tuser : Out(n_classes * score_bits)
        The scores, class ``c`` in bits ``[c*score_bits, (c+1)*score_bits)``, signed.
    w_axis_tvalid, w_axis_tready, w_axis_tdata (16), w_axis_tlast
        Only with ``ram`` layers: :func:`mac_weight_image`, once after configuration;
        ``s_axis_tready`` stays low until it is complete; weights survive ``rst``.
    """

    def __init__(self, net: MacNet, ram_model: bool = False):
        if not isinstance(net, MacNet):
            raise TypeError(f"net must be a MacNet, not {type(net).__name__}")
        net.validate()
        self._net = net
        self._ram_model = bool(ram_model)
        self._score_bits = net.acc_bits()
        ram = any(lay.weight_store == "ram" for lay in net.layers)
        wload = {"w_axis_tvalid": In(1), "w_axis_tready": Out(1),
                 "w_axis_tdata": In(LOAD_BEAT_BITS), "w_axis_tlast": In(1)} if ram else {}
        super().__init__({**wload,
            "s_axis_tvalid": In(1), "s_axis_tready": Out(1), "s_axis_tdata": In(ACT_BITS),
            "s_axis_tlast": In(1), "m_axis_tvalid": Out(1), "m_axis_tready": In(1),
            "m_axis_tdata": Out(net.class_bits),
            "m_axis_tuser": Out(net.n_classes * self._score_bits),
        })

    @property
    def net(self) -> MacNet:
        return self._net

    @property
    def score_bits(self) -> int:
        return self._score_bits

    def _weight_memory(self, m, i, layer, raddr, loading, load_we, load_addr, load_slice):
        """The layer's weight words at ``raddr`` (one cycle later)."""
        net = self._net
        words = _weight_words(net, layer)
        depth = max(2, len(words))
        if layer.weight_store == "rom":
            m.submodules[f"wmem{i}"] = mem = memory.Memory(shape=net.pe * net.weight_bits,
                                                           depth=depth, init=words)
            port = mem.read_port()
            m.d.comb += port.addr.eq(raddr)
            return port.data
        addr = Signal(range(depth), name=f"wram{i}_addr")
        m.d.comb += addr.eq(Mux(loading, load_addr, raddr))
        slices = []
        for s in range(_slices(net)):
            we = load_we & (load_slice == s)
            rdata = Signal(LOAD_BEAT_BITS, name=f"wram{i}_{s}_rdata")
            if self._ram_model:
                m.submodules[f"wram{i}_{s}"] = mem = memory.Memory(
                    shape=LOAD_BEAT_BITS, depth=depth, init=[])
                wp, rp = mem.write_port(), mem.read_port()
                m.d.comb += [wp.addr.eq(addr), wp.en.eq(we), wp.data.eq(self.w_axis_tdata),
                             rp.addr.eq(addr), rp.en.eq(~we), rdata.eq(rp.data)]
            else:
                m.submodules[f"wram{i}_{s}"] = Instance(
                    RAM16_NAME, p_DEPTH=depth, p_ABITS=len(addr), i_clk=ClockSignal(),
                    i_addr=addr, i_we=we, i_wdata=self.w_axis_tdata, o_rdata=rdata)
            slices.append(rdata)
        return Cat(*slices)

    def elaborate(self, platform):
        m = Module()
        net = self._net
        pe, wb, L, C = net.pe, net.weight_bits, len(net.layers), net.n_classes
        A, SB = net.acc_bits(), self._score_bits
        n0 = net.n_in

        # Weight loading (ram layers only): beat ``s`` of word ``a`` of ram layer ``wl``.
        rams = [i for i, lay in enumerate(net.layers) if lay.weight_store == "ram"]
        loaded = Signal(reset_less=True, init=0 if rams else 1)
        wl = Signal(range(len(rams) + 1))
        lslice = Signal(range(max(2, _slices(net))))
        laddr = Signal(range(max(2, max(len(_weight_words(net, lay)) for lay in net.layers))))
        load_we = Signal()
        if rams:
            m.d.comb += load_we.eq(~loaded & self.w_axis_tvalid)

        cur = Signal(range(L))                 # the layer the lanes work for
        waddr = Signal.like(laddr)             # group by group, input by input: a running count
        j = Signal(range(max(2, max(lay.n_in for lay in net.layers))))
        jw = Signal(range(max(2, max(net.groups(lay) for lay in net.layers))))   # j // pe
        jl = Signal(range(max(2, pe)))                                            # j % pe
        g = Signal.like(jw)

        # Activation memories: the pixels (8 bits, n0 deep), then each hidden layer's outputs
        # as pe-lane words, one per group.
        m.submodules.act0 = act0 = memory.Memory(shape=ACT_BITS, depth=max(2, n0), init=[])
        px_wr, a0_rd = act0.write_port(), act0.read_port()
        m.d.comb += a0_rd.addr.eq(j)
        acts = [None]
        for i, lay in enumerate(net.layers[:-1]):
            mem = memory.Memory(shape=pe * ACT_BITS, depth=max(2, net.groups(lay)), init=[])
            m.submodules[f"act{i + 1}"] = mem
            wp, rp = mem.write_port(), mem.read_port()
            m.d.comb += [rp.addr.eq(jw), wp.addr.eq(g)]
            acts.append((wp, rp))

        wdatas, biases = [], []
        for i, lay in enumerate(net.layers):
            wdatas.append(self._weight_memory(
                m, i, lay, waddr, ~loaded, load_we & (wl == rams.index(i)) if i in rams else 0,
                laddr, lslice))
            bb = net.bias_bits(lay)
            init = [pack_lanes([lay.bias[g_ * pe + k] if g_ * pe + k < lay.n_out else 0
                                for k in range(pe)], bb) for g_ in range(net.groups(lay))]
            m.submodules[f"bmem{i}"] = bmem = memory.Memory(shape=pe * bb,
                                                            depth=max(2, len(init)), init=init)
            bp = bmem.read_port()
            m.d.comb += bp.addr.eq(g)
            biases.append([bp.data[k * bb:(k + 1) * bb].as_signed() for k in range(pe)])

        # The pipeline: issue (v1 next cycle: memory data), operands (v2), product (v3), add.
        # The first product of a group adds to the bias instead of the old sum, so that WRITE
        # needs no adder in front of the ReLU.
        issue, v1, v2, v3 = Signal(), Signal(), Signal(), Signal()
        first, f1, f2, f3 = Signal(), Signal(), Signal(), Signal()
        jl1 = Signal.like(jl)
        wop = [Signal(signed(8), name=f"w{k}") for k in range(pe)]
        aop = Signal(ACT_BITS)
        prod = [Signal(signed(17), name=f"p{k}") for k in range(pe)]
        accs = [Signal(signed(A), name=f"acc{k}") for k in range(pe)]
        m.d.sync += [v1.eq(issue), jl1.eq(jl), v2.eq(v1), v3.eq(v2),
                     f1.eq(first), f2.eq(f1), f3.eq(f2)]
        wsel = Array(wdatas)[cur] if L > 1 else wdatas[0]
        biases_now = [Array(b[k] for b in biases)[cur] if L > 1 else biases[0][k]
                      for k in range(pe)]
        asel = [a0_rd.data] + [rp.data.word_select(jl1, ACT_BITS) for _, rp in acts[1:]]
        m.d.sync += aop.eq(Array(asel)[cur] if L > 1 else asel[0])
        for k in range(pe):
            m.d.sync += [wop[k].eq(wsel[k * wb:(k + 1) * wb].as_signed()),
                         prod[k].eq(wop[k] * aop)]
            with m.If(v3):
                m.d.sync += accs[k].eq(Mux(f3, biases_now[k], accs[k]) + prod[k])

        scores = [Signal(signed(SB), name=f"score{c}") for c in range(C)]
        m.d.comb += self.m_axis_tuser.eq(Cat(*scores))
        m.submodules.argmax = scan = ArgmaxScan(C, SB)
        m.d.comb += [scan.scores.eq(Cat(*scores)), self.m_axis_tdata.eq(scan.index)]
        px = Signal(range(n0 + 1))
        drain = Signal(range(DRAIN))

        def start_layer(i):
            m.d.sync += [j.eq(0), jw.eq(0), jl.eq(0), g.eq(0), waddr.eq(0), cur.eq(i)]
            m.next = f"ACC_{i}"

        with m.FSM(init="WLOAD" if rams else "LOAD"):
            if rams:
                with m.State("WLOAD"):
                    with m.If(loaded):
                        m.next = "LOAD"
                    with m.Else():
                        m.d.comb += self.w_axis_tready.eq(1)
                        with m.If(self.w_axis_tvalid):
                            m.d.sync += lslice.eq(lslice + 1)
                            with m.If(lslice == _slices(net) - 1):
                                m.d.sync += [lslice.eq(0), laddr.eq(laddr + 1)]
                                for k, i in enumerate(rams):
                                    last = len(_weight_words(net, net.layers[i])) - 1
                                    with m.If((wl == k) & (laddr == last)):
                                        m.d.sync += [laddr.eq(0), wl.eq(wl + 1)]
                                        if k == len(rams) - 1:
                                            m.d.sync += loaded.eq(1)
                                            m.next = "LOAD"
            with m.State("LOAD"):
                m.d.comb += [self.s_axis_tready.eq(1), px_wr.addr.eq(px),
                             px_wr.data.eq(self.s_axis_tdata), px_wr.en.eq(self.s_axis_tvalid)]
                with m.If(self.s_axis_tvalid):
                    m.d.sync += px.eq(px + 1)
                    with m.If(px == n0 - 1):
                        m.d.sync += px.eq(0)
                        start_layer(0)
            for i, lay in enumerate(net.layers):
                with m.State(f"ACC_{i}"):
                    m.d.comb += [issue.eq(1), first.eq(j == 0)]
                    m.d.sync += [waddr.eq(waddr + 1), j.eq(j + 1), jl.eq(jl + 1)]
                    with m.If(jl == pe - 1):
                        m.d.sync += [jl.eq(0), jw.eq(jw + 1)]
                    with m.If(j == lay.n_in - 1):
                        m.d.sync += [j.eq(0), jl.eq(0), jw.eq(0), drain.eq(0)]
                        m.next = f"DRAIN_{i}"
                with m.State(f"DRAIN_{i}"):
                    m.d.sync += drain.eq(drain + 1)
                    with m.If(drain == DRAIN - 1):
                        m.next = f"WRITE_{i}"
                with m.State(f"WRITE_{i}"):
                    v = accs
                    if i < L - 1:
                        wp = acts[i + 1][0]
                        relu = []
                        for k in range(pe):
                            sh = Signal(signed(A + 1), name=f"sh{i}_{k}")
                            m.d.comb += sh.eq(v[k] >> lay.shift)
                            relu.append(Mux(sh < 0, 0, Mux(sh > ACT_MAX, ACT_MAX, sh[:ACT_BITS])))
                        m.d.comb += [wp.en.eq(1), wp.data.eq(Cat(*relu))]
                    else:
                        for cls in range(C):
                            with m.If(g == cls // pe):
                                m.d.sync += scores[cls].eq(v[cls % pe])
                    m.d.sync += g.eq(g + 1)
                    with m.If(g == net.groups(lay) - 1):
                        if i < L - 1:
                            start_layer(i + 1)
                        else:
                            m.d.comb += scan.clear.eq(1)
                            m.next = "ARGMAX"
                    with m.Else():
                        m.next = f"ACC_{i}"
            with m.State("ARGMAX"):
                m.d.comb += scan.en.eq(1)
                with m.If(scan.last):
                    m.next = "OUT"
            with m.State("OUT"):
                m.d.comb += self.m_axis_tvalid.eq(1)
                with m.If(self.m_axis_tready):
                    m.next = "LOAD"
        return m


def generate_mac_verilog(net: MacNet) -> str:
    """Plain Verilog for the MAC core; the top module is named ``net.name``."""
    text = verilog.convert(MacCore(net), name=net.name, emit_src=False)
    if any(lay.weight_store == "ram" for lay in net.layers):
        text += "\n" + RAM16_MODULE
    return text
