"""NSM layers and networks: noise modes, gain, batch norm folding, encodings, pooling, conv,
brevitas quantization, stochastic binary synapses, and exactness against the golden model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nsm_export import golden
from nsm_export.compiler import compile_model
from nsm_export.onnx_export import build_onnx, layer_integers
from nsm_train.layers import BinaryPool2d, NSMConv2d, NSMLinear, SBSLinear
from nsm_train.model import NSMConvNet, NSMMLP, SBSMLP, parse_conv_spec, vote_uncertainty

SEED = 99


def integer_forward(model, pixels):
    """The network from its exported integers alone (threshold encoding), int64 scores."""
    z = np.where(pixels.astype(np.int64) >= model.input_threshold, 1, -1)
    for layer in model.layers:
        q = layer_integers(layer)
        acc = z @ q["weights"].T + q["bias"]
        if q["output"]:
            return acc
        z = np.where(acc >= 0, 1, -1)


def _fit(model, digits, steps=30, lr=0.01):
    x, y = digits[0], torch.from_numpy(digits[1])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    torch.manual_seed(SEED)
    for i in range(steps):
        idx = torch.randint(0, len(x), (64,))
        out = model.mean_field_logits(x[idx.numpy()]) if isinstance(model, SBSMLP) \
            else model(x[idx.numpy()])
        loss = torch.nn.functional.cross_entropy(out, y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


# --- noise modes --------------------------------------------------------------------------------

def test_per_synapse_noise_is_independent_per_output():
    torch.manual_seed(SEED)
    layer = NSMLinear(1, 2, p=0.5, noise="synapse", output=True)
    with torch.no_grad():
        layer.weight.fill_(1.0)
        u = layer(torch.ones(4000, 1))
    keep = u / u.max()
    assert abs(keep.mean().item() - 0.5) < 0.04
    assert not torch.equal(keep[:, 0], keep[:, 1])        # each synapse draws its own bit
    agree = (keep[:, 0] == keep[:, 1]).float().mean().item()
    assert abs(agree - 0.5) < 0.05                        # independent: agree half the time


def test_gaussian_noise_has_the_right_moments():
    torch.manual_seed(SEED)
    layer = NSMLinear(30, 1, noise="gaussian", sigma=0.5, output=True, weight_bits=8)
    z = torch.where(torch.rand(1, 30) < 0.5, 1.0, -1.0).repeat(20000, 1)
    with torch.no_grad():
        u = layer(z)[:, 0]
        wq, bq = layer.quantized()
    lin = (z[0] @ wq[0]).item() + bq.item()
    sd = 0.5 * wq.norm().item()
    assert abs(u.mean().item() - lin) < 5 * sd / np.sqrt(20000)
    assert abs(u.std().item() / sd - 1) < 0.05


@pytest.mark.parametrize("noise", ["input", "synapse", "gaussian"])
def test_erf_gradient_of_every_noise_mode(noise):
    torch.manual_seed(SEED)
    layer = NSMLinear(6, 3, p=0.75, noise=noise, sigma=0.3, gain=True)
    with torch.no_grad():
        layer.gain.fill_(0.25)
    z = torch.where(torch.rand(5, 6) < 0.5, 1.0, -1.0).requires_grad_(True)
    out = layer(z)
    assert set(out.detach().unique().tolist()) <= {-1.0, 1.0}
    out.sum().backward()
    wq, bq = (t.detach() for t in layer.quantized())
    zz = z.detach().clone().requires_grad_(True)
    lin, sq = zz @ wq.t(), (zz * zz) @ (wq * wq).t()
    if noise == "gaussian":
        mu, var = 1.25 * lin + bq, 0.09 * sq
    else:
        mu, var = 1.0 * lin + bq, 0.75 * 0.25 * sq
    torch.erf(mu / torch.sqrt(2 * (var + 1e-12))).sum().backward()
    assert torch.allclose(z.grad, zz.grad, rtol=1e-5, atol=1e-6)
    assert layer.gain.grad is not None and layer.gain.grad.abs().sum() > 0


def test_gain_adds_a_deterministic_part():
    layer = NSMLinear(4, 2, p=0.5, gain=True, output=True)
    with torch.no_grad():
        layer.gain.copy_(torch.tensor([0.5, 2.0]))
    layer.sampling = False
    z = torch.ones(3, 4)
    wq, bq = layer.quantized()
    with torch.no_grad():
        assert torch.allclose(layer(z), (z @ wq.t()) * torch.tensor([1.5, 3.0]) + bq)
    with pytest.raises(ValueError, match="gain"):
        layer.integer_params()


# --- batch norm ---------------------------------------------------------------------------------

@pytest.mark.parametrize("norm", ["l1", "linf", "l2"])
def test_batch_norm_folds_into_integer_thresholds(digits, norm):
    torch.manual_seed(SEED)
    model = NSMMLP(64, [32, 16], 10, p=0.5, weight_bits=3, norm=norm)
    _fit(model, digits, steps=20)
    with torch.no_grad():
        model.layers[0].norm_weight[:4] = torch.tensor([-1.0, 0.0, -0.3, 2.0])  # sign flips too
    model.sampling = False
    x = digits[2]
    with torch.no_grad():
        got = model(x).double().numpy()
    ints = integer_forward(model, x)
    e = int(model.layers[-1].integer_params()["scale_exp"][0])
    assert np.array_equal(got, np.ldexp(ints.astype(np.float64), e))
    # and through ONNX and the compiler to the golden model
    ir = compile_model(build_onnx(model, samples=1, sampling=False), samples=1)
    res = golden.run(ir, x)
    assert np.array_equal(res.classes, np.argmax(ints, axis=1))


def _norm_layer(weight, bias, gain, shift, mean, scale):
    """A hidden 2-bit NSMLinear with a batch norm in eval mode and no noise, as given."""
    layer = NSMLinear(weight.shape[1], weight.shape[0], weight_bits=2, norm="l1").eval()
    layer.sampling = False
    with torch.no_grad():
        for name, v in dict(weight=weight, bias=bias, norm_weight=gain, norm_bias=shift,
                            running_mean=mean, running_scale=scale).items():
            getattr(layer, name).copy_(torch.as_tensor(v, dtype=torch.float32))
    return layer


def test_batch_norm_fold_is_exact_below_float64_resolution():
    """An offset smaller than float64's step at the bias: with weights 1 (scale 1/2), integer
    bias 5 and the batch norm u' = A u + C, C = -A * 1e-30, the threshold on w·z is -5 +
    2e-30, so -4: at w·z = -5, u = 0 and u' = C < 0, no spike. A float64 fold (ceil(-C / A /
    2**e - bias)) rounds -5 + 2e-30 to -5 and would fire there."""
    layer = _norm_layer(np.full((1, 5), 0.5), [2.5], [1.0], [0.0], [1e-30], [1.0])
    q = layer.integer_params()
    assert q["weights"].tolist() == [[1] * 5] and q["bias"].tolist() == [5]
    assert q["scale_exp"].tolist() == [-1] and q["norm_affine"][1][0] < 0
    assert layer_integers(layer)["bias"].tolist() == [4]
    z = -torch.ones(1, 5)
    with torch.no_grad():
        assert layer(z).item() == -1.0


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), spread=st.sampled_from([1e-30, 1e-6, 1.0, 1e3]))
def test_batch_norm_fold_decides_like_the_layer(seed, spread):
    """Random weights, biases and batch-norm statistics (zero and negative gains, offsets from
    tiny to huge): the exported integers decide every input as the PyTorch layer does."""
    rng = np.random.default_rng(seed)
    n_out, n_in = 12, int(rng.integers(1, 9))
    gain = rng.normal(size=n_out) * (rng.random(n_out) < 0.9)
    layer = _norm_layer(rng.normal(size=(n_out, n_in)), rng.normal(size=n_out) * 3, gain,
                        rng.normal(size=n_out) * spread, rng.normal(size=n_out) * spread,
                        rng.uniform(0.01, 2.0, size=n_out))
    q = layer_integers(layer)
    z = np.where(rng.random((64, n_in)) < 0.5, 1, -1)
    with torch.no_grad():
        want = layer(torch.from_numpy(z).float()).numpy()
    assert np.array_equal(np.where(z @ q["weights"].T + q["bias"] >= 0, 1.0, -1.0), want)


# --- encodings, pooling, conv -------------------------------------------------------------------

def test_encodings():
    x = np.array([[0, 50, 51, 255]], dtype=np.uint8)
    m = NSMMLP(4, [], 2, encoding="thermometer", levels=4, pixel_max=255)
    assert m.thresholds == [51, 102, 154, 205]
    z = m.encode(x)
    assert z.shape == (1, 16) and torch.equal(z[0, :4], torch.tensor([-1.0, -1.0, 1.0, 1.0]))
    assert torch.equal(z[0, 12:], torch.tensor([-1.0, -1.0, -1.0, 1.0]))
    b = NSMMLP(2, [], 2, encoding="bernoulli", pixel_max=16)
    torch.manual_seed(SEED)
    zb = b.encode(np.tile(np.array([[4, 16]], dtype=np.uint8), (4000, 1)))
    assert abs((zb[:, 0] > 0).float().mean().item() - 0.25) < 0.03 and torch.all(zb[:, 1] == 1)
    assert not torch.equal(zb, b.encode(np.tile(np.array([[4, 16]], dtype=np.uint8), (4000, 1))))
    assert m.ir_unsupported() is None and b.ir_unsupported() is None   # the IR holds both


def test_binary_pooling():
    z = torch.tensor([[[[1.0, -1.0], [-1.0, -1.0]]], [[[-1.0, -1.0], [-1.0, -1.0]]],
                      [[[1.0, 1.0], [-1.0, -1.0]]]])
    assert BinaryPool2d(2, "or")(z).flatten().tolist() == [1.0, -1.0, 1.0]
    assert BinaryPool2d(2, "majority")(z).flatten().tolist() == [-1.0, -1.0, 1.0]


def test_conv_layer_is_an_integer_convolution_and_trains(digits):
    torch.manual_seed(SEED)
    conv = NSMConv2d(2, 3, 3, p=0.5, weight_bits=2)
    conv.sampling = False
    z = torch.where(torch.rand(4, 2, 6, 6) < 0.5, 1.0, -1.0)
    q = conv.integer_params()
    with torch.no_grad():
        out = conv(z)
    w = torch.from_numpy(q["weights"]).float().reshape(3, 2, 3, 3)
    acc = torch.nn.functional.conv2d(z, w) + torch.from_numpy(q["bias"]).float().reshape(1, 3, 1, 1)
    assert torch.equal(out, torch.where(acc >= 0, 1.0, -1.0))
    assert parse_conv_spec("8c3-p2-m2-20") == [("conv", 8, 3, 0), ("pool", 2, "or"),
                                               ("pool", 2, "majority"), ("dense", 20)]
    assert parse_conv_spec("8c5s-4c3s-p2") == [("conv", 8, 5, 2), ("conv", 4, 3, 1),
                                               ("pool", 2, "or")]
    same = NSMConvNet([1, 8, 8], "3c5s-p2-4c3s-6", 10)
    assert [m.padding for m in same.features if hasattr(m, "padding")] == [2, 1]
    assert same.layers[0].fan_in == 4 * 4 * 4 and same.activation_width == 3 * 8 * 8
    for noise in ("input", "synapse", "gaussian"):
        net = NSMConvNet([1, 8, 8], "6c3-p2-16", 10, p=[0.5, 0.75], noise=noise,
                         pixel_max=16, input_threshold=8)
        loss = torch.nn.functional.cross_entropy(net(digits[0][:16]),
                                                 torch.from_numpy(digits[1][:16]))
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all()
                   for p in net.parameters() if p.requires_grad)
    assert "gaussian" in net.ir_unsupported()


# --- brevitas -----------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_brevitas_weights_are_exact_integers(digits, bits):
    torch.manual_seed(SEED)
    model = NSMMLP(64, [24], 10, p=0.5, weight_bits=bits, quantizer="brevitas",
                   output_weight_bits=max(bits, 2))
    with torch.no_grad():
        model.layers[0].weight.mul_(torch.exp(torch.randn(24, 1)))
        model.layers[0].bias.normal_(0, 0.3)
    q = model.layers[0].integer_params()
    qmax = 1 if bits == 1 else 2 ** (bits - 1) - 1
    assert np.abs(q["weights"]).max() <= qmax
    if bits == 1:
        assert set(np.unique(q["weights"])) <= {-1, 1}
    if bits == 2:
        assert set(np.unique(q["weights"])) <= {-1, 0, 1}        # ternary
    model.sampling = False
    x = digits[2]
    with torch.no_grad():
        got = model(x).double().numpy()
    e = int(model.layers[-1].integer_params()["scale_exp"][0])
    assert np.array_equal(got, np.ldexp(integer_forward(model, x).astype(np.float64), e))
    out = model(x[:32])          # gradients reach the latent weights through brevitas' STE
    out.sum().backward()
    assert model.layers[0].weight.grad.abs().sum() > 0


# --- stochastic binary synapses -----------------------------------------------------------------

def test_sbs_mean_field_matches_monte_carlo():
    torch.manual_seed(SEED)
    layer = SBSLinear(40, 2, p=0.75, output=True)
    a = torch.where(torch.rand(1, 40) < 0.5, 1.0, -1.0)
    mu, var = layer.mean_field(a)
    m = torch.tanh(layer.h.detach())
    n = 20000
    w = torch.where(torch.rand(n, 2, 40) < (1 + m) / 2, 1.0, -1.0)
    xi = torch.bernoulli(torch.full((n, 1, 40), 0.75))
    u = (w * xi * a).sum(-1) + layer.bias.detach()
    assert torch.allclose(u.mean(0), mu[0].detach(), atol=0.15)
    assert torch.allclose(u.var(0), var[0].detach(), rtol=0.05)


@pytest.mark.slow
def test_sbs_network_trains_and_reads_out_binary_weights_exactly(digits):
    torch.manual_seed(SEED)
    model = SBSMLP(64, [64], 10, p=0.75, input_threshold=8, pixel_max=16)
    _fit(model, digits, steps=150, lr=0.05)
    model.sampling = False
    x, y = digits[2], digits[3]
    ints = integer_forward(model, x)
    assert (np.argmax(ints, 1) == y).mean() > 0.6
    q = model.layers[0].integer_params()
    assert set(np.unique(q["weights"])) <= {-1, 1}
    ir = compile_model(build_onnx(model, samples=1, sampling=False), samples=1)
    assert np.array_equal(golden.run(ir, x).classes, np.argmax(ints, axis=1))


def test_vote_uncertainty():
    s = torch.zeros(4, 2, 3)
    s[:, 0, 1] = 1.0                           # image 0: all 4 samples vote class 1
    s[:2, 1, 0], s[2:, 1, 2] = 1.0, 1.0         # image 1: 2 votes each for classes 0 and 2
    u = vote_uncertainty(s)
    assert u["margin"].tolist() == [1.0, 0.0]
    assert torch.allclose(u["entropy"], torch.tensor([0.0, 1.0]))
