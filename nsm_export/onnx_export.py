"""Export a trained :class:`nsm_train.model.NSMMLP` to ONNX in one exact, canonical form.

The ONNX → IR compiler pattern-matches this form node by node, so it is a contract: change it
only together with the compiler (and bump ``nsm.version``). onnxruntime runs the file as is and
computes one Monte Carlo sample per call; with ``sampling=False`` it reproduces the PyTorch model
bit for bit, because every value in the graph is a small integer times a power of two.

Canonical form (opset 17, IR version 8)
---------------------------------------
Graph input ``pixels``: FLOAT ``[batch, n_in]`` (``batch`` symbolic), raw unsigned pixel values.
Graph output ``scores``: FLOAT ``[batch, C]``, the class scores of one sample.

Scalar FLOAT initializers shared by all nodes: ``enc_threshold`` (the integer input threshold),
``const_two`` = 2.0, ``const_one`` = 1.0, ``const_zero`` = 0.0.

Encoder (node names ``enc_*``)::

    enc_ge     GreaterOrEqual(pixels, enc_threshold)  -> enc_bool
    enc_cast   Cast(to=FLOAT)(enc_bool)               -> enc_float
    enc_mul    Mul(enc_float, const_two)              -> enc_twice
    enc_sub    Sub(enc_twice, const_one)              -> z0            (±1)

or, for a thermometer code with ``L`` levels (``enc_thresholds`` FLOAT ``[1, L, 1]``,
``enc_axes`` INT64 ``[1]``, ``enc_flat_shape`` INT64 ``[-1, L * n_in]``)::

    enc_unsqueeze  Unsqueeze(pixels, enc_axes)                -> enc_px      [batch, 1, n_in]
    enc_ge .. enc_sub  as above on (enc_px, enc_thresholds)   -> enc_spikes  [batch, L, n_in]
    enc_flatten    Reshape(enc_spikes, enc_flat_shape)        -> z0          (level-major)

or, for the stochastic code (``+1`` with probability ``pixel / pixel_max``, drawn anew each
sample; ``pixel_max`` is the ``high`` attribute)::

    enc_uniform    RandomUniformLike(low=0, high=pixel_max)(pixels) -> enc_rand
    enc_floor      Floor(enc_rand)                                  -> enc_r   (0 .. pixel_max-1)
    enc_lt         Less(enc_r, pixels)                              -> enc_bool
    enc_cast .. enc_sub  as above                                   -> z0

Layer ``i`` = 0, 1, ... (node names ``layer{i}_*``), input ``z{i}``:

* only if sampling is on and the layer's p < 1 (otherwise these nodes are absent and
  ``zm = z{i}``), one of two mask forms, chosen by ``mask_op``:

  ``mask_op="uniform"`` (the default; correct in every runtime) is shown second below;
  ``mask_op="bernoulli"`` (the op the spec names) is::

    layer{i}_shape      Shape(z{i})                                   -> layer{i}_shape
    layer{i}_fill       ConstantOfShape(value=FLOAT tensor [p])(...)  -> layer{i}_prob
    layer{i}_bernoulli  Bernoulli(dtype=FLOAT)(layer{i}_prob)         -> layer{i}_mask
    layer{i}_mask_mul   Mul(z{i}, layer{i}_mask)                      -> layer{i}_zm

  ``mask_op="uniform"``::

    layer{i}_uniform    RandomUniformLike(dtype=FLOAT, low=0, high=1)(z{i})  -> layer{i}_rand
    layer{i}_lt         Less(layer{i}_rand, layer{i}_p)                      -> layer{i}_keep
    layer{i}_mask_cast  Cast(to=FLOAT)(layer{i}_keep)                        -> layer{i}_mask
    layer{i}_mask_mul   Mul(z{i}, layer{i}_mask)                             -> layer{i}_zm

  with ``layer{i}_p`` a scalar FLOAT initializer holding p (``P(mask = 1) = P(r < p) = p``, the
  hardware's comparator ``u < p_num``).

  Both mean one independent Bernoulli(p) keep bit per input and batch row. Why two forms: the
  ONNX spec says Bernoulli outputs 1 with probability p (``onnx.reference`` does), but the
  function body onnx ships for the op (onnx 1.23, ``defs/generator/defs.cc``) is
  ``Cast(Greater(RandomUniformLike(p), p))``, which is 1 with probability **1 - p**, and
  onnxruntime 1.31 (no native CPU kernel) runs that body. So in onnxruntime a ``bernoulli`` file
  keeps each input with probability 1 - p; only ``p = 0.5`` is unaffected. Use ``uniform`` to
  run sampled inference in onnxruntime; it means the same thing in every runtime.

* always::

    layer{i}_weight_dq  DequantizeLinear(axis=1)(layer{i}_weight_int, layer{i}_weight_scale)
                                                                      -> layer{i}_weight
    layer{i}_matmul     MatMul(zm, layer{i}_weight)                   -> layer{i}_mm
    layer{i}_bias_dq    DequantizeLinear(axis=0)(layer{i}_bias_int, layer{i}_weight_scale)
                                                                      -> layer{i}_bias
    layer{i}_add        Add(layer{i}_mm, layer{i}_bias)               -> layer{i}_u

  ``layer{i}_weight_int``: INT8 ``[n_in, n_out]`` (the integer weights *transposed*);
  ``layer{i}_weight_scale``: FLOAT ``[n_out]``, powers of two (all equal in the output layer);
  ``layer{i}_bias_int``: INT32 ``[n_out]``. No zero points.

* hidden layer::

    layer{i}_ge    GreaterOrEqual(layer{i}_u, const_zero)  -> layer{i}_bool
    layer{i}_cast  Cast(to=FLOAT)                          -> layer{i}_float
    layer{i}_mul   Mul(·, const_two)                       -> layer{i}_twice
    layer{i}_sub   Sub(·, const_one)                       -> z{i+1}        (±1)

* output layer: the ``Add`` writes ``scores`` (instead of ``layer{i}_u``) and nothing follows.

Conv nets (:class:`nsm_train.model.NSMConvNet`): after the encoder, ``input_reshape``
``Reshape(z0, input_shape)`` -> ``z0_map`` with ``input_shape`` = INT64 ``[-1, C, H, W]``; then
one layer index per conv *and* pool layer, in order (the IR's numbering), then
``flatten`` ``Flatten(axis=1)`` before the first dense layer (channel-major, as PyTorch's
``reshape``). A conv layer has the same optional mask (drawn on the 4-d map: one bit per input
element) and step as a dense layer, and instead of ``MatMul``/``Add``::

    layer{i}_weight_dq  DequantizeLinear(axis=0)(layer{i}_weight_int, layer{i}_weight_scale)
    layer{i}_bias_dq    DequantizeLinear(axis=0)(layer{i}_bias_int, layer{i}_weight_scale)
    layer{i}_conv       Conv(kernel_shape, strides, pads)(zm, layer{i}_weight, layer{i}_bias)
                                                                      -> layer{i}_u

with ``layer{i}_weight_int`` INT8 ``[c_out, c_in, k, k]``. A pool layer is
``layer{i}_pool`` ``MaxPool(kernel_shape=[k, k], strides=[k, k])`` -> ``z{i+1}`` (OR on ±1), or
``layer{i}_pool`` ``AveragePool`` (same attributes) -> ``layer{i}_avg`` followed by the hidden
step ``layer{i}_ge .. layer{i}_sub`` (majority: the mean of ±1 is ``>= 0``).

Nodes appear in exactly this order. ``metadata_props``: ``nsm.format`` = ``canonical``,
``nsm.version`` = ``1``, ``nsm.samples`` = T, ``nsm.pixel_bits``, ``nsm.noise`` =
``bernoulli-per-input``, ``nsm.input_encoding`` = ``threshold``.

Integer semantics (what the compiler derives): hidden neuron ``i`` fires iff
``sum_j xi_j z_j w_ij >= -bias_int_i`` (its IR threshold), output score
``sum_j xi_j z_j w_cj + bias_int_c`` in units of the output layer's common scale.
"""

