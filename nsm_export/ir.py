"""The integer IR: the contract between the compiler, the golden model and the hardware.

An IR is a directory with two files a person can read:

``ir.json``
    Format version, the input encoding, one record per layer (sizes, bit widths, quantized
    sampling probability, LFSR spec, folding), the number of Monte Carlo samples ``T`` and the
    output rule.
``weights.npz``
    Integer arrays ``layer{i}_weights`` (``n_out × n_in``) and ``layer{i}_threshold`` (hidden
    layers) or ``layer{i}_bias`` (the output layer). Read by :func:`read_weights`
    (integer ``.npy`` members only, nothing unpickled).

Semantics (executed by :mod:`nsm_export.golden`, built by :mod:`hw`):

* Input encoding ``threshold``: pixel ``x`` (unsigned, ``pixel_bits`` wide) becomes the spike
  ``z = +1 if x >= threshold else -1``. ``thermometer``: pixel ``j`` becomes ``levels`` spikes,
  ``+1 if x_j >= thresholds[k]``, numbered ``j * levels + k`` (``pixel-major``) or
  ``k * size + j`` (``level-major``); see :class:`InputSpec`.
* A dense layer with ``p < 1`` draws one blank-out bit per input and sample, shared by all of its
  neurons: ``xi_j = (u_j < p_num)`` where ``u_j`` is the low ``p_bits`` bits of the layer's LFSR
  after ``leap`` more steps. Draws are made for ``j = 0 .. n_in-1`` in order, sample after sample,
  image after image; the LFSR is never reset between images. With ``p = 1`` no bits are drawn.
  What this realizes, exactly: ``leap`` is coprime to the period ``2**width - 1``, so the stream
  visits every non-zero state once a period, and ``p_num * 2**(width - p_bits) - 1`` of those
  ``2**width - 1`` draws are kept (no LFSR reaches ``p_num / 2**p_bits`` itself: its period is
  odd). ``p_realized`` (written, checked on load) states that pair; it lies within
  ``(1 - p) / (2**width - 1)`` of ``p``, below the resolution of training's float32 noise from
  24 bits on. A stream never repeats within one image: ``samples * n_in`` (the encoder:
  ``samples * size``) draws at most one period; and a layer keeps something (``p_num = 1`` on an
  LFSR as wide as ``p_bits`` would not). :func:`nsm_export.build.quantize_p` refuses a ``p``
  whose realized value lies more than a tolerance (0.01 by default) from it, or that would
  round to 0 or 1.
  ``lanes`` (1, 2, 4, 8 or 16) is how many of these draws the hardware makes per clock, by
  jumping ahead ``leap``, ``2*leap``, ... steps at once; it changes the schedule, never the stream.
  ``simd`` (1, 2 or 4) is how many kept inputs a neuron group adds per clock (schedule only;
  a sampling layer needs ``simd <= lanes``, the kept list's banks give one entry each a clock).
  ``pass_samples`` (T', written when non-zero) builds the layer on the popcount engine instead
  (``hw.pdense``): ``T'`` samples per weight read, ``simd`` a power of two up to 64 and
  ``lanes <= simd``; also schedule only.
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
  in the flattened order above, ``leap`` LFSR steps per bit; with ``draw_order: hwc`` (written
  only when set; the popcount engine's order) the draws of a sample go pixel by pixel instead,
  the ``c_in`` channels of pixel ``(y, x)`` in a row: draw ``(y*W + x)*c_in + c`` is element
  ``(c*H + y)*W + x``. ``simd`` (channels a beat) and ``pass_samples`` build the layer on the
  popcount engine (``hw.pconv``), schedule only. Then
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
* ``input_stage`` (top level, written only when true; popcount cores only): every popcount
  engine registers each beat's words (weights, spikes, keep bits) before its gates
  (:class:`hw.popcount.PopcountAccumulator`), one more drain cycle per neuron group
  (:data:`nsm_export.plan.POP_DRAIN` + 1). Schedule only.
* A run seed ``S`` (the core's ``seed`` port, 32 bits, between images) sets every LFSR to
  ``LfsrSpec.reseeded(S)``; reset returns them to their seeds.

Validation on load checks every field, every array's shape and range, and that every register
width in the file can hold the worst case its weights allow, so a valid IR cannot overflow; the
worst cases are computed with Python integers, never in a fixed width. Types are strict: an
integer field takes a JSON integer (not ``true``, not ``1.0``), a list a list. ``name`` becomes
the Verilog top module's name (:func:`nsm_export.schema.check_identifier`). A file holds only
the fields this toolchain writes: an unknown key is refused, and every value written for a
reader's information (``tie_rule``, ``p``, ``p_realized``, a conv or pool layer's ``h_out``,
``w_out``, ``n_in``, ``n_out``, ``output``) must equal what the other fields give. ``source``
is provenance (the ONNX file's name, the compiler's options, the folding search's summary): a
JSON object that nothing computes from, whose ``onnx`` entry, where given, is a bare file name.

``weights.npz`` is read without trusting it (:func:`read_weights`): its members are listed
first, each must be an array the IR declares, no more than :data:`MAX_ARRAY_VALUES` integers in
all, and each ``.npy`` header must give an integer dtype and the declared shape before its data
is read; a damaged file is an :class:`IRError` naming the file and the member.
"""

