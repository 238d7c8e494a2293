"""Pyflakes and line length over the whole tree: unused names, undefined names and the like, and
lines over the 100-column limit from pyproject.toml's [tool.ruff] (E501), fail the suite."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pyflakes_clean():
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "F,E501",
                        "--output-format", "concise", "--no-cache",
                        "nsm", "nsm_common", "nsm_train", "nsm_export", "hw", "sim", "tests",
                        "benchmarks"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