from __future__ import annotations


import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from nsm_common.atomic import atomic_write

from .layers import conv_out

from .fold import FoldError, fold_norm

__all__ = ["export_onnx", "build_onnx", "layer_integers", "check_finite", "ExportError", "OPSET",
           "IR_VERSION", "FORMAT_VERSION", "MASK_OPS"]

OPSET = 17
IR_VERSION = 8
FORMAT_VERSION = 1
#: The two mask forms (see the module docstring); the compiler reads both, ``uniform`` is the
#: default.
MASK_OPS = ("bernoulli", "uniform")


class ExportError(ValueError):
    """The model cannot be written in the canonical form (the message says why)."""


def check_finite(model) -> None:
    """Raise :class:`ExportError` naming the first parameter or buffer of ``model`` (weights,
    biases, batch-norm statistics, gains) that holds NaN or infinity: the model diverged, and
    its integers would be garbage (NaN becomes an arbitrary int64). A model that is not a
    torch module (the export needs only ``layers`` and their integers) has no state dict:
    :func:`layer_integers` checks its numbers."""
    if not hasattr(model, "state_dict"):
        return
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not bool(t.isfinite().all()):
            bad = int((~t.isfinite()).sum())
            raise ExportError(f"{name} holds NaN or infinity ({bad} of {t.numel()} values): the "
                              f"model diverged; retrain it (a lower --lr, say)")


