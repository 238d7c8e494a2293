"""nsm_export.onnx_export: the canonical ONNX form, exactness and sampling in onnxruntime."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from nsm_export.onnx_export import IR_VERSION, OPSET, ExportError, build_onnx, export_onnx
from nsm_train.model import NSMMLP
from nsm_train.train import TrainConfig, evaluate, train

SEED = 4321
METADATA = {"nsm.format": "canonical", "nsm.version": "1", "nsm.samples": "16",
            "nsm.pixel_bits": "8", "nsm.noise": "bernoulli-per-input",
            "nsm.input_encoding": "threshold"}


@pytest.fixture(scope="module")
def trained():
    """Two hidden layers with different p per layer, one of them p = 1."""
    cfg = TrainConfig(hidden=[48, 32], p=[0.75, 1.0, 0.5], epochs=10, seed=SEED)
    model, _ = train(cfg, progress=False)
    return model


def session(proto: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def random_model(seed, hidden, weight_bits, output_weight_bits, p=0.5):
    torch.manual_seed(seed)
    model = NSMMLP(64, hidden, 10, p=p, weight_bits=weight_bits,
                   output_weight_bits=output_weight_bits)
    with torch.no_grad():
        for layer in model.layers:
            layer.weight.mul_(torch.exp(torch.randn(layer.n_out, 1)))   # spread row scales
            layer.bias.normal_(0.0, 0.5)
    return model


# --- structure ----------------------------------------------------------------------------------

ENC = ["GreaterOrEqual", "Cast", "Mul", "Sub"]
DENSE = ["DequantizeLinear", "MatMul", "DequantizeLinear", "Add"]
BERNOULLI = ["Shape", "ConstantOfShape", "Bernoulli", "Mul"]
UNIFORM = ["RandomUniformLike", "Less", "Cast", "Mul"]


@pytest.mark.parametrize("sampling,mask_op", [(True, "bernoulli"), (True, "uniform"),
                                              (False, "bernoulli")])
def test_canonical_structure(trained, tmp_path, sampling, mask_op):
    path = tmp_path / "m.onnx"
    proto = export_onnx(trained, path, samples=16, sampling=sampling, mask_op=mask_op)
    loaded = onnx.load(str(path))
    assert loaded.SerializeToString() == proto.SerializeToString()
    onnx.checker.check_model(loaded, full_check=True)
    assert loaded.ir_version == IR_VERSION == 8
    assert [(o.domain, o.version) for o in loaded.opset_import] == [("", OPSET)] == [("", 17)]
    assert {p.key: p.value for p in loaded.metadata_props} == METADATA
    g = loaded.graph
    mask = (BERNOULLI if mask_op == "bernoulli" else UNIFORM) if sampling else []
    want = ENC + mask + DENSE + ENC + DENSE + ENC + mask + DENSE      # p = 0.75, 1, 0.5
    assert [n.op_type for n in g.node] == want
    assert all(n.name.startswith(("enc_", "layer0_", "layer1_", "layer2_")) for n in g.node)
    assert [n.name for n in g.node[:4]] == ["enc_ge", "enc_cast", "enc_mul", "enc_sub"]
    # input and output
    (inp,), (out,) = g.input, g.output
    assert inp.name == "pixels" and out.name == "scores"
    assert inp.type.tensor_type.elem_type == out.type.tensor_type.elem_type == TensorProto.FLOAT
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
    assert dims(inp) == ["batch", 64] and dims(out) == ["batch", 10]
    assert g.node[-1].op_type == "Add" and list(g.node[-1].output) == ["scores"]
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    assert inits["enc_threshold"].shape == () and inits["enc_threshold"] == 8.0
    assert inits["const_two"] == 2.0 and inits["const_one"] == 1.0 and inits["const_zero"] == 0.0
    for i, layer in enumerate(trained.layers):
        q = layer.integer_params()
        w = inits[f"layer{i}_weight_int"]
        s = inits[f"layer{i}_weight_scale"]
        b = inits[f"layer{i}_bias_int"]
        assert w.dtype == np.int8 and s.dtype == np.float32 and b.dtype == np.int32
        assert np.array_equal(w, q["weights"].T) and np.array_equal(b, q["bias"])
        assert np.array_equal(s, np.ldexp(np.float32(1), q["scale_exp"]).astype(np.float32))
        assert np.array_equal(np.frexp(s)[0], np.full(s.shape, 0.5))    # powers of two
        dq = [n for n in g.node if n.name == f"layer{i}_weight_dq"][0]
        assert list(dq.input) == [f"layer{i}_weight_int", f"layer{i}_weight_scale"]
        assert helper.get_attribute_value(dq.attribute[0]) == 1
        bdq = [n for n in g.node if n.name == f"layer{i}_bias_dq"][0]
        assert list(bdq.input) == [f"layer{i}_bias_int", f"layer{i}_weight_scale"]
        assert helper.get_attribute_value(bdq.attribute[0]) == 0
    assert np.all(inits["layer2_weight_scale"] == inits["layer2_weight_scale"][0])
    if sampling and mask_op == "bernoulli":
        fill = [n for n in g.node if n.name == "layer0_fill"][0]
        assert numpy_helper.to_array(fill.attribute[0].t).tolist() == [0.75]
        bern = [n for n in g.node if n.name == "layer2_bernoulli"][0]
        assert helper.get_attribute_value(bern.attribute[0]) == TensorProto.FLOAT
    if sampling and mask_op == "uniform":
        assert inits["layer0_p"] == 0.75 and inits["layer2_p"] == 0.5
        assert "layer1_p" not in inits


def test_export_errors_leave_no_file(trained, tmp_path):
    path = tmp_path / "m.onnx"
    with pytest.raises(ExportError):
        export_onnx(trained, path, pixel_bits=2)          # threshold 8 needs more than 2 bits
    with pytest.raises(ExportError):
        export_onnx(trained, path, mask_op="gaussian")
    assert list(tmp_path.iterdir()) == []
    export_onnx(trained, path, samples=16)
    before = path.read_bytes()
    with pytest.raises(ExportError):
        export_onnx(trained, path, samples=0)
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]


# --- exactness ----------------------------------------------------------------------------------

def torch_scores(model, x):
    with torch.no_grad():
        return model(x).numpy()


def test_noise_free_onnx_equals_pytorch_exactly(trained, digits):
    x = digits[2]
    sess = session(build_onnx(trained, sampling=False))
    got = sess.run(None, {"pixels": x.astype(np.float32)})[0]
    trained.sampling = False
    try:
        want = torch_scores(trained, x)
    finally:
        trained.sampling = True
    assert got.dtype == np.float32 and np.array_equal(got, want)


@pytest.mark.parametrize("hidden,bits,out_bits", [([64], 1, 1), ([32, 16], 2, 8),
                                                  ([40], 8, 4), ([], 4, 4)])
def test_noise_free_exact_across_widths(digits, hidden, bits, out_bits):
    x = np.concatenate([digits[0], digits[2]])
    model = random_model(SEED, hidden, bits, out_bits)
    model.sampling = False
    sess = session(build_onnx(model, sampling=False))
    got = sess.run(None, {"pixels": x.astype(np.float32)})[0]
    assert np.array_equal(got, torch_scores(model, x))


def test_p_one_layers_have_no_mask(digits):
    model = random_model(SEED, [32], 4, 4, p=1.0)
    proto = build_onnx(model, sampling=True)
    assert not {"Bernoulli", "RandomUniformLike"} & {n.op_type for n in proto.graph.node}
    x = digits[2].astype(np.float32)
    assert np.array_equal(session(proto).run(None, {"pixels": x})[0], torch_scores(model, x))


# --- sampling -----------------------------------------------------------------------------------

def test_sampled_onnx_mc_accuracy_matches_pytorch(trained, digits):
    _, _, x, y = digits
    t = 16
    ort.set_seed(SEED)
    sess = session(build_onnx(trained, samples=t, mask_op="uniform"))
    xf = x.astype(np.float32)
    scores = sum(sess.run(None, {"pixels": xf})[0].astype(np.float64) for _ in range(t))
    acc_onnx = float((scores.argmax(axis=1) == y).mean())
    torch.manual_seed(SEED)
    acc_torch = evaluate(trained, x, y, samples=t)
    n = len(y)
    # two independent Monte Carlo runs of the same model: each accuracy is a binomial proportion
    # over n images; 4 standard errors plus 1.5 % slack for the extra MC variance per image
    margin = 4 * math.sqrt(acc_torch * (1 - acc_torch) / n) + 0.015
    assert acc_torch > 0.8
    assert abs(acc_onnx - acc_torch) <= margin, (acc_onnx, acc_torch, margin)


def mask_subgraph(proto: onnx.ModelProto, layer: int, width: int) -> onnx.ModelProto:
    """The nodes ``layer{i}_*`` that draw the mask, as a model from ``z{i}`` to the mask."""
    names = {f"layer{layer}_{k}" for k in ("shape", "fill", "bernoulli", "uniform", "lt",
                                           "mask_cast")}
    nodes = [n for n in proto.graph.node if n.name in names]
    used = {i for n in nodes for i in n.input}
    inits = [t for t in proto.graph.initializer if t.name in used]
    g = helper.make_graph(
        nodes, "mask",
        [helper.make_tensor_value_info(f"z{layer}", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info(f"layer{layer}_mask", TensorProto.FLOAT,
                                       ["batch", width])],
        initializer=inits)
    m = helper.make_model(g, opset_imports=list(proto.opset_import), ir_version=proto.ir_version)
    onnx.checker.check_model(m, full_check=True)
    return m


@pytest.mark.parametrize("mask_op", ["bernoulli", "uniform"])
def test_mask_mean_is_p_by_the_onnx_spec(trained, mask_op):
    """onnx.reference implements the spec: both forms keep an input with probability p."""
    proto = build_onnx(trained, mask_op=mask_op)
    sub = mask_subgraph(proto, 0, 64)
    assert [n.op_type for n in sub.graph.node] == (BERNOULLI if mask_op == "bernoulli"
                                                   else UNIFORM)[:3]
    z = np.ones((2000, 64), np.float32)
    mask = ReferenceEvaluator(sub).run(None, {"z0": z})[0]
    assert set(np.unique(mask).tolist()) <= {0.0, 1.0}
    n = mask.size
    assert abs(mask.mean() - 0.75) < 5 * math.sqrt(0.75 * 0.25 / n)


def test_mask_mean_in_onnxruntime(trained):
    """onnxruntime keeps each input with probability p in the uniform form; each column and row
    is a fresh draw. Its Bernoulli runs ONNX's function body and keeps with 1 - p (canary: if
    this half fails, onnxruntime has fixed it and the default form runs correctly there)."""
    ort.set_seed(SEED)
    z = np.ones((4000, 64), np.float32)
    mask = session(mask_subgraph(build_onnx(trained, mask_op="uniform"), 0, 64)).run(
        None, {"z0": z})[0]
    tol = 5 * math.sqrt(0.75 * 0.25 / mask.size)
    assert abs(mask.mean() - 0.75) < tol
    cols = mask.mean(axis=0)
    assert np.all(np.abs(cols - 0.75) < 5 * math.sqrt(0.75 * 0.25 / len(mask)))
    assert 0.1 < (mask[:, 0] != mask[:, 1]).mean() < 0.6          # inputs drawn independently
    bern = session(mask_subgraph(build_onnx(trained, mask_op="bernoulli"), 0, 64)).run(
        None, {"z0": z})[0]
    assert abs(bern.mean() - 0.25) < tol
