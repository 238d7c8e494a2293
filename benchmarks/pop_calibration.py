"""Popcount-engine builds, synthesized and placed, beside the resource estimate: the data the
``POP_*`` coefficients of :mod:`nsm_export.estimate` are fitted to, and the check of that fit.

Each build is a dense network with random weights at a given folding and T' (every layer on the
popcount core), synthesized by yosys and placed by nextpnr (the YoWASP wheels) for its target.
A record holds the folding, the estimate (:func:`nsm_export.estimate.estimate`), what yosys
and nextpnr report (LUT4s, flip-flops, logic cells, block RAM, SPRAM, Fmax), the cycle model's
cycles per inference and the inferences/s at the placed Fmax. Records are written as they
finish (a cut-off run keeps the builds it made):

    python benchmarks/pop_calibration.py --jobs 2
    python benchmarks/pop_calibration.py --reestimate    # the estimate again, no synthesis

``--reestimate`` recomputes every record's ``estimate`` with the current coefficients (after a
refit) and adds ``estimate_error`` (estimate / measured - 1) for LUTs, flip-flops and block
RAM; a design that did not fit keeps yosys's counts from its error line. The conv nets' builds
on the popcount core are ``benchmarks/hardware.py``'s (``design: nsm-popcount``): the
re-estimate takes their synthesized figures from ``hardware.json`` (``source`` and
``command`` name it) and adds them here beside the estimate of the same IR.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import provenance, write_results   # noqa: E402

# name, target, sizes, weight bits, p, pe, simd, lanes, T', weight stores (T = 16)
BUILDS = [
    ("fmnist-mlp-784-128-10-binary", "ice40-up5k", [784, 128, 10], 1, 0.75,
     [8, 1], [8, 2], [4, 2], 8, ["ram", "rom"]),
    ("fmnist-mlp-784-128-10-binary", "ice40-up5k", [784, 128, 10], 1, 0.75,
     [4, 1], [8, 2], [4, 2], 16, ["ram", "rom"]),
    ("fmnist-mlp-784-128-10-binary", "ice40-up5k", [784, 128, 10], 1, 0.75,
     [4, 1], [16, 2], [4, 2], 8, ["ram", "rom"]),
    ("fmnist-mlp-784-128-10-binary", "ice40-up5k", [784, 128, 10], 1, 0.75,
     [2, 1], [16, 4], [8, 4], 16, ["ram", "rom"]),
    ("digits-64-256-10-4bit", "ice40-up5k", [64, 256, 10], 4, 0.75,
     [8, 2], [4, 4], [4, 4], 4, ["rom", "rom"]),
    ("fmnist-mlp-784-128-10-binary", "ecp5-25k", [784, 128, 10], 1, 0.75,
     [16, 2], [8, 4], [8, 4], 16, ["rom", "rom"]),
    ("fmnist-mlp-784-128-10-binary", "ecp5-25k", [784, 128, 10], 1, 0.75,
     [8, 1], [16, 4], [8, 4], 16, ["rom", "rom"]),
    ("digits-64-256-10-4bit", "ecp5-25k", [64, 256, 10], 4, 0.75,
     [16, 2], [8, 8], [8, 8], 8, ["rom", "rom"]),
]


def network(sizes, wb, p, pe, simd, lanes, tp, stores, T=16, seed=0):
    from nsm_export.build import IntLayer, build_ir
    rng = np.random.default_rng(seed)
    q = 1 if wb == 1 else (1 << (wb - 1)) - 1
    layers = [IntLayer(rng.choice([-1, 1], (b, a)) if wb == 1 else
                       rng.integers(-q, q + 1, (b, a)), rng.integers(-8, 9, b), p, wb)
              for a, b in zip(sizes, sizes[1:])]
    return build_ir(layers, input_size=sizes[0], input_threshold=128, samples=T, pe=pe,
                    lanes=lanes, simd=simd, pass_samples=tp, weight_store=stores, name="nsm")


def one(build, work: Path) -> dict:
    from hw import synth
    from hw.top import generate_verilog
    from nsm_export import schedule
    from nsm_export.devices import TARGETS
    from nsm_export.estimate import estimate
    name, target, sizes, wb, p, pe, simd, lanes, tp, stores = build
    ir = network(sizes, wb, p, pe, simd, lanes, tp, stores)
    rec = {"network": name, "target": target, "samples": ir.samples, "pass_samples": tp,
           "weight_bits": wb, "pe": pe, "simd": simd, "lanes": lanes, "weight_store": stores,
           "estimate": {k: round(float(v), 1)
                        for k, v in estimate(ir, TARGETS[target]).items()},
           "cycles_per_inference": float(schedule.expected_cycles_per_inference(ir))}
    d = work / f"{name}-{target}-pe{'_'.join(map(str, pe))}-s{'_'.join(map(str, simd))}-t{tp}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "nsm.v").write_text(generate_verilog(ir))
    t0 = time.perf_counter()
    try:
        r = synth.synthesize(d / "nsm.v", "nsm", target, d, log=lambda m: None)
    except synth.SynthError as e:
        rec["error"] = str(e)
        return rec
    fmax = r.get("fmax_mhz")
    rec.update(fits=r["fits"], luts=r["luts"]["used"], ffs=r["ffs"]["used"],
               logic_cells=(r.get("logic_cells") or {}).get("used"), bram=r["bram"]["used"],
               spram=r["spram"]["used"], dsps=r["dsps"]["used"], fmax_mhz=fmax,
               seconds=round(time.perf_counter() - t0),
               inferences_per_s=round(fmax * 1e6 / rec["cycles_per_inference"])
               if fmax else None)
    return rec


def conv_records(hardware: Path) -> list[dict]:
    """The conv nets' popcount builds of ``hardware.json``, each with its synthesized figures
    and the estimate of the same IR (:func:`benchmarks.hardware.conv_ir`)."""
    from benchmarks.hardware import conv_ir
    from nsm_export.devices import TARGETS
    from nsm_export.estimate import estimate
    out = []
    for r in json.loads(hardware.read_text()):
        if r["design"] != "nsm-popcount" or "conv" not in r["network"] or not r.get("luts"):
            continue
        ir = conv_ir(r["network"], r["target"], r["samples"], variant="nsm-popcount")
        est = estimate(ir, TARGETS[r["target"]])
        out.append({"network": r["network"], "target": r["target"], "samples": r["samples"],
                    "pass_samples": r["pass_samples"], "pe": r["pe"], "simd": r["simd"],
                    "lanes": r["lanes"], "weight_store": r["weight_store"],
                    "estimate": {k: round(float(v), 1) for k, v in est.items()},
                    "luts": r["luts"], "ffs": r["ffs"], "bram": r["ebr"],
                    "spram": r["spram"], "dsps": r["dsps"], "fmax_mhz": r["fmax_mhz"],
                    "cycles_per_inference": r["cycles_per_inference"],
                    "inferences_per_s": r["inferences_per_s"],
                    "source": "benchmarks/results/hardware.json", "command": r["command"],
                    "estimate_error": {k: round(float(est[k]) / r[m] - 1, 3)
                                       for k, m in (("luts", "luts"), ("ffs", "ffs"),
                                                    ("bram", "ebr")) if r.get(m)}})
    return out


def reestimate(path: Path, argv) -> int:
    from nsm_export.devices import TARGETS
    from nsm_export.estimate import estimate
    data = json.loads(path.read_text())
    data["records"] = [r for r in data["records"] if "source" not in r]
    for rec in data["records"]:
        b = next(b for b in BUILDS if (b[0], b[1], b[5], b[6], b[8]) == (
            rec["network"], rec["target"], rec["pe"], rec["simd"], rec["pass_samples"]))
        est = estimate(network(*b[2:]), TARGETS[rec["target"]])
        rec["estimate"] = {k: round(float(v), 1) for k, v in est.items()}
        m = re.search(r"counted ([\d,]+) LUT4s and ([\d,]+) flip-flops", rec.get("error", ""))
        if m:
            rec["luts"], rec["ffs"] = (int(g.replace(",", "")) for g in m.groups())
        rec["estimate_error"] = {k: round(est[k] / rec[m_k] - 1, 3)
                                 for k, m_k in (("luts", "luts"), ("ffs", "ffs"),
                                                ("bram", "bram")) if rec.get(m_k)}
    data["records"] += conv_records(ROOT / "benchmarks" / "results" / "hardware.json")
    data["reestimate_command"] = provenance("pop_calibration.py", argv)["command"]
    write_results(path, data)
    for rec in data["records"]:
        print(rec["network"], rec["target"], rec["pe"], rec["simd"], rec["pass_samples"],
              rec["estimate_error"])
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", type=int, action="append", help="build index (repeatable)")
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "pop-calibration")
    ap.add_argument("--output", type=Path,
                    default=ROOT / "benchmarks" / "results" / "pop-calibration.json")
    ap.add_argument("--reestimate", action="store_true",
                    help="recompute the estimates of the records in --output; no synthesis")
    a = ap.parse_args(argv)
    if a.reestimate:
        return reestimate(a.output, argv)
    builds = [BUILDS[i] for i in a.only] if a.only else BUILDS
    records = []
    with ProcessPoolExecutor(a.jobs) as pool:
        futures = [pool.submit(one, b, a.work) for b in builds]
        for f in as_completed(futures):
            rec = f.result()
            records.append(rec)
            print(rec, flush=True)
            write_results(a.output, {**provenance("pop_calibration.py", argv),
                                     "records": sorted(records, key=lambda r: (
                                         r["target"], r["network"], str(r["pe"])))})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