def layer_integers(layer) -> dict:
    """``layer.integer_params()`` as the canonical form stores it: a hidden layer's batch norm
    (``norm_affine``) folded exactly into its integer biases and row signs
    (:func:`nsm_export.fold.fold_norm`), so that the neuron fires iff ``weights · (ξ z) + bias
    >= 0``. Raises :class:`ExportError` for a batch norm that holds NaN or infinity."""
    q = layer.integer_params()
    if q.get("norm_affine") is None:
        return q
    try:
        w, b = fold_norm(q["weights"], q["bias"], q["scale_exp"], *q["norm_affine"])
    except FoldError as e:
        raise ExportError(str(e)) from None
    return dict(q, weights=w, bias=b, norm_affine=None)


def _scalar(name: str, value: float) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, dtype=np.float32), name)


def _step(prefix: str, src: str, dst: str, threshold: str) -> list:
    """``dst = 2 * float(src >= threshold) - 1``: the ±1 spike pattern."""
    return [
        helper.make_node("GreaterOrEqual", [src, threshold], [f"{prefix}_bool"],
                         name=f"{prefix}_ge"),
        helper.make_node("Cast", [f"{prefix}_bool"], [f"{prefix}_float"], name=f"{prefix}_cast",
                         to=TensorProto.FLOAT),
        helper.make_node("Mul", [f"{prefix}_float", "const_two"], [f"{prefix}_twice"],
                         name=f"{prefix}_mul"),
        helper.make_node("Sub", [f"{prefix}_twice", "const_one"], [dst], name=f"{prefix}_sub"),
    ]


