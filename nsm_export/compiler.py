"""Compile an ONNX NSM into the integer IR.

Reads the canonical form (:mod:`nsm_export.onnx_export`) and the QONNX form
(:mod:`nsm_export.qonnx_export`), and whatever else has their structure (docs/onnx.md): a
threshold encoder, then layer by layer an optional per-input Bernoulli mask, a dense
(``MatMul``/``Gemm``) or conv (``Conv``) layer with quantized weights (``DequantizeLinear``,
QONNX ``Quant``/``BipolarQuant``, or power-of-two floats), per-channel affine ops and batch norms,
and a step back to ±1 spikes (``GreaterOrEqual`` or ``BipolarQuant``); OR (``MaxPool``) and
majority (``AveragePool`` + step) pooling between conv layers. :mod:`nsm_export.fold` folds every
float exactly into integer weights and per-neuron thresholds (negative scales flip the row).

Anything else is refused with a :class:`CompileError` whose one-line message names the node.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from . import lfsr
from .build import DEFAULT_LFSR_WIDTH, DEFAULT_P_BITS, DEFAULT_PE, P_TOLERANCE, IntConv, IntLayer, \
    IntPool, bernoulli_probs, build_ir
from .fold import (FoldError, Surd, bipolar_ints, fold_hidden, fold_output, pow2_ints, quant_ints,
                   weight_bits)
from .ir import IR, IRError
from .layers import conv_out
from .schema import check_identifier

__all__ = ["CompileError", "SUPPORTED_OPS", "load_onnx", "compile_model", "compile_file"]

SUPPORTED_OPS = frozenset({
    "GreaterOrEqual", "Cast", "Mul", "Sub", "Shape", "ConstantOfShape", "Bernoulli",
    "DequantizeLinear", "MatMul", "Add", "Constant", "RandomUniformLike", "Less",
    "Gemm", "Conv", "MaxPool", "AveragePool", "Reshape", "Flatten", "Identity", "Div",
    "BatchNormalization", "Unsqueeze", "Floor",
})
#: QONNX quantizers (domain ``qonnx.custom_op.general``; brevitas and FINN name it differently).
QONNX_OPS = frozenset({"Quant", "BipolarQuant"})
QONNX_DOMAINS = frozenset({"qonnx.custom_op.general", "onnx.brevitas", "finn.custom_op.general"})
GAUSSIAN_OPS = frozenset({"RandomNormal", "RandomNormalLike"})


class CompileError(ValueError):
    """The ONNX model cannot be compiled; the message is one line naming the node or value."""


def load_onnx(path: str | Path) -> onnx.ModelProto:
    p = Path(path)
    if not p.is_file():
        raise CompileError(f"{p}: no such file")
    try:
        model = onnx.load(str(p))
    except Exception as e:   # protobuf raises DecodeError, RuntimeWarning and friends
        raise CompileError(f"{p}: not an ONNX model ({type(e).__name__})") from None
    if not model.graph.node and not model.graph.input:
        raise CompileError(f"{p}: not an ONNX model (empty graph)")
    return model


def _to_array(tensor: onnx.TensorProto, where: str) -> np.ndarray:
    """The tensor's values, or one line where its data does not match its shape or type."""
    try:
        return numpy_helper.to_array(tensor)
    except Exception as e:        # onnx raises ValueError, TypeError, KeyError on damaged data
        raise CompileError(f"{where}: its data does not form a tensor of shape "
                           f"{list(tensor.dims)} ({type(e).__name__})") from None


class _Graph:
    def __init__(self, model: onnx.ModelProto):
        g = model.graph
        self.model = model
        self.inits = {t.name: t for t in g.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in g.node:
            for o in node.output:
                self.producer[o] = node
            for i in node.input:
                self.consumers.setdefault(i, []).append(node)
        self.outputs = [o.name for o in g.output]

    def const(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return _to_array(self.inits[name], f"initializer {name!r}")
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return _to_array(a.t, f"node {_n(node)}")
            raise CompileError(f"node {_n(node)}: only tensor-valued Constant nodes are supported")
        return None

    def only_consumer(self, name: str, op: str, what: str) -> onnx.NodeProto:
        users = self.consumers.get(name, [])
        if len(users) != 1 or users[0].op_type != op:
            found = ", ".join(f"{_n(u)} ({u.op_type})" for u in users) or "nothing"
            raise CompileError(f"tensor {name!r}: expected {what} ({op}) to use it, found {found}")
        return users[0]

    def other_input(self, node: onnx.NodeProto, name: str) -> str:
        if len(node.input) != 2 or name not in node.input:
            raise CompileError(f"node {_n(node)}: expected 2 inputs, one of them {name!r}")
        return node.input[1] if node.input[0] == name else node.input[0]

    def scalar(self, node: onnx.NodeProto, name: str, what: str) -> float:
        c = self.const(name)
        if c is None or c.size != 1:
            raise CompileError(f"node {_n(node)}: {what} must be a constant scalar")
        v = float(np.asarray(c).reshape(()))
        if not math.isfinite(v):
            raise CompileError(f"node {_n(node)}: {what} is {v}")
        return v


def _n(node: onnx.NodeProto) -> str:
    return repr(node.name or node.output[0] if node.output else node.op_type)


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


#: Float element types of ONNX tensors (the ones that can hold NaN or infinity).
_FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE,
                          onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16})
#: Integers read from initializers (weights, biases, zero points) must stay below this in
#: magnitude, so that int64 arithmetic on them cannot wrap.
_INT_LIMIT = 1 << 62


