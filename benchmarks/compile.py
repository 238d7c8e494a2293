"""`nsm compile` time: ONNX → IR (→ Verilog) for the Fashion-MNIST MLPs and conv net.

Writes ``benchmarks/results/compile.json``: per network, the seconds for reading and compiling
the ONNX file into the IR and, for MLPs, generating the Verilog, with the command that made them.
Weights are random (compile time does not depend on their values); the networks have the
shapes the training benchmarks use. Target (issue 4): under 10 s each on 2 cores.

The 3136-512-512-10 MLP is the 4-level thermometer network (784 pixels x 4 levels, the IR's
thermometer input, pixel-major). The conv net 32c5-p2-64c5-p2-512-10 compiles to the IR and Verilog
(the conv engine, ``hw/conv.py``).

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
from nsm_export.compiler import compile_file              # noqa: E402
from nsm_export.onnx_export import export_onnx            # noqa: E402
from nsm_train.model import NSMConvNet, NSMMLP            # noqa: E402

NETWORKS = {
    "fmnist-mlp-784-256-256-10": (784, [256, 256], 2, [16, 16, 10]),
    "fmnist-mlp-784-512-512-10": (784, [512, 512], 2, [32, 32, 10]),
    "fmnist-mlp-3136-512-512-10": ("thermometer-4", [512, 512], 2, [32, 32, 10]),
    "fmnist-conv-32c5-p2-64c5-p2-512-10": ("32c5-p2-64c5-p2-512", None, 2, [32, 10]),
}


def _model(n_in, hidden, wb):
    if n_in == "thermometer-4":
        return NSMMLP(784, hidden, 10, p=[0.75] + [0.5] * len(hidden), weight_bits=wb,
                      encoding="thermometer", levels=4)
    if isinstance(n_in, str):
        return NSMConvNet([1, 28, 28], n_in, 10, p=[0.25, 0.5], weight_bits=wb)
    return NSMMLP(n_in, hidden, 10, p=[0.75] + [0.5] * len(hidden), weight_bits=wb)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "compile.json")
    a = ap.parse_args(argv)
    records = []
    for name, (n_in, hidden, wb, pe) in NETWORKS.items():
        torch.manual_seed(0)
        model = _model(n_in, hidden, wb)
        with tempfile.TemporaryDirectory() as tmp:
            onnx_file = Path(tmp) / "model.onnx"
            export_onnx(model, onnx_file, samples=16)
            t = time.perf_counter()
            compile_file(onnx_file, pe=pe)                 # the ONNX → IR part alone
            ir_only = time.perf_counter() - t
            t, c = time.perf_counter(), time.process_time()
            ir = compile_to_dir(onnx_file, Path(tmp) / "build", pe=pe)
            total, cpu = time.perf_counter() - t, time.process_time() - c
            v = Path(tmp) / "build" / "nsm.v"
            vsize = v.stat().st_size if v.exists() else None
        rec = {"network": name,
               "layers": [ir.input.size] + [f"{l.kind}:{l.n_out}" if l.kind != "dense"
                                            else l.n_out for l in ir.layers],
               "weight_bits": wb, "pe": pe, "compile_seconds": round(total, 2),
               "onnx_to_ir_seconds": round(ir_only, 2),
               "compile_cpu_seconds": round(cpu, 2), "verilog": vsize is not None,
               "verilog_bytes": vsize, "target_seconds": 10, "meets_target": total < 10,
               **provenance("compile.py", argv)}
        if ir.input.encoding == "thermometer":
            rec["input"] = f"thermometer, {ir.input.levels} levels, {ir.input.size} pixels"
        what = "IR + Verilog" if vsize else "IR only: the hardware cannot build it"
        print(f"{name}: {total:.2f} s wall, {cpu:.2f} s CPU ({what}; ONNX → IR {ir_only:.2f} s)"
              + (f", {vsize / 1e6:.1f} MB of Verilog" if vsize else ""))
        records.append(rec)
    write_results(a.output, records)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
