"""Random-network co-simulation fuzz: many random IRs through the RTL, all must be bit-exact.

``--kind conv`` draws random conv nets instead (``random_conv_ir``: channels, kernels, strides,
padding, OR pooling, folding, weight stores, input codes), written to ``fuzz-conv.json``;
``--kind popcount`` random dense nets on the popcount core (``random_pop_ir``: T and T',
thermometer codes, simd, lanes, pe), written to ``fuzz-popcount.json``, where the handshake
intervals of the overlapped images are checked against the cycle model too; ``--kind
popcount-conv`` random conv nets on it (``random_pop_conv_ir``: kernels, strides, padding,
OR pooling or none, conv into conv or dense hand-overs), ``fuzz-popcount-conv.json``.
``--early-exit`` (popcount kinds) gives every case a random stopping rule (``exact``, or
``margin`` at a random fraction and floor: :mod:`nsm_export.early_exit`), and compares the
samples each image used too; ``fuzz-KIND-early-exit.json``.

Each case draws a network (depth, sizes, weight bits, keep probabilities, folding, LFSR widths
and seeds, T) and a few random images, simulates the generated Verilog and compares every score
and every per-image latency with the golden model and the cycle model. Writes
``benchmarks/results/fuzz.json``: the totals, every failing case's IR in full, and the command.

    python benchmarks/fuzz.py --cases 500 --jobs 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import provenance, write_results   # noqa: E402


def one_case(seed: int, simulator: str, images: int, kind: str = "dense",
             early_exit: bool = False) -> dict:
    from hw.top import generate_verilog
    from nsm_export import golden, schedule
    from nsm_export.testing import (random_conv_ir, random_ir, random_pixels,
                                    random_pop_conv_ir, random_pop_ir)
    from sim.runner import compare, run_rtl

    rng = np.random.default_rng(seed)
    draw = {"conv": random_conv_ir, "popcount": random_pop_ir,
            "popcount-conv": random_pop_conv_ir}.get(kind, random_ir)
    ir = draw(rng)
    if early_exit:
        from nsm_export.early_exit import EarlyExit
        margin = rng.random() < 0.7
        ir.early_exit = EarlyExit("margin" if margin else "exact",
                                  int(rng.integers(1, 257)) if margin else 256,
                                  int(rng.integers(0, ir.samples + 1)) if rng.random() < 0.3
                                  else 0)
        ir.validate()
    px = random_pixels(rng, ir, images)
    with tempfile.TemporaryDirectory() as tmp:
        vfile = Path(tmp) / "nsm.v"
        vfile.write_text(generate_verilog(ir))
        rtl = run_rtl(vfile, ir, px, simulator=simulator, work_dir=tmp)
    expected = golden.run(ir, px, record=True)
    cmp = compare(expected, rtl)
    used = expected.samples
    cycles_ok = bool(np.array_equal(rtl.latency, schedule.latency_cycles(ir, expected.masks,
                                                                         used))
                     and np.array_equal(np.diff(rtl.done_at), schedule.cycles_per_inference(
                         ir, expected.masks, used)[1:]))
    return {"seed": seed, "mismatches": cmp.mismatches, "cycle_model_exact": cycles_ok,
            "first_mismatch": cmp.first_mismatch,
            "ir": ir.to_json() if cmp.mismatches or not cycles_ok else None,
            "shape": [ir.input.size] + [layer.n_out for layer in ir.layers],
            "kinds": [layer.kind for layer in ir.layers],
            "samples": ir.samples,
            **({"early_exit": ir.early_exit.to_json(),
                "samples_used": [int(v) for v in used]} if early_exit else {})}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=500)
    ap.add_argument("--first-seed", type=int, default=1)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--simulator", choices=["icarus", "verilator"], default="icarus")
    ap.add_argument("--kind", choices=["dense", "conv", "popcount", "popcount-conv"],
                    default="dense",
                    help="random MLPs (random_ir), random conv nets (random_conv_ir), random "
                         "MLPs on the popcount core (random_pop_ir) or random conv nets on it "
                         "(random_pop_conv_ir)")
    ap.add_argument("--early-exit", action="store_true",
                    help="a random stopping rule in every case (popcount kinds)")
    ap.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "fuzz.json")
    a = ap.parse_args(argv)
    if a.early_exit and not a.kind.startswith("popcount"):
        ap.error("--early-exit needs --kind popcount or popcount-conv (the popcount core)")
    from tqdm import tqdm

    t0 = time.perf_counter()
    results = []
    seeds = range(a.first_seed, a.first_seed + a.cases)
    with ProcessPoolExecutor(a.jobs) as pool:
        futures = [pool.submit(one_case, s, a.simulator, a.images, a.kind, a.early_exit)
                   for s in seeds]
        for f in tqdm(as_completed(futures), total=len(futures), desc="fuzz", unit="net"):
            results.append(f.result())
    bad = [r for r in results if r["mismatches"] or not r["cycle_model_exact"]]
    summary = {
        "simulator": a.simulator, "kind": a.kind, "early_exit": a.early_exit,
        "cases": len(results),
        "images_per_case": a.images,
        "failing_cases": len(bad), "mismatching_cases": sum(1 for r in bad if r["mismatches"]),
        "cycle_model_failures": sum(1 for r in bad if not r["cycle_model_exact"]),
        "largest_network": max((r["shape"] for r in results), key=lambda s: sum(s)),
        "seconds": round(time.perf_counter() - t0, 1),
        **provenance("fuzz.py", argv), "failures": bad,
    }
    out = a.output
    if a.kind != "dense" and out == ROOT / "benchmarks" / "results" / "fuzz.json":
        out = out.with_name(f"fuzz-{a.kind}{'-early-exit' if a.early_exit else ''}.json")
    write_results(out, summary)
    print(f"{summary['cases']} random networks, {summary['failing_cases']} failing")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