def _check_finite(g: _Graph) -> None:
    """Refuse a float initializer or Constant that holds NaN or infinity, naming it: a diverged
    model's weights, scales, thresholds, biases, batch norms or p."""
    tensors = [("initializer", t) for t in g.model.graph.initializer]
    tensors += [(f"Constant {_n(node)}", a.t) for node in g.model.graph.node
                if node.op_type == "Constant" for a in node.attribute if a.name == "value"]
    for what, t in tensors:
        if t.data_type in _FLOAT_TYPES and not np.all(np.isfinite(_to_array(t, f"{what} "
                                                                             f"{t.name!r}"))):
            raise CompileError(f"{what} {t.name!r} holds NaN or infinity (a diverged model?)")


def _check_ops(g: _Graph) -> None:
    for node in g.model.graph.node:
        if node.op_type in GAUSSIAN_OPS:
            raise CompileError(f"node {_n(node)}: Gaussian noise ({node.op_type}) cannot be sent "
                               f"to hardware; train with Bernoulli blank-out")
        if node.domain in QONNX_DOMAINS and node.op_type in QONNX_OPS:
            continue
        if node.domain not in ("", "ai.onnx"):
            raise CompileError(f"node {_n(node)}: op {node.domain}.{node.op_type} is not supported")
        if node.op_type not in SUPPORTED_OPS:
            raise CompileError(f"node {_n(node)}: op {node.op_type} is not supported "
                               f"(supported: {', '.join(sorted(SUPPORTED_OPS | QONNX_OPS))})")


def _pm1(g: _Graph, src: str, step: onnx.NodeProto) -> str:
    """Match ``GreaterOrEqual → Cast(FLOAT) → Mul(2) → Sub(1)`` from ``step``; return ±1 tensor."""
    cast = g.only_consumer(step.output[0], "Cast", "a Cast to float")
    if _attr(cast, "to") != onnx.TensorProto.FLOAT:
        raise CompileError(f"node {_n(cast)}: spikes must be cast to FLOAT")
    mul = g.only_consumer(cast.output[0], "Mul", "a Mul by 2")
    if g.scalar(mul, g.other_input(mul, cast.output[0]), "the spike scale") != 2.0:
        raise CompileError(f"node {_n(mul)}: spikes must be scaled by 2 (to ±1)")
    sub = g.only_consumer(mul.output[0], "Sub", "a Sub of 1")
    if sub.input[0] != mul.output[0] or g.scalar(sub, sub.input[1], "the spike offset") != 1.0:
        raise CompileError(f"node {_n(sub)}: spikes must be 2*b - 1 (±1)")
    return sub.output[0]


def _pixel_threshold(t: float, pixel_bits: int) -> int:
    """The integer ``T`` with ``x >= t  <=>  x >= T`` for integer pixels ``x``."""
    return int(min(max(math.ceil(t), 0), 1 << pixel_bits))


def _thermometer(g: _Graph, src: str, unsq: onnx.NodeProto, n_in: int,
                 pixel_bits: int) -> tuple[str, list[int]]:
    """Match ``Unsqueeze(axis 1) → GreaterOrEqual([1, L, 1]) → ±1 → Reshape([-1, L*n_in])``;
    return the level-major spike tensor and the integer thresholds."""
    axes = g.const(unsq.input[1]) if len(unsq.input) > 1 else None
    if axes is None or [int(a) for a in np.ravel(axes)] != [1]:
        raise CompileError(f"node {_n(unsq)}: the thermometer encoder must unsqueeze axis 1")
    ge = g.only_consumer(unsq.output[0], "GreaterOrEqual", "the thermometer comparison")
    t = g.const(ge.input[1]) if ge.input[0] == unsq.output[0] else None
    if t is None or t.ndim != 3 or t.shape[0] != 1 or t.shape[2] != 1 or t.shape[1] < 1:
        raise CompileError(f"node {_n(ge)}: thermometer thresholds must be a constant [1, L, 1]")
    if not np.all(np.isfinite(t)):
        raise CompileError(f"node {_n(ge)}: thermometer thresholds must be finite")
    levels = [_pixel_threshold(float(v), pixel_bits) for v in t.ravel()]
    spikes = _pm1(g, unsq.output[0], ge)
    flat = g.only_consumer(spikes, "Reshape", "the thermometer flatten")
    shape = g.const(flat.input[1])
    if shape is None or [int(v) for v in np.ravel(shape)] != [-1, len(levels) * n_in]:
        raise CompileError(f"node {_n(flat)}: the thermometer code must be reshaped to "
                           f"[-1, {len(levels) * n_in}]")
    return flat.output[0], levels


def _stochastic(g: _Graph, src: str, users: list) -> tuple[str, int]:
    """Match ``RandomUniformLike(low=0, high=M)(pixels) → Floor → Less(·, pixels) → ±1``;
    return the spike tensor and ``M`` (``P(+1) = pixel / M``)."""
    uni = next(u for u in users if u.op_type == "RandomUniformLike")
    low, high = _attr(uni, "low", 0.0), _attr(uni, "high", 1.0)
    if low != 0.0 or high < 1.0 or high != int(high) or high > (1 << 16):
        raise CompileError(f"node {_n(uni)}: the stochastic encoder needs low = 0 and an integer "
                           f"high (the pixel range), got low={low}, high={high}")
    floor = g.only_consumer(uni.output[0], "Floor", "a Floor (integer draws)")
    lt = g.only_consumer(floor.output[0], "Less", "the stochastic comparison")
    if list(lt.input) != [floor.output[0], src]:
        raise CompileError(f"node {_n(lt)}: the stochastic encoder must compare draw < pixel")
    return _pm1(g, src, lt), int(high)


