"""Folding chosen for a target and a throughput goal (``nsm compile --target --throughput``):
the choice meets the goal by the cycle model and fits by the estimate, an impossible goal is one
line and writes nothing, a looser goal gets a smaller design, explicit settings win."""

import json
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from hw import synth
from nsm_export import estimate, folding
from nsm.cli import main
from nsm_export import ir as irmod
from nsm_export import schedule
from nsm_export.testing import random_ir

TARGET = "ice40-up5k"


@pytest.fixture(scope="module")
def model_onnx(tmp_path_factory):
    """An untrained 64-48-10 NSM (4-bit weights, p = 0.75) exported to ONNX, T = 8."""
    from nsm_export.onnx_export import export_onnx
    from nsm_train.model import NSMMLP

    torch.manual_seed(5)
    path = tmp_path_factory.mktemp("fold") / "model.onnx"
    export_onnx(NSMMLP(64, [48], 10, p=0.75, weight_bits=4), path, samples=8)
    return path


def _compile(model_onnx, out, *args):
    return CliRunner().invoke(main, ["compile", str(model_onnx), "-o", str(out), *args])


def _fits_and_meets(ir, goal, clock_mhz):
    est = estimate.estimate(ir, synth.TARGETS[TARGET])
    cycles = schedule.expected_cycles_per_inference(ir)
    assert clock_mhz * 1e6 / cycles >= goal
    lc = (estimate.LC_PER_FF_POP if ir.layers[0].pass_samples else estimate.LC_PER_FF)["ice40"]
    assert estimate.fits({k: np.array([v]) for k, v in est.items()},
                       synth.TARGETS[TARGET].capacity, lc)[0]
    return est


@pytest.mark.parametrize("given", [None, 0, 4])
def test_the_engine_is_chosen_unless_given(model_onnx, tmp_path, given):
    """--target compares the kept-list engines with the popcount engine at several T'; a
    --pass-samples given (0: the kept-list engines) is kept, and the summary names the T'."""
    args = [] if given is None else ["--pass-samples", str(given)]
    res = _compile(model_onnx, tmp_path / "b", "--target", TARGET, *args)
    assert res.exit_code == 0, res.output
    ir = irmod.load(tmp_path / "b")
    tps = {layer.pass_samples for layer in ir.layers}
    assert len(tps) == 1
    tp = tps.pop()
    if given is not None:
        assert tp == given
    assert (f"--pass-samples {tp}`" in res.stdout) == bool(tp)
    assert ir.source["folding"]["pass_samples"] == tp
    _fits_and_meets(ir, 1, 40)


def test_throughput_goal_met_by_the_cycle_model_and_fits_by_the_estimate(model_onnx, tmp_path):
    res = _compile(model_onnx, tmp_path / "b", "--target", TARGET, "--throughput", "3000")
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    summary = next(ln for ln in lines if ln.startswith("folding for"))
    assert "3,000 inferences/s" in summary and "calibrated Fmax estimate" in summary
    ir = irmod.load(tmp_path / "b")
    clock = synth.TARGETS[TARGET].fmax_estimate_mhz
    est = _fits_and_meets(ir, 3000, clock)
    # The summary names exactly what was built.
    flags = re.search(r"`--pe (\S+) --lanes (\S+) --simd (\S+) --weight-store (\S+)"
                      r"(?: --pass-samples (\d+))?`", summary)
    assert flags, summary
    assert flags[1] == ",".join(str(ly.pe) for ly in ir.layers)
    assert flags[3] == ",".join(str(ly.simd) for ly in ir.layers)
    assert flags[4] == ",".join(ly.weight_store for ly in ir.layers)
    assert f"{est['luts']:,.0f} LUTs" in summary
    assert ir.source["folding"]["summary"] == summary
    assert (tmp_path / "b" / "nsm.v").is_file()


def test_an_impossible_goal_is_one_line_and_writes_nothing(model_onnx, tmp_path):
    out = tmp_path / "b"
    res = _compile(model_onnx, out, "--target", TARGET, "--throughput", "10000000")
    assert res.exit_code == 1
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    m = re.search(r"meets 10,000,000 inferences/s on ice40-up5k at 40 MHz.*the best that fits "
                  r"is ([\d,]+) inferences/s with `nsm compile --pe (\S+) --lanes (\S+) "
                  r"--simd (\S+) --weight-store (\S+)(?: --pass-samples \d+)?`", lines[0])
    assert m, lines[0]
    assert not out.exists()
    # The best named is what the search gives without a goal (the fastest that fits).
    res = _compile(model_onnx, out, "--target", TARGET)
    assert res.exit_code == 0, res.output
    ir = irmod.load(out)
    assert m[2] == ",".join(str(ly.pe) for ly in ir.layers)
    best = 40e6 / schedule.expected_cycles_per_inference(ir)
    assert f"{best:,.0f}" == m[1]


