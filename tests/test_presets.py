"""The per-part presets (nsm_train/presets.py): each network fits its part by the folding
search, `nsm train --preset` runs float pre-training then quantization-aware fine-tuning (and
resumes), and a preset model goes through export, compile and the RTL bit-exact."""

import json

import pytest
import torch
from click.testing import CliRunner

from benchmarks import edge, fit
from nsm.cli import main
from nsm.report import edge_goal_met
from nsm_export.folding import choose_folding
from nsm_train.presets import PRESETS, float_path, stage_configs, tune_path


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PRESETS))
def test_each_preset_fits_its_part(name):
    """The preset's shape (random weights) fits its own part on the popcount core, with the
    weights on chip; the estimate meets the goal's rate where the goal has one."""
    ir = fit.net_ir(f"preset-{name}", samples=PRESETS[name].samples)
    f = choose_folding(ir, name)
    assert f.pass_samples, f.summary                    # the sample-parallel engine
    rates = [g["inferences_per_s"] for g in PRESETS[name].goal if g["inferences_per_s"]]
    if rates:
        assert f.inferences_per_s >= min(rates), f.summary


def test_stage_configs_split_the_options():
    p = PRESETS["ecp5-85k"]
    assert p.float_restarts and p.tune_restarts
    stages = stage_configs(p, {"seed": 3, "levels": 8}, {"epochs": 1, "weight_bits": 1},
                           float_epochs=2)
    n_float = 1 + len(p.float_restarts)
    floats, (last, *more) = stages[:n_float], stages[n_float:]
    first = floats[0]
    assert len(more) == len(p.tune_restarts)
    assert first["weight_bits"] == 32 and first["epochs"] == 2 and first["lr"] == p.float_lr
    for stage, (epochs, lr) in zip(floats[1:], p.float_restarts, strict=True):
        assert (stage["weight_bits"], stage["epochs"], stage["lr"]) == (32, epochs, lr)
    assert last["weight_bits"] == 1 and last["epochs"] == 1 and last["lr"] == p.tune_lr
    # The fine-tuning restarts: the user's widths, their own epochs and learning rates.
    for stage, (epochs, lr) in zip(more, p.tune_restarts, strict=True):
        assert (stage["weight_bits"], stage["epochs"], stage["lr"]) == (1, epochs, lr)
    for stage in [last, *more]:
        assert stage["output_weight_bits"] == p.output_weight_bits
        assert stage["conv_weight_bits"] == p.conv_weight_bits
    assert all(f["conv_weight_bits"] is None for f in floats)
    assert {f["seed"] for f in stages} == {3}
    assert {f["levels"] for f in stages} == {8}
    assert {f["conv"] for f in stages} == {p.train["conv"]}
    assert len(stage_configs(PRESETS["ice40-up5k"])) == 2
    assert float_path("a/run.pt").as_posix() == "a/run-float.pt"
    assert float_path("a/run.pt", 1).as_posix() == "a/run-float1.pt"
    assert tune_path("a/run.pt", 1).as_posix() == "a/run-tune1.pt"


