"""The command line on hostile input: mutated ir.json, weights.npz, model.pt and ONNX files,
bad option values and outputs that collide with inputs, each through the ``nsm`` CLI in-process.

Every case (``nsm.testing``: how cases are drawn and what counts as a pass) must end with exit
status 1 or 2, one error line, no traceback, every input file unchanged, and no long work
started for an input it refuses. Writes ``benchmarks/results/cli-fuzz.json``: the counts by
command, by mutation class and by outcome, the failures grouped by command, mutation class and
kind of failure with one reproducer each (its seed: ``--first-seed SEED --cases 1`` runs it
again), and the command.

    python benchmarks/cli_fuzz.py --cases 1000
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import provenance, write_results   # noqa: E402


def failure_kind(text: str) -> str:
    """A failure's class: its text less the paths, names and numbers that vary by case."""
    kind = text.split(":")[0]
    if kind == "traceback":
        return ":".join(text.split(":")[:2])
    if kind == "not one error line":
        rest = re.sub(r" \(.*\)$", "", text.split(": ", 1)[1])
        return f"{kind}: {re.sub(r'[0-9]+', 'N', rest)}"
    if kind.startswith("long work started"):
        return "long work started before the refusal"
    return kind


def classify(records: list[dict]) -> list[dict]:
    """Failing cases grouped by (command, mutation class, failure kind), one reproducer each
    (the lowest seed)."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        for f in r["failures"]:
            groups.setdefault((r["command"], r["mutation"], failure_kind(f)), []).append(r)
    out = []
    for (cmd, mutation, kind), rs in sorted(groups.items()):
        first = min(rs, key=lambda r: r["seed"])
        out.append({"command": cmd, "mutation": mutation, "failure": kind, "cases": len(rs),
                    "reproducer": {k: first[k] for k in ("seed", "argv", "detail", "expect",
                                                         "exit_code", "stderr", "failures")}})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--first-seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per case")
    ap.add_argument("--output", type=Path,
                    default=ROOT / "benchmarks" / "results" / "cli-fuzz.json")
    ap.add_argument("-v", "--verbose", action="store_true", help="one line per case")
    a = ap.parse_args(argv)
    from tqdm import tqdm

    from nsm.testing import draw_case, make_base, run_case

    t0 = time.perf_counter()
    records = []
    with tempfile.TemporaryDirectory(prefix="nsm-cli-fuzz-") as tmp:
        base = make_base(Path(tmp) / "base")
        seeds = range(a.first_seed, a.first_seed + a.cases)
        for seed in tqdm(seeds, desc="cli fuzz", unit="case", disable=a.verbose):
            r = run_case(draw_case(seed, base), base, Path(tmp) / "work", timeout=a.timeout)
            records.append(r)
            if a.verbose:
                print(seed, r["command"], r["mutation"], r["outcome"], r["failures"],
                      r["stderr"][:120], flush=True)
    bad = [r for r in records if r["failures"]]
    summary = {
        "cases": len(records), "passing": len(records) - len(bad), "failing": len(bad),
        "by_outcome": dict(Counter(r["outcome"] for r in records).most_common()),
        "by_command": {c: {"cases": n, "failing": sum(1 for r in bad if r["command"] == c)}
                       for c, n in sorted(Counter(r["command"] for r in records).items())},
        "by_mutation": {m: {"cases": n, "failing": sum(1 for r in bad if r["mutation"] == m)}
                        for m, n in sorted(Counter(r["mutation"] for r in records).items())},
        "by_failure": dict(Counter(failure_kind(f) for r in bad
                                   for f in r["failures"]).most_common()),
        "seconds": round(time.perf_counter() - t0, 1),
        **provenance("cli_fuzz.py", argv),
        "failures": classify(records),
    }
    write_results(a.output, summary)
    print(f"{summary['cases']} cases, {summary['failing']} failing in "
          f"{len(summary['failures'])} classes")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
