"""The integer IR: the contract between the compiler, the golden model and the hardware.

An IR is a directory with two files a person can read:

``ir.json``
    Format version, the input encoding, one record per layer (sizes, bit widths, quantized
    sampling probability, LFSR spec, folding), the number of Monte Carlo samples ``T`` and the
    output rule.
``weights.npz``
    Integer arrays ``layer{i}_weights`` (``n_out × n_in``) and ``layer{i}_threshold`` (hidden
    layers) or ``layer{i}_bias`` (the output layer). Loaded with ``allow_pickle=False``.

Semantics (executed by :mod:`nsm_export.golden`, built by :mod:`hw`):

* Input encoding ``threshold``: pixel ``x`` (unsigned, ``pixel_bits`` wide) becomes the spike
  ``z = +1 if x >= threshold else -1``. ``thermometer``: pixel ``j`` becomes ``levels`` spikes,
  ``+1 if x_j >= thresholds[k]``, numbered ``j * levels + k`` (``pixel-major``) or
  ``k * size + j`` (``level-major``); see :class:`InputSpec`.
* A dense layer with ``p < 1`` draws one blank-out bit per input and sample, shared by all of its
  neurons: ``xi_j = (u_j < p_num)`` where ``u_j`` is the low ``p_bits`` bits of the layer's LFSR
  after ``leap`` more steps. Draws are made for ``j = 0 .. n_in-1`` in order, sample after sample,
  image after image; the LFSR is never reset between images. With ``p = 1`` no bits are drawn.
  ``lanes`` (1, 2, 4, 8 or 16) is how many of these draws the hardware makes per clock, by
  jumping ahead ``leap``, ``2*leap``, ... steps at once; it changes the schedule, never the stream.
  ``simd`` (1, 2 or 4) is how many kept inputs a neuron group adds per clock (schedule only;
  a sampling layer needs ``simd <= lanes``, the kept list's banks give one entry each a clock).
* ``weight_store``: ``rom`` weights are part of the bitstream; ``ram`` weights (for memories the
  bitstream cannot initialize, such as iCE40 SPRAM) are written once after configuration through
  the core's ``w_axis`` port, in the order :func:`hw.top.weight_image` gives. Semantics are the
  same either way.
* ``acc_i = sum_j xi_j * z_j * w_ij`` (integers). Hidden neuron: ``z_i = +1 if acc_i >=
  threshold_i else -1``. Output neuron: ``score_c += acc_c + bias_c`` over the ``T`` samples.
* The class is the index of the largest score; ties go to the lowest index.

Version 2 adds two layer kinds for spike maps ``(C, H, W)`` (flattened channel-major, row-major:
index ``(c*H + y)*W + x``, the order PyTorch's ``reshape`` and ONNX ``Flatten`` use):

* ``conv2d`` (:class:`ConvLayer`): ``c_out`` filters ``k × k`` over ``c_in`` channels, ``stride``,
  zero ``padding`` (padded positions contribute 0, they are not inputs). Blank-out is per input
  *element*, exactly as in a dense layer with ``n_in = c_in*H*W``: one bit per element and sample,
  shared by every filter and position that reads it, drawn for element index ``j = 0 .. n_in-1``
  in the flattened order above, ``leap`` LFSR steps per bit. Then
  ``acc[o, y, x] = sum_{c,i,j} w[o,c,i,j] * xi * z[c, y*stride+i-padding, x*stride+j-padding]``
  and ``z[o, y, x] = +1 iff acc[o, y, x] >= threshold[o]``; output ``H' = (H + 2 padding - k) //
  stride + 1`` (same for ``W``). A conv layer is never the output layer. Its ``pe`` (filters in
  parallel) and ``lanes`` (window channels the hardware tests a clock) change the schedule only,
  as does ``line_rows`` (0, the default and what files without it get: the input map is kept
  whole, double-buffered; ``R > 0``: a ring of ``R`` input rows that the conv layer before
  writes row by row; allowed only after a conv layer (or its pooling), with ``R`` at least
  :func:`min_line_rows`; written to ``ir.json`` only when set).
* ``pool`` (:class:`PoolLayer`): non-overlapping ``size × size`` windows (stride ``size``, the
  rows and columns past the last whole window are dropped), no noise, no random bits.
  ``or``: ``+1`` iff any spike in the window is ``+1``; ``majority``: ``+1`` iff at least half of
  them are ``+1`` (``sum >= 0`` on ±1).

Layer order: zero or more ``conv2d``/``pool`` layers (each taking the previous map, the first the
input spikes seen as a ``c_in × H × W`` map), then one or more ``dense`` layers, the last one the
output. Version 1 files (dense layers only; the same dense semantics) still load.
* A run seed ``S`` (the core's ``seed`` port, 32 bits, between images) sets every LFSR to
  ``LfsrSpec.reseeded(S)``; reset returns them to their seeds.

Validation on load checks every field, every array's shape and range, and that every register
width in the file can hold the worst case its weights allow, so a valid IR cannot overflow.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import lfsr
from nsm_common.atomic import atomic_write

__all__ = [
    "IR_VERSION", "READ_VERSIONS", "IRError", "InputSpec", "LfsrSpec", "DenseLayer", "ConvLayer",
    "PoolLayer", "IR", "min_line_rows", "use_line_buffers", "signed_bits", "unsigned_bits", "load",
    "save",
]

IR_VERSION = 2
#: Versions :func:`load` reads; version 1 (dense layers only) means the same as version 2.
READ_VERSIONS = (1, 2)
MAX_KERNEL = 15
POOL_MODES = ("or", "majority")
IR_FILE = "ir.json"
WEIGHTS_FILE = "weights.npz"
MAX_WEIGHT_BITS = 8
MAX_P_BITS = 16
MAX_SAMPLES = 1 << 16
LANES = (1, 2, 4, 8, 16)
SIMD = (1, 2, 4)
WEIGHT_STORES = ("rom", "ram")


class IRError(ValueError):
    """An IR that is malformed or inconsistent; the message names the field."""


def signed_bits(lo: int, hi: int) -> int:
    """Smallest two's-complement width holding every integer in ``[lo, hi]``."""
    n = 1
    while not (-(1 << (n - 1)) <= lo and hi <= (1 << (n - 1)) - 1):
        n += 1
    return n


