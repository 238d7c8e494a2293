"""Plot ``benchmarks/results/edge.json``: RTL accuracy against inferences/s of the trained
presets, one colour per FPGA part, each part's goal in its colour; print the records as a
markdown table (the plot and table of ``nsm report``'s "Presets per FPGA part" section).

    python benchmarks/plot_edge.py          # writes docs/edge.svg, prints the table

The SVG is the same bytes on every run of the same records (fixed element ids, no date).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nsm.report import (ReportError, edge_figure, edge_table, load_edge_records,  # noqa: E402
                        markdown_table)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", type=Path, default=ROOT / "benchmarks" / "results" / "edge.json")
    ap.add_argument("--output", type=Path, default=ROOT / "docs" / "edge.svg")
    a = ap.parse_args(argv)
    try:
        records = load_edge_records(a.input)
    except ReportError as e:
        print(f"plot_edge.py: error: {e}", file=sys.stderr)
        return 1
    svg = edge_figure(records, title="Trained presets per FPGA part, measured through the RTL",
                      fmt="svg")
    a.output.parent.mkdir(parents=True, exist_ok=True)
    a.output.write_bytes(svg)
    table, goals = edge_table(records)
    print(markdown_table(table))
    print()
    for line in goals:
        print(f"- {line}")
    print(f"\nwrote {a.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
