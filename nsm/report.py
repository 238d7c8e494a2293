"""``nsm report``: one page to decide from, built from what the other stages left in a build
directory.

Sources, each optional except the IR (a section whose source is missing says "not run" and names
the command that makes it):

``ir.json``, ``weights.npz``   the network (``nsm compile``); the golden model runs it here
``NAME.onnx`` / ``model.pt``   the float model: the ONNX file named in the IR's provenance, in the
                               build directory or beside it, else the demo's ``model.pt``
``sim/summary.json``           the last co-simulation (``nsm sim``, ``nsm demo``)
``synth/TARGET/report.json``   synthesis reports (``nsm synth``)
``edge.json``                  the trained presets' records per FPGA part (``benchmarks/edge.py``):
                               ``benchmarks/results/`` beside the ``nsm`` package, or the file
                               ``$NSM_EDGE_RESULTS`` names; not the build's, so a missing or bad
                               file is a note in its section, never an error

What the report computes itself, exactly: golden-model accuracy at every ``T`` of a list (one IR
per ``T``, run from reset over the same test images), the per-image cycle counts of the IR's own
``T`` from the golden model's recorded draws (:mod:`nsm_export.schedule`), and statistics of the
keep bits each layer's LFSR produced in that run. Outputs, written only once everything is
computed, each file all at once (:func:`nsm_common.atomic.atomic_write`): ``report.html``
(plots embedded as data URIs, no other file or network needed), ``report.md`` with its plots as
``report-*.png`` beside it, and ``report.json`` with every number.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import shlex
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from nsm_export import early_exit as ee
from nsm_export import golden, schedule
from nsm_export import ir as irmod
from nsm_common.atomic import atomic_write
from nsm_export.plan import plan

__all__ = ["ReportError", "DEFAULT_SAMPLES", "collect", "build_document", "write_report",
           "accuracy_figure", "run_golden", "ir_at_samples", "lfsr_statistics", "find_model",
           "network_shapes", "resource_rows", "cycle_summary", "early_exit_summary",
           "early_exit_figure", "histogram_text", "Section", "Table", "Figure", "NotRun",
           "OUTPUTS", "edge_figure", "edge_table", "edge_goals", "edge_goal_met", "edge_goal_text",
           "edge_plotted",
           "edge_results_path", "load_edge_records", "EDGE_ENV", "markdown_table"]

DEFAULT_SAMPLES = (1, 4, 16, 64)
MAX_LAG = 16                 # autocorrelation lags shown per LFSR stream
AUTOCORR_DRAWS = 1 << 20     # draws per stream used for the autocorrelation (all for frequency)
UART_BAUD = 115200           # the board top's default (hw/board.py)
#: What :func:`write_report` writes in its directory (and, for the plots, deletes there).
OUTPUTS = ("report.html", "report.md", "report.json", "report-*.png")


class ReportError(RuntimeError):
    """The report cannot be made; the message is one line naming the input."""


# ---------------------------------------------------------------------------------------------
# Collecting the numbers

def _read_json(path: Path):
    """What the JSON file ``path`` holds; ReportError in one line where it cannot."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ReportError(f"{path}: not valid JSON ({str(e)[:120]})")
    except OSError as e:
        raise ReportError(f"{path}: cannot be read ({e.strerror or type(e).__name__})")


def _load_json(path: Path, types: dict | None = None) -> dict | None:
    """The JSON object in ``path`` (None where there is no file), its entries named in
    ``types`` of those types (:data:`SIM_TYPES`, :data:`SYNTH_TYPES`); one line otherwise."""
    if not path.is_file():
        return None
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ReportError(f"{path}: not a JSON object")
    for key, kind in (types or {}).items():
        if key in data and not _of_kind(data[key], kind):
            raise ReportError(f"{path}: {key} = {str(data[key])[:60]!r} is not {kind}")
    return data


