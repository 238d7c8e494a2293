"""Reference design for the benchmarks: the same network on a conventional int8 multiply-accumulate
core.

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
* conv layer ``l`` (:class:`MacConv`, before the dense layers; input ``(C, H, W)`` in CHW
  order, the pixels' order for the first layer): ``v = conv2d(a, w, stride, padding) + b`` with
  zero padding, then the 8-bit ReLU above, then max pooling over ``pool x pool`` windows (stride
  ``pool``, rows and columns no window covers are dropped); a dense layer after it reads its
  outputs flattened in CHW order;
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

A conv layer runs on the same lanes: lane ``k`` of group ``g`` is output channel ``g * pe + k``.
Group by group, pooled pixel by pooled pixel (rows, then columns), each conv position of the
pooling window is one window walk of ``K = c_in * k * k`` cycles (channel, kernel row, kernel
column; a tap in the zero padding multiplies 0), then ``DRAIN`` (3 cycles) and ``POOL`` (1
cycle: the lanes' running maximum); after the window's last position ``WRITE`` (1 cycle) stores
the ReLU of the maximum (``max`` commutes with the ReLU, which never decreases). Only conv
positions some pooling window covers are computed. Activations are kept as ``pe``-lane words,
word ``(c // pe) * H * W + y * W + x``; window addresses are running sums (no multiplier
outside the lanes). Per conv layer: ``G * PH * PW * (pool**2 * (K + 4) + 1)`` cycles.

The multipliers (``w_k * a``: signed 8 x unsigned 8 bits) are what ``synth_ice40 -dsp`` maps to
SB_MAC16 and ``synth_ecp5`` to MULT18X18D.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from amaranth.back import verilog
from amaranth.hdl import Array, Cat, ClockSignal, Instance, Module, Mux, Signal, signed
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from nsm_export.ir import signed_bits, unsigned_bits
from nsm_export.layers import conv_out
from .argmax import ArgmaxScan
from .dense import LOAD_BEAT_BITS, RAM16_MODULE, RAM16_NAME, pack_lanes

__all__ = ["MacLayer", "MacConv", "MacNet", "MacCore", "MacError", "random_mac_net",
           "random_mac_conv_net", "mac_reference",
           "mac_latency_cycles", "mac_cycles_per_inference", "mac_dense_bound", "mac_multiplies",
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
class MacConv:
    """One conv layer: ``weights`` ``(c_out, c_in, k, k)``, ``bias`` ``(c_out,)``, stride, zero
    padding, the max-pooling window after the ReLU (1: none), the requantization ``shift`` and
    the weight store. Its weight matrix (one row per output channel, taps in ``(c, i, j)``
    order) is what the lanes walk."""
    weights: np.ndarray
    bias: np.ndarray
    stride: int = 1
    padding: int = 0
    pool: int = 1
    shift: int = 0
    weight_store: str = "rom"

    @property
    def kernel(self) -> int:
        return self.weights.shape[-1]

    @property
    def c_in(self) -> int:
        return self.weights.shape[1]

    @property
    def n_in(self) -> int:
        """Taps per output: the window walk's length ``K``."""
        return self.c_in * self.kernel * self.kernel

    @property
    def n_out(self) -> int:
        return self.weights.shape[0]

    @property
    def matrix(self) -> np.ndarray:
        return np.asarray(self.weights).reshape(self.n_out, -1)

    def conv_shape(self, shape: tuple) -> tuple:
        """Conv output ``(c_out, OH, OW)`` for input ``(C, H, W)``."""
        _, h, w = shape
        k, s, pad = self.kernel, self.stride, self.padding
        return self.n_out, conv_out(h, k, s, pad), conv_out(w, k, s, pad)

    def out_shape(self, shape: tuple) -> tuple:
        c, oh, ow = self.conv_shape(shape)
        return c, oh // self.pool, ow // self.pool

    def positions(self, shape: tuple) -> int:
        """Conv positions computed for input ``shape``: those some pooling window covers."""
        _, ph, pw = self.out_shape(shape)
        return ph * pw * self.pool ** 2


def _matrix(layer) -> np.ndarray:
    return layer.matrix if isinstance(layer, MacConv) else np.asarray(layer.weights)


