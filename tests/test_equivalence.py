"""PyTorch → ONNX → IR: the compiled golden model against onnxruntime and PyTorch."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from nsm_export import golden
from nsm_export.compiler import compile_model
from nsm_export.onnx_export import build_onnx
from nsm_train.model import NSMMLP
from nsm_train.train import TrainConfig, evaluate, train


def _random_model(seed, hidden, wb, p, **kw):
    torch.manual_seed(seed)
    model = NSMMLP(64, hidden, 10, p=p, weight_bits=wb, **kw)
    with torch.no_grad():
        for layer in model.layers:
            layer.weight.mul_(torch.exp(torch.randn(layer.n_out, 1)))   # spread the row scales
            layer.bias.normal_(0.0, 0.5)
    return model


def _ort_scores(proto, x):
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(["scores"], {"pixels": x.astype(np.float32)})[0]


@pytest.mark.parametrize("seed,hidden,wb", [(1, [32], 4), (2, [24, 17], 2), (3, [40], 1),
                                            (4, [], 8), (5, [13, 9, 11], 3)])
def test_sampling_off_onnxruntime_and_golden_decide_identically(digits, seed, hidden, wb):
    model = _random_model(seed, hidden, wb, 0.5)
    proto = build_onnx(model, samples=1, sampling=False)
    ir = compile_model(proto, samples=1, pe=5)
    assert all(not layer.sampling for layer in ir.layers)
    x = np.concatenate([digits[0], digits[2]])              # all 1797 images
    ort_scores = _ort_scores(proto, x)
    res = golden.run(ir, x)
    assert np.array_equal(np.argmax(ort_scores, axis=1), res.classes)
    # Scores agree exactly up to the output layer's one power-of-two scale.
    ratio = ort_scores / np.where(res.scores == 0, 1, res.scores)
    nz = res.scores != 0
    assert np.all(ort_scores[~nz] == 0)
    assert len(np.unique(ratio[nz])) == 1 and ratio[nz][0] > 0


@pytest.mark.parametrize("levels,hidden,wb", [(4, [24], 2), (3, [16, 9], 1), (1, [], 4)])
def test_thermometer_input_compiles_and_decides_like_onnxruntime(digits, levels, hidden, wb):
    """A thermometer-coded input (levels over pixel_max 16) compiles to a pixel-major IR whose
    golden model decides exactly like onnxruntime and PyTorch on the noise-free path."""
    model = _random_model(11 + levels, hidden, wb, 0.5, encoding="thermometer", levels=levels,
                          pixel_max=16)
    proto = build_onnx(model, samples=1, sampling=False, pixel_bits=5)
    ir = compile_model(proto, samples=1, pe=4)
    assert ir.input.encoding == "thermometer" and ir.input.layout == "pixel-major"
    assert list(ir.input.thresholds) == model.thresholds
    assert ir.layers[0].n_in == 64 * levels
    x = np.concatenate([digits[0], digits[2]])
    res = golden.run(ir, x)
    assert np.array_equal(np.argmax(_ort_scores(proto, x), axis=1), res.classes)
    model.sampling = False
    with torch.no_grad():
        torch_scores = model(torch.as_tensor(x, dtype=torch.float32)).numpy()
    assert np.array_equal(np.argmax(torch_scores, axis=1), res.classes)


@pytest.mark.parametrize("mask_op", ["uniform", "bernoulli"])
def test_both_mask_forms_compile_to_the_same_ir(mask_op):
    model = _random_model(7, [20], 4, [0.75, 0.5])
    ref = compile_model(build_onnx(model, samples=8, mask_op="uniform"))
    ir = compile_model(build_onnx(model, samples=8, mask_op=mask_op))
    assert ir.to_json() == ref.to_json()
    assert [layer.p for layer in ir.layers] == [0.75, 0.5]


@pytest.mark.slow
def test_sampling_on_golden_accuracy_matches_pytorch(digits):
    x_tr, y_tr, x_te, y_te = digits
    model, _ = train(TrainConfig(hidden=[64], p=0.75, epochs=8, seed=3), progress=False)
    T = 8
    torch.manual_seed(0)
    acc_torch = evaluate(model, x_te, y_te, T)
    ir = compile_model(build_onnx(model, samples=T))
    acc_golden = float((golden.run(ir, x_te).classes == y_te).mean())
    # Two independent Monte Carlo estimates on n images: 4 standard errors of their difference.
    n = len(y_te)
    a = (acc_torch + acc_golden) / 2
    margin = 4 * np.sqrt(2 * a * (1 - a) / n) + 0.01
    assert abs(acc_torch - acc_golden) < margin, (acc_torch, acc_golden, margin)


from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31 - 1), hidden=st.lists(st.integers(1, 24), max_size=3),
       wb=st.sampled_from([1, 2, 3, 4, 8]), pe=st.integers(1, 9))
def test_random_networks_decide_like_onnxruntime(digits, seed, hidden, wb, pe):
    """Hypothesis: any shape, weight width and folding; sampling off; exact decisions."""
    model = _random_model(seed, hidden, wb, 0.5)
    proto = build_onnx(model, samples=1, sampling=False)
    ir = compile_model(proto, samples=1, pe=pe)
    x = digits[2][:120]
    assert np.array_equal(np.argmax(_ort_scores(proto, x), axis=1), golden.run(ir, x).classes)


def test_negative_and_zero_scales_fold_exactly(digits):
    """A graph whose hidden rows carry negative or zero scales (what other exporters may write)
    computes the same network; the compiler must fold the sign into the row and threshold."""
    from onnx import numpy_helper

    model = _random_model(11, [16], 4, 0.5)
    proto = build_onnx(model, samples=1, sampling=False)
    inits = {t.name: t for t in proto.graph.initializer}
    w = numpy_helper.to_array(inits["layer0_weight_int"]).copy()
    b = numpy_helper.to_array(inits["layer0_bias_int"]).copy()
    sc = numpy_helper.to_array(inits["layer0_weight_scale"]).copy()
    w[:, ::2], b[::2], sc[::2] = -w[:, ::2], -b[::2], -sc[::2]     # same products, flipped signs
    sc[3], b[3] = 0.0, 5                                           # a constant neuron
    for name, arr in (("layer0_weight_int", w), ("layer0_bias_int", b),
                      ("layer0_weight_scale", sc)):
        inits[name].CopyFrom(numpy_helper.from_array(arr, name))
    ir = compile_model(proto, samples=1, pe=4)
    x = np.concatenate([digits[0], digits[2]])
    assert np.array_equal(np.argmax(_ort_scores(proto, x), axis=1), golden.run(ir, x).classes)


@pytest.mark.slow
def test_stochastic_input_compiles_and_matches_pytorch_statistically(digits):
    """The bernoulli code (P(+1) = pixel/16 on digits) compiles to the IR's stochastic encoder;
    golden and PyTorch accuracies at T = 16 agree within the statistical margin, and the noise
    on the input really is drawn anew (two golden runs from different run seeds differ)."""
    x_tr, y_tr, x_te, y_te = digits
    model, _ = train(TrainConfig(hidden=[64], p=0.75, epochs=8, seed=3, encoding="bernoulli"),
                     progress=False)
    assert model.pixel_max == 16
    proto = build_onnx(model, samples=16)
    ir = compile_model(proto)
    assert ir.input.encoding == "bernoulli" and ir.input.probs[16] == 1 << ir.input.prob_bits
    assert ir.input.probs[8] == (1 << ir.input.prob_bits) // 2
    res = golden.run(ir, x_te)
    acc_golden = float((res.classes == y_te).mean())
    torch.manual_seed(0)
    acc_torch = evaluate(model, x_te, y_te, 16)
    a = (acc_torch + acc_golden) / 2
    margin = 4 * np.sqrt(2 * a * (1 - a) / len(y_te)) + 0.01   # as for the threshold code
    assert acc_golden > 0.8 and abs(acc_golden - acc_torch) < margin, (acc_golden, acc_torch)
    g = golden.GoldenModel(ir)
    g.reseed(12345)
    assert not np.array_equal(g.run(x_te[:50]).scores, golden.run(ir, x_te[:50]).scores)
