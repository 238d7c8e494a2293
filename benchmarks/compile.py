"""`nsm compile` time: ONNX → IR → Verilog for Fashion-MNIST-sized MLPs.

Writes ``benchmarks/results/compile.json``: per network, the seconds for reading and compiling
the ONNX file into the IR and for generating the Verilog, with the command that made them.
Weights are random (compile time does not depend on their values); the networks have the
shapes the training benchmarks use. Target (issue 4): under 10 s each on 2 cores.

    python benchmarks/compile.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch                                              # noqa: E402

from benchmarks._common import provenance, write_results  # noqa: E402
from nsm.flow import compile_to_dir                       # noqa: E402
from nsm_export.onnx_export import export_onnx            # noqa: E402
from nsm_train.model import NSMMLP                        # noqa: E402

NETWORKS = {
    "fmnist-mlp-784-256-256-10": (784, [256, 256], 2, [16, 16, 10]),
    "fmnist-mlp-784-512-512-10": (784, [512, 512], 2, [32, 32, 10]),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "compile.json")
    a = ap.parse_args(argv)
    records = []
    for name, (n_in, hidden, wb, pe) in NETWORKS.items():
        torch.manual_seed(0)
        model = NSMMLP(n_in, hidden, 10, p=[0.75] + [0.5] * len(hidden), weight_bits=wb)
        with tempfile.TemporaryDirectory() as tmp:
            onnx_file = Path(tmp) / "model.onnx"
            export_onnx(model, onnx_file, samples=16)
            t, c = time.perf_counter(), time.process_time()
            ir = compile_to_dir(onnx_file, Path(tmp) / "build", pe=pe)
            total, cpu = time.perf_counter() - t, time.process_time() - c
            vsize = (Path(tmp) / "build" / "nsm.v").stat().st_size
        rec = {"network": name, "layers": [ir.input.size] + [l.n_out for l in ir.layers],
               "weight_bits": wb, "pe": pe, "compile_seconds": round(total, 2),
               "compile_cpu_seconds": round(cpu, 2),
               "verilog_bytes": vsize, "target_seconds": 10, "meets_target": total < 10,
               **provenance("compile.py", argv)}
        print(f"{name}: {total:.2f} s wall, {cpu:.2f} s CPU (IR + Verilog), "
              f"{vsize / 1e6:.1f} MB of Verilog")
        records.append(rec)
    write_results(a.output, records)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
