"""Export an NSM network in the QONNX flavour, through brevitas' own QONNX exporter.

The canonical form (:mod:`nsm_export.onnx_export`) stores integer weights behind
``DequantizeLinear``; this form is what FINN-style tools exchange: float weights behind QONNX
quantizer nodes, written by ``brevitas.export.export_qonnx(..., dynamo=False)`` from a small
brevitas network rebuilt from the trained one. The ``qonnx`` package loads and executes it
(``qonnx.core.onnx_exec.execute_onnx``), and ``nsm compile`` reads it like the canonical form.

What the graph holds (opset 17 plus domain ``qonnx.custom_op.general``; node names are brevitas'
and PyTorch's, so the compiler matches structure, never names):

* input ``pixels`` FLOAT ``[batch, n_in]``, output ``scores`` FLOAT ``[batch, C]``;
* the encoder ``GreaterOrEqual(pixels, t) → Cast → Mul 2 → Sub 1`` (as in the canonical form),
  then for a conv net ``Reshape`` to ``[-1, C, H, W]``;
* per NSM layer, in order: with ``sampling=True`` and ``p < 1`` the per-input mask
  ``RandomUniformLike → Less(·, p) → Cast → Mul``; the latent float weights behind the layer's
  own brevitas quantizer, exported as ``Quant`` (``k >= 2`` bits: fixed point, narrow range,
  power-of-two scale per output channel in hidden layers and one for the output layer) or
  ``BipolarQuant`` (binary weights); ``Gemm`` (dense) or ``Conv`` with the float bias; a hidden
  layer's batch norm (any of l1, linf, l2: in eval they are all ``u' = A u + C``) as ``Mul(A)`` then
  ``Add(C)``; with ``sampling=True`` and Gaussian noise, the noise term
  ``sigma * sqrt((z*z) · W²) * RandomNormalLike`` (so that ``nsm compile`` can refuse it by
  name); the step as ``BipolarQuant(u, 1)`` (``u >= 0`` → +1, else -1: brevitas' binary
  activation);
* OR pooling as ``MaxPool``, majority pooling as ``AveragePool`` then ``BipolarQuant``;
  ``Flatten`` before the first dense layer of a conv net.

``metadata_props``: ``nsm.format`` = ``qonnx``, ``nsm.samples``, ``nsm.pixel_bits``,
``nsm.input_encoding``. With sampling off, qonnx's executor reproduces the PyTorch model's scores
exactly: every weight is a small integer times a power of two.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper
from torch import nn

from nsm_common.atomic import atomic_write
from .onnx_export import ExportError, check_finite

__all__ = ["build_qonnx", "export_qonnx_file", "QONNX_OPSET"]

QONNX_OPSET = 17


def _step():
    import brevitas.nn as qnn
    from brevitas.quant import SignedBinaryActPerTensorConst
    return qnn.QuantIdentity(act_quant=SignedBinaryActPerTensorConst.let(scaling_const=1.0))


class _Layer(nn.Module):
    """One NSM layer as brevitas modules, with its exact quantized weights."""

    def __init__(self, layer, index: int, sampling: bool):
        super().__init__()
        import brevitas.nn as qnn

        from nsm_train.layers import NSMConv2d, brevitas_weight_quant
        self.conv = isinstance(layer, NSMConv2d)
        self.output = bool(layer.output)
        bits = layer.weight_bits
        if bits == 32:
            raise ExportError(f"layer {index}: float weights (weight_bits 32) are not quantized")
        if getattr(layer, "gain", None) is not None:
            raise ExportError(f"layer {index}: a trainable gain has no exported form yet")
        noisy = sampling and layer.samples_noise
        if noisy and layer.noise == "synapse":
            raise ExportError(f"layer {index}: per-synapse noise has no ONNX form here (the "
                              f"hardware and the IR draw per input)")
        q = layer.integer_params()
        e = q["scale_exp"]
        wq = torch.from_numpy(np.ldexp(q["weights"], e[:, None]).astype(np.float32))
        wq = wq.reshape(layer.weight.shape)
        # bit for bit the bias the layer adds: its rounding keeps a zero's sign (-0.0)
        bias = layer.bias.detach().cpu().numpy()
        bq = torch.from_numpy(np.copysign(np.ldexp(q["bias"], e), bias).astype(np.float32))
        if layer.quantizer != "brevitas":
            raise ExportError(f"layer {index}: the QONNX form exports brevitas-quantized models "
                              f"(train with --quantizer brevitas); export this one in the "
                              f"canonical form")
        # the layer's own quantizer
        quant = brevitas_weight_quant(bits, not self.output, layer.fan_in)
        if self.conv:
            self.lin = qnn.QuantConv2d(layer.c_in, layer.n_out, layer.kernel, stride=layer.stride,
                                       padding=layer.padding, bias=True, weight_quant=quant)
        else:
            self.lin = qnn.QuantLinear(layer.n_in, layer.n_out, bias=True, weight_quant=quant)
        with torch.no_grad():
            self.lin.weight.copy_(layer.weight.detach())
            self.lin.bias.copy_(bq)
        self.p = float(layer.p) if sampling and layer.noise == "input" else 1.0
        self.sigma = float(layer.sigma) if noisy and layer.noise == "gaussian" else 0.0
        self.register_buffer("w2", wq * wq)
        self.norm = q["norm_affine"] is not None
        if self.norm:
            view = (1, -1, 1, 1) if self.conv else (1, -1)
            for name, v in zip("AC", q["norm_affine"]):
                self.register_buffer(name, torch.from_numpy(v.astype(np.float32)).reshape(view))
        self.act = None if self.output else _step()
        self._check(wq)

    def _check(self, wq):
        """The rebuilt brevitas layer must give exactly the weights the NSM layer uses."""
        with torch.no_grad():
            got = self.lin.quant_weight().value
        if not torch.equal(got.float(), wq.float()):
            raise ExportError("brevitas quantized the rebuilt layer's weights differently")

    def _linear(self, z, w):
        if self.conv:
            return F.conv2d(z, w, stride=self.lin.stride, padding=self.lin.padding)
        return z @ w.t()

    def forward(self, z):
        if self.p < 1.0:
            z = z * (torch.rand_like(z) < self.p).float()
        u = self.lin(z)
        if self.sigma:
            sd = torch.sqrt(self._linear(z * z, self.w2))
            u = u + self.sigma * sd * torch.randn_like(u)
        if self.norm:
            u = u * self.A + self.C
        return u if self.output else self.act(u)


class _Pool(nn.Module):
    def __init__(self, pool):
        super().__init__()
        self.size, self.mode = int(pool.size), pool.mode
        self.act = _step() if self.mode == "majority" else None

    def forward(self, z):
        if self.mode == "or":
            return F.max_pool2d(z, self.size)
        return self.act(F.avg_pool2d(z, self.size))


class _Net(nn.Module):
    def __init__(self, model, sampling: bool):
        super().__init__()
        self.threshold = float(model.input_threshold)
        feats = list(getattr(model, "features", []))
        self.shape = None
        if feats:
            self.shape = [int(model.shape[0]), int(model.shape[1]), int(model.shape[2])]
        stages = []
        for i, m in enumerate(feats + list(model.layers)):
            stages.append(_Layer(m, i, sampling) if hasattr(m, "weight_bits") else _Pool(m))
        self.n_features = len(feats)
        self.stages = nn.ModuleList(stages)

    def forward(self, pixels):
        z = (pixels >= self.threshold).float() * 2 - 1
        if self.shape is not None:
            z = z.reshape(-1, *self.shape)
        for i, stage in enumerate(self.stages):
            if i == self.n_features and self.shape is not None:
                z = torch.flatten(z, 1)
            z = stage(z)
        return z


def build_qonnx(model, samples: int = 16, sampling: bool = False, pixel_bits: int = 8,
                batch: int = 1) -> onnx.ModelProto:
    """The QONNX-flavoured :class:`onnx.ModelProto` of ``model`` (an NSM network from
    :mod:`nsm_train.model`), exported by brevitas; see the module docstring."""
    from brevitas.export import export_qonnx
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.infer_shapes import InferShapes

    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ExportError(f"samples must be a positive integer, got {samples!r}")
    if isinstance(pixel_bits, bool) or not isinstance(pixel_bits, int) or not 1 <= pixel_bits <= 16:
        raise ExportError(f"pixel_bits must be an integer in 1..16, got {pixel_bits!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ExportError(f"batch must be a positive integer, got {batch!r}")
    if getattr(model, "encoding", "threshold") != "threshold":
        raise ExportError(f"the QONNX form has the threshold input encoding only, not "
                          f"{model.encoding!r}")
    if not hasattr(model, "layers") or not hasattr(model, "input_threshold"):
        raise ExportError(f"{type(model).__name__} is not an NSM network")
    if not 0 <= int(model.input_threshold) <= (1 << pixel_bits):
        raise ExportError(f"input threshold {model.input_threshold} does not fit {pixel_bits}-bit "
                          f"pixels")
    if any(not hasattr(m, "quantizer") for m in model.layers):
        raise ExportError("the QONNX form needs NSM layers with quantized weights (not SBS "
                          "layers; export those in the canonical form)")
    check_finite(model)
    net = _Net(model, sampling).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_qonnx(net, torch.zeros(batch, int(model.n_in)), buf, dynamo=False,
                     input_names=["pixels"], output_names=["scores"], opset_version=QONNX_OPSET)
    proto = ModelWrapper(onnx.load_from_string(buf.getvalue())).transform(InferShapes()).model
    helper.set_model_props(proto, {
        "nsm.format": "qonnx", "nsm.samples": str(samples), "nsm.pixel_bits": str(pixel_bits),
        "nsm.input_encoding": "threshold",
    })
    return proto


def export_qonnx_file(model, path, samples: int = 16, sampling: bool = False,
                      pixel_bits: int = 8, batch: int = 1) -> onnx.ModelProto:
    """Write :func:`build_qonnx` to ``path`` atomically (nothing is left on error)."""
    proto = build_qonnx(model, samples=samples, sampling=sampling, pixel_bits=pixel_bits,
                        batch=batch)
    with atomic_write(path) as f:
        f.write(proto.SerializeToString())
    return proto


def execute_qonnx(proto: onnx.ModelProto, pixels):
    """Scores of ``pixels`` by qonnx's own executor (``qonnx.core.onnx_exec.execute_onnx``).

    qonnx 1.0.0 runs each standard node as a one-node model made at onnx's newest IR version
    (14 with onnx 1.23), which onnxruntime 1.31 refuses ("max supported IR version: 13"); here
    those one-node models get the IR version of ``proto`` instead. Nothing else is changed.
    """
    from unittest import mock

    from qonnx.core import onnx_exec
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.basic import qonnx_make_model

    def make(graph, **kw):
        kw.setdefault("ir_version", proto.ir_version)
        return qonnx_make_model(graph, **kw)

    x = np.asarray(pixels, dtype=np.float32)
    with mock.patch.object(onnx_exec, "qonnx_make_model", make):
        out = onnx_exec.execute_onnx(ModelWrapper(proto), {proto.graph.input[0].name: x})
    return out[proto.graph.output[0].name]