def unsigned_bits(hi: int) -> int:
    return max(1, int(hi).bit_length())


ENCODINGS = ("threshold", "thermometer", "bernoulli")
MAX_PROB_PIXEL_BITS = 12
LAYOUTS = ("pixel-major", "level-major")


@dataclass(frozen=True)
class InputSpec:
    """How ``size`` unsigned ``pixel_bits``-bit pixels become ±1 input spikes.

    ``threshold``: one spike per pixel, ``+1 iff pixel >= threshold``.
    ``thermometer``: one spike per pixel and level ``k``, ``+1 iff pixel >= thresholds[k]``;
    ``layout`` ``pixel-major`` numbers them ``j * levels + k`` (pixel ``j``; what the hardware
    builds), ``level-major`` ``k * size + j`` (channels of an image: conv networks).
    ``bernoulli`` (stochastic): one spike per pixel, drawn anew for every sample: for pixels
    ``j = 0 .. size-1`` in order, ``u_j`` = the low ``prob_bits`` bits of the encoder LFSR
    ``rng`` after ``leap`` more steps, and ``z_j = +1 iff u_j < probs[x_j]`` (so
    ``P(+1) = probs[x] / 2**prob_bits``), image after image, sample after sample. The encoder's
    LFSR is its own; like the layers' it is reset only by reset and reseeded by a run seed.
    """
    size: int
    threshold: int
    pixel_bits: int = 8
    encoding: str = "threshold"
    thresholds: tuple = ()
    layout: str = "pixel-major"
    prob_bits: int = 0
    probs: tuple = ()
    rng: "LfsrSpec | None" = None

    @property
    def levels(self) -> int:
        return len(self.thresholds) if self.encoding == "thermometer" else 1

    @property
    def n_spikes(self) -> int:
        """Input spikes per image: what the first layer reads."""
        return self.size * self.levels

    def validate(self) -> None:
        _check_int("input.size", self.size, 1, 1 << 20)
        _check_int("input.pixel_bits", self.pixel_bits, 1, 16)
        if self.encoding not in ENCODINGS:
            raise IRError(f"input.encoding {self.encoding!r} is not supported "
                          f"({', '.join(ENCODINGS)})")
        _check_int("input.threshold", self.threshold, 0, 1 << self.pixel_bits)
        if self.encoding == "thermometer":
            if (not isinstance(self.thresholds, (list, tuple))
                    or not 1 <= len(self.thresholds) <= 64):
                raise IRError("input.thresholds: thermometer encoding needs 1 to 64 thresholds")
            for k, t in enumerate(self.thresholds):
                _check_int(f"input.thresholds[{k}]", t, 0, 1 << self.pixel_bits)
            if self.layout not in LAYOUTS:
                raise IRError(f"input.layout {self.layout!r} must be one of {', '.join(LAYOUTS)}")
        elif self.thresholds:
            raise IRError("input.thresholds are given but the encoding is not 'thermometer'")
        if self.encoding == "bernoulli":
            if self.pixel_bits > MAX_PROB_PIXEL_BITS:
                raise IRError(f"input.pixel_bits {self.pixel_bits}: bernoulli encoding takes at "
                              f"most {MAX_PROB_PIXEL_BITS}-bit pixels (one probability each)")
            _check_int("input.prob_bits", self.prob_bits, 1, MAX_P_BITS)
            if not isinstance(self.probs, (list, tuple)) or len(self.probs) != 1 << self.pixel_bits:
                raise IRError(f"input.probs must list {1 << self.pixel_bits} values, one per "
                              f"pixel value")
            for k, q in enumerate(self.probs):
                _check_int(f"input.probs[{k}]", q, 0, 1 << self.prob_bits)
            if not isinstance(self.rng, LfsrSpec):
                raise IRError("input.rng: bernoulli encoding needs an LFSR spec")
            self.rng.validate("input.rng", self.prob_bits)
        elif self.probs or self.rng is not None or self.prob_bits:
            raise IRError("input.probs/prob_bits/rng are given but the encoding is not 'bernoulli'")