def _number(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def _of_kind(v, kind: str) -> bool:
    """``kind``: ``integer``, ``number``, ``string``, ``boolean``, ``object``, ``resource``
    (``used`` and ``available`` integers), each with `` or null`` where None may stand."""
    base, _, null = kind.partition(" or ")
    if null and v is None:
        return True
    return {"integer": lambda: not isinstance(v, bool) and isinstance(v, int) and v >= 0,
            "number": lambda: _number(v),
            "string": lambda: isinstance(v, str),
            "boolean": lambda: isinstance(v, bool),
            "object": lambda: isinstance(v, dict),
            "resource": lambda: isinstance(v, dict) and all(
                not isinstance(v.get(k, 0), bool) and isinstance(v.get(k, 0), int)
                for k in ("used", "available"))}[base]()


#: What the report reads of ``sim/summary.json`` and of the demo's ``summary.json``.
SIM_TYPES = {"images": "integer", "mismatches": "integer", "samples": "integer",
             "split_seed": "integer", "rtl_accuracy": "number or null",
             "golden_accuracy": "number or null", "float_accuracy": "number or null",
             "dataset": "string", "data_dir": "string or null", "simulator": "string",
             "cycles_per_inference": "number or null", "cycle_model_exact": "boolean",
             "spikes_compared": "boolean", "first_mismatch": "object or null",
             "verilog_sha256": "string"}
#: What it reads of a ``synth/TARGET/report.json``.
SYNTH_TYPES = {**{k: "resource" for k in ("luts", "ffs", "logic_cells", "bram", "spram", "dsps",
                                          "io")},
               "fmax_mhz": "number or null", "constraint_mhz": "number",
               "meets_timing": "boolean", "fits": "boolean", "device": "string",
               "board": "string or null", "bitstream": "string or null"}


def _stale(path: Path, than: Path) -> bool:
    """``path`` was written before ``than`` changed: it describes an older build."""
    return than.is_file() and path.stat().st_mtime < than.stat().st_mtime


def find_model(build_dir: Path, ir: irmod.IR, explicit: Path | None = None) -> Path | None:
    """The float model: ``explicit``; else the ONNX file the IR was compiled from (in the build
    directory or its parent); else ``model.pt`` in the build directory (``nsm demo``)."""
    if explicit is not None:
        if not Path(explicit).is_file():
            raise ReportError(f"{explicit}: no such model file")
        return Path(explicit)
    onnx_name = ir.source.get("onnx") if isinstance(ir.source, dict) else None
    candidates = [build_dir / onnx_name, build_dir.parent / onnx_name] if onnx_name else []
    candidates.append(build_dir / "model.pt")
    return next((c for c in candidates if c.is_file()), None)


def _check_model_matches(path: Path, ir: irmod.IR) -> None:
    """Refuse, in one line, a float model that is not the network the build was compiled from:
    compiled the way `nsm compile` would (a checkpoint exported first), its shapes and input
    code must be the IR's."""
    import tempfile

    from nsm_export.compiler import CompileError, compile_file
    try:
        if path.suffix == ".pt":
            from nsm_export.onnx_export import export_onnx
            from nsm_train.train import load_checkpoint
            model, _ = load_checkpoint(path)
            with tempfile.TemporaryDirectory(prefix="nsm-report-") as tmp:
                export_onnx(model, Path(tmp) / "model.onnx", samples=ir.samples)
                other = compile_file(Path(tmp) / "model.onnx")
        else:
            other = compile_file(path)
    except (CompileError, irmod.IRError) as e:
        raise ReportError(f"{path}: not a model of this build ({str(e)[:160]})") from None
    except ValueError as e:                  # CheckpointError, ExportError
        raise ReportError(str(e)) from None
    mine = (network_shapes(ir), [la.kind for la in ir.layers], ir.input.encoding)
    theirs = (network_shapes(other), [la.kind for la in other.layers], other.input.encoding)
    if mine != theirs:
        raise ReportError(f"{path}: a {'-'.join(theirs[0])} network ({theirs[2]} input), not "
                          f"the build's {'-'.join(mine[0])} ({mine[2]} input)")


def _float_accuracy(path: Path, x: np.ndarray, y: np.ndarray, ts: list[int], seed: int,
                    bar) -> dict[int, float]:
    """Monte Carlo accuracy of the float model at each ``T`` (first ``T`` of ``max(ts)``
    passes; scores summed, first maximum)."""
    if path.suffix == ".pt":
        import torch

        from nsm_train.train import evaluate_many, load_checkpoint
        model, _ = load_checkpoint(path)
        if model.n_in != x.shape[1]:
            raise ReportError(f"{path}: the model has {model.n_in} inputs, the IR "
                              f"{x.shape[1]}")
        torch.manual_seed(seed)
        rows = evaluate_many(model, x, y, ts)
        bar.update(len(x) * max(ts))
        return {r["samples"]: float(r["accuracy"]) for r in rows}
    import onnxruntime as ort
    try:
        ort.set_seed(seed)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:        # onnxruntime raises its own types for unreadable files
        raise ReportError(f"{path}: onnxruntime cannot load it ({str(e).splitlines()[0]})")
    inp = sess.get_inputs()[0]
    if inp.shape[-1] != x.shape[1]:
        raise ReportError(f"{path}: the model has {inp.shape[-1]} inputs, the IR {x.shape[1]}")
    xs = x.astype(np.float32)
    total, out = None, {}
    for t in range(1, max(ts) + 1):
        try:
            s = np.asarray(sess.run(None, {inp.name: xs})[0], dtype=np.float64)
        except Exception as e:    # a graph that loads but cannot run (onnxruntime's own types)
            raise ReportError(f"{path}: onnxruntime cannot run it "
                              f"({(str(e).splitlines() or [type(e).__name__])[0][:200]})")
        if s.ndim != 2 or s.shape[0] != len(x) or not np.isfinite(s).all():
            raise ReportError(f"{path}: the model's output is not one finite score row per "
                              f"image (shape {s.shape})")
        total = s if total is None else total + s
        bar.update(len(x))
        if t in ts:
            out[t] = float((np.argmax(total, axis=1) == y).mean())
    return out


def ir_at_samples(ir: irmod.IR, samples: int) -> irmod.IR:
    """The same network compiled for ``samples`` Monte Carlo samples (score width resized;
    a popcount engine's ``T'`` at most ``samples``)."""
    out = replace(ir, samples=int(samples),
                  layers=[replace(layer, pass_samples=min(layer.pass_samples, int(samples)))
                          if getattr(layer, "pass_samples", 0) else layer
                          for layer in ir.layers],
                  early_exit=replace(ir.early_exit, min_samples=min(ir.early_exit.min_samples,
                                                                    int(samples))))
    out.score_bits = out.required_score_bits()
    out.validate()
    return out


def run_golden(ir: irmod.IR, x: np.ndarray, record: bool = False, bar=None,
               chunk: int | None = None) -> golden.GoldenResult:
    """The golden model from reset over ``x``, in chunks of images so that the progress bar
    ``bar`` moves; the LFSRs run on between chunks, so the result equals one call."""
    model = golden.GoldenModel(ir)
    if chunk is None:
        per_image = ir.samples * min(layer.n_in for layer in ir.layers)
        chunk = max(1, (1 << 18) // max(1, per_image))     # >= 2^18 draws: numpy's fast path
    parts = []
    for i in range(0, len(x), chunk):
        parts.append(model.run(x[i:i + chunk], record=record))
        if bar is not None:
            bar.update(len(x[i:i + chunk]) * ir.samples)
    cat = np.concatenate
    res = golden.GoldenResult(scores=cat([p.scores for p in parts]),
                              classes=cat([p.classes for p in parts]),
                              samples=cat([p.samples for p in parts]))
    if record:
        res.partial = cat([p.partial for p in parts])
        res.masks = [cat([p.masks[k] for p in parts]) for k in range(len(ir.layers))]
        res.spikes = [cat([p.spikes[k] for p in parts]) for k in range(len(ir.layers) - 1)]
    return res


def _autocorr(bits: np.ndarray, lags: int) -> list[float]:
    c = bits[:AUTOCORR_DRAWS].astype(np.float64)
    c -= c.mean()
    den = float(c @ c)
    if den == 0:
        return [0.0] * lags
    return [float(c[:-k] @ c[k:]) / den for k in range(1, lags + 1)]


def lfsr_statistics(ir: irmod.IR, masks: list[np.ndarray]) -> list[dict]:
    """Per dense or conv layer (pooling draws nothing and has no row): keep-bit frequency
    against the quantized ``p``, its distance in binomial standard deviations, and the
    autocorrelation of the stream in draw order (lags 1..16; a conv layer draws per input
    element in the IR's channel-major order)."""
    rows = {}
    streams = {}
    for i, (layer, m) in enumerate(zip(ir.layers, masks)):
        if layer.kind == "pool":
            continue
        row = {"layer": i, "p": layer.p, "p_num": layer.p_num, "p_bits": layer.p_bits,
               "sampling": layer.sampling}
        if layer.sampling:
            bits = np.asarray(m).reshape(-1)          # (N, T, n_in): exactly the draw order
            n = int(bits.size)
            freq = float(bits.mean())
            keeps, period = layer.p_realized
            real = keeps / period              # what a whole period of the LFSR keeps
            sd = float(np.sqrt(real * (1 - real) / n))
            ac = _autocorr(bits, MAX_LAG)
            streams[i] = bits
            row.update(draws=n, frequency=freq, sigma=sd, z=(freq - real) / sd,
                       p_realized=real,
                       lag1=ac[0], autocorr=ac, autocorr_draws=min(n, AUTOCORR_DRAWS),
                       lfsr_width=layer.rng.width, leap=layer.rng.leap)
        rows[i] = row
    keys = sorted(streams)
    for a in keys:
        worst = 0.0
        for b in keys:
            if b == a:
                continue
            n = min(len(streams[a]), len(streams[b]), AUTOCORR_DRAWS)
            sa, sb = streams[a][:n].astype(float), streams[b][:n].astype(float)
            if sa.std() and sb.std():
                worst = max(worst, abs(float(np.corrcoef(sa, sb)[0, 1])))
        rows[a]["max_cross_corr"] = worst
    return list(rows.values())


def _shape(shape) -> str:
    return "×".join(map(str, shape))


def network_shapes(ir: irmod.IR) -> list[str]:
    """The input and every layer's output: ``C×H×W`` for maps, a count for vectors."""
    first = ir.layers[0]
    return [_shape(first.in_shape) if hasattr(first, "in_shape") else str(ir.input.size)] + \
        [_shape(la.out_shape) if hasattr(la, "out_shape") else str(la.n_out) for la in ir.layers]


def resource_rows(ir: irmod.IR) -> list[dict]:
    """Per layer, from the IR and its hardware plan: sizes, widths, folding and the memories
    that grow with the network, at the shapes the engines build them (at least two words deep,
    padding lanes included): each kind's ``report_row`` (a pooling layer's names the conv
    engine that computes it)."""
    engines = {st.index: st for st in plan(ir)}
    pooled_by = {st.index + 1: st for st in engines.values() if st.pool is not None}
    return [layer.report_row(i, pooled_by.get(i) if layer.kind == "pool" else engines[i])
            for i, layer in enumerate(ir.layers)]


def cycle_summary(ir: irmod.IR, masks: list[np.ndarray]) -> dict:
    """Exact per-image cycles from the recorded draws, against the model's mean and the bound;
    per engine of the hardware plan, cycles per sample from the draws of its IR layer, with
    every input kept with probability ``p``, and for a dense walk of every input (dense:
    groups × inputs; conv: positions × groups × window inputs)."""
    per_image = schedule.cycles_per_inference(ir, masks)
    latency = schedule.latency_cycles(ir, masks)
    stages = []
    for st in plan(ir):
        layer, m = st.layer, np.asarray(masks[st.index])
        stages.append({
            "layer": st.index, "label": f"{st.index} {layer.kind}{'+pool' if st.pool else ''}",
            "kind": layer.kind,
            "pool": st.pool is not None, "kept_mean": float(m.sum(axis=-1).mean()),
            "n_in": layer.n_in,
            "cycles_per_sample": float(st.cycles(m).mean()),
            "cycles_per_sample_model": float(st.cycles(np.full(layer.n_in, layer.p))),
            "dense_cycles_per_sample": layer.dense_walk(st),
        })
    return {
        "samples": ir.samples, "images": int(len(per_image)),
        "cycles_per_inference": per_image.tolist(),
        "mean": float(per_image.mean()), "min": int(per_image.min()), "max": int(per_image.max()),
        "latency_mean": float(latency.mean()),
        "model_mean": float(schedule.expected_cycles_per_inference(ir)),
        **{k.replace("_cycles", ""): v for k, v in schedule.bounds(ir).items()},
        "load_cycles": ir.input.size, "argmax_cycles": schedule.argmax_cycles(ir),
        "gated": plan(ir).popcount,
        "stages": stages,
    }


def early_exit_summary(ir: irmod.IR, res: golden.GoldenResult, labels: np.ndarray) -> dict:
    """The build's stopping rule on the test images (the golden run ``res`` at the IR's own
    ``T``, recorded: its scores at every boundary) and the standard sweep of rules
    (:data:`nsm_export.early_exit.DEFAULT_SWEEP`) from the same scores: per rule its mean
    samples used, accuracy, loss against all ``T`` samples and samples-used histogram; for the
    build's rule also the cycles per inference, exact from the draws, against all passes."""
    own = ee.ir_sweep(ir, res.partial, labels, [ir.early_exit])[0]
    full = schedule.cycles_per_inference(ir, res.masks)
    cut = schedule.cycles_per_inference(ir, res.masks, res.samples)
    own.update(cycles_per_inference=float(cut.mean()),
               cycles_per_inference_full=float(full.mean()),
               cycles_saved=int(full.sum() - cut.sum()))
    return {"samples": ir.samples, "boundaries": ee.boundaries(ir), "rule": own,
            "sweep": ee.ir_sweep(ir, res.partial, labels,       # a floor at T is no rule
                                 [r for r in ee.DEFAULT_SWEEP if r.min_samples < ir.samples])}


def _synth_reports(build_dir: Path, verilog: Path) -> dict:
    out = {}
    for path in sorted((build_dir / "synth").glob("*/report.json")):
        r = _load_json(path, SYNTH_TYPES)
        if "luts" not in r:
            continue
        r["stale"] = _stale(path, verilog)
        r["path"] = str(path)
        out[path.parent.name] = r
    return out


#: The environment variable that names another ``edge.json`` for the "Presets per FPGA part"
#: section (the default: ``benchmarks/results/edge.json`` of the repository beside ``nsm``).
EDGE_ENV = "NSM_EDGE_RESULTS"
#: What a record of ``benchmarks/results/edge.json`` (``benchmarks/edge.py``) must hold...
EDGE_TYPES = {"target": "string", "network": "string", "fits": "boolean or null",
              "rtl_accuracy": "number or null", "inferences_per_s": "number or null"}
#: ... and what it may hold, of these kinds.
EDGE_OPTIONAL = {"device": "string", "weight_bits": "integer or null",
                 "samples": "integer or null", "pass_samples": "integer or null",
                 "golden_accuracy": "number or null", "images": "integer or null",
                 "mismatches": "integer or null", "fmax_mhz": "number or null",
                 "cycles_per_inference": "number or null", "luts": "integer or null",
                 "dsps": "integer or null", "meets_goal": "boolean or null",
                 "routed": "boolean", "conv_weight_bits": "integer or null"}


def edge_results_path() -> Path:
    """Where the report looks for the presets' records: ``$NSM_EDGE_RESULTS`` where set, else
    ``benchmarks/results/edge.json`` of the repository the ``nsm`` package lies in."""
    import os

    import nsm
    env = os.environ.get(EDGE_ENV)
    if env:
        return Path(env)
    return Path(nsm.__file__).resolve().parents[1] / "benchmarks" / "results" / "edge.json"


def edge_goals(goal) -> list[tuple[float, float | None]]:
    """A record's ``goal`` as ``(accuracy, inferences/s or None)`` alternatives: one object
    (``accuracy``, ``inferences_per_s``), a list of them, or an object holding such a list
    (beside its ``text``); None: no goal. ValueError in one line for anything else."""
    if goal is None:
        return []
    if isinstance(goal, dict) and "accuracy" not in goal:
        lists = [v for v in goal.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise ValueError("goal holds no accuracy and no one list of alternatives")
        goal = lists[0]
    out = []
    for alt in goal if isinstance(goal, list) else [goal]:
        if not isinstance(alt, dict) or not _of_kind(alt.get("accuracy"), "number") \
                or not 0 <= alt["accuracy"] <= 1:
            raise ValueError(f"goal {str(alt)[:60]!r} has no accuracy in [0, 1]")
        rate = alt.get("inferences_per_s")
        if not _of_kind(rate, "number or null") or (rate is not None and rate <= 0):
            raise ValueError(f"goal {str(alt)[:60]!r}: inferences_per_s is not a positive "
                             f"number or null")
        out.append((float(alt["accuracy"]), None if rate is None else float(rate)))
    return out


def load_edge_records(path: Path) -> list[dict]:
    """The records of an ``edge.json`` (a JSON list of objects, one per preset and target),
    each checked for the fields the plot and table read; ReportError in one line otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"{path}: no such file (python benchmarks/edge.py writes it)")
    data = _read_json(path)
    if not isinstance(data, list):
        raise ReportError(f"{path}: not a JSON list of records")
    for i, r in enumerate(data):
        where = f"{path}: record {i}"
        if not isinstance(r, dict):
            raise ReportError(f"{where} is not a JSON object")
        for key, kind in {**EDGE_TYPES, **EDGE_OPTIONAL}.items():
            if key not in r and key in EDGE_TYPES:
                raise ReportError(f"{where} has no {key}")
            if key in r and not _of_kind(r[key], kind):
                raise ReportError(f"{where}: {key} = {str(r[key])[:60]!r} is not {kind}")
        if r["rtl_accuracy"] is not None and not 0 <= r["rtl_accuracy"] <= 1:
            raise ReportError(f"{where}: rtl_accuracy = {r['rtl_accuracy']!r} is not in [0, 1]")
        if r["inferences_per_s"] is not None and r["inferences_per_s"] <= 0:
            raise ReportError(f"{where}: inferences_per_s = {r['inferences_per_s']!r} is not "
                              f"positive")
        if not isinstance(r.get("early_exit", "none"), (str, dict)):
            raise ReportError(f"{where}: early_exit = {str(r['early_exit'])[:60]!r} is not a "
                              f"rule")
        try:
            edge_goals(r.get("goal"))
        except ValueError as e:
            raise ReportError(f"{where}: {e}") from None
    return data


def _edge_results() -> dict:
    """The presets' records for the report: ``path``, ``records`` (empty where there is no
    file) and ``error`` (the one line why a file there is not used; a bad or missing file is
    no error of the report, whose build it does not describe)."""
    path = edge_results_path()
    out = {"path": str(path), "records": [], "error": None, "this_build": []}
    if path.is_file():
        try:
            out["records"] = load_edge_records(path)
        except ReportError as e:
            out["error"] = str(e)
    return out


def _build_points(d: dict) -> list[dict]:
    """This build in the presets' plot, one point per synthesized target with an Fmax (fitting,
    not stale): the RTL accuracy of the co-simulation (else the golden model's at the IR's
    ``T``) at Fmax / the exact cycles per inference of the build's stopping rule."""
    acc, T = d["accuracy"], d["network"]["samples"]
    rtl = acc["rtl"]
    if rtl:
        accuracy, source = rtl["accuracy"], f"RTL, {rtl['images']:,} images"
    else:
        accuracy, source = acc["golden"][str(T)], f"golden model, {d['dataset']['images']:,} " \
                                                  f"images"
    cycles = d["early_exit"]["rule"]["cycles_per_inference"]
    rule = d["early_exit"]["rule"]["rule"]
    out = []
    for target, r in d["synth"].items():
        if not r.get("fmax_mhz") or not r.get("fits") or r["stale"] or not cycles:
            continue
        out.append({"target": target, "device": r.get("device", target),
                    "network": "-".join(d["network"]["shapes"][1:]), "samples": T,
                    "early_exit": rule, "dataset": d["dataset"]["name"],
                    "accuracy": accuracy, "accuracy_source": source,
                    "fmax_mhz": r["fmax_mhz"], "cycles_per_inference": cycles,
                    "inferences_per_s": r["fmax_mhz"] * 1e6 / cycles})
    return out


def collect(build_dir: Path, samples=DEFAULT_SAMPLES, dataset: str | None = None,
            split_seed: int | None = None, count: int = 1000, offset: int = 0,
            data_dir: Path | None = None, model: Path | None = None, seed: int = 0,
            progress: bool = True) -> dict:
    """Every number of the report, as plain JSON-ready data."""
    from nsm.flow import SIM_SUMMARY, _test_images, load_build, sha256_file

    build_dir = Path(build_dir)
    if build_dir.exists() and not build_dir.is_dir():
        raise ReportError(f"{build_dir}: not a directory")
    if not build_dir.is_dir():
        raise ReportError(f"{build_dir}: no such build directory (run `nsm compile MODEL.onnx "
                          f"-o {shlex.quote(str(build_dir))}` first)")
    ir = load_build(build_dir)
    verilog = build_dir / f"{ir.name}.v"
    sim_path = build_dir / SIM_SUMMARY
    sim = _load_json(sim_path, SIM_TYPES)
    # Every JSON input is read and checked before the golden and float runs.
    synth = _synth_reports(build_dir, verilog)
    demo = _load_json(build_dir / "summary.json", SIM_TYPES)
    edge = _edge_results()
    if sim is not None:
        # Another core's run (compiled over since) is stale: by the hash of the Verilog it
        # verified, or, for summaries from before that hash, by date.
        digest = sim.get("verilog_sha256")
        sim["stale"] = (digest != sha256_file(verilog) if digest is not None and verilog.is_file()
                        else _stale(sim_path, verilog))
        sim["path"] = str(sim_path)
    dataset = dataset or (sim or {}).get("dataset") or "digits"
    if split_seed is None:
        split_seed = int((sim or {}).get("split_seed") or 0)
    if data_dir is None and (sim or {}).get("data_dir"):
        data_dir = Path(sim["data_dir"])
    ts = sorted({int(t) for t in samples} | {ir.samples})
    if ts[0] < 1 or ts[-1] > irmod.MAX_SAMPLES:
        raise ReportError(f"samples {ts} must lie in [1, {irmod.MAX_SAMPLES}]")
    x, y = _test_images(dataset, split_seed, ir, count, offset, data_dir)
    model_path = find_model(build_dir, ir, model)
    if model_path is not None:
        _check_model_matches(model_path, ir)

    from tqdm import tqdm
    work = len(x) * (sum(ts) + (max(ts) if model_path else 0))
    t0 = time.perf_counter()
    with tqdm(total=work, desc="report: golden model and float model", unit="img·T",
              disable=not progress, unit_scale=True) as bar:
        gold, recorded = {}, None
        for t in ts:
            res = run_golden(ir_at_samples(ir, t), x, record=t == ir.samples, bar=bar)
            gold[t] = float((res.classes == y).mean())
            if t == ir.samples:
                recorded = res
        floats = _float_accuracy(model_path, x, y, ts, seed, bar) if model_path else None
    seconds = time.perf_counter() - t0

    data = {
        "build_dir": str(build_dir), "made": time.strftime("%Y-%m-%d %H:%M:%S"),
        "seconds": round(seconds, 2),
        "network": {"name": ir.name, "sizes": [ir.input.size] + [la.n_out for la in ir.layers],
                    "shapes": network_shapes(ir), "kinds": [la.kind for la in ir.layers],
                    "samples": ir.samples, "score_bits": ir.score_bits,
                    "input_encoding": ir.input.describe(), "pixel_bits": ir.input.pixel_bits,
                    "source": ir.source},
        "dataset": {"name": dataset, "split_seed": split_seed, "offset": offset,
                    "images": int(len(y)), "data_dir": str(data_dir) if data_dir else None},
        "accuracy": {
            "samples": ts, "golden": {str(t): gold[t] for t in ts},
            "float": {str(t): floats[t] for t in ts} if floats else None,
            "float_model": str(model_path) if model_path else None,
            "rtl": ({"samples": sim.get("samples"), "accuracy": sim.get("rtl_accuracy"),
                     "golden_accuracy": sim.get("golden_accuracy"), "images": sim.get("images"),
                     "dataset": sim.get("dataset")}
                    if sim and sim.get("rtl_accuracy") is not None and not sim["stale"]
                    and sim.get("images") else None),
            "demo_float": (demo or {}).get("float_accuracy"),
        },
        "resources": resource_rows(ir),
        "synth": synth,
        "cycles": cycle_summary(ir, recorded.masks),
        "lfsr": lfsr_statistics(ir, recorded.masks),
        "early_exit": early_exit_summary(ir, recorded, y),
        "sim": sim,
    }
    edge["this_build"] = _build_points(data)
    data["edge"] = edge
    return data


# ---------------------------------------------------------------------------------------------
# The document: sections of text, tables, figures and "not run" notes, rendered twice

@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Figure:
    name: str          # file stem: report-NAME.png
    png: bytes
    caption: str


@dataclass
class NotRun:
    what: str
    command: str


@dataclass
class Section:
    id: str
    title: str
    blocks: list = field(default_factory=list)


def _png(fig, fmt: str = "png") -> bytes:
    """The figure as PNG bytes; ``fmt="svg"``: as SVG, the same bytes on every run (fixed
    element ids, no date)."""
    import matplotlib
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.tight_layout()
    if fmt == "svg":
        with matplotlib.rc_context({"svg.hashsalt": "nsm"}):
            fig.savefig(buf, format="svg", metadata={"Date": None})
    else:
        fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _axes(width: float = 5.2, height: float = 3.4):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(width, height), dpi=110)
    ax.grid(True, alpha=0.3)
    return fig, ax