from __future__ import annotations

import json
import lzma
import math
import os
import stat
import struct
import zipfile
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from nsm_common.atomic import atomic_write

from . import lfsr
from .early_exit import EarlyExit
from .layers import KINDS, ConvLayer, DenseLayer, InputSpec, PoolLayer
from .layers.input import ENCODINGS, LAYOUTS, MAX_PROB_PIXEL_BITS
from .layers.pool import POOL_MODES
from .schema import (LANES, MAX_KERNEL, MAX_P_BITS, MAX_WEIGHT_BITS, SIMD, WEIGHT_STORES,
                     IRError, LfsrSpec, check_bool, check_identifier, check_int, check_record,
                     check_width, shown, signed_bits, unsigned_bits)

__all__ = [
    "IR_VERSION", "READ_VERSIONS", "IRError", "InputSpec", "LfsrSpec", "DenseLayer", "ConvLayer",
    "PoolLayer", "IR", "min_line_rows", "use_line_buffers", "signed_bits", "unsigned_bits", "load",
    "save", "read_weights", "declared_arrays", "MAX_ARRAY_VALUES", "ENCODINGS", "LAYOUTS",
    "MAX_PROB_PIXEL_BITS", "POOL_MODES", "LANES", "SIMD", "WEIGHT_STORES", "MAX_KERNEL",
    "MAX_P_BITS", "MAX_WEIGHT_BITS",
]

IR_VERSION = 2
#: Versions :func:`load` reads; version 1 (dense layers only) means the same as version 2.
READ_VERSIONS = (1, 2)
IR_FILE = "ir.json"
WEIGHTS_FILE = "weights.npz"
MAX_SAMPLES = 1 << 16
#: The most integers ``weights.npz`` may hold (weights, thresholds and biases of all layers):
#: 64 M: the 2-bit MLP preset (6272-2048-2048-10) holds 17.1 M weights, four times that is
#: beyond any FPGA this builds for; what a reader allocates for a file at most (512 MB).
MAX_ARRAY_VALUES = 1 << 26
#: The largest ``ir.json`` a reader takes (a real one is a few kB) and its deepest nesting.
MAX_IR_JSON_BYTES = 1 << 22
MAX_JSON_DEPTH = 32
#: The largest ``.npy`` header a reader parses (numpy writes about 128 bytes).
MAX_NPY_HEADER = 4096
#: What the zip and ``.npy`` readers raise on a damaged file.
_DAMAGED = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, struct.error, EOFError, OSError,
            ValueError, TypeError, KeyError, IndexError, OverflowError, NotImplementedError,
            RuntimeError, SyntaxError, MemoryError)


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
        if layer.kind != "conv2d" or ir.conv_producer(i) is None:
            continue
        layer.line_rows = min(ir.min_line_rows(i) + extra_rows, layer.h_in)
        done.append(i)
    return done