@dataclass(frozen=True)
class LfsrSpec:
    """Galois LFSR: ``width`` bits, feedback ``mask``, reset ``seed``, ``leap`` steps per draw."""
    width: int
    mask: int
    seed: int
    leap: int

    def validate(self, where: str, p_bits: int) -> None:
        _check_int(f"{where}.width", self.width, lfsr.MIN_WIDTH, lfsr.MAX_WIDTH)
        if self.mask != lfsr.galois_mask(self.width):
            raise IRError(f"{where}.mask {self.mask:#x} is not the maximal-length mask for "
                          f"{self.width} bits ({lfsr.galois_mask(self.width):#x})")
        if not isinstance(self.seed, int) or self.seed == 0:
            raise IRError(f"{where}.seed must be a non-zero integer "
                          f"(zero is the LFSR lock-up state)")
        _check_int(f"{where}.seed", self.seed, 1, (1 << self.width) - 1)
        if self.width < p_bits:
            raise IRError(f"{where}.width {self.width} is narrower than p_bits {p_bits}")
        _check_int(f"{where}.leap", self.leap, p_bits, 4 * self.width)

    def reseeded(self, seed: int) -> int:
        """The state a run seed loads: ``(seed XOR reset seed)`` on ``width`` bits, or the reset
        seed where that would be the lock-up state 0. The hardware computes exactly this."""
        s = (int(seed) ^ self.seed) & ((1 << self.width) - 1)
        return s if s else self.seed