def accuracy_figure(series: dict, title: str = "", marks: dict | None = None,
                    compiled_t: int | None = None) -> bytes:
    """Accuracy (%) against Monte Carlo samples ``T`` as PNG bytes.

    ``series``: label -> (list of T, list of accuracy in [0, 1]), drawn as lines;
    ``marks``: label -> (T, accuracy), single points (the RTL); ``compiled_t``: a dotted line.
    """
    fig, ax = _axes()
    for (label, (ts, acc)), style in zip(series.items(), ("o-", "s--", "^-.", "d:")):
        ax.plot(ts, [100 * a for a in acc], style, label=label)
    for label, (t, a) in (marks or {}).items():
        ax.plot([t], [100 * a], "*", markersize=14, label=label)
    if compiled_t is not None:
        ax.axvline(compiled_t, color="gray", linestyle=":", label=f"compiled T = {compiled_t}")
    ax.set_xscale("log", base=2)
    ticks = sorted({t for ts, _ in series.values() for t in ts}
                   | {t for t, _ in (marks or {}).values()})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("Monte Carlo samples T")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return _png(fig)


def early_exit_figure(rules: list[dict], samples: int, title: str = "",
                      own: dict | None = None) -> bytes:
    """Accuracy (%) against mean samples used as PNG bytes, from
    :func:`nsm_export.early_exit.sweep`'s ``rules``: one curve per rule family (``margin`` at
    each ``min``, its fractions joined by mean samples), ``exact`` a point, all ``samples``
    samples a dotted line; ``own``: the build's rule, a star."""
    fig, ax = _axes()
    families: dict[str, list] = {}
    for r in rules:
        rule = r["early_exit"]
        if rule["rule"] == "none":
            continue
        name = rule["rule"] + (f", min {rule['min_samples']}" if rule["min_samples"] else "")
        families.setdefault(name, []).append(r)
    for name, rs in families.items():
        rs = sorted(rs, key=lambda r: r["mean_samples"])
        style = "D" if name.startswith("exact") else "o-"
        ax.plot([r["mean_samples"] for r in rs], [100 * r["accuracy"] for r in rs], style,
                label=name + (" (fractions)" if not name.startswith("exact") else ""))
    if rules:
        ax.axhline(100 * rules[0]["full_accuracy"], color="gray", linestyle=":",
                   label=f"all T = {samples} samples")
    if own is not None and own["early_exit"]["rule"] != "none":
        ax.plot([own["mean_samples"]], [100 * own["accuracy"]], "*", markersize=14,
                label=f"this build: {own['rule']}")
    ax.set_xlabel("mean samples used per image")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return _png(fig)


