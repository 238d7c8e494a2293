"""Hardware benchmark: NSM cores for digits- and Fashion-MNIST-sized MLPs on iCE40 UP5K and ECP5.

For each network and target: synthesize, place and route with YoWASP (``nsm synth``'s flow) and
write one record per (network, target, design) to ``benchmarks/results/hardware.json`` with
``luts``, ``ffs``, ``dsps``, ``ebr``, ``fmax_mhz``, ``cycles_per_inference`` (the cycle model's
mean over the blank-out draws), ``inferences_per_s`` (at Fmax) and ``dense_bound_ratio`` (cycles
over the dense bound T x synaptic operations / adder lanes), and the command.

Weights are random (resources and the cycle model do not depend on their values, only on widths
and folding). Issue 5 also asks for an int8 multiply-accumulate design of the same networks for a
side-by-side comparison: not built yet (``design`` is always ``nsm`` here).

    python benchmarks/hardware.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import provenance, write_results   # noqa: E402
from hw import synth                                       # noqa: E402
from hw.top import generate_verilog                        # noqa: E402
from nsm_export import schedule                            # noqa: E402
from nsm_export.build import IntLayer, build_ir            # noqa: E402

# name: (sizes, weight bits, keep p per layer, pe per layer)
NETWORKS = {
    "digits-mlp-64-256-10": ([64, 256, 10], 4, [0.75, 0.75], [16, 10]),
    "fmnist-mlp-784-128-10-binary": ([784, 128, 10], 1, [0.75, 0.75], [16, 10]),
}
TARGETS = ["ice40-up5k", "ecp5-25k"]


def _network(sizes, wb, ps, pe, T, seed=0):
    rng = np.random.default_rng(seed)
    layers = []
    for n_in, n_out, p in zip(sizes, sizes[1:], ps):
        q = 1 if wb == 1 else (1 << (wb - 1)) - 1
        w = rng.choice([-1, 1], (n_out, n_in)) if wb == 1 else rng.integers(-q, q + 1, (n_out, n_in))
        layers.append(IntLayer(w, rng.integers(-8, 9, n_out), p, wb))
    return build_ir(layers, input_size=sizes[0], input_threshold=128, samples=T, pe=pe)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", "-T", type=int, default=16)
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "bench-hardware")
    ap.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "hardware.json")
    a = ap.parse_args(argv)
    records = []
    for name, (sizes, wb, ps, pe) in NETWORKS.items():
        ir = _network(sizes, wb, ps, pe, a.samples)
        work = a.work / name
        work.mkdir(parents=True, exist_ok=True)
        vfile = work / "nsm.v"
        vfile.write_text(generate_verilog(ir))
        cycles = schedule.expected_cycles_per_inference(ir)
        for target in TARGETS:
            rec = {"network": name, "target": target, "design": "nsm", "samples": ir.samples,
                   "layers": sizes, "weight_bits": wb, "pe": [layer.pe for layer in ir.layers],
                   "cycles_per_inference": round(cycles, 1),
                   "dense_bound_ratio": round(cycles / schedule.dense_bound(ir), 3)}
            try:
                r = synth.synthesize(vfile, ir.name, target, work / target, ir=ir,
                                     log=lambda m: print(m, file=sys.stderr))
            except synth.SynthError as e:
                rec.update(fits=False, error=str(e))
            else:
                fmax = r.get("fmax_mhz")
                rec.update(fits=r.get("fits"), luts=r["luts"]["used"], ffs=r["ffs"]["used"],
                           dsps=r.get("dsps", {}).get("used", 0), ebr=r["bram"]["used"],
                           fmax_mhz=fmax,
                           inferences_per_s=round(fmax * 1e6 / cycles, 1) if fmax else None)
            rec.update(provenance("hardware.py", argv))
            print(json.dumps({k: rec.get(k) for k in ("network", "target", "fits", "luts",
                                                          "ffs", "ebr", "fmax_mhz",
                                                          "cycles_per_inference",
                                                          "inferences_per_s")}))
            records.append(rec)
    write_results(a.output, records)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