@dataclass
class DenseLayer:
    """One fully connected NSM layer (see the module docstring for its semantics)."""
    n_in: int
    n_out: int
    weights: np.ndarray            # int64, (n_out, n_in)
    offsets: np.ndarray            # int64, (n_out,): thresholds (hidden) or biases (output)
    output: bool                   # True for the last layer (integer scores, no step)
    weight_bits: int
    p_num: int                     # blank-out keep probability is p_num / 2**p_bits
    p_bits: int
    rng: LfsrSpec | None           # None exactly when p_num == 2**p_bits (p = 1)
    pe: int                        # neuron lanes working in parallel
    acc_bits: int                  # signed accumulator width
    offset_bits: int               # signed width of thresholds/biases
    lanes: int = 1                 # blank-out draws per clock (schedule only, not semantics)
    weight_store: str = "rom"      # "rom": initialized memory; "ram": loaded through w_axis
    simd: int = 1                  # kept inputs added per clock (schedule only, not semantics)
    kind = "dense"

    @property
    def p(self) -> float:
        return self.p_num / (1 << self.p_bits)

    @property
    def sampling(self) -> bool:
        return self.p_num < (1 << self.p_bits)

    @property
    def groups(self) -> int:
        return -(-self.n_out // self.pe)

    def required_acc_bits(self) -> int:
        l1 = np.abs(self.weights).sum(axis=1)
        if self.output:
            lo = int((-l1 + self.offsets).min())
            hi = int((l1 + self.offsets).max())
        else:
            lo = int(min((-l1).min(), self.offsets.min()))
            hi = int(max(l1.max(), self.offsets.max()))
        return signed_bits(lo, hi)

    def validate(self, where: str) -> None:
        _check_int(f"{where}.n_in", self.n_in, 1, 1 << 20)
        _check_int(f"{where}.n_out", self.n_out, 1, 1 << 20)
        _check_int(f"{where}.pe", self.pe, 1, self.n_out)
        _check_array(f"{where}.weights", self.weights, (self.n_out, self.n_in))
        _check_array(f"{where}.{'bias' if self.output else 'threshold'}", self.offsets,
                     (self.n_out,))
        _check_weighted(self, where)
        if self.weight_store not in WEIGHT_STORES:
            raise IRError(f"{where}.weight_store {self.weight_store!r} must be one of "
                          f"{', '.join(WEIGHT_STORES)}")
        if self.lanes not in LANES:
            raise IRError(f"{where}.lanes {self.lanes!r} must be one of "
                          f"{', '.join(map(str, LANES))}")
        if not self.sampling and self.lanes != 1:
            raise IRError(f"{where}.lanes {self.lanes} needs sampling: p = 1 draws no random bits")
        if self.simd not in SIMD:
            raise IRError(f"{where}.simd {self.simd!r} must be one of {', '.join(map(str, SIMD))}")
        if self.sampling and self.simd > self.lanes:
            raise IRError(f"{where}.simd {self.simd} exceeds lanes {self.lanes}: the kept list "
                          f"gives one entry per bank and clock (raise lanes to {self.simd})")

    def meta(self) -> dict:
        return {
            "kind": self.kind, "n_in": self.n_in, "n_out": self.n_out, "output": self.output,
            "weight_bits": self.weight_bits, "p_num": self.p_num, "p_bits": self.p_bits,
            "p": self.p, "rng": asdict(self.rng) if self.rng else None, "pe": self.pe,
            "acc_bits": self.acc_bits, "offset_bits": self.offset_bits, "lanes": self.lanes,
            "weight_store": self.weight_store, "simd": self.simd,
        }



def _check_weighted(layer, where: str) -> None:
    """Checks a dense and a conv layer share: weight range, blank-out spec, register widths."""
    _check_int(f"{where}.weight_bits", layer.weight_bits, 1, MAX_WEIGHT_BITS)
    _check_int(f"{where}.p_bits", layer.p_bits, 1, MAX_P_BITS)
    _check_int(f"{where}.p_num", layer.p_num, 1, 1 << layer.p_bits)
    wmax = (1 << (layer.weight_bits - 1)) - 1 if layer.weight_bits > 1 else 1
    if layer.weights.size and (layer.weights.min() < -wmax or layer.weights.max() > wmax):
        raise IRError(f"{where}.weights hold values outside [{-wmax}, {wmax}] for "
                      f"weight_bits {layer.weight_bits}")
    if layer.weight_bits == 1 and np.any(layer.weights == 0):
        raise IRError(f"{where}.weights: 1-bit weights must be -1 or +1")
    if layer.sampling:
        if layer.rng is None:
            raise IRError(f"{where}.rng is missing but p = {layer.p} < 1 needs an LFSR")
        if not isinstance(layer.rng, LfsrSpec):
            raise IRError(f"{where}.rng must be an LFSR spec")
        layer.rng.validate(f"{where}.rng", layer.p_bits)
    elif layer.rng is not None:
        raise IRError(f"{where}.rng is given but p = 1 draws no random bits")
    need = layer.required_acc_bits()
    if layer.acc_bits < need:
        raise IRError(f"{where}.acc_bits {layer.acc_bits} cannot hold the worst case of its "
                      f"weights (needs {need})")
    _check_int(f"{where}.acc_bits", layer.acc_bits, need, 64)
    need_off = signed_bits(int(layer.offsets.min()), int(layer.offsets.max()))
    if layer.offset_bits < need_off:
        raise IRError(f"{where}.offset_bits {layer.offset_bits} cannot hold its offsets "
                      f"(needs {need_off})")
    _check_int(f"{where}.offset_bits", layer.offset_bits, need_off, layer.acc_bits)


@dataclass
class ConvLayer:
    """A hidden 2-d convolution on a spike map (IR version 2; semantics in the module docstring).

    ``weights`` is ``(c_out, c_in, kernel, kernel)``, ``offsets`` the per-filter thresholds.
    """
    c_in: int
    h_in: int
    w_in: int
    c_out: int
    kernel: int
    stride: int
    padding: int
    weights: np.ndarray            # int64, (c_out, c_in, kernel, kernel)
    offsets: np.ndarray            # int64, (c_out,): thresholds
    weight_bits: int
    p_num: int
    p_bits: int
    rng: LfsrSpec | None
    acc_bits: int
    offset_bits: int
    pe: int = 1                    # filters working in parallel (schedule only)
    lanes: int = 1                 # window channels tested per clock (schedule only)
    weight_store: str = "rom"      # as DenseLayer.weight_store
    line_rows: int = 0             # 0: whole double-buffered input map; R: ring of R rows
    output = False                 # a conv layer is never the output layer
    kind = "conv2d"

    @property
    def h_out(self) -> int:
        return (self.h_in + 2 * self.padding - self.kernel) // self.stride + 1

    @property
    def w_out(self) -> int:
        return (self.w_in + 2 * self.padding - self.kernel) // self.stride + 1

    @property
    def n_in(self) -> int:
        return self.c_in * self.h_in * self.w_in

    @property
    def n_out(self) -> int:
        return self.c_out * self.h_out * self.w_out

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return (self.c_in, self.h_in, self.w_in)

    @property
    def out_shape(self) -> tuple[int, int, int]:
        return (self.c_out, self.h_out, self.w_out)

    @property
    def groups(self) -> int:
        """Filter groups of ``pe`` filters the engine works through at each position."""
        return -(-self.c_out // self.pe)

    p = DenseLayer.p
    sampling = DenseLayer.sampling

    def required_acc_bits(self) -> int:
        l1 = np.abs(self.weights.reshape(self.c_out, -1)).sum(axis=1)
        return signed_bits(int(min((-l1).min(), self.offsets.min())),
                           int(max(l1.max(), self.offsets.max())))

    def validate(self, where: str) -> None:
        for f in ("c_in", "h_in", "w_in", "c_out"):
            _check_int(f"{where}.{f}", getattr(self, f), 1, 1 << 16)
        _check_int(f"{where}.kernel", self.kernel, 1, MAX_KERNEL)
        _check_int(f"{where}.stride", self.stride, 1, MAX_KERNEL)
        _check_int(f"{where}.padding", self.padding, 0, self.kernel - 1)
        if self.h_out < 1 or self.w_out < 1:
            raise IRError(f"{where}: a {self.kernel}x{self.kernel} kernel does not fit the "
                          f"{self.h_in}x{self.w_in} map (padding {self.padding})")
        _check_int(f"{where}.n_in", self.n_in, 1, 1 << 20)
        _check_int(f"{where}.n_out", self.n_out, 1, 1 << 22)
        _check_array(f"{where}.weights", self.weights,
                     (self.c_out, self.c_in, self.kernel, self.kernel))
        _check_array(f"{where}.threshold", self.offsets, (self.c_out,))
        _check_int(f"{where}.pe", self.pe, 1, self.c_out)
        if self.weight_store not in WEIGHT_STORES:
            raise IRError(f"{where}.weight_store {self.weight_store!r} must be one of "
                          f"{', '.join(WEIGHT_STORES)}")
        if self.lanes not in LANES:
            raise IRError(f"{where}.lanes {self.lanes!r} must be one of "
                          f"{', '.join(map(str, LANES))}")
        _check_int(f"{where}.line_rows", self.line_rows, 0, self.h_in)
        _check_weighted(self, where)

    def meta(self) -> dict:
        line = {"line_rows": self.line_rows} if self.line_rows else {}
        return {**self._meta(), **line}

    def _meta(self) -> dict:
        return {
            "kind": self.kind, "c_in": self.c_in, "h_in": self.h_in, "w_in": self.w_in,
            "c_out": self.c_out, "kernel": self.kernel, "stride": self.stride,
            "padding": self.padding, "h_out": self.h_out, "w_out": self.w_out,
            "n_in": self.n_in, "n_out": self.n_out, "output": False,
            "weight_bits": self.weight_bits, "p_num": self.p_num, "p_bits": self.p_bits,
            "p": self.p, "rng": asdict(self.rng) if self.rng else None,
            "acc_bits": self.acc_bits, "offset_bits": self.offset_bits, "pe": self.pe,
            "lanes": self.lanes, "weight_store": self.weight_store,
        }


def min_line_rows(layer: ConvLayer, pool: "PoolLayer | None" = None) -> int:
    """The fewest ring rows (``ConvLayer.line_rows``) that ``layer`` with ``pool`` after it can
    run on: the input rows one pooled output row reads, ``(P - 1) * stride + kernel``, all held
    at once (at most the map's height). With exactly this many the producer writes a row only
    once the consumer has finished the pooled row that read the row it overwrites, so the two
    engines alternate; ``P * stride`` more rows let the producer write the next pooled row's new
    rows while the consumer works. No ring of this size deadlocks: the rows the consumer's next
    pooled row waits for overwrite only rows that no unfinished pooled row reads."""
    P = pool.size if pool is not None else 1
    return min((P - 1) * layer.stride + layer.kernel, layer.h_in)


def use_line_buffers(ir: "IR", extra_rows: int = 0) -> list[int]:
    """Give every conv layer that a conv layer writes (directly or through an OR/majority
    pooling) a line buffer of :func:`min_line_rows` + ``extra_rows`` rows (at most its map's
    height); returns the indices of those layers."""
    done = []
    for i, layer in enumerate(ir.layers):
        if not isinstance(layer, ConvLayer) or i == 0:
            continue
        back = i - 1 - isinstance(ir.layers[i - 1], PoolLayer)
        if back < 0 or not isinstance(ir.layers[back], ConvLayer):
            continue
        nxt = ir.layers[i + 1] if i + 1 < len(ir.layers) else None
        need = min_line_rows(layer, nxt if isinstance(nxt, PoolLayer) else None)
        layer.line_rows = min(need + extra_rows, layer.h_in)
        done.append(i)
    return done


@dataclass
class PoolLayer:
    """Binary-spike pooling on non-overlapping ``size × size`` windows (IR version 2)."""
    channels: int
    h_in: int
    w_in: int
    size: int
    mode: str                      # "or" or "majority"
    output = False
    kind = "pool"
    sampling = False
    rng = None
    weight_store = "rom"           # nothing to store

    @property
    def h_out(self) -> int:
        return self.h_in // self.size

    @property
    def w_out(self) -> int:
        return self.w_in // self.size

    @property
    def n_in(self) -> int:
        return self.channels * self.h_in * self.w_in

    @property
    def n_out(self) -> int:
        return self.channels * self.h_out * self.w_out

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.h_in, self.w_in)

    @property
    def out_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.h_out, self.w_out)

    def validate(self, where: str) -> None:
        for f in ("channels", "h_in", "w_in"):
            _check_int(f"{where}.{f}", getattr(self, f), 1, 1 << 16)
        _check_int(f"{where}.size", self.size, 1, MAX_KERNEL)
        if self.mode not in POOL_MODES:
            raise IRError(f"{where}.mode {self.mode!r} is not one of {', '.join(POOL_MODES)}")
        if self.h_out < 1 or self.w_out < 1:
            raise IRError(f"{where}: a {self.size}x{self.size} window does not fit the "
                          f"{self.h_in}x{self.w_in} map")

    def meta(self) -> dict:
        return {"kind": self.kind, "mode": self.mode, "channels": self.channels,
                "h_in": self.h_in, "w_in": self.w_in, "size": self.size, "h_out": self.h_out,
                "w_out": self.w_out, "n_in": self.n_in, "n_out": self.n_out, "output": False}