@dataclass
class IR:
    input: InputSpec
    layers: list
    samples: int
    score_bits: int
    name: str = "nsm"
    version: int = IR_VERSION
    source: dict = field(default_factory=dict)   # provenance: ONNX file, compiler options
    early_exit: EarlyExit = field(default_factory=EarlyExit)  # the stopping rule (none)
    # popcount engines register each beat's words before the gates (hw.popcount input_stage)
    input_stage: bool = False

    @property
    def n_classes(self) -> int:
        return self.layers[-1].n_out

    @property
    def class_bits(self) -> int:
        return unsigned_bits(max(1, self.n_classes - 1))

    def required_score_bits(self) -> int:
        lo, hi = self.layers[-1].acc_range()
        return signed_bits(lo * self.samples, hi * self.samples)

    def conv_producer(self, i: int) -> int | None:
        """The conv layer that writes conv layer ``i``'s input (directly or through a pooling
        layer), or None (the input image, or a layer of another kind)."""
        if i == 0:
            return None
        back = i - 1 - (self.layers[i - 1].kind == "pool")
        return back if back >= 0 and self.layers[back].kind == "conv2d" else None

    def min_line_rows(self, i: int) -> int:
        """:func:`min_line_rows` of conv layer ``i`` with the pooling after it, if any."""
        nxt = self.layers[i + 1] if i + 1 < len(self.layers) else None
        return min_line_rows(self.layers[i], nxt if nxt is not None and nxt.kind == "pool"
                             else None)

    def validate(self) -> None:
        if type(self.version) is not int or self.version not in READ_VERSIONS:
            raise IRError(f"IR version {shown(self.version)} is not supported (this toolchain "
                          f"reads versions {', '.join(map(str, READ_VERSIONS))})")
        check_identifier("name", self.name)
        self._check_source()
        self.input.validate()
        check_int("samples", self.samples, 1, MAX_SAMPLES)
        if not self.layers:
            raise IRError("layers: the network has no layers")
        n_prev = self.input.n_spikes
        shape = None                       # (C, H, W) after a conv or pool layer
        flat = False                       # True after a dense layer
        for i, layer in enumerate(self.layers):
            where = f"layers[{i}]"
            if KINDS.get(getattr(layer, "kind", None)) is not type(layer):
                raise IRError(f"{where}: unsupported layer type {type(layer).__name__}")
            dense = layer.kind == "dense"
            if self.version < 2 and not dense:
                raise IRError(f"{where}: a {layer.kind} layer needs IR version 2, the file "
                              f"says {self.version}")
            if not dense:
                if flat:
                    raise IRError(f"{where}: a {layer.kind} layer cannot follow a dense layer")
                if shape is not None and layer.in_shape != shape:
                    raise IRError(f"{where}: input map {layer.in_shape} does not match the "
                                  f"{shape} map before it")
            else:
                self._check_chain(where, layer, n_prev)
            layer.validate(where)
            if getattr(layer, "pass_samples", 0) > self.samples:
                raise IRError(f"{where}.pass_samples {layer.pass_samples} exceeds samples "
                              f"{self.samples}")
            self._check_chain(where, layer, n_prev)
            if layer.output != (i == len(self.layers) - 1):
                raise IRError(f"{where}.output must be true for the last layer only"
                              + ("" if dense else
                                 f" (the last layer must be dense, not {layer.kind})"))
            if layer.kind == "conv2d" and layer.line_rows:
                self._check_line_rows(i, where, layer)
            if dense:
                flat = True
            else:
                shape = layer.out_shape
            n_prev = layer.n_out
        if self.n_classes < 2:
            raise IRError("layers[-1].n_out: a classifier needs at least 2 classes")
        _check_array_values(sum(layer.array_values() for layer in self.layers))
        check_width("score_bits", self.score_bits, self.required_score_bits(), 64,
                    f"{self.samples} worst-case samples")
        if not isinstance(self.early_exit, EarlyExit):
            raise IRError("early_exit must be an EarlyExit record")
        self.early_exit.validate(self.samples)
        check_bool("input_stage", self.input_stage)
        if self.input_stage and not any(getattr(la, "pass_samples", 0) for la in self.layers):
            raise IRError("input_stage needs the popcount engine: no layer has pass_samples "
                          "(compile with --pass-samples)")
        self._check_draws()

    def _check_draws(self) -> None:
        """Random bits that mean what the file says: every LFSR's stream runs a whole image
        without repeating (one image draws ``samples`` times its inputs, the encoder's its
        pixels), and a sampling layer keeps some inputs (``p_num = 1`` on an LFSR as wide as
        ``p_bits`` never draws 0, so it would keep none)."""
        streams = [("input.rng", self.input.rng, self.input.size)] \
            + [(f"layers[{i}].rng", la.rng, la.n_in) for i, la in enumerate(self.layers)
               if getattr(la, "sampling", False)]
        for where, rng, n in streams:
            if rng is None:
                continue
            per_image = self.samples * n
            if per_image > lfsr.period(rng.width):
                raise IRError(f"{where}: a {rng.width}-bit LFSR repeats after "
                              f"{lfsr.period(rng.width)} draws, but one image draws {per_image} "
                              f"({self.samples} samples x {n}): use a wider LFSR")
        for i, la in enumerate(self.layers):
            if getattr(la, "sampling", False) and la.keep_count == 0:
                raise IRError(f"layers[{i}].p_num {la.p_num}: a {la.rng.width}-bit LFSR never "
                              f"draws a value below it (its draws are never 0), so no input "
                              f"is kept")

    def _check_source(self) -> None:
        """``source`` is provenance: a JSON object; ``onnx``, where given, a bare file name."""
        if not isinstance(self.source, dict):
            raise IRError(f"source must be a JSON object, got {type(self.source).__name__}")
        onnx = self.source.get("onnx")
        if onnx is not None and (not isinstance(onnx, str) or Path(onnx).name != onnx
                                 or onnx == ".."):
            raise IRError(f"source.onnx {shown(onnx)} must be a file name (no directory)")

    def _check_line_rows(self, i: int, where: str, layer: ConvLayer) -> None:
        """A line buffer (``line_rows`` R > 0) replaces the double-buffered input map of a conv
        layer that a conv engine writes: the layer before it is a conv layer, or an OR pooling
        right after one; R covers the input rows of one pooled output row."""
        if self.conv_producer(i) is None:
            back = i - 1 - (self.layers[i - 1].kind == "pool") if i else -1
            what = "the input image" if back < 0 else f"layers[{back}] ({self.layers[back].kind})"
            raise IRError(f"{where}.line_rows {layer.line_rows}: a line buffer needs a conv "
                          f"layer writing this layer's input, not {what} (use 0)")
        need = self.min_line_rows(i)
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
            "tie_rule": "lowest index",
            **({"early_exit": self.early_exit.to_json()} if self.early_exit.active else {}),
            **({"input_stage": True} if self.input_stage else {}),
            "layers": [layer.meta() for layer in self.layers], "source": self.source,
        }


