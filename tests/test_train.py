"""nsm_train: data, exact quantization, the erf-gradient estimator, training and checkpoints."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nsm_train.data import DIGITS, DatasetError, load_dataset, load_digits_split
from nsm_train.layers import BIAS_LIMIT, NSMLinear, quantize_weight
from nsm_train.model import NSMMLP
from nsm_train.train import (CheckpointError, TrainConfig, evaluate, load_checkpoint,
                             save_checkpoint, train)

SEED = 1234


@pytest.fixture(scope="module")
def trained():
    cfg = TrainConfig(hidden=[64], p=0.75, epochs=12, seed=SEED)
    model, hist = train(cfg, progress=False)
    return cfg, model, hist


def random_model(seed, hidden=(48, 24), p=0.5, weight_bits=4, output_weight_bits=None):
    torch.manual_seed(seed)
    model = NSMMLP(64, list(hidden), 10, p=p, weight_bits=weight_bits,
                   output_weight_bits=output_weight_bits)
    with torch.no_grad():
        for layer in model.layers:     # non-trivial biases so that offsets get exercised
            layer.bias.normal_(0.0, 0.3)
    return model


# --- data ---------------------------------------------------------------------------------------

def test_digits_split(digits):
    x_tr, y_tr, x_te, y_te = digits
    assert x_tr.dtype == np.uint8 and x_te.dtype == np.uint8
    assert y_tr.dtype == np.int64 and y_te.dtype == np.int64
    assert x_tr.shape[1] == x_te.shape[1] == DIGITS["n_in"] == 64
    assert len(x_tr) + len(x_te) == 1797 and len(x_te) == 360
    assert x_tr.max() == DIGITS["pixel_max"] and x_tr.min() == 0
    # stratified: every class holds the same share of the test split (±1 image)
    counts = np.bincount(y_te, minlength=10)
    share = np.bincount(np.concatenate([y_tr, y_te]), minlength=10) * 0.2
    assert np.all(np.abs(counts - share) <= 1)
    again = load_dataset("digits", seed=0)
    for a, b in zip(digits, again):
        assert np.array_equal(a, b)
    other = load_digits_split(seed=1)
    assert not np.array_equal(other[3], y_te)


def test_unknown_dataset_is_one_clear_line():
    with pytest.raises(DatasetError) as e:
        load_dataset("no-such-set")
    msg = str(e.value)
    assert "no-such-set" in msg and "digits" in msg and "\n" not in msg
    assert isinstance(e.value, ValueError)


# --- quantization -------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 8), per_row=st.booleans(), seed=st.integers(0, 2**31 - 1),
       log_scale=st.floats(-12, 6), zero_row=st.booleans())
def test_quantizer_integers_and_powers_of_two(bits, per_row, seed, log_scale, zero_row):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(7, 13, generator=g) * (2.0 ** log_scale)
    if zero_row:
        w[3] = 0.0
    w_int, exp = quantize_weight(w, bits, per_row)
    assert torch.equal(w_int, torch.round(w_int)) and torch.equal(exp, torch.round(exp))
    assert exp.shape == (7, 1)
    if not per_row:
        assert torch.all(exp == exp[0])
    if bits == 1:
        assert set(w_int.unique().tolist()) <= {-1.0, 1.0}
        assert torch.equal(w_int, torch.where(w >= 0, 1.0, -1.0))
    else:
        qmax = 2 ** (bits - 1) - 1
        assert w_int.abs().max() <= qmax
        # the scale is the smallest power of two that fits max|w| into qmax
        scale = torch.from_numpy(np.ldexp(1.0, exp.numpy().astype(np.int64)))
        rmax = (w.abs().amax(1, keepdim=True) if per_row else w.abs().amax()).double()
        ok = rmax > 0
        assert torch.all((rmax / scale <= qmax * (1 + 1e-6))[ok.expand_as(scale)])
        assert torch.all((rmax / scale > qmax / 2 * (1 - 1e-6))[ok.expand_as(scale)])
    # the layer's Wq is exactly w_int * 2**exp in float32
    layer = NSMLinear(13, 7, weight_bits=bits, output=not per_row)
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(torch.randn(7, generator=g) * 3.0)
    q = layer.integer_params()
    wq, bq = layer.quantized()
    want_w = np.ldexp(q["weights"].astype(np.float64), q["scale_exp"][:, None])
    want_b = np.ldexp(q["bias"].astype(np.float64), q["scale_exp"])
    assert np.array_equal(wq.detach().double().numpy(), want_w)
    assert np.array_equal(bq.detach().double().numpy(), want_b)
    assert np.all(np.abs(q["bias"]) <= BIAS_LIMIT)
    assert q["weights"].dtype == np.int64 and q["bias"].dtype == np.int64
    assert q["scale_exp"].dtype == np.int64 and q["scale_exp"].shape == (7,)


def test_bias_is_clamped():
    layer = NSMLinear(4, 2, weight_bits=2)
    with torch.no_grad():
        layer.weight.fill_(1e-3)
        layer.bias.copy_(torch.tensor([1e6, -1e6]))
    assert layer.integer_params()["bias"].tolist() == [BIAS_LIMIT, -BIAS_LIMIT]


def test_p_must_be_exact():
    for bad in (0.0, -0.5, 1.5, 0.3):
        with pytest.raises(ValueError):
            NSMLinear(4, 2, p=bad)
    with pytest.raises(ValueError):
        NSMMLP(64, [8], 10, p=[0.5])          # one p per layer
    assert NSMLinear(4, 2, p=192 / 256).p == 0.75


# --- forward semantics --------------------------------------------------------------------------

def numpy_integer_forward(model, pixels):
    """The network from integer_params() alone, in int64; scores in output-scale units."""
    z = np.where(pixels.astype(np.int64) >= model.input_threshold, 1, -1)
    for layer in model.layers:
        q = layer.integer_params()
        acc = z @ q["weights"].T
        if q["output"]:
            return acc + q["bias"], int(q["scale_exp"][0])
        z = np.where(acc + q["bias"] >= 0, 1, -1)


@pytest.mark.parametrize("bits,out_bits,hidden", [(4, None, (48, 24)), (1, 2, (32,)),
                                                   (8, 8, (16, 16, 16)), (2, 4, ())])
def test_noise_free_forward_is_the_integer_network(digits, bits, out_bits, hidden):
    x_te = digits[2]
    model = random_model(SEED, hidden=hidden, weight_bits=bits, output_weight_bits=out_bits)
    model.sampling = False
    with torch.no_grad():
        got = model(x_te).double().numpy()
    ints, e = numpy_integer_forward(model, x_te)
    assert np.array_equal(got, np.ldexp(ints.astype(np.float64), e))
    # p = 1 is the same network with sampling left on
    cfg = dict(model.config, p=1.0)
    same = NSMMLP(**cfg)
    same.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(same(x_te), model(x_te))


def test_sampling_stays_on_in_eval_and_hidden_values_are_pm1(digits):
    x = digits[2][:64]
    model = random_model(SEED).eval()
    torch.manual_seed(SEED)
    with torch.no_grad():
        a, b = model(x), model(x)
        z = model.layers[0](model.encode(x))
    assert not torch.equal(a, b)                 # noise is drawn in eval() too
    assert set(z.unique().tolist()) <= {-1.0, 1.0}


def test_zero_preactivation_fires():
    layer = NSMLinear(5, 3, p=1.0)
    with torch.no_grad():
        layer.weight.zero_()
    out = layer(torch.ones(2, 5))
    assert torch.equal(out, torch.ones(2, 3))     # u >= 0 gives +1


def test_mask_is_per_input_and_has_mean_p():
    torch.manual_seed(SEED)
    layer = NSMLinear(200, 3, p=0.75, output=True)
    with torch.no_grad():
        layer.weight.zero_()
        # one-hot rows: output k reads input k, so u_k = xi_k for all-ones input
        layer.weight[0, 0] = layer.weight[1, 0] = layer.weight[2, 1] = 1.0
        u = layer(torch.ones(4000, 200))
    assert torch.equal(u[:, 0], u[:, 1])         # outputs share the mask of input 0
    keep = u[:, 0].mean().item()
    assert abs(keep - 0.75) < 5 * np.sqrt(0.75 * 0.25 / 4000)
    assert not torch.equal(u[:, 0], u[:, 2])     # inputs have independent masks


def test_mc_scores_and_predict(digits):
    x = digits[2][:50]
    model = random_model(SEED)
    torch.manual_seed(SEED)
    s = model.mc_scores(x, 8)
    assert s.shape == (50, 10)
    model.sampling = False
    with torch.no_grad():
        assert torch.equal(model.mc_scores(x, 3), 3 * model(x))
    # all scores equal: the tie goes to the lowest class index
    with torch.no_grad():
        model.layers[-1].weight.zero_()
        model.layers[-1].bias.zero_()
    assert torch.equal(model.predict(x, 4), torch.zeros(50, dtype=torch.int64))


def test_a_model_that_draws_no_noise_is_evaluated_in_one_pass(digits):
    """A deterministic baseline's T samples are one forward pass repeated (same scores, one
    pass of work); anything that samples (blank-out, Gaussian, a Bernoulli input, stochastic
    binary synapses) still draws T."""
    from nsm_train.model import NSMConvNet, SBSMLP

    x = digits[2][:40]
    det = NSMMLP(64, [32], 10, p=1.0, weight_bits=2, encoding="thermometer", levels=4, norm="l1")
    det.eval()
    assert not det.draws_noise
    calls = []
    det.layers[0].register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    with torch.no_grad():
        s = det.mc_sample_scores(x, 16)
        assert s.shape == (16, 40, 10) and calls == [40]
        assert torch.equal(s, det.forward(x).expand(16, 40, 10))
    conv = NSMConvNet((1, 8, 8), "4c3-p2-8", 10, p=1.0, weight_bits=2, norm="l1")
    assert not conv.draws_noise
    for noisy in (NSMMLP(64, [32], 10, p=0.75), NSMMLP(64, [32], 10, p=1.0, encoding="bernoulli"),
                  NSMMLP(64, [32], 10, p=1.0, noise="gaussian"), SBSMLP(64, [32], 10, p=0.5),
                  NSMConvNet((1, 8, 8), "4c3-p2-8", 10, p=[1.0, 0.5])):
        assert noisy.draws_noise, noisy
        torch.manual_seed(SEED)
        with torch.no_grad():
            s = noisy.mc_sample_scores(x, 8)
        assert not all(torch.equal(s[0], s[k]) for k in range(1, 8)), noisy
        noisy.sampling = False
        assert noisy.draws_noise == (noisy.encoding == "bernoulli")


def test_config_rebuilds_the_model():
    model = random_model(SEED, p=[0.75, 0.5, 0.5], weight_bits=2, output_weight_bits=8)
    cfg = model.config
    assert cfg == dict(n_in=64, hidden=[48, 24], n_classes=10, p=[0.75, 0.5, 0.5],
                       weight_bits=2, input_threshold=8, output_weight_bits=8,
                       encoding="threshold", levels=1, pixel_max=255, noise="input", sigma=0.5,
                       gain=False, norm=None, quantizer="native")
    copy = NSMMLP(**cfg)
    copy.load_state_dict(model.state_dict())
    for a, b in zip(model.layers, copy.layers):
        qa, qb = a.integer_params(), b.integer_params()
        assert all(np.array_equal(qa[k], qb[k]) for k in ("weights", "bias", "scale_exp"))
        assert (qa["p"], qa["weight_bits"], qa["output"]) == (qb["p"], qb["weight_bits"],
                                                              qb["output"])


# --- gradient estimator -------------------------------------------------------------------------

@pytest.mark.parametrize("sampling", [True, False])
def test_erf_estimator_gives_gradients(digits, sampling):
    x, y = digits[0][:128], torch.from_numpy(digits[1][:128])
    model = random_model(SEED)
    model.sampling = sampling
    torch.manual_seed(SEED)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    for name, prm in model.named_parameters():
        assert prm.grad is not None, name
        assert torch.all(torch.isfinite(prm.grad)), name
        assert prm.grad.abs().sum() > 0, name


def test_erf_estimator_is_the_firing_probability_gradient():
    torch.manual_seed(SEED)
    layer = NSMLinear(6, 3, p=0.5)
    z = torch.where(torch.rand(5, 6) < 0.5, 1.0, -1.0).requires_grad_(True)
    out = layer(z)
    assert set(out.detach().unique().tolist()) <= {-1.0, 1.0}
    out.sum().backward()
    wq, bq = (t.detach() for t in layer.quantized())
    zz = z.detach().clone().requires_grad_(True)
    mu = 0.5 * zz @ wq.t() + bq
    sigma = torch.sqrt(0.25 * (zz * zz) @ (wq * wq).t() + 1e-12)
    torch.erf(mu / (np.sqrt(2.0) * sigma)).sum().backward()
    assert torch.allclose(z.grad, zz.grad, rtol=1e-5, atol=1e-6)


# --- training and checkpoints -------------------------------------------------------------------

def test_training_reaches_good_mc_accuracy(trained, digits):
    cfg, model, hist = trained
    assert len(hist["loss"]) == cfg.epochs and hist["loss"][-1] < hist["loss"][0]
    assert hist["test_acc"] > 0.80
    torch.manual_seed(SEED)
    assert evaluate(model, digits[2], digits[3], samples=16) > 0.80


def test_training_is_deterministic():
    cfg = TrainConfig(hidden=[16], epochs=2, seed=7)
    a, ha = train(cfg, progress=False)
    b, hb = train(cfg, progress=False)
    assert ha["loss"] == hb["loss"]
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_checkpoint_round_trip(trained, digits, tmp_path):
    _, model, hist = trained
    path = tmp_path / "sub" / "model.pt"
    save_checkpoint(model, path, extra={"test_acc": hist["test_acc"], "note": "unit test"})
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "nsm-checkpoint" and raw["version"] == 1
    assert raw["config"] == model.config and raw["note"] == "unit test"
    loaded, ckpt = load_checkpoint(path)
    assert ckpt["test_acc"] == hist["test_acc"]
    for a, b in zip(model.layers, loaded.layers):
        qa, qb = a.integer_params(), b.integer_params()
        assert all(np.array_equal(qa[k], qb[k]) for k in ("weights", "bias", "scale_exp"))
    x = digits[2]
    torch.manual_seed(SEED)
    want = model.mc_scores(x, 4)
    torch.manual_seed(SEED)
    assert torch.equal(loaded.mc_scores(x, 4), want)
    assert list(tmp_path.joinpath("sub").iterdir()) == [path]     # no temp files left
    with pytest.raises(ValueError):
        save_checkpoint(model, path, extra={"format": "other"})


def test_checkpoint_errors_name_the_file(tmp_path, trained):
    missing = tmp_path / "nope.pt"
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x01 this is not a checkpoint" * 10)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    old = tmp_path / "old.pt"
    save_checkpoint(trained[1], old)
    ck = torch.load(old, weights_only=True)
    ck["version"] = 99
    torch.save(ck, old)
    broken = tmp_path / "broken.pt"
    ck["version"] = 1
    ck["config"] = dict(ck["config"], hidden=[3])
    torch.save(ck, broken)
    for path in (missing, garbage, foreign, old, broken):
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(path)
        msg = str(e.value)
        assert str(path) in msg and "\n" not in msg, msg


def test_checkpoint_values_must_have_their_types(tmp_path, trained):
    """A value the constructor would coerce, or one another command reads with the wrong type,
    is refused on load (it used to export, or to end in a traceback in `nsm eval`)."""
    save_checkpoint(trained[1], tmp_path / "good.pt")
    good = torch.load(tmp_path / "good.pt", weights_only=True)
    assert load_checkpoint(tmp_path / "good.pt")[0].config == good["config"]
    cases = {"version": (lambda ck: ck.update(version=True), "checkpoint version True"),
             "n_in": (lambda ck: ck["config"].update(n_in=str(ck["config"]["n_in"])),
                      "config['n_in'] = '64' is not a value of its type"),
             "seed": (lambda ck: ck.update(train_config={"seed": "x"}),
                      "train_config['seed'] = 'x' is not int"),
             "dataset": (lambda ck: ck.update(train_config={"dataset": ["digits"]}),
                         "train_config['dataset'] = \"['digits']\" is not str")}
    for name, (edit, needle) in cases.items():
        ck = torch.load(tmp_path / "good.pt", weights_only=True)
        edit(ck)
        torch.save(ck, tmp_path / f"{name}.pt")
        with pytest.raises(CheckpointError, match=re.escape(needle)):
            load_checkpoint(tmp_path / f"{name}.pt")


# --- models, resume, evaluation and the CLI -----------------------------------------------------

def test_resume_continues_exactly(tmp_path):
    ck = tmp_path / "run.pt"
    base = dict(hidden=[16], epochs=3, seed=11, samples=2, train_limit=300)
    full, hf = train(TrainConfig(**base), progress=False)
    train(TrainConfig(**base, checkpoint=str(ck), stop_after=2), progress=False)
    assert load_checkpoint(ck)[1]["resume"]["epoch"] == 2
    resumed, hr = train(TrainConfig(**base, checkpoint=str(ck), resume=True), progress=False)
    assert hr["loss"] == hf["loss"] and hr["epochs_done"] == 3
    for (ka, va), (kb, vb) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


@pytest.mark.parametrize("model", ["det-mlp", "nsm-conv", "det-conv", "sbs-mlp"])
def test_every_model_trains_and_round_trips(tmp_path, digits, model):
    cfg = TrainConfig(model=model, hidden=[32], conv="4c3-p2-16", epochs=2, seed=3, samples=2,
                      encoding="thermometer" if model.endswith("conv") else "threshold",
                      levels=2, p=[0.5, 0.75] if model == "nsm-conv" else 0.75, train_limit=400)
    net, hist = train(cfg, progress=False)
    assert hist["test_acc"] > 0.2
    if model.startswith("det-"):
        assert all(m.p == 1.0 for m in net.modules() if hasattr(m, "p"))
        assert net.layers[0].norm == "l1" or model == "det-conv"
    path = save_checkpoint(net, tmp_path / "m.pt")
    loaded, raw = load_checkpoint(path)
    assert type(loaded) is type(net) and raw["arch"] == net.ARCH
    loaded.sampling = net.sampling = False
    with torch.no_grad():
        assert torch.equal(loaded.eval()(digits[2][:20]), net.eval()(digits[2][:20]))


def test_nsm_eval_cli_with_plot(tmp_path):
    from click.testing import CliRunner

    from nsm.cli import main
    ck = tmp_path / "m.pt"
    r = CliRunner().invoke(main, ["train", "--hidden", "16", "--epochs", "2", "--no-progress",
                                  "-o", str(ck)])
    assert r.exit_code == 0, r.output
    png = tmp_path / "acc.png"
    r = CliRunner().invoke(main, ["eval", str(ck), "-T", "1,4", "--plot", str(png), "--json"])
    assert r.exit_code == 0, r.output
    rows = __import__("json").loads(r.output)
    assert [row["samples"] for row in rows] == [1, 4]
    assert all(0 <= row["accuracy"] <= 1 and 0 <= row["mean_margin"] <= 1 for row in rows)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = CliRunner().invoke(main, ["eval", str(tmp_path / "none.pt")])
    assert r.exit_code == 1 and "none.pt" in r.output
    r = CliRunner().invoke(main, ["train", "--dataset", "mnist", "--epochs", "1", "-o",
                                  str(tmp_path / "x.pt")])
    assert r.exit_code == 1 and "data" in r.output and r.output.count("\n") == 1


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(2, 8), per_row=st.booleans(), seed=st.integers(0, 2**31 - 1),
       log_scale=st.floats(-12, 6), zero_row=st.booleans())
def test_mse_quantizer_is_exact_and_no_worse_than_max(bits, per_row, seed, log_scale, zero_row):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(7, 40, generator=g) * (2.0 ** log_scale)
    if zero_row:
        w[3] = 0.0
    w_max, e_max = quantize_weight(w, bits, per_row)
    w_int, exp = quantize_weight(w, bits, per_row, scale="mse")
    assert torch.equal(w_int, torch.round(w_int)) and torch.equal(exp, torch.round(exp))
    assert exp.shape == (7, 1) and w_int.abs().max() <= 2 ** (bits - 1) - 1
    if not per_row:
        assert torch.all(exp == exp[0])
    assert torch.all(exp <= e_max)

    def err(wi, e):
        d = (wi.double() * torch.pow(2.0, e.double()) - w.double()) ** 2
        return d.sum(1) if per_row else d.sum().reshape(1)
    assert torch.all(err(w_int, exp) <= err(w_max, e_max) * (1 + 1e-6) + 1e-30)
    layer = NSMLinear(40, 7, weight_bits=bits, output=not per_row, quantizer="mse")
    with torch.no_grad():
        layer.weight.copy_(w)
    q = layer.integer_params()
    wq, _ = layer.quantized()
    assert np.array_equal(wq.detach().double().numpy(),
                          np.ldexp(q["weights"].astype(np.float64), q["scale_exp"][:, None]))


def test_resume_with_another_network_is_one_clear_error(tmp_path):
    from nsm_train.train import CheckpointError, TrainConfig, train

    ck = tmp_path / "ck.pt"
    train(TrainConfig(hidden=[8], epochs=1, checkpoint=str(ck), train_limit=200), progress=False)
    with pytest.raises(CheckpointError, match="different network"):
        train(TrainConfig(hidden=[12], epochs=2, checkpoint=str(ck), resume=True,
                          train_limit=200), progress=False)


@settings(max_examples=60, deadline=None)
@given(per_row=st.booleans(), seed=st.integers(0, 2**31 - 1), log_scale=st.integers(-20, 8),
       grid=st.booleans(), zero_row=st.booleans())
def test_ternary_mse_histogram_matches_the_search(per_row, seed, log_scale, grid, zero_row):
    """The histogram shortcut for ternary weights picks an exponent of least squared error."""
    from nsm_train import layers as L

    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, 50, generator=g)
    if grid:        # many weights exactly at s/2 and s: the rounding ties
        w = torch.round(w * 4) / 4
    w = w * 2.0 ** log_scale
    if zero_row:
        w[2] = 0.0
    r = w.abs().amax(1, keepdim=True) if per_row else w.abs().amax().reshape(1, 1)
    mant, e = torch.frexp(r)
    exp_max = torch.where(mant == 0.5, e - 1, e).float()
    fast = L._mse_exponent_ternary(w, exp_max, per_row)
    slow = L._mse_exponent_search(w, exp_max, 1.0, per_row)
    assert fast.shape == slow.shape and torch.equal(fast, torch.round(fast))
    assert torch.all(fast <= exp_max) and torch.all(fast >= exp_max - L.MSE_SEARCH)

    def err(exp):
        s = torch.pow(2.0, exp.double())
        d = (torch.clamp(torch.round(w.double() / s), -1, 1) * s - w.double()) ** 2
        return d.sum(1) if per_row else d.sum().reshape(1)
    assert torch.all(err(fast) <= err(slow) * (1 + 1e-9) + 1e-300)
    if not per_row:
        assert torch.all(fast == fast[0])


# --- loss-only training options ------------------------------------------------------------------

@pytest.mark.parametrize("k", [0, 1, 2])
def test_shift_images_moves_each_image_within_k_pixels(k):
    from nsm_train.train import shift_images

    g = torch.Generator().manual_seed(3)
    x = torch.zeros(200, 2, 9, 8)
    x[:, :, 2:7, 2:6] = torch.rand(200, 2, 5, 4, generator=g) + 0.5    # zero border of 2
    out = shift_images(x.reshape(200, -1), [2, 9, 8], k, generator=g).reshape(200, 2, 9, 8)
    seen = set()
    for i in range(200):
        hits = [(dy, dx) for dy in range(-k, k + 1) for dx in range(-k, k + 1)
                if torch.equal(out[i], torch.roll(x[i], (dy, dx), dims=(1, 2)))]
        assert hits, f"image {i} is not a shift of its input by at most {k} pixels"
        seen.update(hits)
    assert len(seen) == (2 * k + 1) ** 2          # every offset occurs in 200 draws


def test_shift_images_fills_with_zeros():
    from nsm_train.train import shift_images

    x = torch.ones(30, 1, 4, 4)
    out = shift_images(x.reshape(30, -1), [1, 4, 4], 1).reshape(30, 4, 4)
    moved = out.sum(dim=(1, 2)) < 16
    assert moved.any() and torch.all(out[moved].sum(dim=(1, 2)) >= 9)
    assert set(out.unique().tolist()) <= {0.0, 1.0}


def test_flip_images_mirrors_about_half():
    from nsm_train.train import flip_images

    g = torch.Generator().manual_seed(5)
    x = torch.rand(400, 2, 3, 5, generator=g)
    out = flip_images(x.reshape(400, -1), [2, 3, 5], generator=g).reshape(400, 2, 3, 5)
    same = torch.tensor([torch.equal(out[i], x[i]) for i in range(400)])
    mirrored = torch.tensor([torch.equal(out[i], x[i].flip(2)) for i in range(400)])
    assert torch.all(same ^ mirrored) and 150 < int(mirrored.sum()) < 250


def test_expected_output_is_the_mean_score_in_training_only():
    from nsm_train.model import NSMMLP

    torch.manual_seed(0)
    net = NSMMLP(12, [6], 3, p=0.5, weight_bits=3)
    out = net.layers[-1]
    out.expected_output = True
    z = torch.where(torch.rand(40, 6) < 0.5, 1.0, -1.0)
    wq, bq = out.quantized()
    mean = 0.5 * (z @ wq.T) + bq
    assert torch.allclose(out(z), mean) and torch.equal(out(z), out(z))
    net.eval()
    with torch.no_grad():
        draws = torch.stack([out(z) for _ in range(200)])
    assert not torch.equal(draws[0], draws[1])             # eval still samples
    assert torch.allclose(draws.mean(dim=0), mean, atol=0.5)
    cfg = TrainConfig(hidden=[16], epochs=1, expected_output=True, train_limit=64)
    model, _ = train(cfg, progress=False)
    assert model.layers[-1].expected_output and not model.layers[0].expected_output


def test_score_scale_multiplies_the_logits_only():
    from nsm_train.train import _loss

    model = NSMMLP(8, [6], 3, p=1.0, weight_bits=2)
    x = torch.randint(0, 256, (5, 8)).float()
    y = torch.tensor([0, 1, 2, 0, 1])
    log_s = torch.tensor(0.7, requires_grad=True)
    loss, scores = _loss(model, x, y, torch.nn.CrossEntropyLoss(), log_s)
    assert torch.equal(scores, model(x))
    want = torch.nn.functional.cross_entropy(model(x) * np.exp(0.7), y)
    assert torch.allclose(loss, want, rtol=1e-6)
    loss.backward()
    assert log_s.grad is not None and log_s.grad != 0
    loss2, scores2 = _loss(model, x, y, torch.nn.CrossEntropyLoss(), None, samples=3)
    assert torch.equal(scores2, model(x))         # p = 1: every sample is the same


def test_loss_options_train_an_exportable_network(digits):
    from nsm_export.compiler import compile_model
    from nsm_export.onnx_export import build_onnx
    from nsm_train.data import dataset_info
    from nsm_train.train import build_model

    cfg = TrainConfig(hidden=[32], epochs=3, seed=5, weight_bits=2, score_scale=True,
                      loss_samples=2, label_smoothing=0.1, shift=1, lr=0.02)
    model, hist = train(cfg, progress=False)
    assert hist["loss"][-1] < hist["loss"][0]
    assert hist["score_scale"] != 1.0 and hist["test_acc"] > 0.25      # chance: 0.1
    assert model.config == build_model(TrainConfig(hidden=[32], weight_bits=2),
                                       dataset_info("digits")).config
    ir = compile_model(build_onnx(model, samples=4), samples=4)   # nothing the IR cannot hold
    assert ir is not None


def test_resume_keeps_the_score_scale(tmp_path):
    ck = tmp_path / "run.pt"
    base = dict(hidden=[16], epochs=3, seed=11, samples=2, train_limit=300, score_scale=True)
    full, hf = train(TrainConfig(**base), progress=False)
    train(TrainConfig(**base, checkpoint=str(ck), stop_after=2), progress=False)
    resumed, hr = train(TrainConfig(**base, checkpoint=str(ck), resume=True), progress=False)
    assert hr["loss"] == hf["loss"] and hr["score_scale"] == hf["score_scale"]
    plain = tmp_path / "plain.pt"
    train(TrainConfig(**dict(base, score_scale=False), checkpoint=str(plain), stop_after=1),
          progress=False)
    with pytest.raises(CheckpointError, match="score_scale"):
        train(TrainConfig(**base, checkpoint=str(plain), resume=True), progress=False)


@pytest.mark.parametrize("bad", [dict(loss_samples=0), dict(shift=-1), dict(shift=9),
                                 dict(label_smoothing=1.0), dict(loss_samples=True)])
def test_bad_loss_options_are_one_clear_error(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        train(TrainConfig(hidden=[8], epochs=1, train_limit=50, **bad), progress=False)


def test_accuracy_benchmark_passes_loss_options_and_merges(tmp_path, load_benchmark):
    import json

    bench = load_benchmark("accuracy")
    out = tmp_path / "acc.json"
    old = [dict(dataset="digits", model="det-mlp", weight_bits=2, samples=1, accuracy=0.5,
                command="old"),
           dict(dataset="digits", model="nsm-mlp", weight_bits=2, samples=1, accuracy=0.1,
                command="old")]
    out.write_text(json.dumps(old))
    recs = bench.main(["--short", "--models", "nsm-mlp", "--bits", "2", "--epochs", "1",
                       "--train-limit", "100", "--score-scale", "--shift", "1",
                       "--label-smoothing", "0.05", "--output-bits", "8", "--out", str(out),
                       "--merge", "--save-dir", str(tmp_path / "models")])
    saved = json.loads(out.read_text())
    assert saved[0] == old[0] and len(saved) == 1 + len(bench.SAMPLES)     # nsm-mlp replaced
    new = [r for r in saved if r["model"] == "nsm-mlp"]
    assert new == json.loads(json.dumps([r for r in recs if r["model"] == "nsm-mlp"]))
    cfg = new[0]["config"]
    assert (cfg["score_scale"], cfg["shift"], cfg["label_smoothing"]) == (True, 1, 0.05)
    assert cfg["output_weight_bits"] == 8 and "--score-scale" in new[0]["command"]
    model, ckpt = load_checkpoint(tmp_path / "models" / "digits-nsm-mlp-w2.pt")
    assert model.layers[-1].weight_bits == 8 and ckpt["train_config"]["shift"] == 1
    # A run tagged apart (--run) is added beside the preset's records, not over them.
    bench.main(["--short", "--models", "nsm-mlp", "--bits", "2", "--epochs", "1",
                "--train-limit", "100", "--out", str(out), "--merge", "--run", "long"])
    runs = [r.get("run") for r in json.loads(out.read_text())]
    assert runs == [None] + ["preset"] * len(bench.SAMPLES) + ["long"] * len(bench.SAMPLES)
    # --init-dir: each run starts from the float model of its net that --save-dir wrote.
    bench.main(["--short", "--models", "nsm-mlp", "--bits", "32", "--epochs", "1",
                "--train-limit", "100", "--out", str(tmp_path / "f.json"),
                "--save-dir", str(tmp_path / "models")])
    recs = bench.main(["--short", "--models", "nsm-mlp", "--bits", "2", "--epochs", "1",
                       "--train-limit", "100", "--out", str(tmp_path / "q.json"),
                       "--init-dir", str(tmp_path / "models")])
    assert recs[0]["config"]["init"] == str(tmp_path / "models" / "digits-nsm-mlp-w32.pt")



def test_accuracy_benchmark_architecture_overrides_and_validation(tmp_path, load_benchmark):
    import argparse

    bench = load_benchmark("accuracy")
    # The Fashion-MNIST preset codes MLP and conv inputs with their own thermometer levels.
    base = dict(models="nsm-mlp,det-conv", bits="2", epochs=None, seed=0, device="cpu",
                data_dir=None, train_limit=None, time_limit=None, threads=1, save_dir=None,
                val=False)
    jobs = bench.jobs_for("fashion-mnist", argparse.Namespace(**base))
    pre = bench.PRESETS["fashion-mnist"]
    assert [j["levels"] for j in jobs] == [pre["levels"], pre["levels_conv"]]
    assert jobs[0]["hidden"] == pre["hidden"] and jobs[1]["conv"] == pre["conv"]
    jobs = bench.jobs_for("fashion-mnist", argparse.Namespace(
        **base, hidden=[64, 32], conv="8c3-p2-16", levels=2, batch_size=7))
    assert [(j["hidden"], j["conv"], j["levels"], j["batch_size"]) for j in jobs] == \
        [([64, 32], "8c3-p2-16", 2, 7)] * 2
    # --val: held-out training images (past --train-limit) are scored beside the test set.
    recs = bench.main(["--short", "--models", "nsm-mlp", "--bits", "2", "--epochs", "1",
                       "--train-limit", "1200", "--val", "--hidden", "16",
                       "--out", str(tmp_path / "a.json")])
    assert {r["val_images"] for r in recs} == {1437 - 1200}
    assert all(0 <= r["val_accuracy"] <= 1 for r in recs)
    assert recs[0]["config"]["hidden"] == [16]
    with pytest.raises(SystemExit):
        bench.main(["--short", "--val", "--out", str(tmp_path / "b.json")])


def test_nsm_train_cli_loss_options(tmp_path):
    from click.testing import CliRunner

    from nsm.cli import main

    ck = tmp_path / "m.pt"
    r = CliRunner().invoke(main, ["train", "--hidden", "16", "--epochs", "1", "--no-progress",
                                  "--weight-bits", "2", "--output-weight-bits", "8",
                                  "--score-scale", "--loss-samples", "2", "--shift", "1",
                                  "--flip", "--label-smoothing", "0.1", "--norm", "l1",
                                  "-o", str(ck)])
    assert r.exit_code == 0, r.output
    model, ckpt = load_checkpoint(ck)
    assert model.layers[0].weight_bits == 2 and model.layers[-1].weight_bits == 8
    tc = ckpt["train_config"]
    assert (tc["score_scale"], tc["loss_samples"], tc["shift"], tc["label_smoothing"],
            tc["flip"]) == (True, 2, 1, 0.1, True)
    r = CliRunner().invoke(main, ["train", "--output-weight-bits", "12", "-o", str(ck)])
    assert r.exit_code != 0 and "12" in r.output


def test_nsm_train_cli_conv_weight_bits(tmp_path):
    """``--conv-weight-bits``: the conv layers at their own width (mixed precision), the dense
    layers at ``--weight-bits``; the checkpoint loads as it was trained. An MLP, or a width
    that is not 1..8 or 32, is one clear line."""
    from click.testing import CliRunner

    from nsm.cli import main

    ck = tmp_path / "m.pt"
    r = CliRunner().invoke(main, ["train", "--model", "nsm-conv", "--conv", "2c3s-p2-8",
                                  "--epochs", "1", "--no-progress", "--weight-bits", "2",
                                  "--conv-weight-bits", "4", "--output-weight-bits", "8",
                                  "-o", str(ck)])
    assert r.exit_code == 0, r.output
    model, ckpt = load_checkpoint(ck)
    assert [m.weight_bits for m in model.features if hasattr(m, "weight_bits")] == [4]
    assert [m.weight_bits for m in model.layers] == [2, 8]
    assert model.config["conv_weight_bits"] == 4 and ckpt["train_config"]["conv_weight_bits"] == 4
    r = CliRunner().invoke(main, ["train", "--hidden", "16", "--conv-weight-bits", "4",
                                  "-o", str(tmp_path / "mlp.pt")])
    assert r.exit_code != 0 and "conv_weight_bits" in r.output
    assert not (tmp_path / "mlp.pt").exists()
    r = CliRunner().invoke(main, ["train", "--model", "nsm-conv", "--conv-weight-bits", "9",
                                  "-o", str(tmp_path / "bad.pt")])
    assert r.exit_code != 0 and "--conv-weight-bits" in r.output and "9" in r.output


def test_init_fine_tunes_a_float_model_with_quantized_weights(tmp_path, digits):
    """``init`` starts from another checkpoint's weights: a float model fine-tuned at 2 bits
    begins with its weights exactly (lr 0 keeps them), and after two epochs beats two epochs of
    2-bit training from scratch; another shape, or a missing file, is one clear line."""
    from click.testing import CliRunner

    from nsm.cli import main

    base = dict(hidden=[32], p=0.75, seed=SEED, norm="l1", lr=0.005, quantizer="mse")
    flt, _ = train(TrainConfig(**base, weight_bits=32, epochs=8), progress=False)
    src = save_checkpoint(flt, tmp_path / "float.pt")
    kept, _ = train(TrainConfig(**dict(base, lr=0.0), weight_bits=2, epochs=1, init=str(src)),
                    progress=False)
    params = dict(kept.named_parameters())
    assert params and all(torch.equal(v, params[k]) for k, v in flt.named_parameters())
    assert kept.layers[0].weight_bits == 2
    torch.manual_seed(SEED)
    tuned = evaluate(train(TrainConfig(**base, weight_bits=2, epochs=2, init=str(src)),
                           progress=False)[0], digits[2], digits[3], 16)
    torch.manual_seed(SEED)
    scratch = evaluate(train(TrainConfig(**base, weight_bits=2, epochs=2), progress=False)[0],
                       digits[2], digits[3], 16)
    assert tuned > 0.87 and tuned > scratch + 0.02, (tuned, scratch)    # 0.89 against 0.85
    with pytest.raises(CheckpointError, match=r"float\.pt: --init needs a network with the same "
                                              r"layers \(layers\.0\.weight is \(32, 64\)"):
        train(TrainConfig(**dict(base, hidden=[12]), epochs=1, init=str(src)), progress=False)
    with pytest.raises(CheckpointError,
                       match="it has layers.0.norm_weight, which this network lacks"):
        train(TrainConfig(**dict(base, norm=None), epochs=1, init=str(src)), progress=False)
    r = CliRunner().invoke(main, ["train", "--hidden", "32", "--norm", "l1", "--epochs", "1",
                                  "--weight-bits", "2", "--no-progress", "--init", str(src),
                                  "-o", str(tmp_path / "q.pt")])
    assert r.exit_code == 0, r.output
    assert load_checkpoint(tmp_path / "q.pt")[1]["train_config"]["init"] == str(src)
    r = CliRunner().invoke(main, ["train", "--init", str(tmp_path / "none.pt"),
                                  "-o", str(tmp_path / "n.pt")])
    assert r.exit_code != 0 and "none.pt: no such checkpoint file" in r.output
    assert not (tmp_path / "n.pt").exists()


def test_training_flushes_denormals_and_restores_the_default(monkeypatch):
    """Denormals (which x86 CPUs handle in microcode, 3-4x slower training) are flushed to zero
    while a run trains, and torch's default (kept) is back afterwards, also after an error."""
    import nsm_train.train as T

    tiny = torch.tensor([1e-40], dtype=torch.float32)
    seen, real = [], T.build_model

    def build(cfg, info):
        net = real(cfg, info)
        net.layers[0].register_forward_hook(lambda *_: seen.append(float((tiny * 1.0)[0])))
        return net

    monkeypatch.setattr(T, "build_model", build)
    assert float((tiny * 1.0)[0]) > 0
    train(TrainConfig(hidden=[8], epochs=1, train_limit=64), progress=False)
    assert seen and set(seen) == {0.0}
    assert float((tiny * 1.0)[0]) > 0
    with pytest.raises(CheckpointError):
        train(TrainConfig(hidden=[8], epochs=1, init="/nonexistent.pt"), progress=False)
    assert float((tiny * 1.0)[0]) > 0


def test_on_epoch_reports_every_epoch(capsys, tmp_path, load_benchmark):
    calls = []
    train(TrainConfig(hidden=[8], epochs=3, train_limit=64),
          progress=False, on_epoch=lambda e, h: calls.append((e, len(h["loss"]))))
    assert calls == [(1, 1), (2, 2), (3, 3)]
    load_benchmark("accuracy").main(["--short", "--models", "nsm-mlp", "--bits", "2",
                                     "--train-limit", "64", "--out", str(tmp_path / "a.json")])
    out = capsys.readouterr().out
    assert "digits nsm-mlp w2: epoch 1/2 loss" in out and "epoch 2/2" in out
