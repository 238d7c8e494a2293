"""Conv and pooling layers: IR v2, golden model against PyTorch and onnxruntime, batch-norm
folding with negative scales, the hardware refusal and the compiler's one-line errors."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper

from nsm_export import golden, ir as irmod
from nsm_export.build import IntConv, IntLayer, IntPool, build_ir
from nsm_export.compiler import CompileError, compile_model
from nsm_export.onnx_export import build_onnx
from nsm_train.layers import BinaryPool2d
from nsm_train.model import NSMConvNet, NSMMLP


def _ort(proto, x):
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {proto.graph.input[0].name: x.astype(np.float32)})[0]


def _conv_ir(rng, stride=1, padding=0, mode="or", p=1.0, samples=1):
    w0 = rng.integers(-3, 4, size=(4, 2, 3, 3))
    c0 = IntConv(w0, rng.integers(-4, 5, 4), p=p, weight_bits=3, h_in=7, w_in=6, stride=stride,
                 padding=padding)
    ho, wo = (7 + 2 * padding - 3) // stride + 1, (6 + 2 * padding - 3) // stride + 1
    pool = IntPool(4, ho, wo, 2, mode)
    n = 4 * (ho // 2) * (wo // 2)
    out = IntLayer(rng.integers(-3, 4, size=(3, n)), rng.integers(-2, 3, 3), p=1.0, weight_bits=3)
    return build_ir([c0, pool, out], input_size=2 * 7 * 6, input_threshold=100, samples=samples)


@pytest.mark.parametrize("stride,padding,mode", [(1, 0, "or"), (2, 1, "majority"),
                                                 (1, 2, "majority"), (2, 0, "or")])
def test_golden_conv_and_pool_equal_pytorch(rng, stride, padding, mode):
    ir = _conv_ir(rng, stride, padding, mode)
    x = rng.integers(0, 256, size=(40, ir.input.size))
    res = golden.run(ir, x, record=True)
    conv, pool, out = ir.layers
    z = torch.from_numpy(np.where(x >= 100, 1.0, -1.0)).float().reshape(-1, 2, 7, 6)
    acc = F.conv2d(z, torch.from_numpy(conv.weights).float(), stride=stride, padding=padding)
    s = torch.where(acc >= torch.from_numpy(conv.offsets).float().reshape(1, -1, 1, 1), 1.0, -1.0)
    assert np.array_equal(res.spikes[0][:, 0], s.reshape(len(x), -1).numpy() > 0)
    pooled = BinaryPool2d(2, mode)(s)
    assert np.array_equal(res.spikes[1][:, 0], pooled.reshape(len(x), -1).numpy() > 0)
    scores = pooled.reshape(len(x), -1) @ torch.from_numpy(out.weights).float().T \
        + torch.from_numpy(out.offsets).float()
    assert np.array_equal(res.scores, scores.numpy().astype(np.int64))


def test_conv_blank_out_draws_one_bit_per_input_element_in_order(rng):
    """The LFSR draw order of the IR docstring: element (c, y, x) flattened, per sample."""
    from nsm_export import lfsr
    ir = _conv_ir(rng, p=0.5, samples=3)
    conv = ir.layers[0]
    x = rng.integers(0, 256, size=(2, ir.input.size))
    res = golden.run(ir, x, record=True)
    u, _ = lfsr.draws(conv.rng.width, conv.rng.mask, conv.rng.leap, conv.rng.seed,
                      2 * 3 * conv.n_in, conv.p_bits)
    assert np.array_equal(res.masks[0], (u < conv.p_num).reshape(2, 3, conv.n_in))
    assert res.masks[1].all()                                       # pooling draws nothing
    z = np.where(x >= 100, 1, -1)[:, None, :] * res.masks[0]        # (N, T, n_in) of ±1/0
    acc = F.conv2d(torch.from_numpy(z.reshape(6, 2, 7, 6)).double(),
                   torch.from_numpy(conv.weights).double()).numpy()
    want = acc >= conv.offsets.reshape(1, -1, 1, 1)
    assert np.array_equal(res.spikes[0], want.reshape(2, 3, -1))


def test_conv_ir_round_trip_and_versions(rng, tmp_path):
    ir = _conv_ir(rng, 2, 1, "majority", p=0.75)
    irmod.save(ir, tmp_path)
    meta = json.loads((tmp_path / "ir.json").read_text())
    assert meta["version"] == 2 and [m["kind"] for m in meta["layers"]] == ["conv2d", "pool",
                                                                             "dense"]
    back = irmod.load(tmp_path)
    x = rng.integers(0, 256, size=(5, ir.input.size))
    assert np.array_equal(golden.run(back, x).scores, golden.run(ir, x).scores)
    meta["version"] = 1
    (tmp_path / "ir.json").write_text(json.dumps(meta))
    with pytest.raises(irmod.IRError, match=r"layers\[0\]: a conv2d layer needs IR version 2"):
        irmod.load(tmp_path)
    meta["version"] = 3
    (tmp_path / "ir.json").write_text(json.dumps(meta))
    with pytest.raises(irmod.IRError, match="version 3 is not supported"):
        irmod.load(tmp_path)


def test_version_1_dense_files_still_load(rng, tmp_path):
    from nsm_export.testing import random_ir
    ir = random_ir(rng, sizes=[9, 6, 3])
    irmod.save(ir, tmp_path)
    meta = json.loads((tmp_path / "ir.json").read_text())
    meta["version"] = 1
    (tmp_path / "ir.json").write_text(json.dumps(meta))
    old = irmod.load(tmp_path)
    x = rng.integers(0, 256, size=(7, 9))
    assert old.version == 1 and np.array_equal(golden.run(old, x).scores,
                                               golden.run(ir, x).scores)


def _random_conv_net(seed, spec, wb, norm, cwb=None):
    torch.manual_seed(seed)
    net = NSMConvNet([1, 8, 8], spec, 10, p=0.5, weight_bits=wb, norm=norm, pixel_max=16,
                     input_threshold=8, conv_weight_bits=cwb)
    with torch.no_grad():
        for m in list(net.features) + list(net.layers):
            if hasattr(m, "weight"):
                m.weight.mul_(torch.exp(torch.randn(m.n_out, *[1] * (m.weight.dim() - 1))))
                m.bias.normal_(0.0, 0.5)
            if hasattr(m, "norm_weight"):
                m.norm_weight.normal_(0.0, 1.0)
                m.norm_bias.normal_(0.0, 0.5)
                m.running_mean.normal_(0.0, 0.5)
    return net.eval()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1),
       spec=st.sampled_from(["3c3-p2-7", "4c3-m2-2c2-5", "2c5-9", "3c2-p3-6-5", "5c3-m3",
                             "3c3s-p2-7", "2c5s-m2-3c3s-5"]),
       wb=st.sampled_from([1, 2, 4, 8]), norm=st.sampled_from([None, "l1", "linf", "l2"]),
       cwb=st.sampled_from([None, 1, 2, 3, 4, 8]))
def test_random_conv_nets_decide_like_onnxruntime(seed, spec, wb, norm, cwb):
    """Hypothesis: random conv nets (mixed precision where ``cwb`` is given), sampling off:
    golden == onnxruntime == PyTorch, exactly; each layer's weights keep their width."""
    net = _random_conv_net(seed, spec, wb, norm, cwb)
    proto = build_onnx(net, samples=1, sampling=False)
    ir = compile_model(proto, samples=1)
    for m, ly in zip([m for m in list(net.features) + list(net.layers)
                      if hasattr(m, "weight_bits")],
                     [ly for ly in ir.layers if ly.kind != "pool"], strict=True):
        assert m.weight_bits == (cwb or wb if ly.kind == "conv2d" else wb)
        assert ly.weight_bits <= max(m.weight_bits, 2)
    x = np.random.default_rng(seed).integers(0, 17, size=(60, 64))
    ort_scores = _ort(proto, x)
    net.sampling = False
    with torch.no_grad():
        assert np.array_equal(ort_scores, net(torch.from_numpy(x).float()).numpy())
    assert np.array_equal(np.argmax(ort_scores, axis=1), golden.run(ir, x).classes)


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 1), (2, 0)])
def test_padded_and_strided_conv_decides_like_onnxruntime(stride, padding):
    from nsm_train.layers import NSMConv2d, NSMLinear
    torch.manual_seed(stride * 10 + padding)
    net = NSMConvNet([1, 8, 8], "2c3-7", 10, p=0.5, weight_bits=3, pixel_max=16,
                     input_threshold=8, norm="l1")
    net.features[0] = NSMConv2d(1, 3, 3, p=0.5, weight_bits=3, stride=stride, padding=padding,
                                norm="l1")
    side = (8 + 2 * padding - 3) // stride + 1
    net.layers[0] = NSMLinear(3 * side * side, 7, p=0.5, weight_bits=3)
    net.eval()
    proto = build_onnx(net, samples=1, sampling=False)
    ir = compile_model(proto, samples=1)
    assert (ir.layers[0].stride, ir.layers[0].padding, ir.layers[0].h_out) == (stride, padding,
                                                                                side)
    x = np.random.default_rng(1).integers(0, 17, size=(300, 64))
    assert np.array_equal(np.argmax(_ort(proto, x), axis=1), golden.run(ir, x).classes)