@dataclass(frozen=True)
class MacNet:
    """An integer network for :class:`MacCore`: layers (conv layers first, then dense ones),
    ``pe`` lanes, weight width, top name, and the pixels' ``input_shape`` ``(C, H, W)`` (needed
    when the first layer is a conv layer; a dense first layer takes ``n_in`` pixels)."""
    layers: tuple
    pe: int
    weight_bits: int = 8
    name: str = "mac"
    input_shape: tuple | None = None

    def validate(self) -> None:
        if not self.layers:
            raise MacError("a MAC network needs at least one layer")
        if not isinstance(self.pe, int) or self.pe < 1:
            raise MacError(f"pe {self.pe!r} must be a positive integer")
        if self.weight_bits not in range(2, 9):
            raise MacError(f"weight_bits {self.weight_bits!r} must be in [2, 8]")
        q = 1 << (self.weight_bits - 1)
        if isinstance(self.layers[-1], MacConv):
            raise MacError("the last layer must be a dense layer (it gives the scores)")
        if self.input_shape is not None and (
                len(self.input_shape) != 3 or min(self.input_shape) < 1):
            raise MacError(f"input_shape {self.input_shape!r} must be (C, H, W), all positive")
        shape = self.input_shape
        for i, layer in enumerate(self.layers):
            w, b = np.asarray(layer.weights), np.asarray(layer.bias)
            if isinstance(layer, MacConv):
                shape = self._check_conv(i, layer, shape)
            else:
                if w.ndim != 2 or b.shape != (w.shape[0],):
                    raise MacError(f"layers[{i}]: weights {w.shape} and bias {b.shape} do not "
                                   f"match")
                if shape is not None and w.shape[1] != int(np.prod(shape)):
                    given = f"layer {i - 1} gives" if i else f"input_shape {tuple(shape)} gives"
                    raise MacError(f"layers[{i}] takes {w.shape[1]} inputs, {given} "
                                   f"{int(np.prod(shape))}")
                shape = (w.shape[0], 1, 1)
            if w.min() < -q or w.max() >= q:
                raise MacError(f"layers[{i}]: weights outside [{-q}, {q - 1}] "
                               f"({self.weight_bits} bits)")
            if not 0 <= layer.shift < 32:
                raise MacError(f"layers[{i}].shift {layer.shift} must be in [0, 31]")
            if layer.weight_store not in ("rom", "ram"):
                raise MacError(f"layers[{i}].weight_store {layer.weight_store!r} must be rom "
                               f"or ram")

    def _check_conv(self, i: int, layer: MacConv, shape) -> tuple:
        w, b = np.asarray(layer.weights), np.asarray(layer.bias)
        if w.ndim != 4 or w.shape[2] != w.shape[3] or b.shape != (w.shape[0],):
            raise MacError(f"layers[{i}]: conv weights {w.shape} (want (c_out, c_in, k, k)) and "
                           f"bias {b.shape} do not match")
        if i and not isinstance(self.layers[i - 1], MacConv):
            raise MacError(f"layers[{i}]: a conv layer after a dense layer is not supported")
        if shape is None:
            raise MacError("a conv first layer needs the network's input_shape (C, H, W)")
        if shape[0] != layer.c_in:
            raise MacError(f"layers[{i}] takes {layer.c_in} channels, its input has {shape[0]}")
        if layer.stride < 1 or not 0 <= layer.padding < layer.kernel or layer.pool < 1:
            raise MacError(f"layers[{i}]: stride {layer.stride}, padding {layer.padding}, pool "
                           f"{layer.pool} (want stride >= 1, 0 <= padding < kernel, pool >= 1)")
        out = layer.out_shape(shape)
        if min(out[1:]) < 1:
            raise MacError(f"layers[{i}]: a {layer.kernel}x{layer.kernel} kernel, stride "
                           f"{layer.stride}, pool {layer.pool} leave no output of {tuple(shape)}")
        return out

    def shapes(self) -> list[tuple]:
        """Each layer's input shape ``(C, H, W)``; a dense layer's output is ``(n_out, 1, 1)``."""
        shape = tuple(self.input_shape) if self.input_shape is not None \
            else (1, 1, self.layers[0].n_in)
        out = []
        for layer in self.layers:
            out.append(shape)
            shape = layer.out_shape(shape) if isinstance(layer, MacConv) else (layer.n_out, 1, 1)
        return out

    @property
    def n_in(self) -> int:
        if self.input_shape is not None:
            return int(np.prod(self.input_shape))
        return self.layers[0].n_in

    @property
    def n_classes(self) -> int:
        return self.layers[-1].n_out

    def groups(self, layer) -> int:
        return -(-layer.n_out // self.pe)

    def acc_bits(self) -> int:
        """Signed width that holds ``sum w a + b`` of every neuron of every layer."""
        worst = max(int((np.abs(_matrix(lay)).sum(axis=1) * ACT_MAX
                         + np.abs(np.asarray(lay.bias))).max()) for lay in self.layers)
        return signed_bits(-worst - 1, worst)

    def bias_bits(self, layer) -> int:
        m = int(np.abs(np.asarray(layer.bias)).max(initial=0))
        return signed_bits(-m - 1, m)

    @property
    def class_bits(self) -> int:
        return unsigned_bits(max(1, self.n_classes - 1))


def _random_shift(q: int, n_in: int) -> int:
    """The shift that puts a typical neuron (``sqrt(n_in)`` random terms of weight ``~q`` and
    mean activation 128) in the middle of the 8-bit range."""
    return max(0, int(np.ceil(np.log2(q * 128 * np.sqrt(n_in) / 2 / 128))))


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
        shift = _random_shift(q, n_in) if i < len(sizes) - 2 else 0
        layers.append(MacLayer(w, b, shift, stores[i]))
    net = MacNet(tuple(layers), pe, weight_bits, name)
    net.validate()
    return net


def random_mac_conv_net(rng: np.random.Generator, input_shape: tuple, convs: list[tuple],
                        sizes: list[int], pe: int, weight_bits: int = 8,
                        weight_store: str | list[str] = "rom", name: str = "mac") -> MacNet:
    """Random conv layers ``convs`` (``(c_out, kernel, stride, padding, pool)`` each) on
    ``input_shape``, then dense layers of ``sizes`` (the classes last), shifts as in
    :func:`random_mac_net`."""
    q = 1 << (weight_bits - 1)
    n_layers = len(convs) + len(sizes)
    stores = list(weight_store) if isinstance(weight_store, (list, tuple)) \
        else [weight_store] * n_layers
    layers, shape = [], tuple(input_shape)
    for c_out, k, stride, pad, pool in convs:
        conv = MacConv(rng.integers(-q, q, (c_out, shape[0], k, k)),
                       rng.integers(-q * 64, q * 64 + 1, c_out), stride, pad, pool,
                       _random_shift(q, shape[0] * k * k), stores[len(layers)])
        layers.append(conv)
        shape = conv.out_shape(shape)
    n_in = int(np.prod(shape))
    for i, n_out in enumerate(sizes):
        layers.append(MacLayer(rng.integers(-q, q, (n_out, n_in)),
                               rng.integers(-q * 64, q * 64 + 1, n_out),
                               _random_shift(q, n_in) if i < len(sizes) - 1 else 0,
                               stores[len(layers)]))
        n_in = n_out
    net = MacNet(tuple(layers), pe, weight_bits, name, tuple(input_shape))
    net.validate()
    return net


def _conv_relu_pool(layer: MacConv, a: np.ndarray) -> np.ndarray:
    """``a`` ``(N, C, H, W)`` -> the layer's 8-bit outputs ``(N, c_out, PH, PW)``."""
    k, s, pad, P = layer.kernel, layer.stride, layer.padding, layer.pool
    a = np.pad(a, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(a, (k, k), axis=(2, 3))[:, :, ::s, ::s]
    v = np.einsum("nchwij,ocij->nohw", win, np.asarray(layer.weights, np.int64),
                  optimize=True) + np.asarray(layer.bias, np.int64)[None, :, None, None]
    a = np.clip(v >> layer.shift, 0, ACT_MAX)
    n, c, oh, ow = a.shape
    ph, pw = oh // P, ow // P
    return a[:, :, :ph * P, :pw * P].reshape(n, c, ph, P, pw, P).max(axis=(3, 5))


def mac_reference(net: MacNet, pixels) -> tuple[np.ndarray, np.ndarray]:
    """The integer network on ``pixels`` ``(N, n_in)`` (CHW order for a conv first layer):
    classes ``(N,)`` and scores ``(N, C)``."""
    a = np.asarray(pixels, dtype=np.int64)
    if a.ndim != 2 or a.shape[1] != net.n_in or a.min(initial=0) < 0 or a.max(initial=0) > ACT_MAX:
        raise MacError(f"pixels must be (N, {net.n_in}) integers in [0, {ACT_MAX}], "
                       f"not {a.shape}")
    for i, (layer, shape) in enumerate(zip(net.layers, net.shapes())):
        if isinstance(layer, MacConv):
            a = _conv_relu_pool(layer, a.reshape(len(a), *shape)).reshape(len(a), -1)
            continue
        v = a @ np.asarray(layer.weights, dtype=np.int64).T + np.asarray(layer.bias, np.int64)
        a = np.clip(v >> layer.shift, 0, ACT_MAX) if i < len(net.layers) - 1 else v
    return np.argmax(a, axis=1), a


def _layer_cycles(net: MacNet, layer, shape) -> int:
    if isinstance(layer, MacConv):
        # per pooled pixel: pool**2 window walks (+ DRAIN + POOL), then one WRITE
        pooled = layer.positions(shape) // layer.pool ** 2
        return net.groups(layer) * (layer.positions(shape) * (layer.n_in + DRAIN + 1) + pooled)
    return net.groups(layer) * (layer.n_in + DRAIN + 1)


def mac_latency_cycles(net: MacNet) -> int:
    """Clock edges from the last pixel's handshake to ``m_axis_tvalid`` going high."""
    return sum(_layer_cycles(net, lay, shape) for lay, shape in zip(net.layers, net.shapes())) \
        + net.n_classes + 1


def mac_cycles_per_inference(net: MacNet) -> int:
    """Per image, back to back: load the pixels, compute, hand over the result."""
    return net.n_in + mac_latency_cycles(net) + 1


def mac_multiplies(net: MacNet) -> int:
    """Multiplies of one inference: every tap of every computed conv position (those the
    pooling covers), every weight of every dense layer."""
    return sum((lay.positions(shape) if isinstance(lay, MacConv) else 1) * lay.n_in * lay.n_out
               for lay, shape in zip(net.layers, net.shapes()))


def mac_dense_bound(net: MacNet) -> float:
    """Multiplies over lanes: what a dense schedule of this core needs at best."""
    return mac_multiplies(net) / net.pe


def _weight_words(net: MacNet, layer) -> list[int]:
    pe, out = net.pe, []
    w = _matrix(layer)
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
        shapes = net.shapes()
        convs = [i for i, lay in enumerate(net.layers) if isinstance(lay, MacConv)]

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
        ok = Signal(init=1)                    # the tap is inside the input (not padding)

        # Activation memories: the pixels (8 bits, n0 deep, CHW order), then each hidden
        # layer's outputs as pe-lane words: word (c // pe) * H * W + y * W + x.
        def out_words(i):
            lay = net.layers[i]
            pix = int(np.prod(lay.out_shape(shapes[i])[1:])) if i in convs else 1
            return net.groups(lay) * pix

        m.submodules.act0 = act0 = memory.Memory(shape=ACT_BITS, depth=max(2, n0), init=[])
        px_wr, a0_rd = act0.write_port(), act0.read_port()
        acts = [None]
        for i, lay in enumerate(net.layers[:-1]):
            mem = memory.Memory(shape=pe * ACT_BITS, depth=max(2, out_words(i)), init=[])
            m.submodules[f"act{i + 1}"] = mem
            acts.append((mem.write_port(), mem.read_port()))

        # Walk state of conv layers and of a dense layer after one (only built when needed).
        conv_in = [i for i in range(L) if i in convs or (i and i - 1 in convs)]
        if conv_in:
            # |cb + ya + x| stays below the input's words plus a padded window's span.
            span = [(shapes[i][1] + 2 * net.layers[i].padding + net.layers[i].kernel
                     + net.layers[i].pool * net.layers[i].stride) * (shapes[i][2] + 1)
                    for i in convs]
            bound = 4 + max(out_words(i - 1) if i else n0 for i in conv_in) + max(span or [0])
            sw = signed(signed_bits(-bound, bound))
            cb = Signal(sw)                    # the input channel's first word
            pix = Signal(range(max(2, max(shapes[i][1] * shapes[i][2] for i in conv_in))))
        if convs:
            kmax = max(net.layers[i].kernel for i in convs)
            pmax = max(net.layers[i].pool for i in convs)
            ki, kj = Signal(range(max(2, kmax))), Signal(range(max(2, kmax)))
            di, dj = Signal(range(max(2, pmax))), Signal(range(max(2, pmax)))
            ppy = Signal(range(max(2, max(net.layers[i].out_shape(shapes[i])[1] for i in convs))))
            ppx = Signal(range(max(2, max(net.layers[i].out_shape(shapes[i])[2] for i in convs))))
            y, ya, x, y0, ya0, x0 = (Signal(sw, name=n) for n in ("y", "ya", "x", "y0", "ya0",
                                                                   "x0"))
            wbase = Signal.like(waddr)
            wa = Signal(range(max(2, max(out_words(i) for i in convs))))
            fin_first, fin_last, fin_group, fin_done = Signal(), Signal(), Signal(), Signal()
            best = [Signal(signed(A), name=f"best{k}") for k in range(pe)]

        # Read addresses: each memory is read by one layer only.
        def read_addr(i):
            if i in convs:
                return cb + ya + x
            if i and i - 1 in convs:
                return cb + pix
            return j if i == 0 else jw

        m.d.comb += a0_rd.addr.eq(read_addr(0))
        for i in range(1, L):
            m.d.comb += acts[i][1].addr.eq(read_addr(i))
        for i in range(L - 1):
            m.d.comb += acts[i + 1][0].addr.eq(wa if i in convs else g)

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
        a_now = Array(asel)[cur] if L > 1 else asel[0]
        if convs:
            ok1 = Signal()
            m.d.sync += [ok1.eq(ok), aop.eq(Mux(ok1, a_now, 0))]
        else:
            m.d.sync += aop.eq(a_now)
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

        def relu(i, values):
            out = []
            for k, v in enumerate(values):
                sh = Signal(signed(A + 1), name=f"sh{i}_{k}")
                m.d.comb += sh.eq(v >> net.layers[i].shift)
                out.append(Mux(sh < 0, 0, Mux(sh > ACT_MAX, ACT_MAX, sh[:ACT_BITS])))
            return Cat(*out)

        def first_origin(i, row, row_w, col):
            """``row``, ``row_w``, ``col`` := conv layer ``i``'s first window corner."""
            pad = net.layers[i].padding
            return [row.eq(-pad), row_w.eq(-pad * shapes[i][2]), col.eq(-pad)]

        def start_layer(i):
            m.d.sync += [j.eq(0), jw.eq(0), jl.eq(0), g.eq(0), waddr.eq(0), cur.eq(i)]
            if i in conv_in:
                m.d.sync += [cb.eq(0), pix.eq(0)]
            if i in convs:
                m.d.sync += [ki.eq(0), kj.eq(0), di.eq(0), dj.eq(0), ppx.eq(0), ppy.eq(0),
                             wbase.eq(0), wa.eq(0), *first_origin(i, y0, ya0, x0),
                             *first_origin(i, y, ya, x)]
            m.next = f"ACC_{i}"

        def next_channel(i):
            """Advance the input channel: a pixel word per channel (layer 0) or a lane."""
            hw_ = shapes[i][1] * shapes[i][2]
            if i == 0:
                m.d.sync += cb.eq(cb + hw_)
            else:
                m.d.sync += jl.eq(jl + 1)
                with m.If(jl == pe - 1):
                    m.d.sync += [jl.eq(0), cb.eq(cb + hw_)]

        def conv_acc(i):
            lay, (_, H, W_) = net.layers[i], shapes[i]
            k, s, P, K = lay.kernel, lay.stride, lay.pool, lay.n_in
            _, PH, PW = lay.out_shape(shapes[i])
            m.d.comb += [issue.eq(1), first.eq(j == 0),
                         ok.eq((y >= 0) & (y < H) & (x >= 0) & (x < W_))]
            m.d.sync += [waddr.eq(waddr + 1), j.eq(j + 1), kj.eq(kj + 1), x.eq(x + 1)]
            with m.If(kj == k - 1):
                m.d.sync += [kj.eq(0), x.eq(x0), ki.eq(ki + 1), y.eq(y + 1), ya.eq(ya + W_)]
                with m.If(ki == k - 1):
                    m.d.sync += [ki.eq(0), y.eq(y0), ya.eq(ya0)]
                    next_channel(i)
            with m.If(j == K - 1):
                # The window is walked: move its origin to the next pool offset, pooled pixel
                # or group (DRAIN loads it into the walk registers).
                last_off = (di == P - 1) & (dj == P - 1)
                group_done = last_off & (ppx == PW - 1) & (ppy == PH - 1)
                m.d.sync += [j.eq(0), cb.eq(0), jl.eq(0), drain.eq(0), waddr.eq(wbase),
                             fin_first.eq((di == 0) & (dj == 0)), fin_last.eq(last_off),
                             fin_group.eq(group_done),
                             fin_done.eq(group_done & (g == net.groups(lay) - 1))]
                m.next = f"DRAIN_{i}"
                with m.If(dj != P - 1):
                    m.d.sync += [dj.eq(dj + 1), x0.eq(x0 + s)]
                with m.Elif(di != P - 1):
                    m.d.sync += [dj.eq(0), di.eq(di + 1), y0.eq(y0 + s), ya0.eq(ya0 + s * W_),
                                 x0.eq(x0 - (P - 1) * s)]
                with m.Else():
                    m.d.sync += [di.eq(0), dj.eq(0)]
                    with m.If(ppx != PW - 1):
                        m.d.sync += [ppx.eq(ppx + 1), y0.eq(y0 - (P - 1) * s),
                                     ya0.eq(ya0 - (P - 1) * s * W_), x0.eq(x0 + s)]
                    with m.Elif(ppy != PH - 1):
                        m.d.sync += [ppx.eq(0), ppy.eq(ppy + 1), y0.eq(y0 + s),
                                     ya0.eq(ya0 + s * W_), x0.eq(-lay.padding)]
                    with m.Else():
                        m.d.sync += [ppx.eq(0), ppy.eq(0), waddr.eq(wbase + K),
                                     wbase.eq(wbase + K), *first_origin(i, y0, ya0, x0)]

        def dense_acc(i, lay):
            m.d.comb += [issue.eq(1), first.eq(j == 0)]
            m.d.sync += [waddr.eq(waddr + 1), j.eq(j + 1)]
            if i and i - 1 in convs:
                hw_ = shapes[i][1] * shapes[i][2]
                m.d.sync += pix.eq(pix + 1)
                with m.If(pix == hw_ - 1):
                    m.d.sync += pix.eq(0)
                    next_channel(i)
            else:
                m.d.sync += jl.eq(jl + 1)
                with m.If(jl == pe - 1):
                    m.d.sync += [jl.eq(0), jw.eq(jw + 1)]
            with m.If(j == lay.n_in - 1):
                m.d.sync += [j.eq(0), jl.eq(0), jw.eq(0), drain.eq(0)]
                if i and i - 1 in convs:
                    m.d.sync += [pix.eq(0), cb.eq(0)]
                m.next = f"DRAIN_{i}"

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
                conv = i in convs
                with m.State(f"ACC_{i}"):
                    if conv:
                        conv_acc(i)
                    else:
                        dense_acc(i, lay)
                with m.State(f"DRAIN_{i}"):
                    m.d.sync += drain.eq(drain + 1)
                    if conv:
                        m.d.sync += [y.eq(y0), ya.eq(ya0), x.eq(x0)]
                    with m.If(drain == DRAIN - 1):
                        m.next = f"POOL_{i}" if conv else f"WRITE_{i}"
                if conv:
                    with m.State(f"POOL_{i}"):
                        for k in range(pe):
                            m.d.sync += best[k].eq(Mux(fin_first | (accs[k] > best[k]), accs[k],
                                                       best[k]))
                        with m.If(fin_last):
                            m.next = f"WRITE_{i}"
                        with m.Else():
                            m.next = f"ACC_{i}"
                    with m.State(f"WRITE_{i}"):
                        m.d.comb += [acts[i + 1][0].en.eq(1), acts[i + 1][0].data.eq(relu(i, best))]
                        m.d.sync += wa.eq(wa + 1)
                        with m.If(fin_group):
                            m.d.sync += g.eq(g + 1)
                        with m.If(fin_done):
                            start_layer(i + 1)
                        with m.Else():
                            m.next = f"ACC_{i}"
                    continue
                with m.State(f"WRITE_{i}"):
                    if i < L - 1:
                        m.d.comb += [acts[i + 1][0].en.eq(1), acts[i + 1][0].data.eq(relu(i, accs))]
                    else:
                        for cls in range(C):
                            with m.If(g == cls // pe):
                                m.d.sync += scores[cls].eq(accs[cls % pe])
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