@pytest.mark.slow
def test_preset_with_warm_restarts_chains_four_stages(tmp_path, monkeypatch):
    """A preset with a float warm restart and a fine-tuning restart: float pre-training to
    ``m-float1.pt``, the restart from it to ``m-float.pt``, fine-tuning from that (3-bit convs,
    as the preset asks) to ``m-tune1.pt``, the fine-tuning restart from it to ``m.pt``;
    ``--resume`` skips the finished stages before the last."""
    import dataclasses

    import nsm.cli
    base = PRESETS["ice40-up5k"]
    monkeypatch.setitem(nsm.cli.PRESETS, "ice40-up5k", dataclasses.replace(
        base, float_restarts=((1, 0.001),), conv_weight_bits=3, tune_restarts=((1, 0.0002),)))
    args = ["train", "--preset", "ice40-up5k", "--dataset", "digits", "--float-epochs", "1",
            "--epochs", "1", "--no-progress", "--checkpoint", str(tmp_path / "run.ckpt"),
            "-o", str(tmp_path / "m.pt")]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "[1/4] ice40-up5k: float pre-training, 1 epoch" in r.output
    assert "[2/4] ice40-up5k: float warm restart, 1 epoch at lr 0.001" in r.output
    assert "[3/4] ice40-up5k: fine-tuning at 2-bit weights (3-bit in the convs)" in r.output
    assert "[4/4] ice40-up5k: fine-tuning restart at 2-bit weights (3-bit in the convs), " \
        "1 epoch at lr 0.0002" in r.output
    tc = {name: torch.load(tmp_path / name, weights_only=True)["train_config"]
          for name in ("m-float1.pt", "m-float.pt", "m-tune1.pt", "m.pt")}
    assert tc["m-float1.pt"]["init"] is None and tc["m-float1.pt"]["weight_bits"] == 32
    assert tc["m-float.pt"]["init"] == str(tmp_path / "m-float1.pt")
    assert tc["m-float.pt"]["lr"] == 0.001 and tc["m-float.pt"]["weight_bits"] == 32
    assert tc["m-tune1.pt"]["init"] == str(tmp_path / "m-float.pt")
    assert tc["m-tune1.pt"]["conv_weight_bits"] == 3 and tc["m-tune1.pt"]["lr"] == base.tune_lr
    assert tc["m.pt"]["init"] == str(tmp_path / "m-tune1.pt")
    assert tc["m.pt"]["conv_weight_bits"] == 3 and tc["m.pt"]["lr"] == 0.0002
    for name in ("run-float1.ckpt", "run-float.ckpt", "run-tune1.ckpt", "run.ckpt"):
        assert (tmp_path / name).is_file(), name
    r = CliRunner().invoke(main, [*args, "--resume"])
    assert r.exit_code == 0, r.output
    assert "[1/4] ice40-up5k: float pre-training skipped" in r.output
    assert "[2/4] ice40-up5k: float warm restart skipped" in r.output
    assert "[3/4] ice40-up5k: fine-tuning at 2-bit weights (3-bit in the convs) skipped, " \
        "the finished" in r.output
    # --init: the float stages are skipped and the fine-tuning stages chain from the model.
    out = tmp_path / "i.pt"
    r = CliRunner().invoke(main, [*args[:-4], "--init", str(tmp_path / "m-float.pt"),
                                  "--checkpoint", str(tmp_path / "i.ckpt"), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "[3/4] ice40-up5k: fine-tuning at" in r.output and "[4/4]" in r.output
    assert torch.load(tmp_path / "i-tune1.pt", weights_only=True)["train_config"]["init"] == \
        str(tmp_path / "m-float.pt")
    assert torch.load(out, weights_only=True)["train_config"]["init"] == \
        str(tmp_path / "i-tune1.pt")


def test_goal_met():
    up5k = PRESETS["ice40-up5k"].goal
    assert edge_goal_met(up5k, 0.905, 250) and edge_goal_met(up5k, 0.885, 2500)
    assert not edge_goal_met(up5k, 0.885, 1999) and not edge_goal_met(up5k, 0.95, 150)
    assert edge_goal_met(PRESETS["ecp5-25k"].goal, 0.91, None)
    assert edge_goal_met(up5k, None, 1e6) is None


@pytest.fixture(scope="module")
def preset_run(tmp_path_factory):
    """`nsm train --preset ice40-up5k` on digits, one epoch per stage."""
    d = tmp_path_factory.mktemp("preset")
    r = CliRunner().invoke(main, ["train", "--preset", "ice40-up5k", "--dataset", "digits",
                                  "--float-epochs", "1", "--epochs", "1", "--no-progress",
                                  "--checkpoint", str(d / "run.ckpt"), "-o", str(d / "m.pt")])
    assert r.exit_code == 0, r.output
    return d, r.output


@pytest.mark.slow
def test_preset_trains_float_then_quantized(preset_run):
    d, out = preset_run
    assert "[1/2] ice40-up5k: float pre-training" in out and "[2/2]" in out
    assert "[1/2] epoch 1:" in out                       # a line per epoch without a bar
    flt = torch.load(d / "m-float.pt", weights_only=True)
    q = torch.load(d / "m.pt", weights_only=True)
    p = PRESETS["ice40-up5k"]
    assert flt["train_config"]["weight_bits"] == 32
    assert q["train_config"]["weight_bits"] == p.weight_bits
    assert q["train_config"]["output_weight_bits"] == p.output_weight_bits
    assert q["train_config"]["init"] == str(d / "m-float.pt")
    assert q["train_config"]["conv"] == PRESETS["ice40-up5k"].train["conv"]
    assert q["preset"] == "ice40-up5k" and q["train_config"]["dataset"] == "digits"
    assert (d / "run-float.ckpt").is_file() and (d / "run.ckpt").is_file()


@pytest.mark.slow
def test_preset_resume_skips_the_finished_stage(preset_run):
    d, _ = preset_run
    before = (d / "m-float.pt").stat().st_mtime_ns
    r = CliRunner().invoke(main, ["train", "--preset", "ice40-up5k", "--dataset", "digits",
                                  "--float-epochs", "1", "--epochs", "1", "--no-progress",
                                  "--checkpoint", str(d / "run.ckpt"), "--resume",
                                  "-o", str(d / "m.pt")])
    assert r.exit_code == 0, r.output
    assert "float pre-training skipped" in r.output
    assert "[2/2] epoch" not in r.output                 # its checkpoint is complete
    assert (d / "m-float.pt").stat().st_mtime_ns == before


def test_preset_usage_errors(tmp_path):
    r = CliRunner().invoke(main, ["train", "--float-epochs", "2", "-o", str(tmp_path / "m.pt")])
    assert r.exit_code != 0 and "needs --preset" in r.output
    r = CliRunner().invoke(main, ["train", "--preset", "nope", "-o", str(tmp_path / "m.pt")])
    assert r.exit_code != 0 and "nope" in r.output
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.icarus
def test_preset_model_through_the_rtl(preset_run, tmp_path):
    """The benchmark's path on the preset model: export, compile --target, co-simulation
    (Icarus here: the benchmark's Verilator takes a minute to build), bit-exact; the record
    carries the RTL's accuracy."""
    d, _ = preset_run
    out = tmp_path / "edge.json"
    rc = edge.main(["--preset", "ice40-up5k", "--checkpoint", str(d / "m.pt"), "--images", "12",
                    "--no-synth", "--simulator", "icarus", "--out", str(out),
                    "--build-root", str(tmp_path / "b"), "--golden-images", "12"])
    assert rc == 0
    [rec] = json.loads(out.read_text())
    assert rec["mismatches"] == 0 and rec["images"] == 12
    assert rec["rtl_accuracy"] == rec["golden_accuracy"] == rec["golden_test_accuracy"]
    assert rec["golden_test_images"] == 12
    assert rec["cycle_model_exact"] is True
    assert rec["meets_goal"] is False and rec["inferences_per_s"] is None
    # Two runs side by side, each from a reset core on half of the images: still bit-exact.
    rc = edge.main(["--preset", "ice40-up5k", "--checkpoint", str(d / "m.pt"), "--images", "12",
                    "--no-synth", "--simulator", "icarus", "--out", str(tmp_path / "e2.json"),
                    "--build-root", str(tmp_path / "b"), "--shards", "2",
                    "--golden-images", "12"])
    assert rc == 0
    [two] = json.loads((tmp_path / "e2.json").read_text())
    assert two["shards"] == 2 and two["images"] == 12 and two["mismatches"] == 0
    assert two["rtl_accuracy"] == two["golden_accuracy"] and two["cycle_model_exact"] is True
    # The golden model's slices are the co-simulation's: the same images from the same resets.
    assert two["golden_test_accuracy"] == two["golden_accuracy"]
    assert sorted(p.name for p in (tmp_path / "b" / "ice40-up5k" / "shards").iterdir()) == \
        ["0", "1"]


@pytest.mark.slow
def test_edge_golden_model_alone(preset_run, tmp_path):
    """``--images 0 --golden-images N``: the golden model on N images, no co-simulation; the
    record says so (no RTL accuracy, no goal verdict)."""
    d, _ = preset_run
    out = tmp_path / "g.json"
    rc = edge.main(["--preset", "ice40-up5k", "--checkpoint", str(d / "m.pt"), "--images", "0",
                    "--golden-images", "30", "--shards", "2", "--no-synth", "--out", str(out),
                    "--build-root", str(tmp_path / "b")])
    assert rc == 0
    [rec] = json.loads(out.read_text())
    assert rec["images"] == 0 and rec["rtl_accuracy"] is None and rec["meets_goal"] is None
    assert rec["golden_test_images"] == 30 and 0 <= rec["golden_test_accuracy"] <= 1
    assert not (tmp_path / "b" / "ice40-up5k" / "sim").exists()


def test_edge_images_0_needs_its_own_out(capsys):
    with pytest.raises(SystemExit) as e:
        edge.main(["--preset", "ecp5-25k", "--images", "0", "--golden-images", "10"])
    assert e.value.code == 2
    assert "--images 0 measures no RTL accuracy" in capsys.readouterr().err


def test_edge_missing_checkpoint_is_one_line(tmp_path, capsys):
    rc = edge.main(["--preset", "ecp5-25k", "--checkpoint", str(tmp_path / "none.pt"),
                    "--out", str(tmp_path / "e.json")])
    assert rc == 1 and not (tmp_path / "e.json").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none.pt: no such checkpoint" in err[0]


def test_edge_results_are_measured_through_the_rtl():
    """benchmarks/results/edge.json: every record is a preset's trained network measured
    through the RTL: 1,000 or more co-simulated test images, 0 mismatches, a placed design,
    and its goal verdict computed from those figures."""
    records = json.loads(edge.OUT.read_text())
    assert records
    for r in records:
        p = PRESETS[r["preset"]]
        assert r["target"] == p.name and r["network"].startswith(p.network)
        assert r["weight_bits"] == p.weight_bits, r           # the preset's widths as trained
        assert r.get("conv_weight_bits") == p.conv_weight_bits, r
        assert r["images"] >= 1000 and r["mismatches"] == 0, r
        assert r["simulator"] == "verilator" and r["rtl_accuracy"] == r["golden_accuracy"]
        assert r["fits"] and r["fmax_mhz"] > 0 and r["inferences_per_s"] > 0, r
        assert r["inferences_per_s"] == round(r["fmax_mhz"] * 1e6 / r["cycles_per_inference"], 1)
        assert r["meets_goal"] == edge_goal_met(p.goal, r["rtl_accuracy"], r["inferences_per_s"])


def test_edge_reuses_a_synthesis_only_of_the_same_verilog(tmp_path):
    """``--reuse-synth``: the last ``nsm synth`` report (and the board top's ``nsm synth
    --bitstream`` one) is kept only where it built this build's Verilog byte for byte."""
    import numpy as np

    from hw.board import BOARDS, board_verilog
    from nsm.flow import load_build, write_build
    from nsm_export.testing import random_pop_ir

    ir = random_pop_ir(np.random.default_rng(5), sizes=[64, 12, 10], samples=4, levels=1)
    ir.validate()
    b = tmp_path / "build"
    write_build(ir, b)
    core, top = b / "synth" / "ecp5-25k", b / "synth" / BOARDS["ecp5-25k"].name
    core.mkdir(parents=True)
    top.mkdir()
    rep = {"fits": True, "board": None, "routed": True}
    (core / "report.json").write_text(json.dumps(rep))
    (core / "core.v").write_bytes((b / f"{ir.name}.v").read_bytes())
    brep = dict(rep, board=BOARDS["ecp5-25k"].name, bitstream=str(top / "t.bit"))
    (top / "report.json").write_text(json.dumps(brep))
    (top / f"{BOARDS['ecp5-25k'].top}.v").write_text(
        board_verilog(load_build(b), BOARDS["ecp5-25k"]))
    assert edge._reused_synth(b, "ecp5-25k") == rep
    assert edge._reused_synth(b, "ecp5-25k", board=True) == brep
    assert edge._reused_synth(b, "ecp5-25k", route=False) is None      # it was routed
    # Another core (its Verilog one byte off), another board top, no report: built again.
    (core / "core.v").write_bytes((b / f"{ir.name}.v").read_bytes() + b"\n")
    (top / f"{BOARDS['ecp5-25k'].top}.v").write_text("module other; endmodule\n")
    assert edge._reused_synth(b, "ecp5-25k") is None
    assert edge._reused_synth(b, "ecp5-25k", board=True) is None
    assert edge._reused_synth(tmp_path / "none", "ecp5-25k") is None
