"""The stages of the flow as functions: what the ``nsm`` subcommands call."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

import numpy as np

from nsm_export import golden, schedule
from nsm_common.atomic import atomic_write
from nsm_export import ir as irmod
from nsm_export.compiler import compile_file
from sim.runner import SimError, cosim

__all__ = ["compile_to_dir", "write_build", "load_build", "simulate", "synthesize", "run_on_board",
           "run_demo", "SIM_SUMMARY", "MANIFEST", "build_files", "sha256_file"]

#: Where ``nsm sim`` leaves its summary, relative to the build directory.
SIM_SUMMARY = Path("sim") / "summary.json"


FOLD_KEYS = ("pe", "lanes", "simd", "weight_store")


def compile_to_dir(onnx_file: Path, out_dir: Path, target: str | None = None,
                   throughput: float | None = None, clock_mhz: float | None = None,
                   **kw) -> irmod.IR:
    """ONNX → IR + Verilog in ``out_dir`` (:func:`write_build`).

    With ``target``, the folding (``pe``, ``lanes``, ``simd``, ``weight_store`` per layer) is
    chosen by :func:`nsm_export.folding.choose_folding` for ``throughput`` inferences/s at
    ``clock_mhz`` (or the fastest that fits); of these only the ones given in ``kw`` are kept
    as given. The choice and its one-line summary go into ``ir.source["folding"]``.
    ``line_buffer=True`` gives every conv layer that a conv layer writes a line buffer of its
    fewest rows (:func:`nsm_export.ir.use_line_buffers`) before the folding is chosen;
    ``input_stage=True`` registers the popcount engines' beat words (the IR's
    ``input_stage``: one more drain cycle per neuron group, a shorter path from the memories).
    """
    from nsm_export.devices import SynthError
    from nsm_export.folding import choose_folding

    if target is None and (throughput is not None or clock_mhz is not None):
        raise SynthError("--throughput and --clock-mhz need --target (the device to fold for)")
    line_buffer = kw.pop("line_buffer", False)
    early_exit = kw.pop("early_exit", None)
    input_stage = bool(kw.pop("input_stage", False))
    given = [k for k in FOLD_KEYS if kw.get(k) is not None]
    ir = compile_file(onnx_file, **{k: v for k, v in kw.items() if v is not None})
    if early_exit is not None:
        ir.early_exit = early_exit
    if line_buffer:
        irmod.use_line_buffers(ir)
    ir.input_stage = input_stage          # a folding without the popcount engine drops it
    if line_buffer or ir.early_exit.active or (input_stage and target is None):
        ir.validate()
    if target is not None:
        fixed = [{k: getattr(layer, k) for k in given if hasattr(layer, k)}
                 for layer in ir.layers]
        fold = choose_folding(ir, target, throughput, clock_mhz, fixed,
                              pass_samples=kw.get("pass_samples"))
        ir = fold.apply(ir)
        ir.validate()
        ir.source["folding"] = {"target": target, "throughput": throughput,
                                "clock_mhz": fold.clock_mhz, "given": given,
                                "pass_samples": fold.pass_samples,
                                "estimate": fold.estimate,
                                "cycles_per_inference": fold.cycles_per_inference,
                                "summary": fold.summary}
    return write_build(ir, out_dir)


#: Written last by :func:`write_build`, checked by :func:`load_build`.
MANIFEST = "manifest.json"


def build_files(name: str) -> tuple[str, ...]:
    """The files :func:`write_build` owns in a build directory, for a top module ``name``;
    anything else there (``sim/``, ``synth/``, reports, the model, the user's files) it leaves
    alone."""
    return (irmod.IR_FILE, irmod.WEIGHTS_FILE, f"{name}.v", f"{name}.core", f"{name}_inst.v",
            MANIFEST)


def sha256_file(path: Path) -> str:
    """The file's SHA-256, hex (the manifest's and the co-simulation summary's)."""
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_manifest(out_dir: Path, files: list[str] | None) -> None:
    record = {"format": "nsm-build", "complete": files is not None,
              "files": {n: sha256_file(out_dir / n) for n in files or ()}}
    with atomic_write(out_dir / MANIFEST, "w") as f:
        f.write(json.dumps(record, indent=1) + "\n")


def write_build(ir: irmod.IR, out_dir: Path) -> irmod.IR:
    """A build directory for ``ir``: the IR, ``NAME.v``, ``NAME.core`` and ``NAME_inst.v``,
    written as one set; nothing is written unless every file could be made.

    The set is marked by ``manifest.json``: first rewritten as incomplete, then the files (each
    all at once), then the SHA-256 of every file of the set. :func:`load_build` (``nsm sim``,
    ``synth``, ``report``, ``board``) refuses a build whose manifest is incomplete (an
    interrupted compile) or whose files differ from it (a new IR beside an old core). A
    manifest rather than a directory staged and swapped in: the build directory also holds what
    other stages and people put there (``sim/``, ``synth/``, reports, the ONNX file compiled
    into it by ``nsm demo``) and may be the working directory, so it is never renamed; a file
    it does not own (:func:`build_files`) is never touched.

    An IR the hardware generator cannot build (majority pooling, say:
    :func:`nsm_export.plan.unsupported` says why) is written without Verilog.
    """
    from hw.integration import fusesoc_core, instantiation_template
    from hw.top import generate_verilog, hardware_unsupported

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise irmod.IRError(f"{out_dir}: exists and is not a directory")
    ir.validate()
    texts = {}
    if not hardware_unsupported(ir):
        texts = {f"{ir.name}.v": generate_verilog(ir), f"{ir.name}.core": fusesoc_core(ir),
                 f"{ir.name}_inst.v": instantiation_template(ir)}
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_manifest(out_dir, None)
    irmod.save(ir, out_dir)
    for name in build_files(ir.name)[2:5]:
        if name in texts:
            with atomic_write(out_dir / name, "w") as f:
                f.write(texts[name])
        else:                                      # IR only; no stale Verilog may stay beside it
            (out_dir / name).unlink(missing_ok=True)
    _write_manifest(out_dir, [irmod.IR_FILE, irmod.WEIGHTS_FILE, *texts])
    return ir


def _check_manifest(build_dir: Path, ir: irmod.IR) -> None:
    """Refuse a build directory that :func:`write_build` did not finish, or whose files are
    not the set it wrote for ``ir`` (each of them listed, each with its hash); one without a
    manifest (made by hand, or by an older ``nsm``) is taken as it is."""
    from hw.top import hardware_unsupported

    path = build_dir / MANIFEST
    if not path.exists() and not path.is_symlink():
        return
    again = f"run `nsm compile MODEL.onnx -o {shlex.quote(str(build_dir))}` again"
    try:
        if not path.is_file():
            raise ValueError                     # a FIFO or a device would block the read
        record = json.loads(path.read_text())
        complete, files = record["complete"], record["files"]
        if complete is not True or not isinstance(files, dict) or not all(
                isinstance(n, str) and "/" not in n and isinstance(h, str)
                for n, h in files.items()):
            raise ValueError
    except (OSError, ValueError, TypeError, KeyError, RecursionError):
        raise SimError(f"{path}: incomplete build (an interrupted or failed `nsm compile`); "
                       f"{again}") from None
    owned = build_files(ir.name)[:2 if hardware_unsupported(ir) else 5]
    if (missing := [n for n in owned if n not in files]):
        raise SimError(f"{path}: does not list {', '.join(missing)} (not the manifest "
                       f"`nsm compile` writes); {again}")
    for name, digest in sorted(files.items()):
        if not (build_dir / name).is_file() or sha256_file(build_dir / name) != digest:
            raise SimError(f"{build_dir / name}: not the file `nsm compile` wrote with the rest "
                           f"of this build ({MANIFEST} differs): a mixed build; {again}")


def load_build(build_dir: Path) -> irmod.IR:
    build_dir = Path(build_dir)
    if not build_dir.is_dir():
        raise SimError(f"{build_dir}: no such build directory (run `nsm compile MODEL.onnx "
                       f"-o {shlex.quote(str(build_dir))}` first)")
    ir = irmod.load(build_dir)
    _check_manifest(build_dir, ir)
    from hw.top import hardware_unsupported
    if (why := hardware_unsupported(ir)):
        raise SimError(f"{build_dir}: {why}")
    if not (build_dir / f"{ir.name}.v").is_file():
        raise SimError(f"{build_dir / (ir.name + '.v')}: Verilog missing (run `nsm compile` "
                       f"again)")
    return ir


def _test_images(dataset: str, split_seed: int, ir: irmod.IR, count: int | None, offset: int = 0,
                 data_dir: Path | None = None):
    from nsm_train.data import DatasetError, load_dataset

    _, _, x_te, y_te = load_dataset(dataset, seed=split_seed, data_dir=data_dir)
    if x_te.shape[1] != ir.input.size:
        raise DatasetError(f"dataset {dataset!r} has {x_te.shape[1]} inputs per image; the IR "
                           f"expects {ir.input.size}")
    if offset >= len(x_te):
        raise DatasetError(f"--offset {offset} is past the {len(x_te)} test images of {dataset!r}")
    end = len(x_te) if count is None else min(len(x_te), offset + count)
    return x_te[offset:end].astype(np.int64), y_te[offset:end]


def simulate(build_dir: Path, dataset: str = "digits", count: int = 100, offset: int = 0,
             split_seed: int = 0, simulator: str = "icarus", quiet: bool = False,
             debug: bool = False, waves: bool = False, data_dir: Path | None = None,
             bench: str = "auto") -> dict:
    ir = load_build(build_dir)
    x, y = _test_images(dataset, split_seed, ir, count, offset, data_dir)
    verilog_sha256 = sha256_file(Path(build_dir) / f"{ir.name}.v")
    t0 = time.perf_counter()
    summary = cosim(Path(build_dir), ir, x, labels=y, simulator=simulator,
                    log_file=Path(build_dir) / "sim" / f"{simulator}.log", progress=not quiet,
                    debug=debug, waves=waves, bench=bench)
    summary["sim_seconds"] = round(time.perf_counter() - t0, 2)
    # The core this run verified: `nsm report` shows the run only for that core.
    summary.update(dataset=dataset, offset=offset, split_seed=split_seed,
                   data_dir=str(data_dir) if data_dir else None, verilog_sha256=verilog_sha256)
    # Kept beside the build so that `nsm report` can show it later (written even when there
    # are mismatches: that is what the report must show).
    with atomic_write(Path(build_dir) / SIM_SUMMARY, "w") as f:
        f.write(json.dumps(summary, indent=1) + "\n")
    return summary


def synthesize(build_dir: Path, target: str, log=print, bitstream: bool = False,
               baud: int = 115200, route: bool = True) -> dict:
    """Synthesize, place and route a build directory's Verilog; work files in ``synth/TARGET``.

    ``bitstream``: build the target's example board top instead (:mod:`hw.board`: the core
    behind a UART at ``baud``; the iCEBreaker for ice40-up5k, the ULX3S for the ECP5 targets)
    with its pin file, and write its bitstream; work files in ``synth/BOARD``. ``route=False``:
    place only (:func:`hw.synth.synthesize`).
    """
    from hw import synth

    if target not in synth.TARGETS:
        raise synth.SynthError(f"unknown target {target!r} (choose from "
                               f"{', '.join(synth.TARGETS)})")
    if not bitstream:
        ir = load_build(build_dir)
        return synth.synthesize(Path(build_dir) / f"{ir.name}.v", ir.name, target,
                                Path(build_dir) / "synth" / target, ir=ir, log=log,
                                route=route)
    from hw.board import BOARDS, board_verilog
    if target not in BOARDS:
        boards = ", ".join(f"{t} ({b.model})" for t, b in BOARDS.items())
        raise synth.SynthError(f"--bitstream builds an example board top; the targets with "
                               f"one are {boards}; for {target}, instantiate the core in your "
                               f"own top (see NAME_inst.v in the build directory)")
    board = BOARDS[target]
    ir = load_build(build_dir)
    work = Path(build_dir) / "synth" / board.name
    try:
        text = board_verilog(ir, board, baud=baud)
    except ValueError as e:
        raise synth.SynthError(str(e)) from None
    return synth.synthesize(work / f"{board.top}.v", board.top, target, work, ir=ir, log=log,
                            board=board, verilog_text=text, route=route)


def run_on_board(build_dir: Path, port: str, dataset: str = "digits", count: int = 20,
                 offset: int = 0, split_seed: int = 0, baud: int = 115200,
                 data_dir: Path | None = None, progress: bool = True,
                 weights: bool = True) -> dict:
    """Test images through the board top on real hardware (``nsm synth --bitstream``), each
    returned class compared with the golden model of a freshly reset core. ``weights``: send
    the weight image first where the core keeps weights in RAM (once after programming)."""
    from tqdm import tqdm

    from hw.board import classify_over_uart, open_uart, weight_bytes

    ir = load_build(build_dir)
    x, y = _test_images(dataset, split_seed, ir, count, offset, data_dir)
    expected = golden.run(ir, x).classes
    image = weight_bytes(ir) if weights else b""
    with open_uart(port, baud) as uart:
        uart.write(image)
        with tqdm(total=len(x), desc=f"board on {port}", unit="img", disable=not progress) as bar:
            t0 = time.perf_counter()
            got = np.asarray(classify_over_uart(uart, x, baud, progress=lambda: bar.update(1)))
            seconds = time.perf_counter() - t0
    bad = np.flatnonzero(got != expected)
    return {"port": port, "baud": baud, "dataset": dataset, "images": int(len(x)),
            "mismatches": int(len(bad)),
            "first_mismatch": ({"image": int(bad[0]), "golden_class": int(expected[bad[0]]),
                                "board_class": int(got[bad[0]])} if len(bad) else None),
            "golden_accuracy": float((expected == y).mean()),
            "board_accuracy": float((got == y).mean()),
            "images_per_s": round(len(x) / seconds, 2) if seconds else None,
            "weight_bytes_sent": len(image)}


def run_demo(out_dir: Path, count: int = 100, epochs: int = 40, samples: int = 16,
             simulator: str = "icarus", pe: int = 16, log=print) -> dict:
    """Train → ONNX → IR → Verilog → co-simulation on digits; writes everything to ``out_dir``."""
    import onnx

    from nsm_export.onnx_export import export_onnx
    from nsm_train.train import TrainConfig, save_checkpoint, train

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    times = {}

    log(f"[1/6] training an NSM MLP on digits ({epochs} epochs)")
    t = time.perf_counter()
    cfg = TrainConfig(dataset="digits", epochs=epochs, samples=samples)
    model, history = train(cfg, progress=True)
    float_acc = history["test_acc"]          # Monte Carlo at T = samples on the test split
    save_checkpoint(model, out_dir / "model.pt", extra={"test_accuracy": float_acc})
    times["train"] = time.perf_counter() - t
    log(f"      float (PyTorch) accuracy at T={samples}: {float_acc:.4f}")

    log("[2/6] exporting ONNX")
    t = time.perf_counter()
    export_onnx(model, out_dir / "model.onnx", samples=samples, sampling=True)
    onnx.checker.check_model(onnx.load(str(out_dir / "model.onnx")), full_check=True)
    times["export"] = time.perf_counter() - t

    log("[3/6] compiling ONNX → integer IR → Verilog")
    t = time.perf_counter()
    ir = compile_to_dir(out_dir / "model.onnx", out_dir, samples=samples, pe=pe)
    times["compile"] = time.perf_counter() - t

    log("[4/6] golden model on the test split")
    x_all, y_all = _test_images("digits", cfg.seed, ir, None)
    gold = golden.run(ir, x_all)
    golden_acc = float((gold.classes == y_all).mean())
    log(f"      golden-model accuracy: {golden_acc:.4f} ({len(y_all)} images)")

    log(f"[5/6] co-simulating {min(count, len(y_all))} images on {simulator}")
    t = time.perf_counter()
    sim = simulate(out_dir, dataset="digits", count=count, split_seed=cfg.seed,
                   simulator=simulator)
    times["sim"] = time.perf_counter() - t
    summary = {
        "dataset": "digits", "network": [ir.input.size] + [layer.n_out for layer in ir.layers],
        "samples": samples, "float_accuracy": float_acc, "golden_accuracy": golden_acc,
        "golden_images": int(len(y_all)),
        "rtl_accuracy": sim["rtl_accuracy"],
        "golden_accuracy_on_compared": sim["golden_accuracy"],
        "images": sim["images"], "mismatches": sim["mismatches"],
        "first_mismatch": sim["first_mismatch"],
        "cycles_per_inference": sim["cycles_per_inference"],
        "cycles_per_inference_model": sim["cycles_per_inference_model"],
        "cycle_model_exact": sim["cycle_model_exact"],
        **schedule.bounds(ir),
        "latency_cycles": sim["latency_cycles"], "simulator": simulator,
        "seconds": {k: round(v, 2) for k, v in times.items()},
        "files": sorted({p.name for p in out_dir.iterdir() if p.is_file()}
                        | {"summary.json", "report.html", "report.md", "report.json"}),
    }
    with atomic_write(out_dir / "summary.json", "w") as f:
        f.write(json.dumps(summary, indent=1) + "\n")

    from nsm.report import write_report
    log("[6/6] report: accuracy against T, resources, cycles, LFSR statistics, verification")
    written = write_report(out_dir, command=shlex.join(["nsm", "report", str(out_dir)]),
                           dataset="digits", split_seed=cfg.seed, count=len(y_all))
    log(f"      wrote {written['report.html']} and {written['report.md']}")
    return summary