#: Colour and marker of each preset's part in the presets' plot; other targets take
#: :data:`_EDGE_OTHER` in turn.
EDGE_STYLE = {"ice40-up5k": ("#4c72b0", "o"), "ecp5-25k": ("#dd8452", "s"),
              "ecp5-85k": ("#55a868", "^")}
_EDGE_OTHER = (("#8172b3", "D"), ("#937860", "v"), ("#da8bc3", "P"), ("#8c8c8c", "X"))


def _edge_targets(records: list[dict], builds: list[dict]) -> dict[str, tuple[str, str]]:
    """Every target of ``records`` and ``builds``, known parts first: its colour and marker."""
    seen = {r["target"] for r in [*records, *builds]}
    order = [t for t in EDGE_STYLE if t in seen] + sorted(seen - set(EDGE_STYLE))
    extra = iter(_EDGE_OTHER * len(order))
    return {t: EDGE_STYLE[t] if t in EDGE_STYLE else next(extra) for t in order}


def _rule_text(rule) -> str:
    """A record's ``early_exit`` as the report prints it; "" for none."""
    if isinstance(rule, dict):
        try:
            rule = ee.rule_label(ee.EarlyExit.record(rule))
        except (TypeError, ValueError):
            rule = json.dumps(rule)
    return "" if rule in (None, "none") else str(rule)


def _edge_label(r: dict) -> str:
    """``8c5s-p2-256-10, T 16, margin 0.1``: a point's network (short), T and rule."""
    parts = [str(r.get("network", "")).split(" (")[0]]
    if r.get("samples"):
        parts.append(f"T {r['samples']}")
    return ", ".join(parts + ([_rule_text(r.get("early_exit"))]
                              if _rule_text(r.get("early_exit")) else []))


def edge_plotted(records: list[dict]) -> list[dict]:
    """The records the presets' plot draws: fitting, with an RTL accuracy and a rate."""
    return [r for r in records if r["fits"] and r.get("inferences_per_s")
            and r.get("rtl_accuracy") is not None]


