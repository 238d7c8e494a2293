"""Conv cores (hw.conv.ConvEngine inside hw.top.NsmCore) == golden model, bit for bit, and the
conv cycle model exact image by image; refusals are one line."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from hw.top import HardwareError, generate_verilog, hardware_unsupported, weight_image
from nsm.cli import main
from nsm_export import golden, ir as irmod, schedule
from nsm_export.plan import plan
from nsm_export.build import IntConv, IntLayer, IntPool, build_ir
from nsm_export.compiler import compile_model
from nsm_export.onnx_export import build_onnx
from nsm_train.model import NSMConvNet
from sim.runner import compare, golden_with_resets, run_rtl
from tests.support import SIMULATORS


def _two_conv_ir(rng, samples=3, weight_store="rom"):
    """2-channel 7x6 image (channel-major pixels, threshold code) -> conv 3x3 pad 1 (pe 3 of 4
    filters: a padded group) -> OR pool 2 -> conv 2x2 with 16 filters, 4 channels tested a
    clock -> dense (pe 2) -> output: a conv feeding a conv (pixel words) and a dense layer
    (single spikes), sampling everywhere but the output."""
    c0 = IntConv(rng.integers(-3, 4, (4, 2, 3, 3)), rng.integers(-4, 5, 4), p=0.5,
                 weight_bits=3, h_in=7, w_in=6, stride=1, padding=1)
    pool = IntPool(4, 7, 6, 2, "or")
    c1 = IntConv(rng.integers(-1, 2, (16, 4, 2, 2)), rng.integers(-4, 5, 16), p=0.75,
                 weight_bits=2, h_in=3, w_in=3, stride=1, padding=0)
    hid = IntLayer(rng.integers(-3, 4, (6, 64)), rng.integers(-2, 3, 6), p=0.5, weight_bits=3)
    out = IntLayer(rng.integers(-3, 4, (3, 6)), rng.integers(-2, 3, 3), p=1.0, weight_bits=3)
    return build_ir([c0, pool, c1, hid, out], input_size=2 * 7 * 6, input_threshold=100,
                    samples=samples, pe=[3, 1, 5, 2, 3], lanes=[1, 1, 4, 2, 1], seed=7,
                    weight_store=weight_store)


def _strided_ir(rng):
    """Thermometer input whose 3 levels are the channels (level-major), a stride-2 binary conv
    with no blank-out and no pooling, 8 channels tested a clock (one partial chunk)."""
    c0 = IntConv(rng.integers(-1, 2, (5, 3, 3, 3)), rng.integers(-3, 4, 5), p=1.0,
                 weight_bits=1, h_in=9, w_in=8, stride=2, padding=1)
    c0w = c0.weights.copy()
    c0w[c0w == 0] = 1
    c0.weights = c0w
    n = 5 * 5 * 4
    out = IntLayer(rng.integers(-3, 4, (4, n)), rng.integers(-2, 3, 4), p=0.75, weight_bits=3)
    return build_ir([c0, out], input_size=9 * 8, input_threshold=0, samples=2,
                    pe=[2, 4], lanes=[8, 2], seed=3, thresholds=[40, 120, 200],
                    layout="level-major")


def _check(ir, px, rtl, resets=(), seeds=()):
    expected = golden_with_resets(ir, px, list(resets), seeds=list(seeds), record=True)
    cmp = compare(expected, rtl)
    assert cmp.mismatches == 0, cmp.first_mismatch
    assert np.array_equal(rtl.latency, schedule.latency_cycles(ir, expected.masks))
    assert np.array_equal(np.diff(rtl.done_at),
                          schedule.cycles_per_inference(ir, expected.masks)[1:]) \
        or resets                                          # resets break back-to-back timing
    return expected


@pytest.mark.slow
@pytest.mark.parametrize("simulator", SIMULATORS)
def test_two_conv_layers_pool_and_dense_equal_golden(tmp_path, simulator):
    rng = np.random.default_rng(1)
    ir = _two_conv_ir(rng)
    assert [st.consumer for st in plan(ir)] == ["map", "bits", None, None]
    px = rng.integers(0, 256, size=(8, ir.input.size))
    px[0] = 0
    px[1] = 255
    (tmp_path / "nsm.v").write_text(generate_verilog(ir))
    rtl = run_rtl(tmp_path / "nsm.v", ir, px, simulator=simulator, work_dir=tmp_path)
    _check(ir, px, rtl)
    assert len(set(rtl.latency.tolist())) > 1              # blanked inputs cost no cycles


@pytest.mark.slow
@pytest.mark.parametrize("simulator", SIMULATORS)
def test_conv_weights_loaded_into_ram_survive_resets(tmp_path, simulator):
    """Both conv layers keep their filters in RAM written once through w_axis (SPRAM on
    iCE40); resets in mid-inference do not ask for them again."""
    rng = np.random.default_rng(1)
    ir = _two_conv_ir(rng, weight_store=["ram", "rom", "ram", "rom", "rom"])
    assert len(weight_image(ir)) == 2 * 18 + 4 * 16   # groups x window inputs, 1 beat a word
    px = rng.integers(0, 256, size=(7, ir.input.size))
    resets = [(2, 30), (5, 400)]
    (tmp_path / "nsm.v").write_text(generate_verilog(ir))
    rtl = run_rtl(tmp_path / "nsm.v", ir, px, simulator=simulator, work_dir=tmp_path,
                  in_idle_prob=0.2, resets=resets, seed=1)
    _check(ir, px, rtl, resets)


@pytest.mark.slow
@pytest.mark.parametrize("simulator", SIMULATORS)
def test_strided_thermometer_conv_with_gaps_resets_and_seeds(tmp_path, simulator):
    rng = np.random.default_rng(2)
    ir = _strided_ir(rng)
    px = rng.integers(0, 256, size=(9, ir.input.size))
    resets, seeds = [(3, 50)], [(6, 0xC0FFEE)]
    (tmp_path / "nsm.v").write_text(generate_verilog(ir))
    rtl = run_rtl(tmp_path / "nsm.v", ir, px, simulator=simulator, work_dir=tmp_path,
                  in_idle_prob=0.2, out_stall_prob=0.3, resets=resets, seeds=seeds, seed=2)
    _check(ir, px, rtl, resets, seeds)


@pytest.mark.slow
@pytest.mark.icarus
@pytest.mark.parametrize("spec,levels,line_buffer", [("6c3-p2-5c2-12", 4, False),
                                                     ("6c3s-p2-5c3s-12", 8, False),
                                                     ("6c3-p2-5c2-12", 4, True)],
                         ids=["valid-4-levels", "same-8-levels", "line-buffer"])
def test_exported_conv_net_runs_bit_exact(tmp_path, spec, levels, line_buffer):
    """The whole flow: an NSMConvNet (thermometer input, as the benchmarks train it; valid or
    zero-padded "same" convolutions) -> ONNX -> nsm compile (``--line-buffer``: the fewest
    rows on the conv layer after the first) -> Verilog -> Icarus, on digits-sized images."""
    torch.manual_seed(3)
    net = NSMConvNet([1, 8, 8], spec, 10, p=0.75, weight_bits=2, pixel_max=16,
                     encoding="thermometer", levels=levels)
    onnx_path = tmp_path / "conv.onnx"
    onnx_path.write_bytes(build_onnx(net, samples=4).SerializeToString())
    build = tmp_path / "build"
    r = CliRunner().invoke(main, ["compile", str(onnx_path), "-o", str(build), "--pe", "3",
                                  "--lanes", "2", *(["--line-buffer"] if line_buffer else [])])
    assert r.exit_code == 0, r.output
    ir = irmod.load(build)
    assert [layer.kind for layer in ir.layers] == ["conv2d", "pool", "conv2d", "dense", "dense"]
    assert [getattr(layer, "line_rows", None) for layer in ir.layers] == \
        [0, None, 2 if line_buffer else 0, None, None]
    from sklearn.datasets import load_digits
    px = load_digits().data[:10].astype(np.int64)
    rtl = run_rtl(build / "nsm.v", ir, px, work_dir=tmp_path)
    _check(ir, px, rtl)


def test_conv_cycle_model_counts_the_walk():
    """The model by hand for one position: 1 + (n_in + 1) + k^2*ceil(c_in/lanes) + 4 + G*(K + 4)
    + c_out (one spike a cycle into the dense layer) + 1."""
    rng = np.random.default_rng(0)
    c0 = IntConv(rng.integers(-1, 2, (4, 3, 2, 2)), np.zeros(4, int), p=0.5, weight_bits=2,
                 h_in=2, w_in=2, stride=1, padding=0)
    out = IntLayer(rng.integers(-1, 2, (2, 4)), np.zeros(2, int), p=1.0, weight_bits=2)
    ir = build_ir([c0, out], input_size=12, input_threshold=1, samples=1, pe=[3, 2],
                  lanes=[2, 1])
    st = plan(ir)[0]
    kept = np.zeros(12, bool)
    kept[[0, 5, 7, 11]] = True
    assert st.layer.cycles(st, kept) == 1 + 13 + 4 * 2 + 4 + 2 * (4 + 4) + 4 + 1


def test_unsupported_conv_cores_get_one_line(tmp_path):
    rng = np.random.default_rng(4)
    c0 = IntConv(rng.integers(-1, 2, (2, 1, 3, 3)), np.zeros(2, int), p=0.5, weight_bits=2,
                 h_in=6, w_in=6, stride=1, padding=0)
    out = IntLayer(rng.integers(-1, 2, (2, 8)), np.zeros(2, int), p=1.0, weight_bits=2)
    maj = build_ir([c0, IntPool(2, 4, 4, 2, "majority"), out], input_size=36,
                   input_threshold=1, samples=2)
    with pytest.raises(HardwareError, match=r"^layers\[1\] \(majority pooling\) has no "
                                            r"hardware engine; OR pooling has"):
        generate_verilog(maj)
    ok = build_ir([c0, IntPool(2, 4, 4, 2, "or"), out], input_size=36, input_threshold=1,
                  samples=2)
    assert hardware_unsupported(ok) is None
    with pytest.raises(HardwareError, match="debug ports"):
        generate_verilog(ok, debug=True)
    # nsm compile still writes the IR and says why there is no Verilog, in one line.
    net = NSMConvNet([1, 8, 8], "3c3-m2-7", 10, p=0.5, weight_bits=2, pixel_max=16,
                     input_threshold=8)
    onnx_path = tmp_path / "conv.onnx"
    onnx_path.write_bytes(build_onnx(net, samples=4).SerializeToString())
    out_dir = tmp_path / "build"
    r = CliRunner().invoke(main, ["compile", str(onnx_path), "-o", str(out_dir)])
    assert r.exit_code == 0, r.output
    assert r.stderr.count("\n") == 1 and "majority pooling" in r.stderr
    assert (out_dir / "ir.json").is_file() and not (out_dir / "nsm.v").exists()
    ir = compile_model(onnx.load(str(onnx_path)))
    x = np.random.default_rng(0).integers(0, 17, size=(5, 64))
    assert np.array_equal(golden.run(irmod.load(out_dir), x).scores, golden.run(ir, x).scores)


@pytest.mark.slow
@pytest.mark.icarus
@pytest.mark.parametrize("seed", range(2000, 2012))
def test_fuzz_random_conv_nets(tmp_path, seed):
    """12 random conv nets (channels, kernel, stride, padding, pooling, depth, weight bits, p,
    pe, lanes, ROM/RAM, thermometer or threshold input, T): bit-exact, cycle model exact."""
    from nsm_export.testing import random_conv_ir, random_pixels
    rng = np.random.default_rng(seed)
    ir = random_conv_ir(rng)
    px = random_pixels(rng, ir, 4)
    (tmp_path / "nsm.v").write_text(generate_verilog(ir))
    rtl = run_rtl(tmp_path / "nsm.v", ir, px, work_dir=tmp_path)
    _check(ir, px, rtl)


@pytest.mark.slow
@pytest.mark.parametrize("simulator", SIMULATORS)
def test_stochastic_input_before_a_conv_layer(tmp_path, simulator):
    """Bernoulli(x) input spikes drawn anew every sample straight into a conv layer's map
    (2 channel-major channels), with a reset and a run seed: bit-exact, cycle model exact."""
    from nsm_export.build import bernoulli_probs
    rng = np.random.default_rng(6)
    c0 = IntConv(rng.integers(-3, 4, (3, 2, 3, 3)), rng.integers(-3, 4, 3), p=0.75,
                 weight_bits=3, h_in=6, w_in=5, stride=1, padding=1)
    out = IntLayer(rng.integers(-3, 4, (4, 3 * 3 * 2)), rng.integers(-2, 3, 4), p=0.5,
                   weight_bits=3)
    ir = build_ir([c0, IntPool(3, 6, 5, 2, "or"), out], input_size=2 * 6 * 5,
                  input_threshold=0, samples=3, pe=[2, 1, 4], lanes=[2, 1, 1], seed=9,
                  probs=bernoulli_probs(255, 8, 8), prob_bits=8)
    assert hardware_unsupported(ir) is None
    px = rng.integers(0, 256, size=(8, ir.input.size))
    resets, seeds = [(3, 40)], [(5, 0xABCDE)]
    (tmp_path / "nsm.v").write_text(generate_verilog(ir))
    rtl = run_rtl(tmp_path / "nsm.v", ir, px, simulator=simulator, work_dir=tmp_path,
                  in_idle_prob=0.2, resets=resets, seeds=seeds, seed=6)
    _check(ir, px, rtl, resets, seeds)