def test_a_looser_goal_gets_a_smaller_design_and_a_faster_clock_too(model_onnx, tmp_path):
    est = {}
    for tag, args in [("tight", ["--throughput", "6000"]), ("loose", ["--throughput", "600"]),
                      ("fast-clock", ["--throughput", "6000", "--clock-mhz", "80"])]:
        res = _compile(model_onnx, tmp_path / tag, "--target", TARGET, *args)
        assert res.exit_code == 0, res.output
        ir = irmod.load(tmp_path / tag)
        clock = 80 if tag == "fast-clock" else 40
        est[tag] = _fits_and_meets(ir, 600 if tag == "loose" else 6000, clock)
        if tag == "fast-clock":
            assert "at 80 MHz:" in res.stdout
    assert est["loose"]["luts"] < est["tight"]["luts"]
    assert est["fast-clock"]["luts"] <= est["tight"]["luts"]


def test_explicit_settings_win(model_onnx, tmp_path):
    res = _compile(model_onnx, tmp_path / "b", "--target", TARGET, "--throughput", "1000",
                   "--pe", "6,5", "--weight-store", "rom")
    assert res.exit_code == 0, res.output
    ir = irmod.load(tmp_path / "b")
    assert [ly.pe for ly in ir.layers] == [6, 5]
    assert [ly.weight_store for ly in ir.layers] == ["rom", "rom"]
    assert ir.source["folding"]["given"] == ["pe", "weight_store"]
    _fits_and_meets(ir, 1000, 40)


def test_simd_on_the_command_line_raises_lanes(model_onnx, tmp_path):
    res = _compile(model_onnx, tmp_path / "b", "--pe", "8", "--simd", "4,2")
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "b" / "ir.json").read_text())
    assert [(m["simd"], m["lanes"]) for m in meta["layers"]] == [(4, 4), (2, 2)]
    assert "folding" not in meta["source"]


@pytest.mark.parametrize("args,needle", [
    (["--throughput", "100"], "--throughput and --clock-mhz need --target"),
    (["--target", "nope"], "unknown target 'nope'"),
])
def test_bad_goals_are_one_line(model_onnx, tmp_path, args, needle):
    res = _compile(model_onnx, tmp_path / "b", *args)
    assert res.exit_code == 1
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], res.stderr
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("seed", range(6))
def test_random_networks_meet_their_goal(seed):
    """On random IRs: whatever goal is reachable is met by the cycle model of the folding
    chosen, within the estimate, and the folding is a valid IR."""
    rng = np.random.default_rng(seed)
    ir = random_ir(rng, sizes=[int(rng.integers(20, 300)), int(rng.integers(8, 100)), 10],
                   samples=int(rng.integers(2, 20)))
    target = ["ice40-up5k", "ecp5-25k"][seed % 2]
    tg = synth.TARGETS[target]
    best = folding.choose_folding(ir, target)
    goal = best.inferences_per_s * float(rng.uniform(0.05, 1.0))
    fold = folding.choose_folding(ir, target, goal)
    assert fold.inferences_per_s >= goal
    ir = fold.apply(ir)
    ir.validate()
    assert tg.fmax_for(ir) * 1e6 / schedule.expected_cycles_per_inference(ir) \
        == pytest.approx(fold.inferences_per_s)
    assert estimate.estimate(ir, tg) == pytest.approx(fold.estimate)
    assert fold.estimate["luts"] <= best.estimate["luts"] + 1e-9 or \
        fold.inferences_per_s >= best.inferences_per_s
    with pytest.raises(synth.FitError, match="the best that fits is"):
        folding.choose_folding(ir, target, best.inferences_per_s * 1.01)


@pytest.mark.parametrize("target", ["ice40-up5k", "ecp5-25k"])
def test_conv_nets_are_folded_too(target):
    """Conv layers get a pe, lanes and weight store of their own (simd stays 1), pooling layers
    nothing; the goal is met by the conv cycle model and the estimate counts every layer."""
    from tests.test_conv_hw import _two_conv_ir
    ir = _two_conv_ir(np.random.default_rng(3))
    tg = synth.TARGETS[target]
    best = folding.choose_folding(ir, target)
    fold = folding.choose_folding(ir, target, best.inferences_per_s / 3)
    assert fold.inferences_per_s >= best.inferences_per_s / 3
    # conv engines clock slower than dense ones: the search assumes the conv calibration
    assert fold.clock_mhz == tg.fmax_conv_mhz and "estimate for conv nets" in fold.summary
    for layer, (pe, lanes, simd, store) in zip(ir.layers, fold.layers):
        if layer.kind == "pool":
            assert (pe, lanes, simd, store) == (1, 1, 1, "rom")
            continue
        if layer.kind == "conv2d":
            assert simd == 1 and 1 <= pe <= layer.c_out
        else:
            layer.simd = simd
        layer.pe, layer.lanes, layer.weight_store = pe, lanes, store
    ir.validate()
    assert tg.fmax_for(ir) * 1e6 / schedule.expected_cycles_per_inference(ir) \
        == pytest.approx(fold.inferences_per_s)
    assert estimate.estimate(ir, tg) == pytest.approx(fold.estimate)
    # a slower conv folding costs fewer LUTs than the fastest one
    assert fold.estimate["luts"] <= best.estimate["luts"]


