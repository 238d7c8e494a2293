"""Early-exit benchmark (issue 20): accuracy, mean samples and inferences/s per stopping rule, for
trained Fashion-MNIST networks on the popcount core.

Per network: the checkpoint is exported to ONNX (``nsm export``) and compiled to the IR on the
popcount core (``nsm compile --pass-samples T'`` at the folding below), the golden model runs
the test images ONCE with ``record=True``, and every rule (``none``, ``exact``, ``margin:F``,
each margin also with ``min=4``) is applied to the recorded scores at the pass boundaries
(``early_exit.decide``): an early-exit run is the full-``T`` run cut short image by image
(every LFSR restarts each image at its full-``T`` position), so no rule re-runs anything.

Throughput: per rule, the mean over the images of the exact cycle model
(``schedule.cycles_per_inference`` with the rule set on the IR and each image's passes from its
samples used; co-simulation checks it cycle by cycle) times the placed Fmax of a synthesized core.
Two cores are synthesized per network on its target: the rule-``none`` core
(``full_inferences_per_s``) and one early-exit core (``--synth-rule``): a rule changes only the
contents of the need-table ROM, so that core's Fmax stands for every ``exact``/``margin`` rule
(``fmax_from`` names the synthesized rule). A network that fits no small part (the 2-bit MLP
preset) is reckoned at the target's calibrated Fmax estimate (``fmax_source: "estimate"``,
``fits: false``) and not synthesized.

One record per (network, target, rule) in ``benchmarks/results/early-exit.json``, written as
soon as it exists (after the golden run, again after each synthesis), so an interrupted run
keeps what it measured. A missing checkpoint is skipped with a message.

    python benchmarks/early_exit.py                                   # every network
    python benchmarks/early_exit.py --network fmnist-mlp-784-128-10-w1
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import provenance, write_results   # noqa: E402
from benchmarks.hardware import CONVS, _synth               # noqa: E402
from nsm_export import early_exit as ee                     # noqa: E402
from nsm_export import estimate, golden, schedule           # noqa: E402
from nsm_export.devices import TARGETS                      # noqa: E402
from nsm_export.schema import IRError                       # noqa: E402

PT = ROOT / "out" / "ee" / "pt"             # where benchmarks/runs/early-exit-models.sh saves

# Per network: checkpoint, target, images, synthesize or not, and the popcount folding. The UP5K
# MLP at T' = 2 (8 passes per image): layer 0 at 8 x 8 adds a clock for 2 samples, its 98 kbit
# of weights in SPRAM (in ROM it needs 34 EBR of 30), a fast output engine (80 cycles a pass).
# The conv net: hardware.py's by-hand popcount folding for the UP5K (T' = 2). The 2-bit preset
# (6272-2048-2048-10, 17.1 M weights, 34 Mbit) fits no small part: cycle model at the ECP5-85F's
# calibrated clock.
NETWORKS = {
    "fmnist-mlp-784-128-10-w1": {
        "checkpoint": "fashion-mnist-nsm-mlp-w1.pt", "target": "ice40-up5k", "images": 10000,
        "synth": True,
        "fold": dict(pe=[8, 2], simd=[8, 8], lanes=[4, 4], weight_store=["ram", "rom"],
                     pass_samples=2)},
    # For comparison: the same MLP on hardware.py's UP5K popcount folding (T' = 8: 2 passes,
    # boundaries at 8 and 16 only), the fastest UP5K core without early exit.
    "fmnist-mlp-784-128-10-w1-t8": {
        "checkpoint": "fashion-mnist-nsm-mlp-w1.pt", "target": "ice40-up5k", "images": 10000,
        "synth": True,
        "fold": dict(pe=[8, 1], simd=[8, 2], lanes=[4, 2], weight_store=["ram", "rom"],
                     pass_samples=8)},
    "fmnist-conv-16c5-p2-32c5-p2-128-10-w1": {
        "checkpoint": "fashion-mnist-nsm-conv-w1.pt", "target": "ice40-up5k", "images": 10000,
        "synth": True,
        "fold": CONVS["fmnist-conv-16c5-p2-32c5-p2-128-10"]["popcount"]["ice40-up5k"]},
    "fmnist-mlp-6272-2048-2048-10-w2": {
        "checkpoint": "fashion-mnist-nsm-mlp-w2.pt", "target": "ecp5-85k", "images": 2000,
        "synth": False,
        "fold": dict(pe=[16, 16, 2], simd=[16, 16, 8], lanes=[8, 8, 4],
                     weight_store=["rom", "rom", "rom"], pass_samples=2)},
}
MARGINS = (0.5, 0.25, 0.15, 0.1, 0.07, 0.05, 0.04, 0.03, 0.02)
RULES = ["none", "exact", *(f"margin:{f:g}" for f in MARGINS),
         "exact,min=4", *(f"margin:{f:g},min=4" for f in MARGINS)]
CORE_FIELDS = ("fits", "luts", "ffs", "dsps", "ebr", "spram", "logic_cells", "fmax_mhz",
               "meets_timing", "error")


def checkpoint_path(name: str, dirs) -> Path | None:
    for d in dirs:
        if (d / name).is_file():
            return d / name
    return None


def compile_net(pt: Path, fold: dict, work: Path, rule: str = "none"):
    """``nsm export`` + ``nsm compile --pass-samples ... --early-exit RULE`` into ``work``."""
    from nsm.flow import compile_to_dir
    from nsm_export.onnx_export import export_onnx
    from nsm_train.train import load_checkpoint

    work.mkdir(parents=True, exist_ok=True)
    onnx = work.parent / "model.onnx"
    if not onnx.exists():
        model, _ = load_checkpoint(pt)
        export_onnx(model, onnx, samples=16)
    return compile_to_dir(onnx, work, early_exit=ee.parse_rule(rule), **fold)


def golden_partial(ir, x: np.ndarray, chunk: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """The scores at every boundary ``(N, B, C)`` of the full-``T`` run (rule none), in chunks
    through one golden model (its LFSRs run on across images, as the core's do), and the full
    run's classes."""
    model = golden.GoldenModel(ir)
    parts, classes = [], []
    t0 = time.perf_counter()
    for i in range(0, len(x), chunk):
        r = model.run(x[i:i + chunk], record=True)
        parts.append(r.partial)
        classes.append(r.classes)
        print(f"  golden: {i + len(r.classes)}/{len(x)} images, "
              f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return np.concatenate(parts), np.concatenate(classes)


def with_rule(ir, rule: str):
    out = copy.copy(ir)
    out.early_exit = ee.parse_rule(rule)
    return out


def mean_cycles(ir, samples: np.ndarray) -> float:
    """The exact cycle model's mean cycles per inference, images back to back (the popcount
    core's count needs only the number of images and each one's samples used)."""
    n = len(samples)
    return float(schedule.cycles_per_inference(ir, [np.empty((n, 0))], samples).mean())


def sweep(ir, partial: np.ndarray, y: np.ndarray) -> list[dict]:
    """Per rule: accuracy, agreement with the full-T classes, samples, mean cycles."""
    bounds = ee.boundaries(ir)
    swing = ee.pair_swing(ir.layers[-1].weights)
    full = ee.decide(partial, ee.need_table(ee.NONE, ir.samples, bounds, swing,
                                            1 << ir.score_bits), bounds)
    rows = []
    for text in RULES:
        rule = ee.parse_rule(text)
        cut = ee.decide(partial, ee.need_table(rule, ir.samples, bounds, swing,
                                               1 << ir.score_bits), bounds)
        rows.append({
            "rule": rule.rule, "param": None if rule.rule != "margin" else
            rule.param / ee.PARAM_ONE, "min_samples": rule.min_samples,
            "param_256": rule.param if rule.rule == "margin" else None,
            "label": ee.rule_label(rule), "rule_arg": text,
            "mean_samples": round(float(cut.samples.mean()), 3),
            "samples_hist": {int(b): int((cut.samples == b).sum()) for b in bounds},
            "accuracy": round(float((cut.classes == y).mean()) * 100, 2),
            "full_accuracy": round(float((full.classes == y).mean()) * 100, 2),
            "agree_with_full": round(float((cut.classes == full.classes).mean()) * 100, 2),
            "cycles_per_inference": round(mean_cycles(with_rule(ir, text), cut.samples), 1)})
    return rows


def synth_core(ir, work: Path, target: str) -> dict:
    """Synthesize ``work``'s Verilog (``hardware._synth``): the core's resources and Fmax."""
    core = {"cycles_per_inference": 1.0}
    _synth(core, work / f"{ir.name}.v", ir.name, target, work / "synth" / target, ir=ir)
    return {k: core.get(k) for k in CORE_FIELDS if k in core}


def fill_throughput(records: list[dict], full: dict | None, early: dict | None,
                    fmax_source: str, synth_rule: str) -> None:
    """inferences_per_s from each rule's mean cycles at its core's Fmax."""
    def ips(core, cycles):
        f = (core or {}).get("fmax_mhz")
        return round(f * 1e6 / cycles, 1) if f else None
    none = next(r for r in records if r["rule"] == "none")
    for r in records:
        core = full if r["rule"] == "none" else early
        r.update(fmax_source=fmax_source,
                 fmax_from=("none" if r["rule"] == "none" else synth_rule),
                 fmax_mhz=(core or {}).get("fmax_mhz"),
                 full_fmax_mhz=(full or {}).get("fmax_mhz"),
                 inferences_per_s=ips(core, r["cycles_per_inference"]),
                 full_inferences_per_s=ips(full, none["cycles_per_inference"]),
                 core=core, full_core=full)
        if r["inferences_per_s"] and r["full_inferences_per_s"]:
            r["speedup"] = round(r["inferences_per_s"] / r["full_inferences_per_s"], 3)


def save(path: Path, records: list[dict]) -> None:
    """Replace this run's (network, target, rule) records in ``path``, keep the others."""
    key = lambda r: (r["network"], r["target"], r["rule_arg"])   # noqa: E731
    done = {key(r) for r in records}
    kept = [r for r in json.loads(path.read_text()) if key(r) not in done] \
        if path.exists() else []
    order = list(NETWORKS)
    write_results(path, sorted(kept + records, key=lambda r: (
        order.index(r["network"]) if r["network"] in order else len(order),
        RULES.index(r["rule_arg"]) if r.get("rule_arg") in RULES else len(RULES))))


def num(v, width: int, digits: int) -> str:
    return f"{v:{width}.{digits}f}" if v is not None else f"{'-':>{width}}"


def table(records: list[dict]) -> None:
    """The summary: inf/s '-' where the core was not built or does not fit."""
    print(f"{'network':38} {'rule':22} {'mean T':>6} {'acc':>6} {'full':>6} {'inf/s':>9} "
          f"{'full inf/s':>10} {'x':>5}")
    for r in records:
        print(f"{r['network']:38} {r['rule_arg']:22} {r['mean_samples']:6.2f} {r['accuracy']:6.2f} "
              f"{r['full_accuracy']:6.2f} {num(r.get('inferences_per_s'), 9, 1)} "
              f"{num(r.get('full_inferences_per_s'), 10, 1)} {num(r.get('speedup'), 5, 2)}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--network", action="append", choices=list(NETWORKS),
                    help="Only this network (repeatable); default: all.")
    ap.add_argument("--images", type=int, default=None,
                    help="Test images per network [default: the table's: all 10,000, 2,000 for "
                         "the 2-bit preset].")
    ap.add_argument("--synth-rule", default="margin:0.07",
                    help="The early-exit core synthesized for the Fmax of every rule.")
    ap.add_argument("--no-synth", action="store_true",
                    help="Cycle model only (no Fmax, no inferences/s).")
    ap.add_argument("--checkpoints", type=Path, default=None,
                    help=f"Directory of the checkpoints [default: {PT.relative_to(ROOT)}].")
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "bench-early-exit")
    ap.add_argument("--output", type=Path,
                    default=ROOT / "benchmarks" / "results" / "early-exit.json")
    a = ap.parse_args(argv)
    from nsm_train.data import load_dataset

    _, _, x_te, y_te = load_dataset("fashion-mnist")
    everything = []
    for name in a.network or list(NETWORKS):
        spec = NETWORKS[name]
        dirs = [a.checkpoints] if a.checkpoints else [PT]
        pt = checkpoint_path(spec["checkpoint"], dirs)
        if pt is None:
            print(f"{name}: no checkpoint {spec['checkpoint']} in {', '.join(map(str, dirs))}: "
                  f"skipped "
                  f"(benchmarks/runs/early-exit-models.sh makes it)", file=sys.stderr)
            continue
        target, n = spec["target"], a.images or spec["images"]
        work = a.work / name
        print(f"{name}: compiling {pt.name} (T' = {spec['fold']['pass_samples']})",
              file=sys.stderr, flush=True)
        try:
            ir = compile_net(pt, spec["fold"], work / "none")
        except IRError as e:
            print(f"{name}: does not compile: {e}: skipped", file=sys.stderr)
            continue
        est = estimate.estimate(ir, TARGETS[target])
        x, y = x_te[:n].astype(np.int64), np.asarray(y_te[:n])
        t0 = time.perf_counter()
        partial, _ = golden_partial(ir, x)
        golden_s = round(time.perf_counter() - t0, 1)
        common = {"network": name, "target": target, "checkpoint": f"out/ee/pt/{pt.name}",
            "samples": ir.samples, "pass_samples": spec["fold"]["pass_samples"],
            "boundaries": ee.boundaries(ir),
            **{k: v for k, v in spec["fold"].items() if k != "pass_samples"},
            "estimate": {k: round(float(v), 1) for k, v in est.items()},
            "images": n, "golden_seconds": golden_s, **provenance("early_exit.py", argv)}
        records = [{**common, **row} for row in sweep(ir, partial, y)]
        for r in records:
            r["fmax_source"] = "pending"
        save(a.output, records)
        if not spec["synth"]:
            clock = TARGETS[target].fmax_for(ir)
            core = {"fits": False, "fmax_mhz": clock}
            fill_throughput(records, core, core, "estimate", a.synth_rule)
            for r in records:
                r["fits"] = False
                r["fmax_note"] = (f"{target}'s calibrated Fmax estimate (devices.py "
                                  f"fmax_for); not synthesized: fits no small part")
            save(a.output, records)
        elif not a.no_synth:
            print(f"{name}: synthesizing the rule-none core for {target}", file=sys.stderr,
                  flush=True)
            full = synth_core(ir, work / "none", target)
            fill_throughput(records, full, None, "placed", a.synth_rule)
            save(a.output, records)
            print(f"{name}: synthesizing the {a.synth_rule} core for {target}", file=sys.stderr,
                  flush=True)
            ir_ee = compile_net(pt, spec["fold"], work / "early", a.synth_rule)
            early = synth_core(ir_ee, work / "early", target)
            fill_throughput(records, full, early, "placed", a.synth_rule)
            for r in records:
                r["fits"] = (r["core"] or {}).get("fits")
            save(a.output, records)
        table(records)
        everything += records
    if everything:
        print()
        table(everything)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
