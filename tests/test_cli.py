"""The command line: help texts end with an example, bad input gives one line and exit 1."""

import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from nsm.cli import main
from tests.support import one_error_line as _one_error_line

COMMANDS = ["train", "export", "compile", "sim", "synth", "board", "report", "demo"]


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help_ends_with_an_example(cmd):
    res = CliRunner().invoke(main, [cmd, "--help"])
    assert res.exit_code == 0
    last = res.output.rstrip().splitlines()[-2:]
    assert last[0].strip() == "Example:" and last[1].strip().startswith(f"nsm {cmd}")


def test_compile_rejects_a_file_that_is_not_onnx(tmp_path):
    bad = tmp_path / "notes.onnx"
    bad.write_bytes(b"\x00\xffthis is not a protobuf\x13\x37" * 10)
    out = tmp_path / "build"
    res = CliRunner().invoke(main, ["compile", str(bad), "-o", str(out)])
    _one_error_line(res, "notes.onnx", "not an ONNX model")
    assert not out.exists()


def test_compile_rejects_an_unsupported_op(tmp_path):
    x = helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 4])
    graph = helper.make_graph([helper.make_node("Relu", ["pixels"], ["scores"], name="act0")],
                              "g", [x], [y])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    out = tmp_path / "build"
    res = CliRunner().invoke(main, ["compile", str(path), "-o", str(out)])
    _one_error_line(res, "act0", "Relu", "not supported")
    assert not out.exists()


def test_compile_rejects_a_missing_file(tmp_path):
    res = CliRunner().invoke(main, ["compile", str(tmp_path / "nope.onnx")])
    _one_error_line(res, "nope.onnx", "no such file")


def test_sim_rejects_a_missing_build_directory(tmp_path):
    res = CliRunner().invoke(main, ["sim", str(tmp_path / "build"), "--json"])
    _one_error_line(res, "build", "no such build directory")


def test_export_rejects_a_garbage_checkpoint(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"garbage")
    res = CliRunner().invoke(main, ["export", str(bad), "-o", str(tmp_path / "m.onnx")])
    _one_error_line(res, "model.pt")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
@pytest.mark.icarus
def test_stages_one_by_one(tmp_path):
    """train → export → compile → sim through the command line, as the README shows."""
    r = CliRunner()
    pt, onnx_file, build = tmp_path / "model.pt", tmp_path / "model.onnx", tmp_path / "build"
    res = r.invoke(main, ["train", "--hidden", "24", "--epochs", "3", "-T", "4", "-o", str(pt)])
    assert res.exit_code == 0, res.output
    res = r.invoke(main, ["export", str(pt), "-o", str(onnx_file), "-T", "4"])
    assert res.exit_code == 0, res.output
    onnx.checker.check_model(onnx.load(str(onnx_file)), full_check=True)
    res = r.invoke(main, ["compile", str(onnx_file), "-o", str(build), "--pe", "5"])
    assert res.exit_code == 0, res.output
    assert "warning" not in res.output
    assert {"ir.json", "weights.npz", "nsm.v"} <= {p.name for p in build.iterdir()}
    # An LFSR width no leap makes uncorrelated at 8-bit p: compiled, with one warning line.
    res = r.invoke(main, ["compile", str(onnx_file), "-o", str(tmp_path / "b22"),
                          "--lfsr-width", "22"])
    assert res.exit_code == 0, res.output
    assert "nsm compile: warning: a 22-bit LFSR with 8-bit p draws keep bits correlated up " \
        "to 0.012" in res.output
    # An 8-bit LFSR would repeat within one image (64 inputs x 4 samples); 1-bit p would turn
    # 0.75 into 1 (no noise): both refused in one line, nothing written.
    for opts, what in ((["--lfsr-width", "8"], "a 8-bit LFSR repeats after 255 draws, but one "
                                              "image draws 256"),
                       (["--p-bits", "1"], "rounds to 2/2 with 1-bit p (no noise)")):
        res = r.invoke(main, ["compile", str(onnx_file), "-o", str(tmp_path / "bad"), *opts])
        _one_error_line(res, what)
        assert not (tmp_path / "bad").exists()
    res = r.invoke(main, ["sim", str(build), "--dataset", "digits", "--count", "6", "--json"])
    assert res.exit_code == 0, res.output
    import json
    summary = json.loads(res.stdout)
    assert summary["images"] == 6 and summary["mismatches"] == 0
    for key in ("golden_accuracy", "rtl_accuracy", "cycles_per_inference"):
        assert key in summary
    assert summary["cycles_per_inference"] == summary["cycles_per_inference_model"]
    assert summary["cycle_model_exact"]
    # The summary is kept in the build directory for `nsm report`.
    assert json.loads((build / "sim" / "summary.json").read_text()) == summary
    res = r.invoke(main, ["sim", str(build), "--count", "2", "--spikes", "--waves", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["spikes_compared"] and summary["mismatches"] == 0
    from pathlib import Path
    assert Path(summary["waves"]).stat().st_size > 0


def test_synth_rejects_a_missing_build_directory(tmp_path):
    res = CliRunner().invoke(main, ["synth", str(tmp_path / "build"), "--target", "ice40-up5k"])
    _one_error_line(res, "build", "no such build directory")


def test_synth_rejects_an_unknown_target(tmp_path):
    res = CliRunner().invoke(main, ["synth", str(tmp_path), "--target", "xc7a35t"])
    _one_error_line(res, "xc7a35t", "unknown target", "ice40-up5k", "ecp5-25k", "ecp5-85k")


def test_bad_device_and_mismatched_eval_are_one_line(tmp_path):
    r = CliRunner()
    res = r.invoke(main, ["train", "--hidden", "8", "--epochs", "1", "--device", "foo",
                          "-o", str(tmp_path / "m.pt")])
    # An unusable option value is click's usage error: exit 2, the usage line and one "Error:".
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert [ln for ln in res.stderr.splitlines() if ln.startswith("Error:")] == [
        "Error: --device 'foo' is not a torch device (try cpu or cuda)"]
    res = r.invoke(main, ["train", "--hidden", "8", "--epochs", "1", "-o", str(tmp_path / "m.pt")])
    assert res.exit_code == 0, res.output
    res = r.invoke(main, ["eval", str(tmp_path / "m.pt"), "--device", "cuda:7"])
    _one_error_line(res, "--device")


def test_export_refuses_a_model_the_ir_cannot_hold(tmp_path):
    r = CliRunner()
    pt = tmp_path / "float.pt"
    res = r.invoke(main, ["train", "--hidden", "8", "--epochs", "1", "--weight-bits", "32",
                          "-o", str(pt)])
    assert res.exit_code == 0, res.output
    res = r.invoke(main, ["export", str(pt), "-o", str(tmp_path / "m.onnx")])
    _one_error_line(res)
    assert not (tmp_path / "m.onnx").exists()