def test_nothing_fits_names_the_nearest_folding_and_a_target_that_fits():
    """A 2,048-1,024-10 MLP of binary weights (2 Mbit) exceeds the UP5K's block memory at any
    folding: one line names the folding nearest to fitting, each resource it needs beyond the
    device, and the larger target whose estimate fits it; that folding is the nearest indeed."""
    ir = random_ir(np.random.default_rng(0), sizes=[2048, 1024, 10], samples=4, weight_bits=1,
                   p=[0.75, 0.75])
    with pytest.raises(synth.FitError) as err:
        folding.choose_folding(ir, TARGET)
    msg = str(err.value)
    assert "\n" not in msg
    m = re.search(r"the nearest, `nsm compile --pe (\S+) --lanes (\S+) --simd (\S+) "
                  r"--weight-store (\S+)`, .* \((.*)\); use a smaller network or a larger target "
                  r"\(ecp5-85k fits it by the estimate\)$", msg)
    assert m, msg
    assert re.search(r"\d+ SPRAM blocks of 4", m[5]), msg      # 2 Mbit > 4 x 256 kbit
    pes, lanes, simds, stores = (v.split(",") for v in m.groups()[:4])
    for layer, pe, ln, sd, st in zip(ir.layers, pes, lanes, simds, stores):
        layer.pe, layer.lanes, layer.simd, layer.weight_store = int(pe), int(ln), int(sd), st
    ir.validate()
    tg = synth.TARGETS[TARGET]
    used = estimate.estimate(ir, tg)
    assert used["spram"] > tg.capacity["spram"]
    # no folding of the search needs a smaller largest share of the device
    _, share = estimate.need({k: np.array([v]) for k, v in used.items()}, tg.capacity,
                           estimate.LC_PER_FF[tg.family])
    options = [ly.free_options(tg, {}) for ly in ir.layers]
    _, est, _, _ = folding._search(ir, tg, options, estimate.fixed_cost(ir, tg))
    _, shares = estimate.need(est, tg.capacity, estimate.LC_PER_FF[tg.family])
    assert share.max() == pytest.approx(shares.max(axis=0).min())
    with pytest.raises(synth.FitError, match="no folding fits ecp5-25k .*ecp5-85k fits it"):
        folding.choose_folding(ir, "ecp5-25k")
    assert folding.choose_folding(ir, "ecp5-85k").inferences_per_s > 0


def test_fit_benchmark_networks_and_records(tmp_path, load_benchmark):
    """``benchmarks/fit.py`` builds the networks it names (shapes as training makes them) and
    writes one record per target: the small binary MLP fits everywhere, the 2-bit conv preset
    only the ECP5-85F, with the search's one line where it does not fit."""
    import json

    bench = load_benchmark("fit")
    preset = load_benchmark("accuracy").PRESETS["fashion-mnist"]
    conv = bench.net_ir("conv-preset-32c5s-p2-64c5s-p2-512-10-w2")
    dense = [ly for ly in conv.layers if ly.kind == "dense"]
    assert [ly.weights.shape for ly in dense] == [(512, 64 * 7 * 7), (10, 512)]
    # the input levels the accuracy preset trains with
    assert [ly.c_in for ly in conv.layers if ly.kind == "conv2d"] == [preset["levels_conv"], 32]
    assert bench.net_ir("mlp-3136-256-10-w1").layers[0].weights.shape == (256, 3136)
    out = tmp_path / "fit.json"
    bench.main(["--network", "mlp-784-128-10-w1", "--network",
                "conv-preset-32c5s-p2-64c5s-p2-512-10-w2", "--out", str(out)])
    recs = {(r["network"], r["target"]): r for r in json.loads(out.read_text())}
    assert len(recs) == 2 * len(synth.TARGETS)
    assert all(recs["mlp-784-128-10-w1", t]["fits"] for t in synth.TARGETS)
    preset = "conv-preset-32c5s-p2-64c5s-p2-512-10-w2"
    assert [t for t in synth.TARGETS if recs[preset, t]["fits"]] == ["ecp5-85k"]
    bad = recs[preset, "ice40-up5k"]
    assert "ecp5-85k fits it" in bad["error"] and "\n" not in bad["error"]
    assert recs["mlp-784-128-10-w1", "ice40-up5k"]["weight_kbit"] == pytest.approx(
        (784 * 128 + 2 * 128 * 10) / 1024, abs=0.05)


