"""Early exit in the reports (issue 20, item 3): the rule sweep from one full run's partial
scores, ``nsm eval --early-exit``, the report's "Early exit" section and ``nsm sim``'s
samples-used and cycles-saved fields."""

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

from nsm.cli import main
from nsm_export import early_exit as ee
from nsm_export import golden, schedule
from nsm_export.testing import random_pixels, random_pop_ir

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _rule_ir(seed, sizes, T, tp, rule):
    ir = random_pop_ir(np.random.default_rng(seed), sizes=sizes, samples=T, pass_samples=tp,
                       levels=1)
    ir.early_exit = rule
    ir.validate()
    return ir


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sweep_equals_runs_with_each_rule(seed):
    """Every rule of the sweep, from the full run's partial scores alone, is what the golden
    model gives with that rule in the IR; exact keeps every full-T class."""
    rng = np.random.default_rng(seed)
    ir = _rule_ir(seed, [12, 10, 5], 16, int(rng.integers(1, 5)), ee.NONE)
    px = random_pixels(rng, ir, 50)
    full = golden.run(ir, px, record=True)
    labels = rng.integers(0, ir.n_classes, size=len(px))
    rows = ee.ir_sweep(ir, full.partial, labels, [ee.NONE, *ee.DEFAULT_SWEEP])
    assert [r["rule"] for r in rows][:3] == ["none", "exact", "margin 0.75"]
    for rule, row in zip([ee.NONE, *ee.DEFAULT_SWEEP], rows):
        ir.early_exit = rule
        cut = golden.run(ir, px)
        assert row["accuracy"] == float((cut.classes == labels).mean())
        assert row["mean_samples"] == float(cut.samples.mean()) <= ir.samples
        assert row["samples_histogram"] == ee.histogram(cut.samples)
        assert sum(row["samples_histogram"].values()) == len(px)
        assert row["full_accuracy"] == float((full.classes == labels).mean())
        assert row["early_exit"] == rule.to_json() and row["rule"] == ee.rule_label(rule)
        if rule.rule == "exact":
            assert np.array_equal(cut.classes, full.classes) and row["loss"] == 0
    assert rows[0]["mean_samples"] == ir.samples
    assert rows[0]["samples_histogram"] == {str(ir.samples): len(px)}
    # A floor above T is T (the report sweeps IRs recompiled for a smaller T).
    floor = ee.ir_sweep(ir, full.partial, labels, [ee.parse_rule("margin:0.1,min=99")])[0]
    assert floor["mean_samples"] == ir.samples


def test_float_swing_is_the_ir_swing_of_the_quantized_weights():
    from nsm_train.model import NSMMLP
    from nsm_train.train import output_swing
    import torch

    torch.manual_seed(0)
    model = NSMMLP(64, [8], 10, p=0.5, weight_bits=2)
    D, b = output_swing(model)
    wq, bq = model.layers[-1].quantized()
    assert np.allclose(D, ee.pair_swing(wq.detach().double().numpy()))
    assert np.allclose(b, bq.detach().double().numpy())
    model.layers[-1].noise = "gaussian"
    D, _ = output_swing(model)
    assert np.isinf(D[0, 1]) and D[0, 0] == 0


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ee") / "m.pt"
    res = CliRunner().invoke(main, ["train", "--hidden", "16", "--epochs", "2", "-o", str(path)])
    assert res.exit_code == 0, res.output
    return path


