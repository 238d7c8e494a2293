"""Plot ``benchmarks/results/hardware.json``: inferences/s against LUT4s, one panel per part,
one marker per design (NSM engines and the int8 MAC core), the network written beside each.

    python benchmarks/plot_hardware.py       # writes docs/hardware-benchmark.svg
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MARKERS = {"nsm": "o", "nsm-simd": "s", "nsm-popcount": "*", "nsm-linebuf": "^", "mac": "x"}
SHORT = {"digits-mlp-64-256-10": "digits MLP", "fmnist-mlp-784-128-10-binary": "FMNIST MLP",
         "fmnist-conv-16c5-p2-32c5-p2-128-10": "conv 16-32-128",
         "fmnist-conv-32c5-p2-64c5-p2-512-10": "conv 32-64-512"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", type=Path,
                    default=ROOT / "benchmarks" / "results" / "hardware.json")
    ap.add_argument("--output", type=Path, default=ROOT / "docs" / "hardware-benchmark.svg")
    a = ap.parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in json.loads(a.input.read_text())
               if r.get("fits") and r.get("inferences_per_s")]
    targets = sorted({r["target"] for r in records})
    fig, axes = plt.subplots(1, len(targets), figsize=(5 * len(targets), 4.2), squeeze=False)
    for ax, target in zip(axes[0], targets):
        for design, marker in MARKERS.items():
            rows = [r for r in records if r["target"] == target and r["design"] == design]
            if not rows:
                continue
            ax.scatter([r["luts"] for r in rows], [r["inferences_per_s"] for r in rows],
                       marker=marker, s=70 if marker == "*" else 40, label=design)
            for r in rows:
                ax.annotate(SHORT.get(r["network"], r["network"]),
                            (r["luts"], r["inferences_per_s"]), fontsize=7,
                            xytext=(4, 3), textcoords="offset points")
        ax.set_yscale("log")
        ax.set_xlabel("LUT4s (yosys)")
        ax.set_ylabel("inferences/s (placed Fmax / cycles)")
        ax.set_title(target)
        ax.tick_params(axis="x", labelrotation=30)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("NSM engines and the int8 MAC core, T = 16, random weights")
    fig.tight_layout()
    a.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.output)
    print(f"wrote {a.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
