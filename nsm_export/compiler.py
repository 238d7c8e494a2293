"""Compile an ONNX NSM into the integer IR.

Reads the canonical form written by :mod:`nsm_export.onnx_export` (documented there): a threshold
encoder, then per layer an optional per-input Bernoulli mask, a ``DequantizeLinear`` weight and
bias, ``MatMul``/``Add`` and, for hidden layers, a ``GreaterOrEqual(u, 0)`` step back to ±1
spikes. Every float is folded away losslessly:

* hidden neuron ``i`` with weight scale ``s_i`` and bias ``b_i`` fires iff
  ``s_i * acc_i + b_i >= 0``; for ``s_i > 0`` that is ``acc_i >= ceil(-b_i / s_i)``, computed in
  exact rational arithmetic; a negative scale negates the weight row; a zero scale leaves a
  constant neuron.
* the output layer needs one common scale for its argmax: power-of-two scales are brought to the
  smallest by exact integer multiplication, and every bias must be an integer multiple of it.

Anything else is refused with a :class:`CompileError` whose one-line message names the node.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .build import DEFAULT_LFSR_WIDTH, DEFAULT_P_BITS, DEFAULT_PE, IntLayer, build_ir
from .ir import IR, IRError

__all__ = ["CompileError", "SUPPORTED_OPS", "load_onnx", "compile_model", "compile_file"]

SUPPORTED_OPS = frozenset({
    "GreaterOrEqual", "Cast", "Mul", "Sub", "Shape", "ConstantOfShape", "Bernoulli",
    "DequantizeLinear", "MatMul", "Add", "Constant", "RandomUniformLike", "Less",
})
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
            return numpy_helper.to_array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
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


def _check_ops(g: _Graph) -> None:
    for node in g.model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            raise CompileError(f"node {_n(node)}: op {node.domain}.{node.op_type} is not supported")
        if node.op_type in GAUSSIAN_OPS:
            raise CompileError(f"node {_n(node)}: Gaussian noise ({node.op_type}) cannot be sent "
                               f"to hardware; train with Bernoulli blank-out")
        if node.op_type not in SUPPORTED_OPS:
            raise CompileError(f"node {_n(node)}: op {node.op_type} is not supported "
                               f"(supported: {', '.join(sorted(SUPPORTED_OPS))})")


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


def _dequant(g: _Graph, name: str, axis_expected: int, what: str):
    """Integer values and per-channel scales behind a DequantizeLinear."""
    node = g.producer.get(name)
    if node is None or node.op_type != "DequantizeLinear":
        raise CompileError(f"tensor {name!r}: {what} must come from DequantizeLinear of an "
                           f"integer initializer")
    q = g.const(node.input[0])
    s = g.const(node.input[1]) if len(node.input) > 1 else None
    if q is None or q.dtype.kind not in "iu":
        raise CompileError(f"node {_n(node)}: {what} must be an integer initializer")
    if s is None or not np.all(np.isfinite(s)):
        raise CompileError(f"node {_n(node)}: {what} scale must be a finite constant")
    zp = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    q = q.astype(np.int64)
    if zp is not None:
        q = q - np.asarray(zp).astype(np.int64)
    s = np.asarray(s, dtype=np.float64)
    if s.ndim == 1 and s.size > 1:
        axis = _attr(node, "axis", 1)
        if axis < 0:
            axis += q.ndim
        if axis != axis_expected:
            raise CompileError(f"node {_n(node)}: {what} scale must run along axis "
                               f"{axis_expected}, not {axis}")
    return q, s


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
        raise CompileError(f"input {inp.name!r}: must have shape [batch, n_in], has rank {len(dims)}")
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
        p = float(numpy_helper.to_array(val).reshape(-1)[0])
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


def _per_neuron(values: np.ndarray, n_out: int, what: str) -> np.ndarray:
    """One value per output neuron, from a scalar or an ``n_out`` vector."""
    v = np.asarray(values).reshape(-1)
    if v.size == 1:
        return np.repeat(v, n_out)
    if v.size != n_out:
        raise CompileError(f"{what}: {v.size} values for {n_out} neurons")
    return v


def _weight_bits(w: np.ndarray, where: str) -> int:
    if w.size and np.all(np.abs(w) == 1):
        return 1
    m = int(np.abs(w).max()) if w.size else 0
    bits = max(2, m.bit_length() + 1)
    if bits > 8:
        raise CompileError(f"{where}: integer weights up to {m} need {bits} bits; the hardware "
                           f"takes at most 8 (symmetric, -127..127)")
    return bits


def compile_model(model: onnx.ModelProto, samples: int | None = None,
                  pe: int | list[int] = DEFAULT_PE, seed: int = 1, p_bits: int = DEFAULT_P_BITS,
                  lfsr_width: int = DEFAULT_LFSR_WIDTH, name: str = "nsm",
                  source: str = "", lanes: int | list[int] = 1) -> IR:
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CompileError(f"ONNX checker rejects the model: {first}") from None
    g = _Graph(model)
    _check_ops(g)
    meta = _meta(model)
    if samples is None:
        try:
            samples = int(meta.get("nsm.samples", "16"))
        except ValueError:
            raise CompileError(f"metadata nsm.samples = {meta['nsm.samples']!r} is not an integer")
    try:
        pixel_bits = int(meta.get("nsm.pixel_bits", "8"))
    except ValueError:
        raise CompileError(f"metadata nsm.pixel_bits = {meta['nsm.pixel_bits']!r} is not an integer")
    if not 1 <= pixel_bits <= 16:
        raise CompileError(f"metadata nsm.pixel_bits = {pixel_bits} is outside [1, 16]")

    in_name, n_in = _input_size(g)
    enc = g.only_consumer(in_name, "GreaterOrEqual", "the threshold encoder")
    if enc.input[0] != in_name:
        raise CompileError(f"node {_n(enc)}: the encoder must compare pixels >= threshold")
    thr = g.scalar(enc, enc.input[1], "the input threshold")
    thr_int = int(min(max(math.ceil(thr), 0), 1 << pixel_bits))
    z = _pm1(g, in_name, enc)

    layers: list[IntLayer] = []
    notes: list[str] = []
    width = n_in
    while True:
        i = len(layers)
        where = f"layer {i}"
        users = g.consumers.get(z, [])
        p = 1.0
        mask = _match_mask(g, z, users)
        if mask is not None:
            p, z_in = mask
        else:
            z_in = z
        mm = g.only_consumer(z_in, "MatMul", "the layer's MatMul")
        if mm.input[0] != z_in:
            raise CompileError(f"node {_n(mm)}: spikes must be the left operand of MatMul")
        wq, ws = _dequant(g, mm.input[1], 1, f"{where} weights")
        if wq.ndim != 2 or wq.shape[0] != width:
            raise CompileError(f"node {_n(mm)}: weight shape {tuple(wq.shape)} does not take "
                               f"{width} inputs")
        n_out = wq.shape[1]
        ws = _per_neuron(ws, n_out, f"{where} weight scale")
        add = g.only_consumer(mm.output[0], "Add", "the bias Add")
        b_name = g.other_input(add, mm.output[0])
        if b_name in g.producer and g.producer[b_name].op_type == "DequantizeLinear":
            bq, bs = _dequant(g, b_name, 0, f"{where} bias")
            bias = [Fraction(int(q)) * Fraction(float(s)) for q, s in
                    zip(_per_neuron(bq, n_out, f"{where} bias"),
                        _per_neuron(bs, n_out, f"{where} bias scale"))]
        else:
            bc = g.const(b_name)
            if bc is None:
                raise CompileError(f"node {_n(add)}: the bias must be a constant")
            if bc.dtype.kind not in "fiu":
                raise CompileError(f"node {_n(add)}: the bias must be numeric")
            if not np.all(np.isfinite(np.asarray(bc, dtype=np.float64))):
                raise CompileError(f"node {_n(add)}: the bias holds NaN or infinity")
            bias = [Fraction(float(v)) for v in _per_neuron(bc, n_out, f"{where} bias")]
        w = wq.T.copy()                                     # (n_out, n_in)
        u = add.output[0]
        is_output = u in g.outputs
        if is_output:
            if g.consumers.get(u):
                raise CompileError(f"tensor {u!r}: the scores output must not feed other nodes")
            w, off = _fold_output(w, ws, bias, where)
        else:
            step = g.only_consumer(u, "GreaterOrEqual", "the neuron's step")
            if step.input[0] != u or g.scalar(step, step.input[1], "the step threshold") != 0.0:
                raise CompileError(f"node {_n(step)}: hidden neurons must fire on u >= 0")
            w, off = _fold_hidden(w, ws, bias)
        layers.append(IntLayer(weights=w, offsets=off, p=p,
                               weight_bits=_weight_bits(w, f"{where} weights")))
        if is_output:
            break
        z = _pm1(g, u, step)
        width = n_out
        if len(layers) > 64:
            raise CompileError("graph: more than 64 layers")
    if len(g.outputs) != 1:
        raise CompileError(f"graph: expected one output (scores), found {len(g.outputs)}")
    for layer in layers:
        pq = round(layer.p * (1 << p_bits)) / (1 << p_bits)
        if pq != layer.p:
            notes.append(f"p = {layer.p} rounded to {pq} ({p_bits} bits)")
    try:
        return build_ir(layers, input_size=n_in, input_threshold=thr_int, samples=samples,
                        pe=pe, seed=seed, p_bits=p_bits, lfsr_width=lfsr_width,
                        pixel_bits=pixel_bits, name=name, lanes=lanes,
                        source={"onnx": source, "notes": notes,
                                "compiler": {"pe": pe, "lanes": lanes, "seed": seed,
                                             "p_bits": p_bits, "lfsr_width": lfsr_width}})
    except IRError as e:
        raise CompileError(str(e)) from None


def _fold_hidden(w: np.ndarray, scales: np.ndarray, bias: list[Fraction]):
    """``s*acc + b >= 0`` → integer ``acc' >= theta`` per neuron, exactly."""
    w = w.copy()
    theta = np.zeros(w.shape[0], dtype=np.int64)
    for i, (s, b) in enumerate(zip(scales, bias)):
        s = Fraction(float(s))
        if s > 0:
            theta[i] = math.ceil(-b / s)
        elif s < 0:                       # s*acc + b >= 0  <=>  acc <= -b/s  <=>  -acc >= b/s
            w[i] = -w[i]
            theta[i] = math.ceil(b / s)
        else:
            w[i] = 0
            theta[i] = 0 if b >= 0 else 1
    return w, theta


def _fold_output(w: np.ndarray, scales: np.ndarray, bias: list[Fraction], where: str):
    s = [Fraction(float(x)) for x in scales]
    if any(x <= 0 for x in s):
        raise CompileError(f"{where}: output weight scales must be positive")
    base = min(s)
    mult = []
    for x in s:
        r = x / base
        if r.denominator != 1:
            raise CompileError(f"{where}: output scales {float(x)} and {float(base)} differ by a "
                               f"non-integer ratio; the argmax needs one common scale")
        mult.append(int(r))
    w = w * np.asarray(mult, dtype=np.int64)[:, None]
    off = []
    for c, b in enumerate(bias):
        q = b / base
        if q.denominator != 1:
            raise CompileError(f"{where}: bias of class {c} ({float(b)}) is not an integer multiple "
                               f"of the weight scale {float(base)}")
        off.append(int(q))
    return w, np.asarray(off, dtype=np.int64)


def compile_file(path: str | Path, **kw) -> IR:
    model = load_onnx(path)
    return compile_model(model, source=str(Path(path).name), **kw)