def test_eval_early_exit_table_json_and_plot(checkpoint, tmp_path):
    r = CliRunner()
    plain = r.invoke(main, ["eval", str(checkpoint), "--samples", "4,16"])
    assert plain.exit_code == 0, plain.output
    assert "early exit" not in plain.output             # nothing new without the option
    plain_json = json.loads(r.invoke(main, ["eval", str(checkpoint), "--samples", "4,16",
                                            "--json"]).stdout)
    assert all("early_exit" not in row for row in plain_json)

    args = ["eval", str(checkpoint), "--samples", "4,16", "--early-exit", "exact",
            "--early-exit", "margin:0.25,min=4", "--pass-samples", "2"]
    res = r.invoke(main, args + ["--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    # The same draws as without the option: the accuracy columns are unchanged.
    assert [row["accuracy"] for row in rows] == [row["accuracy"] for row in plain_json]
    e = rows[-1]["early_exit"]
    assert "early_exit" not in rows[0]
    assert e["samples"] == 16 and e["pass_samples"] == 2
    assert [x["rule"] for x in e["rules"]] == ["exact", "margin 0.25, min 4"]
    for x in e["rules"]:
        assert x["full_accuracy"] == rows[-1]["accuracy"]
        assert sum(x["samples_histogram"].values()) == 360            # the digits test split
        assert 4 <= x["mean_samples"] <= 16
        assert all(int(k) % 2 == 0 for k in x["samples_histogram"])   # at pass ends only
    assert e["rules"][0]["loss"] == 0                 # exact: never another class

    plot = tmp_path / "acc.png"
    res = r.invoke(main, args + ["--early-exit", "sweep", "--plot", str(plot)])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    head = lines.index("early exit at T=16 (checked every 2 samples)")
    assert lines[head + 1].split() == ["rule", "mean", "T", "accuracy", "loss", "samples",
                                       "used"]
    # exact and margin:0.25,min=4, then the sweep less the repeated exact
    assert len(lines[head + 2:]) >= 2 + len(ee.DEFAULT_SWEEP) - 1
    assert re.match(r"exact +\d+\.\d\d +0\.\d{4} +\+0\.0000  (\d+(-\d+)?:\d+ ?)+$",
                    lines[head + 2])
    second = tmp_path / "acc-early-exit.png"
    assert plot.read_bytes().startswith(PNG_MAGIC)
    assert second.read_bytes().startswith(PNG_MAGIC)
    assert f"wrote {second}" in res.output

    bad = r.invoke(main, ["eval", str(checkpoint), "--early-exit", "margin:2"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    assert [ln for ln in bad.stderr.splitlines() if ln.startswith("Error:")] == [
        "Error: Invalid value for '--early-exit': early-exit rule 'margin:2': the margin "
        "fraction must be in (0, 1]"]


def test_report_early_exit_section(tmp_path, monkeypatch):
    from nsm.flow import _test_images, write_build

    monkeypatch.setenv("NSM_EDGE_RESULTS", str(tmp_path / "no-edge.json"))

    rule = ee.parse_rule("margin:0.25")
    ir = write_build(_rule_ir(3, [64, 12, 10], 8, 2, rule), tmp_path / "build")
    res = CliRunner().invoke(main, ["report", str(tmp_path / "build"), "--count", "40",
                                    "--samples", "1,4", "--no-progress"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "build"
    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    data = json.loads((out / "report.json").read_text())
    assert re.findall(r'<a id="([a-z]+)"></a>', md) == [
        "overview", "accuracy", "earlyexit", "resources", "cycles", "lfsr", "verification",
        "edge"]
    assert '<figure id="fig-early-exit">' in page
    assert (out / "report-early-exit.png").read_bytes().startswith(PNG_MAGIC)
    assert "![" in md and "(report-early-exit.png)" in md
    # The numbers: the golden model with the build's rule on the same images.
    x, y = _test_images("digits", 0, ir, 40)
    cut = golden.run(ir, x, record=True)
    e = data["early_exit"]
    own = e["rule"]
    assert own["rule"] == "margin 0.25" and own["early_exit"] == rule.to_json()
    assert own["mean_samples"] == float(cut.samples.mean())
    assert own["accuracy"] == float((cut.classes == y).mean()) == data["accuracy"]["golden"]["8"]
    assert own["samples_histogram"] == ee.histogram(cut.samples)
    full = schedule.cycles_per_inference(ir, cut.masks)
    part = schedule.cycles_per_inference(ir, cut.masks, cut.samples)
    assert own["cycles_saved"] == int(full.sum() - part.sum()) >= 0
    assert own["cycles_per_inference_full"] == float(full.mean())
    assert e["boundaries"] == [2, 4, 6, 8]
    assert [r["rule"] for r in e["sweep"]] == [ee.rule_label(r) for r in ee.DEFAULT_SWEEP
                                               if r.min_samples < ir.samples]
    assert f"| mean samples used | {own['mean_samples']:.2f} of 8 |" in md
    assert "| `exact` |" in md and "| `margin 0.0156` |" in md and ", min 8`" not in md


@pytest.mark.icarus
@pytest.mark.parametrize("rule", ["margin:0.3", "none"])
def test_sim_summary_samples_and_cycles_saved(tmp_path, rule):
    from hw.top import generate_verilog
    from sim.runner import cosim

    ir = _rule_ir(5, [6, 5, 3], 4, 1, ee.parse_rule(rule))
    (tmp_path / f"{ir.name}.v").write_text(generate_verilog(ir))
    rng = np.random.default_rng(9)
    px = random_pixels(rng, ir, 6)
    labels = rng.integers(0, ir.n_classes, size=len(px))
    s = cosim(tmp_path, ir, px, labels)
    assert s["mismatches"] == 0
    exp = golden.run(ir, px, record=True)
    full = schedule.cycles_per_inference(ir, exp.masks)
    assert s["mean_samples"] == round(float(exp.samples.mean()), 3)
    assert s["samples_histogram"] == ee.histogram(exp.samples)
    assert s["cycles_per_inference_full"] == round(float(full.mean()), 1)
    if rule == "none":
        assert s["early_exit"] == "none" and s["cycles_saved"] == 0 and s["mean_samples"] == 4
    else:
        assert s["early_exit"] == ir.early_exit.to_json()
        cut = schedule.cycles_per_inference(ir, exp.masks, exp.samples)
        assert s["cycles_saved"] == int(full.sum() - cut.sum())
        assert s["mean_samples"] < 4 and s["cycles_saved"] > 0
    json.dumps(s)