@pytest.mark.parametrize("given", [None, 0, 4])
def test_input_stage_goes_with_the_popcount_engine(model_onnx, tmp_path, given):
    """``--input-stage`` is written into the IR where the popcount engine builds the network
    (chosen by the search, or given); the kept-list engines (``--pass-samples 0``) drop it, and
    without --target it needs --pass-samples: one line, nothing written."""
    args = [] if given is None else ["--pass-samples", str(given)]
    res = _compile(model_onnx, tmp_path / "b", "--target", TARGET, "--input-stage", *args)
    assert res.exit_code == 0, res.output
    ir = irmod.load(tmp_path / "b")
    assert ir.input_stage == bool(ir.layers[0].pass_samples)
    assert ("--input-stage`" in res.stdout) == ir.input_stage      # in the folding's flags
    assert ("input_stage" in json.loads((tmp_path / "b" / "ir.json").read_text())) \
        == ir.input_stage
    if given == 0:
        assert not ir.input_stage
    res = _compile(model_onnx, tmp_path / "c", "--input-stage")
    assert res.exit_code != 0
    assert res.output.strip().splitlines()[-1].endswith(
        "input_stage needs the popcount engine: no layer has pass_samples (compile with "
        "--pass-samples)")
    assert not (tmp_path / "c").exists()
    res = _compile(model_onnx, tmp_path / "d", "--input-stage", "--pass-samples", "2")
    assert res.exit_code == 0, res.output
    assert irmod.load(tmp_path / "d").input_stage


def test_spike_store_blocks_follow_the_write_enables():
    """A popcount engine's spike and keep stores write ``T'``- or ``simd``-bit banks, each with
    its own enable. ECP5 block RAM has no bit mask, so yosys gives each bank a 9-bit byte lane
    (two a block at 18 bits, four at 36) or a narrow block of its own; the counts are those of
    the ECP5-25F candidate's netlist (docs/presets.md): conv2's store, 16 banks of 2 bits, 904
    deep, 8 blocks where its bits fit 2; the dense layer's, 4 banks, 1,612 deep, 4; the keep
    stores, 2 banks of 16 (1,808 and 904 deep) and of 4 bits (1,612), 4, 2 and 2. iCE40 block
    RAM masks bits: the banks pack as one word."""
    from nsm_export.devices import TARGETS, banked_blocks, blocks
    ecp5, ice40 = TARGETS["ecp5-25k"], TARGETS["ice40-up5k"]
    assert banked_blocks(16, 2, 904, ecp5) == 8 and blocks(32, 904, ecp5) == 2
    assert banked_blocks(4, 2, 1612, ecp5) == 4 and blocks(8, 1612, ecp5) == 1
    assert [banked_blocks(2, b, d, ecp5) for b, d in ((16, 1808), (16, 904), (4, 1612))] \
        == [4, 2, 2]
    assert banked_blocks(1, 8, 1612, ecp5) == blocks(8, 1612, ecp5)
    assert banked_blocks(16, 2, 904, ice40) == blocks(32, 904, ice40)
    assert banked_blocks(4, 2, 100, ecp5) == 0                    # small: LUT RAM


def test_the_estimate_refuses_the_folding_yosys_could_not_fit():
    """The ECP5-25F candidate 32c3s-p2-48c3s-p2-128 (benchmarks/fit.py's shapes, random
    weights) at the folding the estimate once chose (55 EBR), where yosys mapped 63 blocks of
    56: with each popcount engine charged the store it reads at its own ``simd`` (65 blocks)
    the folding no longer fits, and the search picks one with narrower stores."""
    from benchmarks.fit import NETS, net_ir
    NETS["cand-25k"] = (16, [(32, 3, 1), (48, 3, 1)], [128], 2, 8, 3)
    try:
        ir = net_ir("cand-25k")
    finally:
        del NETS["cand-25k"]
    built = [dict(pe=2, simd=16, lanes=1), {}, dict(pe=2, simd=16, lanes=1), {},
             dict(pe=1, simd=4, lanes=1), dict(pe=1, simd=1, lanes=1)]
    with pytest.raises(synth.FitError):
        folding.choose_folding(ir, "ecp5-25k", fixed=built, pass_samples=2)
    f = folding.choose_folding(ir, "ecp5-25k", pass_samples=2)
    assert f.estimate["bram"] <= 56
    fixed = f.apply(ir)
    assert [ly.simd for ly in fixed.layers if ly.kind == "conv2d"][1] < 16
