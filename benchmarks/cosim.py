"""Co-simulation benchmark: a Fashion-MNIST NSM MLP through the RTL, bit-exact, on both simulators.

Trains (or reuses) a Fashion-MNIST MLP, compiles it, runs the golden model and the RTL on the
first ``--images`` test images in Verilator's C++ harness (``sim/harness.cpp``), the first
``--cocotb-images`` in the cocotb bench on Verilator and ``--icarus-images`` in the cocotb bench
on Icarus (the slowest), and writes a JSON list of records to ``benchmarks/results/cosim.json``,
one per design (the kept-list engines and the popcount core), simulator and bench: ``design``,
``simulator``, ``bench``, ``images``, ``mismatches``, ``golden_images_per_s``,
``cosim_cycles_per_s`` and more, with the command that made them. Speeds are wall-clock on the
machine that ran it; compare ratios within one file rather than absolute numbers across
machines.

    python benchmarks/cosim.py       # 1,000 images in the harness, 200 in cocotb, 10 in Icarus
    python benchmarks/cosim.py --images 20 --cocotb-images 5 --icarus-images 5 --epochs 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import provenance, write_results  # noqa: E402
from hw.top import generate_verilog                    # noqa: E402
from nsm_export import golden, schedule                 # noqa: E402
from nsm_export.compiler import compile_model           # noqa: E402
from nsm_export.onnx_export import build_onnx           # noqa: E402
from nsm_train.data import load_dataset                 # noqa: E402
from nsm_train.train import (TrainConfig, evaluate, load_checkpoint, save_checkpoint,  # noqa: E402
                             train)
from sim.runner import compare, run_rtl, simulator_available  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000,
                    help="test images through the Verilator harness")
    ap.add_argument("--cocotb-images", type=int, default=200,
                    help="test images through the cocotb bench on Verilator")
    ap.add_argument("--icarus-images", type=int, default=10, help="test images through Icarus")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--samples", "-T", type=int, default=16)
    ap.add_argument("--design", choices=["kept-list", "popcount", "both"], default="both",
                    help="the kept-list engines (--pe), the popcount core (the UP5K folding of "
                         "benchmarks/hardware.py: pe 8,1, simd 8,2, lanes 4,2, T' 8, layer 0's "
                         "weights in RAM), or both")
    ap.add_argument("--pe", default="64,10", help="neuron lanes per layer (kept-list engines)")
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "bench-cosim")
    ap.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "cosim.json")
    a = ap.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)

    ckpt = a.work / f"fmnist-mlp-{a.hidden}-e{a.epochs}.pt"
    if ckpt.exists():
        model, _ = load_checkpoint(ckpt)
        print(f"reusing {ckpt}")
    else:
        cfg = TrainConfig(dataset="fashion-mnist", hidden=[a.hidden], epochs=a.epochs,
                          samples=a.samples, batch_size=128, lr=0.005)
        model, _ = train(cfg, progress=True)
        save_checkpoint(model, ckpt)
    _, _, x_te, y_te = load_dataset("fashion-mnist")
    float_acc = evaluate(model, x_te[:a.images], y_te[:a.images], a.samples)

    onnx_model = build_onnx(model, samples=a.samples)
    builds = {"kept-list": dict(pe=[int(v) for v in a.pe.split(",")]),
              "popcount": dict(pe=[8, 1], simd=[8, 2], lanes=[4, 2], pass_samples=8,
                               weight_store=["ram", "rom"])}
    n_max = max(a.images, a.cocotb_images, a.icarus_images)
    x, y = x_te[:n_max].astype(np.int64), y_te[:n_max]
    records = []
    for design in (["kept-list", "popcount"] if a.design == "both" else [a.design]):
        ir = compile_model(onnx_model, **builds[design])
        vfile = a.work / f"nsm-{design}.v"
        vfile.write_text(generate_verilog(ir))
        records += _run(a, argv, design, ir, vfile, x, y, float_acc)
    write_results(a.output, records)
    return 1 if any(r["mismatches"] or not r["cycle_model_exact"] for r in records) else 0


def _run(a, argv, design, ir, vfile, x, y, float_acc) -> list[dict]:
    t = time.perf_counter()
    gold = golden.run(ir, x)
    golden_ips = len(x) / (time.perf_counter() - t)
    print(f"golden model: {golden_ips:.0f} images/s; accuracy {np.mean(gold.classes == y):.4f}")

    network = [ir.input.size] + [layer.n_out for layer in ir.layers]
    records = []
    for simulator, bench, n in (("verilator", "harness", a.images),
                                ("verilator", "cocotb", a.cocotb_images),
                                ("icarus", "cocotb", a.icarus_images)):
        reason = simulator_available(simulator)
        if reason or n <= 0:
            print(f"skipping {simulator} ({bench}): {reason or 'no images asked for'}")
            continue
        rtl = run_rtl(vfile, ir, x[:n], simulator=simulator, bench=bench,
                      work_dir=a.work / f"{simulator}-{bench}-{design}",
                      log_file=a.work / f"{simulator}-{bench}-{design}.log", progress=True)
        expected = golden.run(ir, x[:n], record=True)
        cmp = compare(expected, rtl)
        cycles = int(rtl.done_at[-1])
        ii_model = schedule.cycles_per_inference(ir, expected.masks)
        rec = {
            "simulator": simulator, "bench": bench, "design": design, "images": n,
            "mismatches": cmp.mismatches,
            "first_mismatch": cmp.first_mismatch, "dataset": "fashion-mnist",
            "network": network, "samples": ir.samples, "pe": [layer.pe for layer in ir.layers],
            "simd": [layer.simd for layer in ir.layers],
            "pass_samples": ir.layers[0].pass_samples,
            "golden_images_per_s": round(golden_ips, 1),
            "cosim_cycles_per_s": round(cycles / rtl.run_seconds, 1),
            "cosim_images_per_s": round(n / rtl.run_seconds, 3),
            "simulated_cycles": cycles, "build_seconds": round(rtl.build_seconds, 1),
            "run_seconds": round(rtl.run_seconds, 1),
            "cycles_per_inference": round(float(np.diff(rtl.done_at).mean()), 1) if n > 1
            else None,
            # Back to back, image n's cycles run from result n-1 to result n: images 1..n-1.
            "cycles_per_inference_model": round(float(ii_model[1:].mean()), 1) if n > 1
            else round(float(ii_model[0]), 1),
            "cycle_model_exact": bool(np.array_equal(
                rtl.latency, schedule.latency_cycles(ir, expected.masks))
                and np.array_equal(np.diff(rtl.done_at), ii_model[1:])),
            **schedule.bounds(ir),
            "rtl_accuracy": float(np.mean(rtl.classes == y[:n])),
            "golden_accuracy": float(np.mean(gold.classes[:n] == y[:n])),
            "float_accuracy": float_acc,
            **provenance("cosim.py", argv),
        }
        records.append(rec)
        print(f"{design}, {simulator} ({bench}): {n} images, {cmp.mismatches} mismatches, "
              f"{rec['cosim_cycles_per_s']:.0f} cycles/s")
    return records


if __name__ == "__main__":
    raise SystemExit(main())