def save(ir: IR, directory: str | Path) -> Path:
    """Validate and write ``ir.json`` and ``weights.npz`` into ``directory``."""
    ir.validate()
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for i, layer in enumerate(ir.layers):
        arrays.update(layer.arrays(i))
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
    meta = _read_json(d / IR_FILE)
    return from_json(meta, read_weights(d / WEIGHTS_FILE, declared_arrays(meta)))


def _regular(path: Path) -> None:
    """Refuse a path that exists but is not a regular file (a FIFO or a device would block or
    never end), before it is opened."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        raise IRError(f"{path}: cannot be read ({e.strerror or type(e).__name__})")
    if not stat.S_ISREG(mode):
        raise IRError(f"{path}: not a regular file")


def _read_json(path: Path):
    _regular(path)
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_IR_JSON_BYTES + 1)
    except FileNotFoundError:
        raise IRError(f"{path}: missing (not an IR directory; run `nsm compile` first)")
    except OSError as e:
        raise IRError(f"{path}: cannot be read ({e.strerror or type(e).__name__})")
    if len(text) > MAX_IR_JSON_BYTES:
        raise IRError(f"{path}: larger than {MAX_IR_JSON_BYTES:,} bytes (a real one is a few kB)")
    try:
        meta = json.loads(text.decode("utf-8"))
    except (ValueError, RecursionError, MemoryError) as e:   # JSONDecodeError, Unicode errors
        raise IRError(f"{path}: not valid JSON ({_why(e)})")
    level, depth = [meta], 0
    while level:                         # iteratively: no reader after this one recurses deeply
        depth += 1
        if depth > MAX_JSON_DEPTH:
            raise IRError(f"{path}: nested deeper than {MAX_JSON_DEPTH} levels")
        level = [v for x in level if isinstance(x, (dict, list))
                 for v in (x.values() if isinstance(x, dict) else x)]
    return meta


def declared_arrays(meta) -> dict[str, tuple]:
    """The ``weights.npz`` members an ``ir.json`` record declares and their shapes (their size
    fields checked first), at most :data:`MAX_ARRAY_VALUES` integers in all."""
    layers = _layer_records(meta)
    shapes = {}
    for i, m in enumerate(layers):
        shapes.update(_kind(i, m).array_shapes(i, m))
    _check_array_values(sum(math.prod(shape) for shape in shapes.values()))
    return shapes


def _check_array_values(values: int) -> None:
    if values > MAX_ARRAY_VALUES:
        raise IRError(f"layers: {values:,} weights, thresholds and biases exceed the "
                      f"{MAX_ARRAY_VALUES:,} an IR may hold")


def _layer_records(meta) -> list:
    if not isinstance(meta, dict):
        raise IRError(f"ir.json: the top level must be a JSON object, got {type(meta).__name__}")
    layers = meta.get("layers")
    if not isinstance(layers, list):
        raise IRError(f"ir.json: 'layers' must be a list, got {type(layers).__name__}")
    for i, m in enumerate(layers):
        if not isinstance(m, dict):
            raise IRError(f"layers[{i}] must be a JSON object, got {type(m).__name__}")
    return layers


def _kind(i: int, m: dict):
    kind = m.get("kind")
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise IRError(f"layers[{i}].kind {shown(kind)} is not supported ({', '.join(KINDS)})")
    return cls


def read_weights(path: Path, shapes: dict[str, tuple]) -> dict[str, np.ndarray]:
    """The arrays ``shapes`` names from the npz file ``path``, as int64, read without trusting
    the file: its members are listed first (each must be one of ``shapes``, stored or deflated,
    its size in the zip directory within what the shape allows), each ``.npy`` header must
    give an integer dtype and that shape before the data is read, and the data must be whole
    (exact length, CRC). Anything else is an :class:`IRError` naming the file and the member."""
    _regular(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise IRError(f"{path}: missing")
    except OSError as e:
        raise IRError(f"{path}: cannot be read ({e.strerror or type(e).__name__})")
    with f:
        try:
            zf = zipfile.ZipFile(f)
            infos = zf.infolist()
        except _DAMAGED as e:
            raise IRError(f"{path}: not a readable npz file ({_why(e)})")
        with zf:
            members = {}
            for info in infos:
                name = info.filename
                key = name[:-len(".npy")] if name.endswith(".npy") else None
                if key not in shapes:
                    raise IRError(f"{path}: member {shown(name)} is not an array the IR declares "
                                  f"({', '.join(shapes) or 'none'})")
                if key in members:
                    raise IRError(f"{path}: member {shown(name)} appears twice")
                members[key] = info
            for key in shapes:
                if key not in members:
                    raise IRError(f"{path}: array {key} is missing")
            return {key: _read_member(path, zf, members[key], shape)
                    for key, shape in shapes.items()}


def _why(e: BaseException) -> str:
    """An exception in a few words on one line."""
    text = " ".join(str(e).split())[:120]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _read_member(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo,
                 shape: tuple) -> np.ndarray:
    where = f"{path}: member {info.filename}"
    count = math.prod(shape)
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise IRError(f"{where}: compression method {info.compress_type} (numpy writes stored "
                      f"or deflated members)")
    if info.file_size > MAX_NPY_HEADER + 8 * count:
        raise IRError(f"{where}: {info.file_size:,} bytes uncompressed, more than a {shape} "
                      f"integer array can take")
    try:
        with zf.open(info) as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                got, fortran, dtype = np.lib.format.read_array_header_1_0(
                    fh, max_header_size=MAX_NPY_HEADER)
            elif version == (2, 0):
                got, fortran, dtype = np.lib.format.read_array_header_2_0(
                    fh, max_header_size=MAX_NPY_HEADER)
            else:
                raise IRError(f"{where}: .npy format version {version} (numpy writes 1.0 "
                              f"or 2.0)")
            if dtype.kind not in "iu" or dtype.hasobject:
                raise IRError(f"{where}: dtype {dtype} is not an integer type")
            if got != shape:
                raise IRError(f"{where}: shape {got}, the IR declares {shape}")
            nbytes = count * dtype.itemsize
            data = fh.read(nbytes)
            if len(data) != nbytes:
                raise IRError(f"{where}: data truncated ({len(data)} of {nbytes} bytes)")
            if fh.read(1):                           # also makes zipfile check the CRC
                raise IRError(f"{where}: data beyond the {shape} array")
    except IRError:
        raise
    except _DAMAGED as e:
        raise IRError(f"{where}: damaged ({_why(e)})")
    arr = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    if arr.size and (int(arr.min()) < -(1 << 63) or int(arr.max()) >= 1 << 63):
        raise IRError(f"{where}: values outside the 64-bit signed range")
    return arr.astype(np.int64)


def from_json(meta: dict, arrays: dict) -> IR:
    """An IR from its ``ir.json`` record and its arrays, validated, every field of the record
    accounted for (:func:`nsm_export.schema.check_record`)."""
    layer_records = _layer_records(meta)
    if meta.get("format") != "nsm-ir":
        raise IRError("ir.json: 'format' is not 'nsm-ir'")
    for key in ("version", "input", "samples", "score_bits"):
        if key not in meta:
            raise IRError(f"ir.json: {key} is missing")
    version = meta["version"]
    if type(version) is not int or version not in READ_VERSIONS:
        raise IRError(f"ir.json: IR version {shown(version)} is not supported (this toolchain "
                      f"reads versions {', '.join(map(str, READ_VERSIONS))}; re-run "
                      f"`nsm compile`)")
    try:
        inp = InputSpec.record(meta["input"])
        layers = [_kind(i, m).record(i, m, arrays) for i, m in enumerate(layer_records)]
        ir = IR(input=inp, layers=layers, samples=meta["samples"], score_bits=meta["score_bits"],
                name=meta.get("name", "nsm"), version=version,
                source=meta.get("source", {}),
                early_exit=EarlyExit.record(meta.get("early_exit", {})),
                input_stage=meta.get("input_stage", False))
    except IRError:
        raise
    except (KeyError, TypeError, AttributeError) as e:
        raise IRError(f"ir.json: missing or malformed field ({type(e).__name__}: {e})")
    ir.validate()
    written = ir.to_json()
    for key, value in meta.items():
        # no rule and no input stage are also read when written
        if key not in written and key not in ("early_exit", "input_stage"):
            raise IRError(f"ir.json: {shown(key)} is an unknown field (the file has "
                          f"{', '.join(written)})")
    if meta.get("tie_rule", written["tie_rule"]) != written["tie_rule"]:
        raise IRError(f"ir.json: tie_rule {shown(meta['tie_rule'])} is not "
                      f"{written['tie_rule']!r}, the only rule there is")
    check_record(ir.input, meta["input"], "input")
    if "early_exit" in meta:
        check_record(ir.early_exit, meta["early_exit"], "early_exit")
    for i, (layer, m) in enumerate(zip(ir.layers, layer_records)):
        check_record(layer, m, f"layers[{i}]")
    return ir