def _input_size(g: _Graph) -> tuple[str, int]:
    graph = g.model.graph
    ins = [i for i in graph.input if i.name not in g.inits]
    if len(ins) != 1:
        raise CompileError(f"graph: expected exactly one input (pixels), found {len(ins)}")
    inp = ins[0]
    tt = inp.type.tensor_type
    if not inp.type.HasField("tensor_type") or tt.elem_type != onnx.TensorProto.FLOAT:
        raise CompileError(f"input {inp.name!r}: must be a FLOAT tensor")
    dims = tt.shape.dim
    if len(dims) != 2:
        raise CompileError(f"input {inp.name!r}: must have shape [batch, n_in], "
                           f"has rank {len(dims)}")
    if not dims[1].HasField("dim_value") or dims[1].dim_value <= 0:
        raise CompileError(f"input {inp.name!r}: dimension 1 (n_in) is dynamic; the hardware "
                           f"needs a fixed input size")
    return inp.name, int(dims[1].dim_value)


def _meta(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def _match_mask(g: _Graph, z: str, users: list) -> tuple[float, str] | None:
    """A per-input blank-out mask on ``z``: returns (keep probability, masked tensor) or None.

    Two forms mean the same Bernoulli(p) keep bit per input (see :mod:`nsm_export.onnx_export`):
    ``Shape → ConstantOfShape(p) → Bernoulli`` and ``RandomUniformLike → Less(·, p) → Cast``.
    """
    shapes = [u for u in users if u.op_type == "Shape"]
    uniforms = [u for u in users if u.op_type == "RandomUniformLike"]
    if not shapes and not uniforms:
        return None
    if len(shapes) + len(uniforms) != 1:
        raise CompileError(f"tensor {z!r}: more than one blank-out mask is drawn for it")
    if shapes:
        cos = g.only_consumer(shapes[0].output[0], "ConstantOfShape", "the noise probabilities")
        val = _attr(cos, "value")
        if val is None:
            raise CompileError(f"node {_n(cos)}: the keep probability must be its value")
        pv = _to_array(val, f"node {_n(cos)}").reshape(-1)
        if pv.size != 1:
            raise CompileError(f"node {_n(cos)}: the keep probability must be one value, "
                               f"got {pv.size}")
        p = float(pv[0])
        where = cos
        bern = g.only_consumer(cos.output[0], "Bernoulli", "the blank-out sampler")
        mask = bern.output[0]
    else:
        uni = uniforms[0]
        if (_attr(uni, "low", 0.0), _attr(uni, "high", 1.0)) != (0.0, 1.0):
            raise CompileError(f"node {_n(uni)}: the uniform draw must be on [0, 1)")
        lt = g.only_consumer(uni.output[0], "Less", "the keep comparison")
        if lt.input[0] != uni.output[0]:
            raise CompileError(f"node {_n(lt)}: the mask must be uniform < p")
        p = g.scalar(lt, lt.input[1], "the keep probability")
        where = lt
        cast = g.only_consumer(lt.output[0], "Cast", "a Cast of the mask to float")
        if _attr(cast, "to") != onnx.TensorProto.FLOAT:
            raise CompileError(f"node {_n(cast)}: the mask must be cast to FLOAT")
        mask = cast.output[0]
    if not math.isfinite(p) or not 0.0 < p <= 1.0:
        raise CompileError(f"node {_n(where)}: keep probability p = {p} is outside (0, 1]")
    mul = g.only_consumer(mask, "Mul", "the blank-out Mul")
    if z not in mul.input:
        raise CompileError(f"node {_n(mul)}: the mask must multiply the layer's input spikes "
                           f"(per-input blank-out)")
    if any(u.op_type not in ("Shape", "RandomUniformLike", "Mul") for u in users) or \
            [u for u in users if u.op_type == "Mul"] != [mul]:
        raise CompileError(f"tensor {z!r}: used by ops other than its blank-out mask")
    return p, mul.output[0]


_SPIKE_PASS = ("Identity",)
_AFFINE_OPS = ("Add", "Sub", "Mul", "Div")
MAX_LAYERS = 64


class _Layers:
    """Walks the graph from the input spikes to the scores, one NSM layer at a time.

    Between layers the spikes are ``±zscale`` (1 after the canonical step, ``s`` after a
    ``BipolarQuant`` of scale ``s``), flat ``(n,)`` or a map ``(C, H, W)``.
    """

    def __init__(self, g: _Graph):
        self.g = g
        self.layers: list = []

    # --- the walk ----------------------------------------------------------------------------
    def match(self, z: str, n_in: int) -> list:
        g = self.g
        flat, shape, zscale = n_in, None, Fraction(1)
        while True:
            if len(self.layers) > MAX_LAYERS:
                raise CompileError(f"graph: more than {MAX_LAYERS} layers")
            i = len(self.layers)
            users = g.consumers.get(z, [])
            if z in g.outputs:
                raise CompileError(f"tensor {z!r}: the graph ends in spikes; the last layer must "
                                   f"be a dense layer giving the scores")
            if len(users) == 1 and users[0].op_type in _SPIKE_PASS:
                z = users[0].output[0]
                continue
            reshapes = [u for u in users if u.op_type in ("Reshape", "Flatten")]
            if reshapes:
                z_next, flat, shape = self._reshape(reshapes[0], z, flat, shape)
                if len(users) != 1 or reshapes[0].input[0] != z:
                    raise CompileError(f"tensor {z!r}: spikes reshaped by {_n(reshapes[0])} are "
                                       f"also used by other nodes")
                z = z_next
                continue
            if len(users) == 1 and users[0].op_type in ("MaxPool", "AveragePool"):
                z, shape, zscale = self._pool(users[0], z, shape, zscale)
                continue
            p, z_in = 1.0, z
            mask = _match_mask(g, z, users)
            if mask is not None:
                p, z_in = mask
            lin_users = g.consumers.get(z_in, [])
            if len(lin_users) != 1 or lin_users[0].op_type not in ("MatMul", "Gemm", "Conv"):
                found = ", ".join(f"{_n(u)} ({u.op_type})" for u in lin_users) or "nothing"
                raise CompileError(f"tensor {z_in!r}: expected layer {i}'s MatMul, Gemm or Conv "
                                   f"to use it, found {found}")
            lin = lin_users[0]
            if lin.input[0] != z_in:
                raise CompileError(f"node {_n(lin)}: spikes must be its first input")
            if lin.op_type == "Conv":
                if shape is None:
                    raise CompileError(f"node {_n(lin)}: Conv needs a (C, H, W) spike map; "
                                       f"reshape the input spikes first")
                w, A, C, u, conv = self._conv(lin, shape, zscale)
            else:
                if shape is not None:
                    raise CompileError(f"node {_n(lin)}: a dense layer needs flat spikes; "
                                       f"Flatten the map first")
                w, A, C, u = self._dense(lin, flat, zscale)
                conv = None
            A, C, u, step = self._affine(u, A, C, 4 if conv else 2)
            where = f"layer {i}"
            if step is None:                               # u is the scores output
                if conv is not None:
                    raise CompileError(f"node {_n(lin)}: the output layer must be dense, not "
                                       f"Conv")
                try:
                    w, off = fold_output(w, A, C)
                    bits = weight_bits(w)
                except FoldError as e:
                    raise CompileError(f"{where} (node {_n(lin)}): {e}") from None
                self.layers.append(IntLayer(weights=w, offsets=off, p=p, weight_bits=bits))
                return self.layers
            w, theta = fold_hidden(w, A, C)
            try:
                bits = weight_bits(w)
            except FoldError as e:
                raise CompileError(f"{where} (node {_n(lin)}): {e}") from None
            if conv is not None:
                h, wd, st, pad = conv
                self.layers.append(IntConv(weights=w, offsets=theta, p=p, weight_bits=bits,
                                           h_in=h, w_in=wd, stride=st, padding=pad))
                k = w.shape[2]
                shape = (w.shape[0], conv_out(h, k, st, pad), conv_out(wd, k, st, pad))
                flat = None
            else:
                self.layers.append(IntLayer(weights=w, offsets=theta, p=p, weight_bits=bits))
                flat = w.shape[0]
            z, zscale = self._step(step, u)

    # --- spikes between layers -----------------------------------------------------------------
    def _reshape(self, node, z, flat, shape):
        g = self.g
        n = flat if shape is None else shape[0] * shape[1] * shape[2]
        if node.op_type == "Flatten":
            if _attr(node, "axis", 1) != 1:
                raise CompileError(f"node {_n(node)}: only Flatten(axis=1) keeps the batch apart")
            return node.output[0], n, None
        if len(node.input) < 2:
            raise CompileError(f"node {_n(node)}: Reshape needs a target shape")
        target = g.const(node.input[1])
        if target is None:
            raise CompileError(f"node {_n(node)}: the target shape is not a constant (dynamic "
                               f"shapes cannot be built)")
        t = [int(v) for v in np.asarray(target).reshape(-1)]
        if _attr(node, "allowzero", 0) or not t or t[0] not in (-1, 0) and len(t) < 2:
            raise CompileError(f"node {_n(node)}: target shape {t} must keep the batch first "
                               f"(-1 or 0)")
        rest = t[1:]
        if len(rest) == 1 and rest[0] in (n, -1) and t[0] in (-1, 0):
            return node.output[0], n, None
        if len(rest) == 3 and shape is None and t[0] in (-1, 0) and all(v > 0 for v in rest) \
                and rest[0] * rest[1] * rest[2] == n:
            return node.output[0], None, tuple(rest)
        raise CompileError(f"node {_n(node)}: cannot reshape {n} spikes "
                           f"{'(a map)' if shape else '(flat)'} to {t}; only [-1, C, H, W] of "
                           f"flat spikes and [-1, n] of a map are layers' shapes")

    def _pool(self, node, z, shape, zscale):
        g = self.g
        i = len(self.layers)
        if shape is None:
            raise CompileError(f"node {_n(node)}: pooling needs a (C, H, W) spike map")
        if zscale <= 0:
            raise CompileError(f"node {_n(node)}: pooling needs spikes of positive scale")
        if len(node.output) != 1 or len(node.input) != 1:
            raise CompileError(f"node {_n(node)}: expected one input and one output")
        ks = list(_attr(node, "kernel_shape", []))
        if len(ks) != 2 or ks[0] != ks[1]:
            raise CompileError(f"node {_n(node)}: kernel_shape {ks} must be square 2-d")
        k = int(ks[0])
        if list(_attr(node, "strides", [1, 1])) != [k, k]:
            raise CompileError(f"node {_n(node)}: strides must equal the kernel (non-overlapping "
                               f"windows)")
        if any(_attr(node, "pads", [0, 0, 0, 0])) or _attr(node, "ceil_mode", 0) \
                or any(d != 1 for d in _attr(node, "dilations", [1, 1])) \
                or _attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") \
                or _attr(node, "storage_order", 0):
            raise CompileError(f"node {_n(node)}: pads, ceil_mode, dilations, auto_pad and "
                               f"storage_order must keep their defaults")
        c, h, w = shape
        if h < k or w < k:
            raise CompileError(f"node {_n(node)}: a {k}x{k} window does not fit the {h}x{w} map")
        out = node.output[0]
        if node.op_type == "MaxPool":
            mode, zs = "or", zscale
        else:
            users = g.consumers.get(out, [])
            if len(users) != 1 or users[0].op_type not in ("GreaterOrEqual", "BipolarQuant"):
                raise CompileError(f"node {_n(node)}: an AveragePool of spikes must be followed "
                                   f"by a step (GreaterOrEqual 0 or BipolarQuant): "
                                   f"majority pooling")
            step = users[0]
            if step.input[0] != out or (step.op_type == "GreaterOrEqual" and g.scalar(
                    step, step.input[1], "the majority threshold") != 0.0):
                raise CompileError(f"node {_n(step)}: majority pooling compares the mean with 0")
            mode = "majority"
            out, zs = self._step(step, out)
        self.layers.append(IntPool(channels=c, h_in=h, w_in=w, size=k, mode=mode))
        if len(self.layers) != i + 1:
            raise AssertionError("unreachable")
        return out, (c, h // k, w // k), zs

    def _step(self, step, u) -> tuple[str, Fraction]:
        """The spikes a step node makes, and their scale."""
        g = self.g
        if step.op_type == "GreaterOrEqual":
            return _pm1(g, u, step), Fraction(1)
        s = g.scalar(step, step.input[1], "the BipolarQuant scale") if len(step.input) > 1 else 1.0
        if not s > 0:
            raise CompileError(f"node {_n(step)}: BipolarQuant scale {s} must be positive")
        return step.output[0], Fraction(s)

    # --- linear ops ----------------------------------------------------------------------------
    def _dense(self, node, n_in, zscale):
        if node.op_type == "MatMul":
            if len(node.input) != 2:
                raise CompileError(f"node {_n(node)}: MatMul needs two inputs")
            ints, scale = self._weights(node, node.input[1], out_axis=1)
            if ints.ndim != 2 or ints.shape[0] != n_in:
                raise CompileError(f"node {_n(node)}: weight shape {tuple(ints.shape)} does not "
                                   f"take {n_in} inputs")
            w = ints.T
            alpha, beta, bias_name = Fraction(1), Fraction(1), None
        else:
            if _attr(node, "transA", 0):
                raise CompileError(f"node {_n(node)}: Gemm with transA is not a layer")
            tb = _attr(node, "transB", 0)
            if len(node.input) < 2:
                raise CompileError(f"node {_n(node)}: Gemm needs weights")
            ints, scale = self._weights(node, node.input[1], out_axis=0 if tb else 1)
            if ints.ndim != 2 or ints.shape[1 if tb else 0] != n_in:
                raise CompileError(f"node {_n(node)}: weight shape {tuple(ints.shape)} does not "
                                   f"take {n_in} inputs")
            w = ints if tb else ints.T
            alpha = self._finite(node, _attr(node, "alpha", 1.0), "alpha")
            beta = self._finite(node, _attr(node, "beta", 1.0), "beta")
            bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        n_out = w.shape[0]
        A = [Surd(s * zscale * alpha) for s in scale]
        C = [Surd(0)] * n_out
        if bias_name is not None:
            C = [Surd(v * beta) for v in self._channel_values(node, bias_name, n_out, 1, 2)]
        return w, A, C, node.output[0]

    def _conv(self, node, shape, zscale):
        c, h, wd = shape
        if len(node.input) < 2 or len(node.output) != 1:
            raise CompileError(f"node {_n(node)}: Conv needs weights and one output")
        ints, scale = self._weights(node, node.input[1], out_axis=0)
        if ints.ndim != 4 or ints.shape[1] != c or ints.shape[2] != ints.shape[3]:
            raise CompileError(f"node {_n(node)}: weight shape {tuple(ints.shape)} is not "
                               f"(c_out, {c}, k, k)")
        k = ints.shape[2]
        ks = list(_attr(node, "kernel_shape", [k, k]))
        strides = list(_attr(node, "strides", [1, 1]))
        pads = list(_attr(node, "pads", [0, 0, 0, 0]))
        if ks != [k, k] or len(strides) != 2 or strides[0] != strides[1] or len(pads) != 4 \
                or len(set(pads)) != 1:
            raise CompileError(f"node {_n(node)}: kernel {ks}, strides {strides}, pads {pads}: "
                               f"a layer needs a square kernel, equal strides and equal pads")
        if _attr(node, "group", 1) != 1 or any(d != 1 for d in _attr(node, "dilations", [1, 1])) \
                or _attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise CompileError(f"node {_n(node)}: group, dilations and auto_pad must keep their "
                               f"defaults")
        st, pad = int(strides[0]), int(pads[0])
        if not (st >= 1 and 0 <= pad < k and h + 2 * pad >= k and wd + 2 * pad >= k):
            raise CompileError(f"node {_n(node)}: a {k}x{k} kernel (stride {st}, padding {pad}) "
                               f"does not fit the {h}x{wd} map")
        n_out = ints.shape[0]
        A = [Surd(s * zscale) for s in scale]
        C = [Surd(0)] * n_out
        if len(node.input) > 2 and node.input[2]:
            C = [Surd(v) for v in self._channel_values(node, node.input[2], n_out, 0, 1)]
        return ints, A, C, node.output[0], (h, wd, st, pad)

    def _affine(self, u, A, C, ndim):
        """Follow per-channel affine ops after the linear op (on a rank-``ndim`` tensor, channel
        axis 1) to the step or the scores."""
        g = self.g
        n = len(A)
        for _ in range(64):
            users = g.consumers.get(u, [])
            if u in g.outputs:
                if users:
                    raise CompileError(f"tensor {u!r}: the scores output must not feed other "
                                       f"nodes")
                return A, C, u, None
            if len(users) != 1:
                found = ", ".join(f"{_n(x)} ({x.op_type})" for x in users) or "nothing"
                raise CompileError(f"tensor {u!r}: expected one step, affine op or the scores "
                                   f"output, found {found}")
            node = users[0]
            op = node.op_type
            try:
                if op == "Identity":
                    pass
                elif op in _AFFINE_OPS:
                    other = g.other_input(node, u)
                    v = [Surd(x) for x in self._channel_values(node, other, n, 1, ndim)]
                    first = node.input[0] == u
                    if op == "Add":
                        C = [c + x for c, x in zip(C, v)]
                    elif op == "Sub" and first:
                        C = [c - x for c, x in zip(C, v)]
                    elif op == "Sub":
                        A, C = [-a for a in A], [x - c for c, x in zip(C, v)]
                    elif op == "Mul":
                        A, C = [a * x for a, x in zip(A, v)], [c * x for c, x in zip(C, v)]
                    elif first:
                        if any(x.sign() == 0 for x in v):
                            raise CompileError(f"node {_n(node)}: division by zero")
                        A, C = [a / x for a, x in zip(A, v)], [c / x for c, x in zip(C, v)]
                    else:
                        raise CompileError(f"node {_n(node)}: dividing by the pre-activation "
                                           f"is not affine")
                elif op == "BatchNormalization":
                    A, C = self._batchnorm(node, u, A, C)
                elif op == "GreaterOrEqual":
                    if node.input[0] != u:
                        raise CompileError(f"node {_n(node)}: the step must be u >= threshold")
                    v = self._channel_values(node, node.input[1], n, 1, ndim)
                    return A, [c - x for c, x in zip(C, v)], u, node
                elif op == "BipolarQuant":
                    if node.input[0] != u:
                        raise CompileError(f"node {_n(node)}: BipolarQuant must quantize the "
                                           f"pre-activation")
                    return A, C, u, node
                else:
                    raise CompileError(f"node {_n(node)} ({op}): expected the neuron's step "
                                       f"(GreaterOrEqual, BipolarQuant), a per-neuron affine op "
                                       f"(Add, Sub, Mul, Div, BatchNormalization) or the scores")
            except FoldError as e:
                raise CompileError(f"node {_n(node)}: {e}") from None
            if len(node.output) < 1:
                raise CompileError(f"node {_n(node)}: has no output")
            u = node.output[0]
        raise CompileError(f"tensor {u!r}: more than 64 affine ops after one layer")

    def _batchnorm(self, node, u, A, C):
        n = len(A)
        if len(node.input) != 5 or node.input[0] != u or len(node.output) != 1 \
                or _attr(node, "training_mode", 0):
            raise CompileError(f"node {_n(node)}: expected an inference BatchNormalization "
                               f"(X, scale, B, mean, var; one output)")
        gamma, beta, mean, var = (self._channel_values(node, x, n, 0, 1) for x in node.input[1:])
        eps = self._finite(node, _attr(node, "epsilon", 1e-5), "epsilon")
        for k in range(n):
            inv = Surd.inv_sqrt(var[k] + eps)
            f = inv * gamma[k]
            A[k], C[k] = A[k] * f, (C[k] - mean[k]) * f + beta[k]
        return A, C

    # --- constants -------------------------------------------------------------------------------
    @staticmethod
    def _finite(node, v, what) -> Fraction:
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            raise CompileError(f"node {_n(node)}: {what} = {v!r} must be a finite number")
        return Fraction(v)

    def _channel_values(self, node, name, n, axis, ndim) -> list[Fraction]:
        """Exact per-channel values of a constant (possibly dequantized) broadcast along channel
        ``axis`` of a rank-``ndim`` tensor (a bias, a batch norm parameter, an affine factor)."""
        g = self.g
        what = f"input {name!r}"
        prod = g.producer.get(name)
        if prod is not None and prod.op_type in ("DequantizeLinear", "Quant", "BipolarQuant"):
            ints, scale = self._quantized(prod, out_axis=0, what=what)
            if ints.ndim != 1 or scale.ndim != 1:
                raise CompileError(f"node {_n(node)}: {what} must be one value per channel")
            vals = [Fraction(int(q)) * s
                    for q, s in zip(ints, _frac_list(scale, ints.size, f"node {_n(prod)}"))]
            arr = np.array(vals, dtype=object)
        else:
            c = g.const(name)
            if c is None:
                raise CompileError(f"node {_n(node)}: {what} must be a constant")
            c = np.asarray(c)
            if c.dtype.kind not in "fiu" or (c.dtype.kind == "f" and not np.all(np.isfinite(c))):
                raise CompileError(f"node {_n(node)}: {what} must hold finite numbers")
            arr = c
        if arr.ndim > ndim:
            raise CompileError(f"node {_n(node)}: {what} has rank {arr.ndim} > {ndim}")
        arr = arr.reshape((1,) * (ndim - arr.ndim) + arr.shape)
        for d in range(ndim):
            if d != axis and arr.shape[d] != 1:
                raise CompileError(f"node {_n(node)}: {what} has shape {tuple(arr.shape)}: it "
                                   f"must vary along the channel axis only")
        if arr.shape[axis] not in (1, n):
            raise CompileError(f"node {_n(node)}: {what}: {arr.shape[axis]} values for {n} "
                               f"channels")
        flat = arr.reshape(-1)
        return [Fraction(v) if isinstance(v, Fraction) else Fraction(float(v)) if
                flat.dtype.kind == "f" else Fraction(int(v))
                for v in (np.repeat(flat, n) if flat.size == 1 else flat)]

    def _weights(self, node, name, out_axis):
        """Integer weights and one exact positive-or-negative scale per output channel."""
        g = self.g
        prod = g.producer.get(name)
        if prod is not None and prod.op_type in ("DequantizeLinear", "Quant", "BipolarQuant"):
            ints, scale = self._quantized(prod, out_axis, f"the weights of {_n(node)}")
            if ints.ndim <= out_axis:
                raise CompileError(f"node {_n(prod)}: weights of shape {ints.shape} are not a "
                                   f"layer's")
            return ints, _frac_list(scale, ints.shape[out_axis], f"node {_n(prod)}")
        c = g.const(name)
        if c is None:
            raise CompileError(f"node {_n(node)}: weights must be a constant or a quantizer "
                               f"(DequantizeLinear, Quant, BipolarQuant) of one")
        c = np.asarray(c)
        if c.dtype.kind not in "fiu" or c.ndim < 1 or out_axis >= c.ndim:
            raise CompileError(f"node {_n(node)}: weights of shape {c.shape} and type "
                               f"{c.dtype} are not a layer's")
        try:
            ints, exps = pow2_ints(c, out_axis)
        except FoldError as e:
            raise CompileError(f"node {_n(node)}: {e}") from None
        return ints, [Fraction(2) ** int(e) for e in exps]

    def _quantized(self, q, out_axis, what):
        """``(ints, per-output scale array)`` of a quantizer node on a constant."""
        g = self.g
        x = g.const(q.input[0]) if q.input else None
        if x is None:
            raise CompileError(f"node {_n(q)}: {what} must quantize a constant")
        x = np.asarray(x)
        if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
            raise CompileError(f"node {_n(q)}: {what} hold NaN or infinity")
        consts = [g.const(i) if i else None for i in q.input[1:]]
        try:
            if q.op_type == "DequantizeLinear":
                if x.dtype.kind not in "iu":
                    raise CompileError(f"node {_n(q)}: {what} must be an integer initializer")
                if not consts or consts[0] is None:
                    raise CompileError(f"node {_n(q)}: {what} scale must be a constant")
                scale = np.asarray(consts[0], dtype=np.float64)
                zp = np.asarray(consts[1] if len(consts) > 1 and consts[1] is not None else 0)
                if x.size and zp.size and max(abs(int(x.min()) - int(zp.max())),
                                              abs(int(x.max()) - int(zp.min()))) >= _INT_LIMIT:
                    raise CompileError(f"node {_n(q)}: {what}: integers beyond 62 bits (int64 "
                                       f"arithmetic on them would wrap)")
                ints = x.astype(np.int64) - zp.astype(np.int64)
                axis = _attr(q, "axis", 1)
                scale = self._scale_along(q, scale, x.ndim, axis if axis >= 0 else axis + x.ndim,
                                          out_axis, what)
            elif q.op_type == "BipolarQuant":
                if len(consts) != 1 or consts[0] is None:
                    raise CompileError(f"node {_n(q)}: {what} scale must be a constant")
                ints = bipolar_ints(x)
                scale = self._scale_along(q, np.asarray(consts[0], np.float64), x.ndim, None,
                                          out_axis, what)
            else:
                if len(consts) != 3 or any(c is None for c in consts):
                    raise CompileError(f"node {_n(q)}: {what}: Quant needs constant scale, zero "
                                       f"point and bit width")
                scale, zp, bits = (np.asarray(c) for c in consts)
                if bits.size != 1:
                    raise CompileError(f"node {_n(q)}: {what}: one bit width per tensor")
                if x.dtype.kind != "f":
                    raise CompileError(f"node {_n(q)}: {what} must be a float initializer")
                ints = quant_ints(x, scale.astype(x.dtype), zp.astype(x.dtype),
                                  float(bits.reshape(())), bool(_attr(q, "signed", 1)),
                                  bool(_attr(q, "narrow", 0)),
                                  _str(_attr(q, "rounding_mode", "ROUND")))
                scale = self._scale_along(q, np.asarray(scale, np.float64), x.ndim, None,
                                          out_axis, what)
        except FoldError as e:
            raise CompileError(f"node {_n(q)}: {what}: {e}") from None
        if not np.all(np.isfinite(scale)):
            raise CompileError(f"node {_n(q)}: {what} scale must be finite")
        return ints, scale

    @staticmethod
    def _scale_along(q, scale, ndim, axis, out_axis, what):
        """One scale per output channel from a scalar, a 1-d ``axis`` scale or a broadcastable
        tensor; raises when the scale varies along another axis."""
        if scale.size == 1:
            return scale.reshape(1)
        if axis is not None and scale.ndim == 1:
            if axis != out_axis:
                raise CompileError(f"node {_n(q)}: {what} scale must run along axis {out_axis}, "
                                   f"not {axis}")
            return scale
        if scale.ndim > ndim:
            raise CompileError(f"node {_n(q)}: {what} scale has rank {scale.ndim} > {ndim}")
        full = scale.reshape((1,) * (ndim - scale.ndim) + scale.shape)
        if any(full.shape[d] != 1 for d in range(ndim) if d != out_axis):
            raise CompileError(f"node {_n(q)}: {what} scale must be one value per output "
                               f"channel (axis {out_axis})")
        return full.reshape(-1)


def _frac_list(scale: np.ndarray, n: int, where: str) -> list[Fraction]:
    s = np.asarray(scale, dtype=np.float64).reshape(-1)
    if s.size == 1:
        s = np.repeat(s, n)
    if s.size != n:
        raise CompileError(f"{where}: the scale holds {s.size} values for {n} channels")
    return [Fraction(float(v)) for v in s]


def _str(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)



def compile_model(model: onnx.ModelProto, samples: int | None = None,
                  pe: int | list[int] = DEFAULT_PE, seed: int = 1, p_bits: int = DEFAULT_P_BITS,
                  lfsr_width: int = DEFAULT_LFSR_WIDTH, name: str = "nsm",
                  source: str = "", lanes: int | list[int] = 1,
                  weight_store: str | list[str] = "rom", simd: int | list[int] = 1,
                  pass_samples: int = 0, p_tolerance: float = P_TOLERANCE) -> IR:
    try:
        check_identifier("name", name)           # the Verilog top module's: refused up front
    except IRError as e:
        raise CompileError(str(e)) from None
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CompileError(f"ONNX checker rejects the model: {first}") from None
    g = _Graph(model)
    _check_ops(g)
    _check_finite(g)
    meta = _meta(model)
    if samples is None:
        try:
            samples = int(meta.get("nsm.samples", "16"))
        except ValueError:
            raise CompileError(f"metadata nsm.samples = {meta['nsm.samples']!r} is not an integer")
    try:
        pixel_bits = int(meta.get("nsm.pixel_bits", "8"))
    except ValueError:
        raise CompileError(f"metadata nsm.pixel_bits = {meta['nsm.pixel_bits']!r} "
                           f"is not an integer")
    if not 1 <= pixel_bits <= 16:
        raise CompileError(f"metadata nsm.pixel_bits = {pixel_bits} is outside [1, 16]")

    in_name, n_in = _input_size(g)
    users = g.consumers.get(in_name, [])
    thresholds = probs = None
    notes: list[str] = []
    if len(users) == 1 and users[0].op_type == "Unsqueeze":
        z, thresholds = _thermometer(g, in_name, users[0], n_in, pixel_bits)
        thr_int = 0
    elif len(users) == 2 and {u.op_type for u in users} == {"RandomUniformLike", "Less"}:
        z, top = _stochastic(g, in_name, users)
        probs, thr_int = bernoulli_probs(top, pixel_bits, p_bits), 0
        notes.append(f"stochastic input code: P(+1) = pixel/{top} rounded to {p_bits} bits")
    else:
        enc = g.only_consumer(in_name, "GreaterOrEqual", "the threshold encoder")
        if enc.input[0] != in_name:
            raise CompileError(f"node {_n(enc)}: the encoder must compare pixels >= threshold")
        thr = g.scalar(enc, enc.input[1], "the input threshold")
        thr_int = _pixel_threshold(thr, pixel_bits)
        z = _pm1(g, in_name, enc)

    n_spikes = n_in * (len(thresholds) if thresholds else 1)
    layers = _Layers(g).match(z, n_spikes)
    layout = "pixel-major"
    if thresholds:
        first = next(x for x in layers if not isinstance(x, IntPool))
        if isinstance(first, IntConv):
            layout = "level-major"         # the levels are channels of the spike map
        else:
            # The IR numbers a thermometer code pixel by pixel (what the hardware streams):
            # relabel the first layer's inputs from the graph's level-major order.
            L = len(thresholds)
            w = np.asarray(first.weights)
            first.weights = w.reshape(w.shape[0], L, n_in).transpose(0, 2, 1).reshape(w.shape)
    if len(g.outputs) != 1:
        raise CompileError(f"graph: expected one output (scores), found {len(g.outputs)}")
    for layer in (x for x in layers if not isinstance(x, IntPool)):
        p_num = round(layer.p * (1 << p_bits))
        pq = p_num / (1 << p_bits)
        if pq != layer.p and 0 < pq < 1:
            real = float(lfsr.realized_keep(lfsr_width, p_bits, p_num))
            notes.append(f"p = {layer.p} rounded to {pq} ({p_bits} bits; the {lfsr_width}-bit "
                         f"LFSR keeps {real:.10g})")
    try:
        return build_ir(layers, input_size=n_in, input_threshold=thr_int, samples=samples,
                        pe=pe, seed=seed, p_bits=p_bits, lfsr_width=lfsr_width,
                        pixel_bits=pixel_bits, name=name, lanes=lanes, weight_store=weight_store,
                        simd=simd, pass_samples=pass_samples, p_tolerance=p_tolerance,
                        thresholds=thresholds, layout=layout, probs=probs, prob_bits=p_bits,
                        source={"onnx": source, "notes": notes,
                                "compiler": {"pe": pe, "lanes": lanes, "simd": simd,
                                             "pass_samples": pass_samples,
                                             "weight_store": weight_store, "seed": seed,
                                             "p_bits": p_bits, "lfsr_width": lfsr_width,
                                             "p_tolerance": p_tolerance}})
    except IRError as e:
        raise CompileError(str(e)) from None


def compile_file(path: str | Path, **kw) -> IR:
    model = load_onnx(path)
    return compile_model(model, source=str(Path(path).name), **kw)