def edge_figure(records: list[dict], builds: list[dict] = (), title: str = "",
                fmt: str = "png") -> bytes:
    """RTL accuracy (%) against inferences/s (log) of the presets' records
    (:func:`load_edge_records`), as PNG bytes (``fmt="svg"``: SVG).

    One colour and marker per target, each point labelled with its network, ``T`` and
    early-exit rule; each target's goals in its colour: accuracy at least ``a`` at ``r``
    inferences/s or more, the quadrant beyond dashed corner lines; a goal without a rate, a
    dashed line. Records that do not fit or have no rate or accuracy are left out (the table
    lists them). ``builds``: highlighted stars, each ``accuracy``, ``inferences_per_s`` and
    ``target`` (its colour), with an optional ``label``."""
    fig, ax = _axes(6.4, 4.4)
    points = edge_plotted(records)
    styles = _edge_targets(records, list(builds))
    goals = {}
    for r in records:
        goals.setdefault(r["target"], [])
        for g in edge_goals(r.get("goal")):
            if g not in goals[r["target"]]:
                goals[r["target"]].append(g)
    rates = [r["inferences_per_s"] for r in points] + [b["inferences_per_s"] for b in builds] \
        + [g[1] for gs in goals.values() for g in gs if g[1]]
    accs = [100 * r["rtl_accuracy"] for r in points] + [100 * b["accuracy"] for b in builds] \
        + [100 * g[0] for gs in goals.values() for g in gs]
    x0, x1 = (min(rates) / 3, max(rates) * 3) if rates else (1.0, 1e4)
    y0, y1 = (max(0.0, math.floor(min(accs)) - 2), min(100.0, math.ceil(max(accs)) + 2)) \
        if accs else (0.0, 100.0)
    ranks = {id(r): k for k, r in enumerate(sorted(points, key=lambda r: r["inferences_per_s"]))}

    def label(text, x, accuracy, dy, **kw):       # right of a point, left in the right part
        left = math.log(x / x0) > 0.6 * math.log(x1 / x0)
        ax.annotate(text, (x, 100 * accuracy), xytext=(-7 if left else 7, dy),
                    textcoords="offset points", ha="right" if left else "left", **kw)

    for target, (colour, marker) in styles.items():
        mine = [r for r in points if r["target"] == target]
        device = next((r.get("device") for r in [*records, *builds]
                       if r["target"] == target and r.get("device")), None)
        ax.plot([r["inferences_per_s"] for r in mine], [100 * r["rtl_accuracy"] for r in mine],
                linestyle="none", marker=marker, color=colour, markersize=7,
                label=f"{device} ({target})" if device else target)
        for r in mine:          # neighbours by rate alternately above and below
            label(_edge_label(r), r["inferences_per_s"], r["rtl_accuracy"],
                  4 if ranks[id(r)] % 2 == 0 else -11, fontsize=6.5)
        for a, rate in goals.get(target, []):
            if rate is None:
                ax.axhline(100 * a, color=colour, linestyle="--", linewidth=1)
                continue
            ax.fill_between([rate, x1], 100 * a, y1, color=colour, alpha=0.08, linewidth=0)
            ax.plot([rate, rate, x1], [y1, 100 * a, 100 * a], color=colour, linestyle="--",
                    linewidth=1)
    for b in builds:
        colour = styles[b["target"]][0] if b.get("target") in styles else "k"
        ax.plot([b["inferences_per_s"]], [100 * b["accuracy"]], "*", markersize=17,
                color=colour, markeredgecolor="k", zorder=5,
                label=b.get("label") or f"this build ({b.get('target', '')})")
        label("this build", b["inferences_per_s"], b["accuracy"], -12, fontsize=7,
              fontweight="bold")
    if not points and not builds:
        ax.text(0.5, 0.5, "no preset records", transform=ax.transAxes, ha="center",
                va="center", color="gray")
    ax.set_xscale("log")
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xlabel("inferences/s (Fmax / cycles per inference)")
    ax.set_ylabel("RTL test accuracy (%)")
    ax.set_title(title, fontsize=9)
    if styles or builds:
        ax.legend(fontsize=7, loc="lower left")
    return _png(fig, fmt)


def _goal_text(goals: list[tuple[float, float | None]]) -> str:
    return ", or ".join(f"≥ {100 * a:.1f} %" + (f" at ≥ {r:,.0f} inferences/s" if r else
                                                " at any rate") for a, r in goals)


def edge_goal_text(goal) -> str:
    """A record's ``goal`` (see :func:`edge_goals`) in words."""
    return _goal_text(edge_goals(goal))


def edge_bits_text(record) -> str:
    """A record's weight widths: ``2``, or ``2 (convs 3)`` where the conv layers differ."""
    convs = record.get("conv_weight_bits")
    return _n(record.get("weight_bits")) + (f" (convs {convs})" if convs else "")


def edge_goal_met(goal, accuracy, rate) -> bool | None:
    """Whether (accuracy, inferences/s) meets one of ``goal``'s alternatives (a rate of None
    meets only a goal at any rate); None while the accuracy is unmeasured."""
    if accuracy is None:
        return None
    return any(accuracy >= a and (r is None or (rate is not None and rate >= r))
               for a, r in edge_goals(goal))


def _ram_text(ram) -> str:
    if isinstance(ram, dict):
        names = {"bram": "EBR", "spram": "SPRAM"}
        return " + ".join(f"{v} {names.get(k, k)}" for k, v in ram.items()) or "0"
    return _n(ram)


def _fmax_text(r: dict) -> str:
    """An edge record's Fmax; nextpnr's estimate after placement is marked as such."""
    if not r.get("fmax_mhz"):
        return "—"
    return f"{r['fmax_mhz']:.1f} MHz" + (" (placed, not routed)" if r.get("routed") is False
                                         else "")


def edge_table(records: list[dict]) -> tuple[Table, list[str]]:
    """The presets' records as a table, every record (those the plot leaves out too), by
    target; and a line per target naming its goal."""
    order = list(_edge_targets(records, []))
    rows, lines = [], {}
    for r in sorted(records, key=lambda r: order.index(r["target"])):
        T = _n(r.get("samples"))
        if r.get("pass_samples") and r.get("pass_samples") != r.get("samples"):
            T += f" (T' {r['pass_samples']})"
        fits = r["fits"]
        rate = (f"{r['inferences_per_s']:,.0f}" if r.get("inferences_per_s") else "—") if fits \
            else "not synthesized" if fits is None else "does not fit"
        met = {True: "yes", False: "no"}.get(r.get("meets_goal"), "—")
        rows.append([f"`{r['target']}`", str(r["network"]), edge_bits_text(r), T,
                     _rule_text(r.get("early_exit")) or "none", _pct(r["rtl_accuracy"]),
                     _n(r.get("images")), _n(r.get("mismatches")),
                     _fmax_text(r), rate,
                     _n(r.get("luts")), _ram_text(r.get("ram")), _n(r.get("dsps")), met])
        g = r.get("goal")
        text = g.get("text") if isinstance(g, dict) and g.get("text") else \
            _goal_text(edge_goals(g))
        if text:
            lines.setdefault(r["target"], f"`{r['target']}`"
                             + (f" ({r['device']})" if r.get("device") else "")
                             + f" goal: {text}.")
    return Table(["target", "network", "bits", "T", "rule", "RTL accuracy", "images",
                  "mismatches", "Fmax", "inferences/s", "LUTs", "RAM", "DSPs", "goal met?"],
                 rows), list(lines.values())