# --- batch norm nodes, negative scales ------------------------------------------------------------

def _bn_graph(w_int, w_scale, bias, bn, conv_shape=None):
    """pixels → threshold spikes → [Reshape] → MatMul/Conv → BatchNormalization → step → dense."""
    gamma, beta, mean, var, eps = bn
    n_in = 36
    nodes = [helper.make_node("GreaterOrEqual", ["pixels", "thr"], ["b"]),
             helper.make_node("Cast", ["b"], ["bf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["bf", "two"], ["b2"]),
             helper.make_node("Sub", ["b2", "one"], ["z0"])]
    inits = [numpy_helper.from_array(np.array(v, np.float32), k)
             for k, v in [("thr", 8.0), ("two", 2.0), ("one", 1.0), ("zero", 0.0)]]
    inits += [numpy_helper.from_array(w_int.astype(np.int8), "w_int"),
              numpy_helper.from_array(w_scale.astype(np.float32), "w_scale")]
    for k, v in [("gamma", gamma), ("beta", beta), ("mean", mean), ("var", var)]:
        inits.append(numpy_helper.from_array(np.asarray(v, np.float32), k))
    if conv_shape:
        inits += [numpy_helper.from_array(np.array([-1, *conv_shape], np.int64), "shape"),
                  numpy_helper.from_array(bias.astype(np.float32), "bias")]
        nodes += [helper.make_node("Reshape", ["z0", "shape"], ["zm"]),
                  helper.make_node("DequantizeLinear", ["w_int", "w_scale"], ["w"], axis=0),
                  helper.make_node("Conv", ["zm", "w", "bias"], ["u"], kernel_shape=[3, 3]),
                  helper.make_node("BatchNormalization", ["u", "gamma", "beta", "mean", "var"],
                                   ["v"], epsilon=eps),
                  helper.make_node("GreaterOrEqual", ["v", "zero"], ["s"]),
                  helper.make_node("Cast", ["s"], ["sf"], to=TensorProto.FLOAT),
                  helper.make_node("Mul", ["sf", "two"], ["s2"]),
                  helper.make_node("Sub", ["s2", "one"], ["z1m"]),
                  helper.make_node("Flatten", ["z1m"], ["z1"], axis=1)]
        n_hidden = w_int.shape[0] * 4 * 4
    else:
        inits.append(numpy_helper.from_array(bias.astype(np.float32), "bias"))
        nodes += [helper.make_node("DequantizeLinear", ["w_int", "w_scale"], ["w"], axis=1),
                  helper.make_node("MatMul", ["z0", "w"], ["mm"]),
                  helper.make_node("Add", ["mm", "bias"], ["u"]),
                  helper.make_node("BatchNormalization", ["u", "gamma", "beta", "mean", "var"],
                                   ["v"], epsilon=eps),
                  helper.make_node("GreaterOrEqual", ["v", "zero"], ["s"]),
                  helper.make_node("Cast", ["s"], ["sf"], to=TensorProto.FLOAT),
                  helper.make_node("Mul", ["sf", "two"], ["s2"]),
                  helper.make_node("Sub", ["s2", "one"], ["z1"])]
        n_hidden = w_int.shape[1]
    rng = np.random.default_rng(5)
    inits.append(numpy_helper.from_array(
        rng.integers(-3, 4, size=(n_hidden, 4)).astype(np.float32), "w_out"))
    nodes.append(helper.make_node("MatMul", ["z1", "w_out"], ["scores"]))
    g = helper.make_graph(nodes, "bn",
                          [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", n_in])],
                          [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 4])],
                          initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(m, full_check=True)
    return m


@pytest.mark.parametrize("conv", [False, True])
def test_batchnorm_with_negative_scales_folds_like_onnxruntime(conv):
    """Every other channel has a negative BN scale (its weight row flips sign in the IR), one a
    zero scale; var + eps is a power of 4 so onnxruntime's float arithmetic is exact too."""
    rng = np.random.default_rng(3 + conv)
    c = 6 if conv else 12
    eps = 2.0 ** -10
    gamma = rng.choice([0.5, 1.0, 2.0, 0.25], size=c) * np.where(np.arange(c) % 2, -1.0, 1.0)
    gamma[3] = 0.0
    var = rng.choice([1.0, 4.0, 0.25], size=c) - eps
    bn = (gamma, rng.integers(-8, 9, size=c) / 4.0, rng.integers(-16, 17, size=c) / 8.0, var, eps)
    if conv:
        proto = _bn_graph(rng.integers(-3, 4, size=(c, 1, 3, 3)),
                          2.0 ** rng.integers(-3, 2, size=c), rng.integers(-4, 5, size=c) / 2.0,
                          bn, conv_shape=(1, 6, 6))
    else:
        proto = _bn_graph(rng.integers(-3, 4, size=(36, c)), 2.0 ** rng.integers(-3, 2, size=c),
                          rng.integers(-4, 5, size=c) / 2.0, bn)
    ir = compile_model(proto, samples=1)
    hidden = ir.layers[0]
    w = hidden.weights.reshape(c, -1)
    assert np.all(w[5] == 0) or np.any(w[1] != 0)         # rows exist; flipped ones below
    x = np.random.default_rng(9).integers(0, 17, size=(500, 36))
    ort_scores = _ort(proto, x)
    res = golden.run(ir, x)
    assert np.array_equal(ort_scores.astype(np.int64), res.scores)
    assert np.all(w[3] == 0)                                # gamma = 0: a constant neuron


def test_batchnorm_irrational_sqrt_is_exact():
    from fractions import Fraction
    from nsm_export.fold import Surd
    # 1/sqrt(2): acc * (1/sqrt 2) - 3 >= 0  <=>  acc >= 3 sqrt 2 = 4.24..  -> 5
    a, c = Surd.inv_sqrt(Fraction(2)), Surd(-3)
    assert (-c / a).ceil_within(-100, 100) == 5
    assert (Surd(0, 1, Fraction(2)) * Surd(0, 1, Fraction(2))).sign() == 1
    assert (Surd(Fraction(-141421356, 10**8), 1, Fraction(2))).sign() == 1
    assert (Surd(Fraction(-141421357, 10**8), 1, Fraction(2))).sign() == -1


# --- one-line errors ------------------------------------------------------------------------------

def _canonical_conv():
    torch.manual_seed(2)
    net = NSMConvNet([1, 8, 8], "3c3-m2-7", 10, p=[0.5, 0.75], weight_bits=3, pixel_max=16,
                     input_threshold=8)
    return build_onnx(net, samples=4)


def _set_init(proto, name, arr):
    for t in proto.graph.initializer:
        if t.name == name:
            t.CopyFrom(numpy_helper.from_array(arr, name))


def _error(proto) -> str:
    with pytest.raises(CompileError) as e:
        compile_model(proto)
    msg = str(e.value)
    assert msg and "\n" not in msg
    return msg


@pytest.mark.parametrize("p", [0.0, 1.5, -0.25])
def test_p_outside_range_names_the_node(p):
    proto = _canonical_conv()
    _set_init(proto, "layer0_p", np.array(p, np.float32))
    assert _error(proto) == f"node 'layer0_lt': keep probability p = {p} is outside (0, 1]"


def test_unsupported_op_names_the_node():
    proto = _canonical_conv()
    next(n for n in proto.graph.node if n.name == "layer1_pool").op_type = "LpPool"
    assert _error(proto).startswith("node 'layer1_pool': op LpPool is not supported")


def test_dynamic_shapes_name_the_value():
    proto = _canonical_conv()
    d = proto.graph.input[0].type.tensor_type.shape.dim[1]
    d.Clear()
    d.dim_param = "pixels_per_image"
    assert "dimension 1 (n_in) is dynamic" in _error(proto)
    proto = _canonical_conv()
    reshape = next(n for n in proto.graph.node if n.name == "input_reshape")
    shape_node = helper.make_node("Shape", ["z0"], ["dyn_shape"], name="dyn")
    proto.graph.node.insert(list(proto.graph.node).index(reshape), shape_node)
    reshape.input[1] = "dyn_shape"
    assert _error(proto) == ("node 'input_reshape': the target shape is not a constant "
                             "(dynamic shapes cannot be built)")


def test_weight_widths_beyond_the_target_name_the_layer():
    torch.manual_seed(3)
    model = NSMMLP(64, [8], 10, p=0.5, weight_bits=8, input_threshold=8)
    proto = build_onnx(model, samples=1, sampling=False)
    w = numpy_helper.to_array(next(t for t in proto.graph.initializer
                                   if t.name == "layer0_weight_int")).astype(np.int16)
    w[0, 0] = 300
    _set_init(proto, "layer0_weight_int", w)
    msg = _error(proto)
    assert msg.startswith("layer 0 (node 'layer0_matmul'): integer weights up to 300 need 10 "
                          "bits; the hardware takes at most 8")