@dataclass
class IR:
    input: InputSpec
    layers: list[DenseLayer]
    samples: int
    score_bits: int
    name: str = "nsm"
    version: int = IR_VERSION
    source: dict = field(default_factory=dict)   # provenance: ONNX file, compiler options

    @property
    def n_classes(self) -> int:
        return self.layers[-1].n_out

    @property
    def class_bits(self) -> int:
        return unsigned_bits(max(1, self.n_classes - 1))

    def required_score_bits(self) -> int:
        out = self.layers[-1]
        l1 = np.abs(out.weights).sum(axis=1)
        lo = int((-l1 + out.offsets).min()) * self.samples
        hi = int((l1 + out.offsets).max()) * self.samples
        return signed_bits(lo, hi)

    def validate(self) -> None:
        if self.version not in READ_VERSIONS:
            raise IRError(f"IR version {self.version} is not supported (this toolchain reads "
                          f"versions {', '.join(map(str, READ_VERSIONS))})")
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise IRError(f"name {self.name!r} is not a valid Verilog/Python identifier")
        self.input.validate()
        _check_int("samples", self.samples, 1, MAX_SAMPLES)
        if not self.layers:
            raise IRError("layers: the network has no layers")
        n_prev = self.input.n_spikes
        shape = None                       # (C, H, W) after a conv or pool layer
        flat = False                       # True after a dense layer
        for i, layer in enumerate(self.layers):
            where = f"layers[{i}]"
            if not isinstance(layer, (DenseLayer, ConvLayer, PoolLayer)):
                raise IRError(f"{where}: unsupported layer type {type(layer).__name__}")
            if self.version < 2 and not isinstance(layer, DenseLayer):
                raise IRError(f"{where}: a {layer.kind} layer needs IR version 2, the file "
                              f"says {self.version}")
            if not isinstance(layer, DenseLayer):
                if flat:
                    raise IRError(f"{where}: a {layer.kind} layer cannot follow a dense layer")
                if shape is not None and layer.in_shape != shape:
                    raise IRError(f"{where}: input map {layer.in_shape} does not match the "
                                  f"{shape} map before it")
            if isinstance(layer, DenseLayer):
                self._check_chain(where, layer, n_prev)
            layer.validate(where)
            self._check_chain(where, layer, n_prev)
            if layer.output != (i == len(self.layers) - 1):
                raise IRError(f"{where}.output must be true for the last layer only"
                              + ("" if isinstance(layer, DenseLayer) else
                                 f" (the last layer must be dense, not {layer.kind})"))
            if isinstance(layer, ConvLayer) and layer.line_rows:
                self._check_line_rows(i, where, layer)
            if isinstance(layer, DenseLayer):
                flat = True
            else:
                shape = layer.out_shape
            n_prev = layer.n_out
        if self.n_classes < 2:
            raise IRError("layers[-1].n_out: a classifier needs at least 2 classes")
        need = self.required_score_bits()
        if self.score_bits < need:
            raise IRError(f"score_bits {self.score_bits} cannot hold {self.samples} worst-case "
                          f"samples (needs {need})")
        _check_int("score_bits", self.score_bits, need, 64)

    def _check_line_rows(self, i: int, where: str, layer: ConvLayer) -> None:
        """A line buffer (``line_rows`` R > 0) replaces the double-buffered input map of a conv
        layer that a conv engine writes: the layer before it is a conv layer, or an OR pooling
        right after one; R covers the input rows of one pooled output row."""
        back = i - 1 - isinstance(self.layers[i - 1], PoolLayer) if i else -1
        if back < 0 or not isinstance(self.layers[back], ConvLayer):
            what = "the input image" if back < 0 else f"layers[{back}] ({self.layers[back].kind})"
            raise IRError(f"{where}.line_rows {layer.line_rows}: a line buffer needs a conv "
                          f"layer writing this layer's input, not {what} (use 0)")
        nxt = self.layers[i + 1] if i + 1 < len(self.layers) else None
        need = min_line_rows(layer, nxt if isinstance(nxt, PoolLayer) else None)
        if layer.line_rows < need:
            raise IRError(f"{where}.line_rows {layer.line_rows} is below {need}: one pooled "
                          f"output row reads (pool - 1) * stride + kernel input rows "
                          f"(at most the map's {layer.h_in})")

    @staticmethod
    def _check_chain(where: str, layer, n_prev: int) -> None:
        if layer.n_in != n_prev:
            raise IRError(f"{where}.n_in {layer.n_in} does not match the {n_prev} outputs "
                          f"before it")

    def to_json(self) -> dict:
        return {
            "format": "nsm-ir", "version": self.version, "name": self.name,
            "input": asdict(self.input), "samples": self.samples, "score_bits": self.score_bits,
            "tie_rule": "lowest index", "layers": [layer.meta() for layer in self.layers],
            "source": self.source,
        }


