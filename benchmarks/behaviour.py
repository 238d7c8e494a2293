"""Behaviour fingerprint: what a refactoring must leave unchanged, IR by IR.

For a fixed set of IRs (random dense and conv nets of every input code, folding, weight store
and line buffer; the networks of ``benchmarks/hardware.py``; the int8 MAC reference cores) it
records, per IR:

* ``verilog``: SHA-256 of the generated core (and of the debug core of a dense-only net);
* ``golden``: SHA-256 of the golden model's scores, classes, spikes and keep masks on random
  pixels, from reset and after a run seed;
* ``latency`` / ``cycles``: the cycle model's exact per-image counts on those draws, and
  ``expected``: its mean-draw estimate;
* ``report``: SHA-256 of the report's resource rows, cycle summary and network shapes;
* ``estimate``: the resource estimate per target, and ``folding``: the folding search's choice
  for the UP5K (benchmark nets).

    python benchmarks/behaviour.py --write benchmarks/results/behaviour.json   # record
    python benchmarks/behaviour.py --check benchmarks/results/behaviour.json   # compare

``--check`` prints every IR and field that differs and exits 1 if any does. ``--quick`` takes
the random nets only (no benchmark nets, no MAC cores): the test suite's form.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

N_DENSE = 24          # random dense nets
N_CONV = 16           # random conv nets (each also with line buffers where it has a conv pair)
IMAGES = 6


def _sha(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(str(p.dtype).encode() + str(p.shape).encode())
            h.update(np.ascontiguousarray(p).tobytes())
        else:
            h.update(str(p).encode())
    return h.hexdigest()[:16]


def _api():
    """The functions fingerprinted, wherever this checkout keeps them."""
    from hw.top import generate_verilog
    from nsm_export import golden, schedule
    try:
        from nsm_export.devices import TARGETS
        from nsm_export.estimate import estimate
        from nsm_export.folding import choose_folding
    except ImportError:                                 # the layout before nsm_export.plan
        from hw.synth import TARGETS, choose_folding, estimate
    return dict(verilog=generate_verilog, golden=golden, schedule=schedule, estimate=estimate,
                targets=TARGETS, choose=choose_folding)


def random_irs(quick: bool = False) -> dict:
    """name -> IR: the random nets (always) and the benchmark nets (unless ``quick``)."""
    from nsm_export.build import IntLayer, build_ir
    from nsm_export.testing import random_conv_ir, random_ir
    irs = {}
    for s in range(N_DENSE):
        irs[f"dense-{s}"] = random_ir(np.random.default_rng(s))
    for s in range(N_CONV):
        irs[f"conv-{s}"] = random_conv_ir(np.random.default_rng(1000 + s))
        lb = random_conv_ir(np.random.default_rng(1000 + s), line_buffer=True)
        if any(getattr(layer, "line_rows", 0) for layer in lb.layers):
            irs[f"conv-{s}-linebuf"] = lb
    # Dense nets with every input code, ram weights and simd.
    rng = np.random.default_rng(77)
    for code in ("thermometer", "bernoulli"):
        for s in range(3):
            levels = [1, 2, 4][s] if code == "thermometer" else 1
            size = int(rng.integers(3, 12))
            n_h = int(rng.integers(2, 10))
            w0 = rng.choice([-1, 1], (n_h, size * levels))
            w1 = rng.integers(-3, 4, (3, n_h))
            layers = [IntLayer(w0, rng.integers(-2, 3, n_h), 0.75, 1),
                      IntLayer(w1, rng.integers(-2, 3, 3), 0.5, 3)]
            extra = (dict(thresholds=sorted(rng.choice(np.arange(1, 256), levels,
                                                       replace=False).tolist()))
                     if code == "thermometer" else
                     dict(probs=[min(256, 2 * v) for v in range(256)], prob_bits=8))
            irs[f"dense-{code}-{s}"] = build_ir(
                layers, input_size=size, input_threshold=100, samples=int(rng.integers(1, 5)),
                pe=[int(rng.integers(1, n_h + 1)), 3], lanes=[4, 2], simd=[s % 3 + 1 if s < 2
                                                                          else 4, 1],
                weight_store=["ram", "rom"][s % 2:] + ["rom", "ram"][:s % 2], seed=11 + s,
                **extra)
    if not quick:
        import benchmarks.hardware as hwb
        for name, spec in hwb.NETWORKS.items():
            for target in hwb.TARGETS:
                irs[f"{name}@{target}"] = hwb.nsm_ir(spec, target, 16)
                if "nsm-simd" in spec:
                    irs[f"{name}@{target}-simd"] = hwb.nsm_ir(spec, target, 16, variant="nsm-simd")
        for name, spec in hwb.CONVS.items():
            for target in spec["fold"]:
                irs[f"{name}@{target}"] = hwb.conv_ir(name, target, 16)
    return irs


def mac_nets() -> dict:
    import benchmarks.hardware as hwb
    from hw import baseline_mac as mac
    nets = {}
    for name, spec in hwb.NETWORKS.items():
        for target, (pe, stores) in spec["mac"].items():
            nets[f"{name}@{target}"] = mac.random_mac_net(np.random.default_rng(0), spec["sizes"],
                                                          pe, weight_bits=8, weight_store=stores)
    for name in hwb.CONVS:
        for target in hwb.CONVS[name]["mac"]:
            nets[f"{name}@{target}"] = hwb.mac_conv_net(name, target)
    return nets


def fingerprint(ir, api, quick: bool) -> dict:
    golden, schedule = api["golden"], api["schedule"]
    rec = {"ir": _sha(json.dumps(ir.to_json(), sort_keys=True),
                      *[getattr(layer, "weights", np.zeros(0)) for layer in ir.layers],
                      *[getattr(layer, "offsets", np.zeros(0)) for layer in ir.layers])}
    rec["verilog"] = _sha(api["verilog"](ir))
    if all(layer.kind == "dense" for layer in ir.layers):
        rec["verilog_debug"] = _sha(api["verilog"](ir, debug=True))
    px = np.random.default_rng(5).integers(0, 1 << ir.input.pixel_bits,
                                           (IMAGES, ir.input.size))
    model = golden.GoldenModel(ir)
    first = model.run(px, record=True)
    model.reseed(0xC0FFEE)
    second = model.run(px, record=True)
    parts = []
    for res in (first, second):
        parts += [res.scores, res.classes, *res.spikes, *res.masks]
    rec["golden"] = _sha(*parts)
    rec["latency"] = schedule.latency_cycles(ir, first.masks).tolist()
    rec["cycles"] = schedule.cycles_per_inference(ir, second.masks).tolist()
    rec["expected"] = round(float(schedule.expected_cycles_per_inference(ir)), 6)
    from nsm import report
    rec["report"] = _sha(json.dumps(report.resource_rows(ir), sort_keys=True),
                         json.dumps(report.cycle_summary(ir, first.masks), sort_keys=True),
                         json.dumps(report.network_shapes(ir)))
    rec["estimate"] = {t: {k: round(float(v), 6) for k, v in api["estimate"](ir, tg).items()}
                       for t, tg in api["targets"].items()}
    return rec


def mac_fingerprint(net) -> dict:
    from hw import baseline_mac as mac
    return {"verilog": _sha(mac.generate_mac_verilog(net)),
            "cycles": int(mac.mac_cycles_per_inference(net))}


def collect(quick: bool = False, progress=print) -> dict:
    api = _api()
    out = {"irs": {}, "mac": {}}
    irs = random_irs(quick)
    for k, (name, ir) in enumerate(irs.items()):
        progress(f"[{k + 1}/{len(irs)}] {name}")
        out["irs"][name] = fingerprint(ir, api, quick)
        if not quick and "@" in name and "simd" not in name:
            target = name.split("@")[1]
            if target == "ice40-up5k":
                try:
                    f = api["choose"](ir, target)
                    out["irs"][name]["folding"] = [list(x) for x in f.layers]
                except Exception as e:                       # a FitError is a result too
                    out["irs"][name]["folding"] = f"{type(e).__name__}: {e}"
    if not quick:
        for name, net in mac_nets().items():
            progress(f"mac {name}")
            out["mac"][name] = mac_fingerprint(net)
    return out


def compare(ref: dict, now: dict) -> list[str]:
    """One line per IR and field that differs (names present on one side only included)."""
    diffs = []
    for section in ("irs", "mac"):
        a, b = ref.get(section, {}), now.get(section, {})
        for name in sorted(set(a) & set(b)):
            for field in sorted(set(a[name]) | set(b[name])):
                if a[name].get(field) != b[name].get(field):
                    diffs.append(f"{section}/{name}: {field} differs")
        for name in sorted(set(b) - set(a)):
            diffs.append(f"{section}/{name}: not in the reference")
    return diffs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--write", type=Path, help="record the fingerprints to this JSON file")
    g.add_argument("--check", type=Path, help="compare against this JSON file")
    ap.add_argument("--quick", action="store_true", help="random nets only")
    args = ap.parse_args(argv)
    now = collect(args.quick)
    if args.write:
        from benchmarks._common import provenance, write_results
        write_results(args.write, {**provenance("behaviour.py", argv), **now})
        return 0
    ref = json.loads(args.check.read_text())
    if args.quick:
        ref = {"irs": {k: v for k, v in ref["irs"].items() if k in now["irs"]}, "mac": {}}
        missing = sorted(set(now["irs"]) - set(ref["irs"]))
        if missing:
            print(f"not in the reference: {', '.join(missing)}")
            return 1
    diffs = compare(ref, now)
    for d in diffs:
        print(d)
    n = len(now["irs"]) + len(now["mac"])
    print(f"{n} designs compared, {len(diffs)} differences")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