def histogram_text(hist: dict, bins: int = 8) -> str:
    """``16:12 32:30 64:200``: images by samples used, in at most ``bins`` groups
    (``1-8:40`` for a range)."""
    items = [(int(k), v) for k, v in hist.items()]
    size = -(-len(items) // bins) if items else 1
    parts = []
    for i in range(0, len(items), size):
        group = items[i:i + size]
        lo, hi = group[0][0], group[-1][0]
        parts.append(f"{lo if lo == hi else f'{lo}-{hi}'}:{sum(v for _, v in group)}")
    return " ".join(parts)


def _cycles_figure(c: dict, measured: float | None) -> bytes:
    fig, ax = _axes()
    ax.hist(c["cycles_per_inference"], bins=min(40, max(5, c["images"] // 5)), color="#4c72b0",
            alpha=0.8, label=f"exact, per image ({c['images']} images)")
    ax.axvline(c["model_mean"], color="k", linestyle="--",
               label=f"cycle model mean {c['model_mean']:,.0f}")
    ax.axvline(c["adder_bound"], color="#c44e52", linestyle="-",
               label=f"adder bound {c['adder_bound']:,.0f}")
    if measured is not None:
        ax.axvline(measured, color="#55a868", linestyle=":", linewidth=2,
                   label=f"RTL measured mean {measured:,.0f}")
    ax.set_xlabel("cycles per inference (back to back)")
    ax.set_ylabel("images")
    ax.legend(fontsize=7)
    return _png(fig)


def _lfsr_figures(rows: list[dict]) -> tuple[bytes, bytes]:
    samp = [r for r in rows if r["sampling"]]
    fig, ax = _axes()
    xs = np.arange(len(samp))
    ax.bar(xs - 0.2, [r["p"] for r in samp], 0.4, label="quantized p = p_num / 2^p_bits",
           color="#999999")
    ax.bar(xs + 0.2, [r["frequency"] for r in samp], 0.4,
           yerr=[3 * r["sigma"] for r in samp], capsize=4, label="keep frequency (±3σ)",
           color="#4c72b0")
    ax.set_xticks(xs, [f"layer {r['layer']}" for r in samp])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("probability")
    ax.legend(fontsize=8)
    freq_png = _png(fig)
    fig, ax = _axes()
    lags = np.arange(1, MAX_LAG + 1)
    for r in samp:
        ax.plot(lags, r["autocorr"], "o-", markersize=3, label=f"layer {r['layer']}")
    band = 3 / np.sqrt(min(r["autocorr_draws"] for r in samp))
    ax.axhspan(-band, band, color="gray", alpha=0.2, label="±3/√n")
    ax.axhline(0, color="k", linewidth=0.5)
    ax.set_xlabel("lag (draws)")
    ax.set_ylabel("autocorrelation of keep bits")
    ax.legend(fontsize=8)
    return freq_png, _png(fig)


def _utilization_figure(synth: dict) -> bytes:
    keys = [("luts", "LUT4"), ("ffs", "FF"), ("bram", "EBR"), ("spram", "SPRAM"),
            ("dsps", "DSP"), ("io", "IO")]
    fig, ax = _axes(5.6, 3.2)
    width = 0.8 / max(1, len(synth))
    xs = np.arange(len(keys))
    for k, (target, r) in enumerate(synth.items()):
        vals = [100 * r[key]["used"] / r[key]["available"] if r[key]["available"] else 0
                for key, _ in keys]
        ax.bar(xs + (k - (len(synth) - 1) / 2) * width, vals, width, label=target)
    ax.axhline(100, color="#c44e52", linewidth=1)
    ax.set_xticks(xs, [name for _, name in keys])
    ax.set_ylabel("% of the device")
    ax.legend(fontsize=8)
    return _png(fig)


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.2f} %"


def _n(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float) and v != int(v):
        return f"{v:,.1f}"
    return f"{int(v):,}"


def _resource_cells(r: dict) -> list[str]:
    """One row of the resource table (dense, conv or pooling layer)."""
    if r["kind"] == "pool":
        return [str(r["layer"]), f"{r['mode'].upper()} pool {r['size']}×{r['size']}",
                f"{_shape(r['in_shape'])} → {_shape(r['out_shape'])}", *["—"] * 4, "0",
                f"0 (computed by the conv engine before it, layer {r['engine']})", "—", "—"]
    mems = r["memories"]
    w, o = mems["weights"], mems["thresholds"]
    store = "RAM, loaded at start-up" if r["weight_store"] == "ram" else "ROM"
    copies = f"{w['copies']} × " if w.get("copies", 1) > 1 else ""
    parts = [f"weights {copies}{w['width']}×{w['depth']} {store}",
             f"thresholds {o['width']}×{o['depth']}"]
    for name, m in mems.items():          # the popcount engine's keep-bit and spike stores
        if name not in ("weights", "thresholds", "map", "mask"):
            copies = f"{m['copies']} × " if m.get("copies", 1) > 1 else ""
            parts.append(f"{name} {copies}{m['width']}×{m['depth']}")
    if r["kind"] == "conv2d":
        if "map" in mems:                 # the kept-list engine's input map and mask
            m = mems["map"]
            parts.append(f"input map {m['width']}×{m['depth']}"
                         + (" (double-buffered)" if r["double_buffered"] else ""))
        if "mask" in mems:
            parts.append(f"mask {mems['mask']['width']}×{mems['mask']['depth']}")
        kind = f"conv2d {r['kernel']}×{r['kernel']}, stride {r['stride']}, pad {r['padding']}"
        sizes = f"{_shape(r['in_shape'])} → {_shape(r['out_shape'])}"
        n = r["channel_lanes"]
        if r.get("pass_samples"):
            fold = f"{r['pe']} × {r['groups']}, simd {r['simd']}, T' {r['pass_samples']}"
        else:
            fold = f"{r['pe']} × {r['groups']}, {n} channel{'s' if n > 1 else ''} / clock"
    else:
        kind, sizes = r["kind"], f"{r['n_in']:,} → {r['n_out']:,}"
        fold = f"{r['pe']} × {r['groups']}" + (f", simd {r['simd']}" if r.get("simd", 1) > 1
                                               else "") \
            + (f", T' {r['pass_samples']}" if r.get("pass_samples") else "")
    return [str(r["layer"]), kind, sizes, str(r["weight_bits"]),
            f"{r['p_num']}/2^{r['p_bits']} = {r['p']:.4g}", fold,
            str(r["draw_lanes"]) if r["lfsr_width"] else "—", f"{r['weight_bits_total']:,}",
            f"{r['memory_bits']:,} ({', '.join(parts)})", f"{r['acc_bits']} / {r['offset_bits']}",
            str(r["lfsr_width"] or "—")]


def build_document(d: dict, command: str) -> tuple[str, list[Section]]:
    """The report's sections from :func:`collect`'s data; ``command`` reproduces it."""
    b = d["build_dir"]
    net = d["network"]
    ds = d["dataset"]
    acc = d["accuracy"]
    T = net["samples"]
    shapes = net["shapes"]
    title = f"NSM report: {net['name']} ({'-'.join(shapes)}, T = {T})"
    sim = d["sim"]
    sim_cmd = shlex.join(["nsm", "sim", b, "--dataset", ds["name"], "--count", "100"])
    sections = []

    # -- overview
    src = net["source"] or {}
    sec = Section("overview", "Overview")
    sec.blocks.append(Table(["", ""], [
        ["network", f"`{'-'.join(shapes)}` ({len(net['kinds'])} layers"
                    + (f": {', '.join(net['kinds'])})" if set(net["kinds"]) != {"dense"}
                       else ")")],
        ["compiled from", f"`{src.get('onnx', 'unknown')}`"],
        ["Monte Carlo samples T", str(T)],
        ["input", f"{net['sizes'][0]} pixels of {net['pixel_bits']} bits; "
                  f"{net['input_encoding']}"],
        ["class scores", f"{net['sizes'][-1]} × {net['score_bits']}-bit signed"],
        ["test images", f"{ds['images']:,} of `{ds['name']}` (split seed {ds['split_seed']}, "
                        f"from image {ds['offset']})"],
        ["made", f"{d['made']} by `{command}` ({d['seconds']:.1f} s of model runs)"],
    ]))
    sections.append(sec)

    # -- accuracy
    sec = Section("accuracy", "Accuracy against samples T")
    ts = acc["samples"]
    series = {"golden model (integer IR)": (ts, [acc["golden"][str(t)] for t in ts])}
    if acc["float"]:
        series[f"float ({Path(acc['float_model']).name})"] = (
            ts, [acc["float"][str(t)] for t in ts])
    marks = {}
    rtl = acc["rtl"]
    if rtl:
        marks[f"RTL ({rtl['images']} images; golden on the same: "
              f"{_pct(rtl['golden_accuracy'])})"] = (rtl["samples"], rtl["accuracy"])
    sec.blocks.append(Figure("accuracy", accuracy_figure(
        series, f"{ds['name']}: {ds['images']} test images", marks, compiled_t=T),
        "Test accuracy against the number of Monte Carlo samples T. Golden model: the IR "
        "recompiled for each T and run from reset; float: the model's own sampling; RTL: the "
        "co-simulated core at its compiled T."))
    header = ["T", "golden model", "float model", "RTL"]
    rows = []
    for t in ts:
        r_rtl = (f"{_pct(rtl['accuracy'])} ({rtl['images']} images; golden on the same: "
                 f"{_pct(rtl['golden_accuracy'])})" if rtl and rtl["samples"] == t else "")
        rows.append([f"**{t}**" if t == T else str(t), _pct(acc["golden"][str(t)]),
                     _pct(acc["float"][str(t)]) if acc["float"] else "not run", r_rtl])
    sec.blocks.append(Table(header, rows))
    if not acc["float"]:
        sec.blocks.append(NotRun("float model: no ONNX file or checkpoint found beside the "
                                 "build", shlex.join(["nsm", "report", b, "--model",
                                                      "model.onnx"])))
    if not rtl:
        sec.blocks.append(NotRun("RTL accuracy: no co-simulation in this build", sim_cmd))
    sections.append(sec)

    # -- early exit
    sections.append(_early_exit_section(d["early_exit"], ds, b))

    # -- resources
    sec = Section("resources", "Resources")
    rows = []
    for r in d["resources"]:
        rows.append(_resource_cells(r))
    tot = d["resources"]
    rows.append(["all", "", f"{sum(r['weights'] for r in tot):,} weights", "", "",
                 f"{sum(r['pe'] for r in tot)} lanes", "",
                 f"{sum(r['weight_bits_total'] for r in tot):,}",
                 f"{sum(r['memory_bits'] for r in tot):,}", "", ""])
    sec.blocks.append(Table(["layer", "kind", "inputs → outputs", "weight bits", "keep p",
                             "pe × groups", "draws / clock", "weight bits (net)",
                             "memory bits (width×depth)", "acc / threshold bits", "LFSR bits"],
                            rows))
    sec.blocks.append("pe × groups is the folding: `pe` adder lanes work on one group of "
                      "neurons (conv: filters) at a time, `simd` kept inputs a cycle (1 where "
                      "not shown); draws / clock is how many blank-out "
                      "bits a sampling layer draws per cycle. Memory bits count the weight "
                      "memory (one `pe`-lane word per group and input, `simd` copies; for a "
                      "conv layer per "
                      "group and window input `c_in·k²`: in the bitstream as ROM, or RAM loaded "
                      "through `w_axis` at start-up) and the threshold ROM, padding lanes "
                      "included; for a conv layer also its input map (one `c_in`-bit word per "
                      "pixel, two halves when a conv engine writes it) and its mask memory of "
                      "the same shape; a dense layer's small kept-input and spike buffers are "
                      "not counted. A pooling layer has no memory: the conv engine before it "
                      "computes it.")
    synth = d["synth"]
    if synth:
        rows = []
        for target, r in synth.items():
            def frac(k):
                v = r.get(k) or {}
                return f"{v.get('used', 0):,} / {v.get('available', 0):,}" if v else "—"
            fmax = "—" if r.get("fmax_mhz") is None else (
                f"{r['fmax_mhz']:.1f} MHz ({'meets' if r['meets_timing'] else 'misses'} "
                f"{r['constraint_mhz']:g}" + ("; placed, not routed" if r.get("routed") is False
                                              else "") + ")")
            note = " (stale: older than the Verilog)" if r["stale"] else ""
            if r.get("board"):
                note = " (board top: the core behind a UART)" + note
            rows.append([f"`{target}`{note}", r.get("device", ""), frac("luts"), frac("ffs"),
                         frac("logic_cells"), frac("bram"), frac("spram"), frac("dsps"),
                         frac("io"), fmax, "yes" if r.get("fits") else "no",
                         f"`{Path(r['bitstream']).name}`" if r.get("bitstream") else "—"])
        sec.blocks.append(Table(["target", "device", "LUT4", "FF", "logic cells", "EBR",
                                 "SPRAM", "DSP", "IO", "Fmax", "fits", "bitstream"], rows))
        sec.blocks.append(Figure("utilization", _utilization_figure(synth),
                                 "Share of each device resource the core uses, per target "
                                 "(the red line is the whole device)."))
    else:
        sec.blocks.append(NotRun("synthesis: no report in this build",
                                 shlex.join(["nsm", "synth", b, "--target",
                                             "ice40-up5k"])))
    sections.append(sec)

    # -- cycles
    c = d["cycles"]
    sec = Section("cycles", "Cycles and throughput")
    measured = sim.get("cycles_per_inference") if sim else None
    sec.blocks.append(Figure("cycles", _cycles_figure(c, measured),
                             f"Cycles per inference of every test image at T = {T}, exact "
                             "from the golden model's draws ("
                             + ("the popcount core gates blanked-out inputs: every image "
                                "takes the same cycles" if c.get("gated") else
                                "blanked-out inputs cost no cycles")
                             + "), against the cycle model's mean and the adder bound."))
    rows = [["exact from the golden model's draws",
             f"{_n(c['mean'])} (min {c['min']:,}, max {c['max']:,})"],
            ["cycle model, mean over the draws", _n(c["model_mean"])],
            ["RTL measured (co-simulation)", _n(measured) if measured is not None
             else "not run"],
            ["adder bound (the slowest engine's additions / its adds a clock)",
             _n(c["adder_bound"])],
            ["weight-bandwidth bound (the slowest engine's weight words read / 1 a clock)",
             _n(c["weight_bound"])],
            ["exact mean / adder bound, / weight-bandwidth bound",
             f"{c['mean'] / c['adder_bound']:.3f}, {c['mean'] / c['weight_bound']:.3f}"],
            ["of which: pixel load, argmax", f"{c['load_cycles']:,}, {c['argmax_cycles']:,}"]]
    sec.blocks.append(Table(["cycles per inference", "value"], rows))
    rows = []
    for r in c["stages"]:
        rows.append([r["label"], f"{r['kept_mean']:.1f} of {r['n_in']:,}",
                     _n(r["cycles_per_sample"]), _n(r["cycles_per_sample_model"]),
                     f"{r['dense_cycles_per_sample']:,}"])
    sec.blocks.append(Table(["engine (IR layer)", "inputs kept (mean)",
                             "cycles / sample (exact mean)", "cycles / sample (model)",
                             "dense walk (groups × inputs)"], rows))
    if any(r["kind"] == "conv2d" for r in c["stages"]):
        sec.blocks.append("One row per hardware engine; a conv engine also computes the "
                          "pooling layer after it (`+pool`). The model keeps every input with "
                          "probability p; a conv engine's dense walk is positions × groups × "
                          "window inputs (`c_in·k²`), over the positions some pooling window "
                          "covers.")
    from hw.board import BOARDS
    boards = {}                          # one row per board clock: iCEBreaker, ULX3S
    for b in BOARDS.values():
        boards.setdefault(b.model.split()[0], b.clock_mhz)
    clocks = [(f"{name} board clock", f) for name, f in boards.items()]
    for target, r in synth.items():
        if r.get("fmax_mhz"):
            clocks.append((f"`{target}` Fmax", r["fmax_mhz"]))
    rows = [[name, f"{f:g} MHz", f"{f * 1e6 / c['mean']:,.0f}",
             f"{c['latency_mean'] / f:,.1f} µs"] for name, f in clocks]
    sec.blocks.append(Table(["clock", "frequency", "inferences / s (back to back)",
                             "latency after the last pixel"], rows))
    wire = c["load_cycles"] * 10 / UART_BAUD          # one 8N1 byte per pixel
    compute = {name: (c["mean"] - c["load_cycles"]) / (f * 1e6) for name, f in boards.items()}
    rates = {name: f"{1 / max(wire, t):,.0f}" for name, t in compute.items()}
    rate = (f"either board classifies about {next(iter(rates.values()))}"
            if len(set(rates.values())) == 1 else
            " and ".join(f"the {name} classifies about {r}" for name, r in rates.items()))
    sec.blocks.append(f"On the board tops (`nsm synth --bitstream`) the pixels arrive over a "
                      f"{UART_BAUD:,}-baud UART: {1e3 * wire:,.2f} ms per image on the wire "
                      f"against " + " or ".join(
                          f"{1e3 * t:,.2f} ms of compute at the {name}'s {boards[name]:g} MHz"
                          for name, t in compute.items())
                      + f", so {rate} images per second (the pixel FIFO overlaps the next "
                        f"image's transfer with this one's compute).")
    sections.append(sec)

    # -- LFSR statistics
    sec = Section("lfsr", "LFSR statistics")
    samp = [r for r in d["lfsr"] if r["sampling"]]
    if samp:
        freq_png, ac_png = _lfsr_figures(d["lfsr"])
        rows = []
        for r in d["lfsr"]:
            if not r["sampling"]:
                rows.append([str(r["layer"]), "p = 1: no LFSR", "", "", "", "", "", ""])
                continue
            rows.append([str(r["layer"]), f"{r['lfsr_width']} bits, leap {r['leap']}",
                         f"{r['draws']:,}", f"{r['p']:.6f}", f"{r['p_realized']:.10f}",
                         f"{r['frequency']:.6f}",
                         f"{r['z']:+.2f}", f"{r['lag1']:+.5f}",
                         f"{max(abs(a) for a in r['autocorr']):.5f}",
                         f"{r.get('max_cross_corr', 0):.5f}"])
        sec.blocks.append(Table(["layer", "LFSR", "draws", "quantized p",
                                 "realized p (one period)", "keep frequency",
                                 "z (binomial σ)", "lag-1 autocorr.",
                                 f"max |autocorr.| lags 1–{MAX_LAG}",
                                 "max |corr.| with other layers"],
                                [r + [""] * (10 - len(r)) for r in rows]))
        sec.blocks.append(f"Every keep bit the golden model drew for the test images at "
                          f"T = {T}, in the order the hardware draws them (image, sample, "
                          f"input). The realized p is what one whole period of the LFSR keeps, "
                          f"exactly (the IR's `p_realized`; docs/architecture.md); z measures "
                          f"the drawn frequency against it. A fair stream keeps |z| below "
                          f"about 3 and its "
                          f"autocorrelations within ±3/√n (n = draws used, at most "
                          f"{AUTOCORR_DRAWS:,} per stream).")
        sec.blocks.append(Figure("lfsr-frequency", freq_png,
                                 "Keep-bit frequency of each sampling layer against its "
                                 "quantized keep probability."))
        sec.blocks.append(Figure("lfsr-autocorr", ac_png,
                                 "Autocorrelation of each layer's keep-bit stream by lag."))
    else:
        sec.blocks.append("No layer samples (p = 1 everywhere): the core draws no random bits.")
    sections.append(sec)

    # -- verification
    sec = Section("verification", "Verification")
    if sim:
        ok = sim.get("mismatches") == 0
        verdict = ("**stale**: this run verified another core (compiled over since); run "
                   "`nsm sim` again" if sim.get("stale")
                   else "**nothing compared**: the summary holds no images" if not sim.get("images")
                   else "**bit-exact**: every score and class equal" if ok
                   else f"**{sim.get('mismatches')} mismatching images**")
        rows = [["verdict", verdict],
                ["simulator", str(sim.get("simulator"))],
                ["images compared", f"{sim.get('images', 0):,} of `{sim.get('dataset')}` "
                                    f"(from image {sim.get('offset', 0)})"],
                ["hidden spike vectors compared", "yes" if sim.get("spikes_compared") else "no"],
                ["cycle model exact (every image)", "yes" if sim.get("cycle_model_exact")
                 else "no"],
                ["latency: measured / model", f"{_n(sim.get('latency_cycles'))} / "
                                              f"{_n(sim.get('latency_cycles_model'))}"],
                ["cycles per inference: measured / model",
                 f"{_n(sim.get('cycles_per_inference'))} / "
                 f"{_n(sim.get('cycles_per_inference_model'))}"],
                ["golden / RTL accuracy", f"{_pct(sim.get('golden_accuracy'))} / "
                                          f"{_pct(sim.get('rtl_accuracy'))}"],
                ["simulation time", f"{sim.get('sim_seconds', 0):.1f} s"]]
        if sim.get("first_mismatch"):
            rows.append(["first mismatch", f"`{json.dumps(sim['first_mismatch'])}`"])
        if sim.get("stale"):
            rows.append(["note", "stale: the co-simulation is older than the Verilog"])
        sec.blocks.append(Table(["", ""], rows))
    else:
        sec.blocks.append(NotRun("co-simulation: no `sim/summary.json` in this build", sim_cmd))
    sections.append(sec)
    sections.append(_edge_section(d["edge"], ds))
    return title, sections


def _early_exit_section(e: dict, ds: dict, b: str) -> Section:
    sec = Section("earlyexit", "Early exit")
    own, T = e["rule"], e["samples"]
    tp = e["boundaries"][0] if len(e["boundaries"]) > 1 else T
    active = own["early_exit"]["rule"] != "none"
    rows = [["rule", f"`{own['rule']}`" + ("" if active else " (every image runs all T samples)")],
            ["checked", f"after every {tp} samples ({len(e['boundaries'])} boundaries up to "
                        f"T = {T})"],
            ["mean samples used", f"{own['mean_samples']:.2f} of {T}"],
            ["accuracy / with all T samples", f"{_pct(own['accuracy'])} / "
                                              f"{_pct(own['full_accuracy'])}"],
            ["cycles per inference / with all T samples",
             f"{_n(own['cycles_per_inference'])} / {_n(own['cycles_per_inference_full'])}"],
            ["samples used (samples: images)", histogram_text(own["samples_histogram"], 16)]]
    sec.blocks.append(Table(["this build", ""], rows))
    sec.blocks.append(Figure("early-exit", early_exit_figure(
        e["sweep"], T, f"{ds['name']}: {ds['images']} test images, T = {T}", own),
        "Test accuracy against the mean samples an image uses, for stopping rules applied to "
        "the golden model's scores at each boundary (one run of all T samples: every rule's "
        "outcome follows from it). A margin rule stops once the leader leads every class by "
        "that fraction of what the remaining samples could still move; exact only when "
        "nothing can change the class."))
    rows = [[f"`{r['rule']}`", f"{r['mean_samples']:.2f}", _pct(r["accuracy"]),
             f"{100 * r['loss']:+.2f} pt", histogram_text(r["samples_histogram"])]
            for r in e["sweep"]]
    sec.blocks.append(Table(["rule", "mean samples", "accuracy", "loss vs all T",
                             "samples used (samples: images)"], rows))
    if not active:
        sec.blocks.append(f"This build has no rule: compile with `--early-exit RULE` "
                          f"(`nsm compile MODEL.onnx -o {b} --early-exit margin:0.1`) to stop "
                          f"images early in the core.")
    return sec


def _edge_section(e: dict, ds: dict) -> Section:
    """The presets' records (``benchmarks/results/edge.json``) as a plot and a table, with this
    build's own points where it has an Fmax."""
    sec = Section("edge", "Presets per FPGA part")
    records, builds = e["records"], e["this_build"]
    if e["error"]:
        sec.blocks.append(f"No preset records shown: {e['error']}.")
    elif not records:
        sec.blocks.append(f"No preset records found (`{e['path']}`: `python benchmarks/edge.py` "
                          f"writes it, `{EDGE_ENV}` names another file).")
    for b in builds:
        sec.blocks.append(f"This build on `{b['target']}`: {_pct(b['accuracy'])} "
                          f"({b['accuracy_source']} of `{b['dataset']}`) at "
                          f"{b['inferences_per_s']:,.0f} inferences/s ({b['fmax_mhz']:.1f} MHz "
                          f"Fmax / {_n(b['cycles_per_inference'])} cycles per inference, exact "
                          f"from the golden model's draws"
                          + (f" with its rule `{b['early_exit']}`" if b["early_exit"] != "none"
                             else "") + ").")
    if not builds:
        sec.blocks.append("This build has no point in the plot: it needs a synthesis report with "
                          "an Fmax (`nsm synth`).")
    if edge_plotted(records) or builds:
        labelled = [dict(b, label=f"this build ({b['target']}, {b['dataset']})") for b in builds]
        sec.blocks.append(Figure("edge", edge_figure(records, labelled),
                                 "RTL test accuracy against inferences/s (Fmax after placement "
                                 "/ cycles per inference) of the trained presets, one colour per "
                                 "FPGA part; each part's goal in its colour (the shaded corner: "
                                 "at least that accuracy at that rate or more; a dashed line "
                                 "alone: an accuracy at any rate)."
                                 + (f" The star is this build, on its own test images "
                                    f"(`{ds['name']}`)." if builds else "")))
    if records:
        table, goals = edge_table(records)
        sec.blocks.append(table)
        sec.blocks += goals
        sec.blocks.append(f"From `{e['path']}`; a record that does not fit its part or has no "
                          f"rate is listed here but not plotted.")
    return sec


# ---------------------------------------------------------------------------------------------
# Rendering

_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*([^*]+)\*\*")


def _inline_html(text: str) -> str:
    out = html.escape(text, quote=False)
    out = _CODE.sub(lambda m: f"<code>{m.group(1)}</code>", out)
    return _BOLD.sub(lambda m: f"<strong>{m.group(1)}</strong>", out)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(table: Table) -> str:
    """A :class:`Table` as a markdown table (no blank line after it)."""
    out = ["| " + " | ".join(_md_cell(h) for h in table.header) + " |",
           "|" + "---|" * len(table.header)]
    out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    return "\n".join(out)


def render_markdown(title: str, sections: list[Section]) -> str:
    out = [f"# {title}", ""]
    out.append(" · ".join(f"[{s.title}](#{s.id})" for s in sections))
    out.append("")
    for s in sections:
        out += [f"<a id=\"{s.id}\"></a>", f"## {s.title}", ""]
        for blk in s.blocks:
            if isinstance(blk, str):
                out += [blk, ""]
            elif isinstance(blk, Table):
                out += [markdown_table(blk), ""]
            elif isinstance(blk, Figure):
                out += [f"![{blk.caption}](report-{blk.name}.png)", "", f"*{blk.caption}*", ""]
            elif isinstance(blk, NotRun):
                out += [f"**Not run**: {blk.what}. Make it with:", "", "```sh", blk.command,
                        "```", ""]
    return "\n".join(out)


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem;
       color: #222; line-height: 1.45; }
h1 { font-size: 1.5rem; } h2 { border-bottom: 1px solid #ccc; margin-top: 2rem; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } code { background: #f3f3f3; padding: 0 0.2rem; }
figure { margin: 1rem 0; } figcaption { font-size: 0.85rem; color: #555; max-width: 40rem; }
.notrun { border-left: 4px solid #c44e52; background: #fbeeee; padding: 0.4rem 0.8rem; }
nav a { margin-right: 1rem; }
"""


def render_html(title: str, sections: list[Section]) -> str:
    out = ["<!DOCTYPE html>", "<html lang=\"en\">", "<head>", "<meta charset=\"utf-8\">",
           f"<title>{html.escape(title)}</title>", f"<style>{_CSS}</style>", "</head>",
           "<body>", f"<h1>{html.escape(title)}</h1>", "<nav>"]
    out += [f"<a href=\"#{s.id}\">{html.escape(s.title)}</a>" for s in sections]
    out.append("</nav>")
    for s in sections:
        out.append(f"<section id=\"{s.id}\"><h2>{html.escape(s.title)}</h2>")
        for blk in s.blocks:
            if isinstance(blk, str):
                out.append(f"<p>{_inline_html(blk)}</p>")
            elif isinstance(blk, Table):
                out.append("<table>")
                if any(blk.header):
                    out.append("<tr>" + "".join(f"<th>{_inline_html(h)}</th>"
                                                for h in blk.header) + "</tr>")
                out += ["<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in row) + "</tr>"
                        for row in blk.rows]
                out.append("</table>")
            elif isinstance(blk, Figure):
                uri = "data:image/png;base64," + base64.b64encode(blk.png).decode("ascii")
                out.append(f"<figure id=\"fig-{blk.name}\"><img src=\"{uri}\" "
                           f"alt=\"{html.escape(blk.caption)}\"><figcaption>"
                           f"{_inline_html(blk.caption)}</figcaption></figure>")
            elif isinstance(blk, NotRun):
                out.append(f"<p class=\"notrun\"><strong>Not run</strong>: "
                           f"{_inline_html(blk.what)}. Make it with: "
                           f"<code>{html.escape(blk.command)}</code></p>")
        out.append("</section>")
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


def write_report(build_dir: Path, out_dir: Path | None = None, command: str = "nsm report",
                 **kw) -> dict[str, Path]:
    """Collect, render and write the report; returns the files written by kind."""
    build_dir = Path(build_dir)
    out_dir = Path(out_dir) if out_dir is not None else build_dir
    if out_dir.exists() and not out_dir.is_dir():
        raise ReportError(f"{out_dir}: exists and is not a directory")
    data = collect(build_dir, **kw)
    title, sections = build_document(data, command)
    figures = [blk for s in sections for blk in s.blocks if isinstance(blk, Figure)]
    markdown = render_markdown(title, sections)
    page = render_html(title, sections)
    written = {}
    for fig in figures:
        path = out_dir / f"report-{fig.name}.png"
        with atomic_write(path) as f:
            f.write(fig.png)
        written[fig.name] = path
    keep = {p.name for p in written.values()}
    for old in out_dir.glob("report-*.png"):       # plots of an earlier report, now absent
        if old.name not in keep:
            old.unlink()
    for name, text in (("report.json", json.dumps(data, indent=1) + "\n"),
                       ("report.md", markdown), ("report.html", page)):
        with atomic_write(out_dir / name, "w") as f:
            f.write(text)
        written[name] = out_dir / name
    return written