def _check_int(where: str, value, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise IRError(f"{where} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise IRError(f"{where} = {value} is outside [{lo}, {hi}]")


def _check_array(where: str, arr, shape: tuple) -> None:
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "iu":
        raise IRError(f"{where} must be an integer array")
    if arr.shape != shape:
        raise IRError(f"{where} has shape {arr.shape}, expected {shape}")


def save(ir: IR, directory: str | Path) -> Path:
    """Validate and write ``ir.json`` and ``weights.npz`` into ``directory``."""
    ir.validate()
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for i, layer in enumerate(ir.layers):
        if isinstance(layer, PoolLayer):
            continue
        arrays[f"layer{i}_weights"] = layer.weights.astype(np.int64)
        arrays[f"layer{i}_{'bias' if layer.output else 'threshold'}"] = (
            layer.offsets.astype(np.int64))
    with atomic_write(d / WEIGHTS_FILE) as f:
        np.savez(f, **arrays)
    with atomic_write(d / IR_FILE, "w") as f:
        f.write(json.dumps(ir.to_json(), indent=1) + "\n")
    return d


def load(directory: str | Path) -> IR:
    """Read and validate an IR directory; raises :class:`IRError` naming what is wrong."""
    d = Path(directory)
    if not d.is_dir():
        raise IRError(f"{d}: no such IR directory")
    try:
        meta = json.loads((d / IR_FILE).read_text())
    except FileNotFoundError:
        raise IRError(f"{d / IR_FILE}: missing (not an IR directory; run `nsm compile` first)")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IRError(f"{d / IR_FILE}: not valid JSON ({e})")
    try:
        with np.load(d / WEIGHTS_FILE, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise IRError(f"{d / WEIGHTS_FILE}: missing")
    except (ValueError, OSError) as e:
        raise IRError(f"{d / WEIGHTS_FILE}: not a readable npz file ({e})")
    return from_json(meta, arrays)


def from_json(meta: dict, arrays: dict) -> IR:
    try:
        if meta.get("format") != "nsm-ir":
            raise IRError("ir.json: 'format' is not 'nsm-ir'")
        m_in = dict(meta["input"])
        m_in["thresholds"] = tuple(m_in.get("thresholds", ()))
        m_in["probs"] = tuple(m_in.get("probs", ()))
        if m_in.get("rng") is not None:
            m_in["rng"] = LfsrSpec(**m_in["rng"])
        inp = InputSpec(**m_in)
        version = meta["version"]
        if version not in READ_VERSIONS:
            raise IRError(f"ir.json: IR version {version!r} is not supported (this toolchain "
                          f"reads versions {', '.join(map(str, READ_VERSIONS))}; re-run "
                          f"`nsm compile`)")
        layers = [_layer_from_json(i, m, arrays) for i, m in enumerate(meta["layers"])]
        ir = IR(input=inp, layers=layers, samples=meta["samples"], score_bits=meta["score_bits"],
                name=meta.get("name", "nsm"), version=version,
                source=meta.get("source", {}))
    except IRError:
        raise
    except (KeyError, TypeError, AttributeError) as e:
        raise IRError(f"ir.json: missing or malformed field ({type(e).__name__}: {e})")
    ir.validate()
    return ir


def _layer_from_json(i: int, m: dict, arrays: dict):
    kind = m.get("kind")
    if kind == "pool":
        return PoolLayer(channels=m["channels"], h_in=m["h_in"], w_in=m["w_in"], size=m["size"],
                         mode=m["mode"])
    if kind not in ("dense", "conv2d"):
        raise IRError(f"layers[{i}].kind {kind!r} is not supported (dense, conv2d, pool)")
    key = f"layer{i}_{'bias' if m['output'] else 'threshold'}"
    for k in (f"layer{i}_weights", key):
        if k not in arrays:
            raise IRError(f"weights.npz: array {k} is missing")
    common = dict(weights=arrays[f"layer{i}_weights"], offsets=arrays[key],
                  weight_bits=m["weight_bits"], p_num=m["p_num"], p_bits=m["p_bits"],
                  rng=LfsrSpec(**m["rng"]) if m["rng"] is not None else None,
                  acc_bits=m["acc_bits"], offset_bits=m["offset_bits"])
    if kind == "conv2d":
        if m["output"]:
            raise IRError(f"layers[{i}]: a conv2d layer cannot be the output layer")
        return ConvLayer(c_in=m["c_in"], h_in=m["h_in"], w_in=m["w_in"], c_out=m["c_out"],
                         kernel=m["kernel"], stride=m["stride"], padding=m["padding"],
                         pe=m.get("pe", 1), lanes=m.get("lanes", 1),
                         weight_store=m.get("weight_store", "rom"),
                         line_rows=m.get("line_rows", 0), **common)
    return DenseLayer(n_in=m["n_in"], n_out=m["n_out"], output=m["output"], pe=m["pe"],
                      lanes=m.get("lanes", 1), weight_store=m.get("weight_store", "rom"),
                      simd=m.get("simd", 1), **common)
