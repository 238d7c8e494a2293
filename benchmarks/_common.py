"""What every benchmark record carries, and how every benchmark writes its results."""

from __future__ import annotations

import json
import platform
import shlex
import sys
import time
from pathlib import Path

__all__ = ["provenance", "write_results"]


def provenance(script: str, argv: list[str] | None) -> dict:
    """The command that made a record (as typed from the repository root), machine and date."""
    args = sys.argv[1:] if argv is None else argv
    return {"command": " ".join(["python", f"benchmarks/{script}", *map(shlex.quote, args)]),
            "machine": f"{platform.machine()}, {platform.python_version()}",
            "date": time.strftime("%Y-%m-%d")}


def write_results(path: Path, results) -> None:
    """Write ``results`` (a list of records, or one summary) as indented JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {path}")