def build_onnx(model, samples: int = 16, sampling: bool = True, pixel_bits: int = 8,
               mask_op: str = "uniform") -> onnx.ModelProto:
    """The canonical :class:`onnx.ModelProto` of ``model`` (checked), without writing a file."""
    if mask_op not in MASK_OPS:
        raise ExportError(f"mask_op must be one of {', '.join(MASK_OPS)}; got {mask_op!r}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ExportError(f"samples must be a positive integer, got {samples!r}")
    if isinstance(pixel_bits, bool) or not isinstance(pixel_bits, int) or not 1 <= pixel_bits <= 16:
        raise ExportError(f"pixel_bits must be an integer in 1..16, got {pixel_bits!r}")
    why = model.ir_unsupported() if hasattr(model, "ir_unsupported") else None
    if why:
        raise ExportError(f"the canonical form cannot hold this model yet: {why}")
    check_finite(model)
    thr = int(model.input_threshold)
    if not 0 <= thr <= (1 << pixel_bits):
        raise ExportError(f"input threshold {thr} does not fit {pixel_bits}-bit pixels")
    n_in = int(model.n_in)
    inits = [_scalar("enc_threshold", float(thr)), _scalar("const_two", 2.0),
             _scalar("const_one", 1.0), _scalar("const_zero", 0.0)]
    if getattr(model, "encoding", "threshold") == "thermometer":
        levels = [float(t) for t in model.thresholds]
        if not all(0 <= t <= (1 << pixel_bits) for t in levels):
            raise ExportError(f"thermometer thresholds {model.thresholds} do not fit "
                              f"{pixel_bits}-bit pixels")
        inits += [numpy_helper.from_array(np.array(levels, np.float32).reshape(1, -1, 1),
                                          "enc_thresholds"),
                  numpy_helper.from_array(np.array([1], np.int64), "enc_axes"),
                  numpy_helper.from_array(np.array([-1, len(levels) * n_in], np.int64),
                                          "enc_flat_shape")]
        nodes = [helper.make_node("Unsqueeze", ["pixels", "enc_axes"], ["enc_px"],
                                  name="enc_unsqueeze"),
                 *_step("enc", "enc_px", "enc_spikes", "enc_thresholds"),
                 helper.make_node("Reshape", ["enc_spikes", "enc_flat_shape"], ["z0"],
                                  name="enc_flatten")]
        n_prev = len(levels) * n_in
    elif getattr(model, "encoding", "threshold") == "bernoulli":
        top = int(model.pixel_max)
        nodes = [helper.make_node("RandomUniformLike", ["pixels"], ["enc_rand"],
                                  name="enc_uniform", dtype=TensorProto.FLOAT, low=0.0,
                                  high=float(top)),
                 helper.make_node("Floor", ["enc_rand"], ["enc_r"], name="enc_floor"),
                 helper.make_node("Less", ["enc_r", "pixels"], ["enc_bool"], name="enc_lt"),
                 *_step("enc", "", "z0", "")[1:]]
        n_prev = n_in
    else:
        nodes = _step("enc", "pixels", "z0", "enc_threshold")
        n_prev = n_in
    z = "z0"
    features = list(getattr(model, "features", []))
    layers = features + list(model.layers)
    shape = None
    if features:                                        # spike maps: see "Conv nets" above
        shape = (int(model.shape[0]) * int(getattr(model, "levels", 1)), int(model.shape[1]),
                 int(model.shape[2]))
        inits.append(numpy_helper.from_array(np.array((-1,) + shape, np.int64), "input_shape"))
        nodes.append(helper.make_node("Reshape", ["z0", "input_shape"], ["z0_map"],
                                      name="input_reshape"))
        z = "z0_map"
    for i, layer in enumerate(layers):
        pre = f"layer{i}"
        last = i == len(layers) - 1
        if i == len(features) and features:
            nodes.append(helper.make_node("Flatten", [z], [f"{z}_flat"], name="flatten", axis=1))
            z = f"{z}_flat"
            n_prev = shape[0] * shape[1] * shape[2]
        if not hasattr(layer, "weight_bits"):           # BinaryPool2d
            k = int(layer.size)
            shape = (shape[0], shape[1] // k, shape[2] // k)
            if shape[1] < 1 or shape[2] < 1:
                raise ExportError(f"layer {i}: a {k}x{k} pool does not fit the map")
            kw = dict(kernel_shape=[k, k], strides=[k, k])
            if layer.mode == "or":
                nodes.append(helper.make_node("MaxPool", [z], [f"z{i + 1}"], name=f"{pre}_pool",
                                              **kw))
            else:
                nodes.append(helper.make_node("AveragePool", [z], [f"{pre}_avg"],
                                              name=f"{pre}_pool", **kw))
                nodes += _step(pre, f"{pre}_avg", f"z{i + 1}", "const_zero")
            z = f"z{i + 1}"
            continue
        conv = hasattr(layer, "kernel")
        try:
            q = layer_integers(layer)
        except ExportError as e:
            raise ExportError(f"layer {i}: {e}") from None
        w, b, e = q["weights"], q["bias"], q["scale_exp"]
        if bool(q["output"]) != last:
            raise ExportError(f"layer {i}: output={q['output']} but it is "
                              f"{'' if last else 'not '}the last layer")
        n_out = w.shape[0]
        fan_in = shape[0] * layer.kernel ** 2 if conv else n_prev
        if w.shape != (n_out, fan_in) or b.shape != (n_out,) or e.shape != (n_out,):
            raise ExportError(f"layer {i}: integer parameters have inconsistent shapes "
                              f"{w.shape}, {b.shape}, {e.shape} after {fan_in} inputs")
        if w.size and np.abs(w).max() > 127:
            raise ExportError(f"layer {i}: weights do not fit INT8 (max |w| = {np.abs(w).max()})")
        if b.size and np.abs(b).max() > (1 << 24):
            raise ExportError(f"layer {i}: biases exceed 2**24 and would not be exact in float32")
        if last and np.any(e != e[0]):
            raise ExportError(f"layer {i}: the output layer needs one common weight scale")
        scale = np.ldexp(np.ones(n_out, dtype=np.float32), e.astype(np.int32)).astype(np.float32)
        if not np.all(np.isfinite(scale)) or np.any(scale == 0):
            raise ExportError(f"layer {i}: scale exponents {e.min()}..{e.max()} leave float32")
        p = float(q["p"])
        zm = z
        if sampling and p < 1.0:
            zm = f"{pre}_zm"
            if mask_op == "uniform":
                inits.append(_scalar(f"{pre}_p", p))
                nodes += [
                    helper.make_node("RandomUniformLike", [z], [f"{pre}_rand"],
                                     name=f"{pre}_uniform", dtype=TensorProto.FLOAT,
                                     low=0.0, high=1.0),
                    helper.make_node("Less", [f"{pre}_rand", f"{pre}_p"], [f"{pre}_keep"],
                                     name=f"{pre}_lt"),
                    helper.make_node("Cast", [f"{pre}_keep"], [f"{pre}_mask"],
                                     name=f"{pre}_mask_cast", to=TensorProto.FLOAT),
                ]
            else:
                nodes += [
                    helper.make_node("Shape", [z], [f"{pre}_shape"], name=f"{pre}_shape"),
                    helper.make_node("ConstantOfShape", [f"{pre}_shape"], [f"{pre}_prob"],
                                     name=f"{pre}_fill",
                                     value=numpy_helper.from_array(np.array([p], np.float32))),
                    helper.make_node("Bernoulli", [f"{pre}_prob"], [f"{pre}_mask"],
                                     name=f"{pre}_bernoulli", dtype=TensorProto.FLOAT),
                ]
            nodes.append(helper.make_node("Mul", [z, f"{pre}_mask"], [zm], name=f"{pre}_mask_mul"))
        u = "scores" if last else f"{pre}_u"
        if conv:
            k, st, pad = int(layer.kernel), int(layer.stride), int(layer.padding)
            wk = w.reshape(n_out, shape[0], k, k).astype(np.int8)
            if np.abs(w).sum(axis=1).max(initial=0) > (1 << 24):
                raise ExportError(f"layer {i}: filter sums exceed 2**24 and would not be exact "
                                  f"in float32")
            inits += [
                numpy_helper.from_array(wk, f"{pre}_weight_int"),
                numpy_helper.from_array(scale, f"{pre}_weight_scale"),
                numpy_helper.from_array(b.astype(np.int32), f"{pre}_bias_int"),
            ]
            nodes += [
                helper.make_node("DequantizeLinear", [f"{pre}_weight_int", f"{pre}_weight_scale"],
                                 [f"{pre}_weight"], name=f"{pre}_weight_dq", axis=0),
                helper.make_node("DequantizeLinear", [f"{pre}_bias_int", f"{pre}_weight_scale"],
                                 [f"{pre}_bias"], name=f"{pre}_bias_dq", axis=0),
                helper.make_node("Conv", [zm, f"{pre}_weight", f"{pre}_bias"], [u],
                                 name=f"{pre}_conv", kernel_shape=[k, k], strides=[st, st],
                                 pads=[pad] * 4),
            ]
            shape = (n_out, conv_out(shape[1], k, st, pad), conv_out(shape[2], k, st, pad))
            if shape[1] < 1 or shape[2] < 1:
                raise ExportError(f"layer {i}: a {k}x{k} kernel does not fit the map")
        else:
            inits += [
                numpy_helper.from_array(np.ascontiguousarray(w.T).astype(np.int8),
                                        f"{pre}_weight_int"),
                numpy_helper.from_array(scale, f"{pre}_weight_scale"),
                numpy_helper.from_array(b.astype(np.int32), f"{pre}_bias_int"),
            ]
            nodes += [
                helper.make_node("DequantizeLinear", [f"{pre}_weight_int", f"{pre}_weight_scale"],
                                 [f"{pre}_weight"], name=f"{pre}_weight_dq", axis=1),
                helper.make_node("MatMul", [zm, f"{pre}_weight"], [f"{pre}_mm"],
                                 name=f"{pre}_matmul"),
                helper.make_node("DequantizeLinear", [f"{pre}_bias_int", f"{pre}_weight_scale"],
                                 [f"{pre}_bias"], name=f"{pre}_bias_dq", axis=0),
                helper.make_node("Add", [f"{pre}_mm", f"{pre}_bias"], [u], name=f"{pre}_add"),
            ]
            n_prev = n_out
        if not last:
            z = f"z{i + 1}"
            nodes += _step(pre, u, z, "const_zero")
    graph = helper.make_graph(
        nodes, "nsm",
        inputs=[helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", n_in])],
        outputs=[helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", n_prev])],
        initializer=inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              ir_version=IR_VERSION, producer_name="nsm_export",
                              producer_version=str(FORMAT_VERSION),
                              doc_string="Neural Sampling Machine, canonical form "
                                         "(see nsm_export.onnx_export)")
    helper.set_model_props(proto, {
        "nsm.format": "canonical",
        "nsm.version": str(FORMAT_VERSION),
        "nsm.samples": str(samples),
        "nsm.pixel_bits": str(pixel_bits),
        "nsm.noise": "bernoulli-per-input",
        "nsm.input_encoding": "threshold",
    })
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_onnx(model, path, samples: int = 16, sampling: bool = True,
                pixel_bits: int = 8, mask_op: str = "uniform") -> onnx.ModelProto:
    """Write ``model`` to ``path`` in the canonical form and return the checked proto.

    ``samples`` is the Monte Carlo T the hardware will run (metadata only: the graph computes one
    sample). ``sampling=False`` drops the masks (the noise-free p = 1 network). ``mask_op``
    picks the mask form: ``"uniform"`` (the default; samples correctly in every runtime) or
    ``"bernoulli"`` (the op the spec names, which onnxruntime 1.31 samples as 1 - p; see the module
    docstring); the compiler reads both. The file is
    written atomically: on any error no file (or the previous one) is left at ``path``.
    """
    proto = build_onnx(model, samples=samples, sampling=sampling, pixel_bits=pixel_bits,
                       mask_op=mask_op)
    with atomic_write(path) as f:
        f.write(proto.SerializeToString())
    return proto
