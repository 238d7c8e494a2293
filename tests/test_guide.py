"""The user guide's examples run as written: every ```console block of docs/guide/, page after
page, in one empty directory; every command must succeed, and every output line the guide shows
must appear in the command's output (numbers may differ, the words and layout may not)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GUIDE = REPO / "docs" / "guide"
PAGES = ["1-train.md", "2-compile.md", "3-simulate.md", "4-hardware.md", "5-report.md"]
BLOCK = re.compile(r"^```console\n(.*?)^```", re.S | re.M)


def examples(page: Path) -> list[tuple[str, list[str]]]:
    """``(command, shown output lines)`` for every ``$ `` line of the page's console blocks."""
    out = []
    for block in BLOCK.findall(page.read_text()):
        for line in block.splitlines():
            if line.startswith("$ "):
                out.append((line[2:], []))
            elif out and line.strip():
                out[-1][1].append(line)
    return out


def _pattern(shown: str) -> re.Pattern:
    """The shown line with every number a wildcard for a number and runs of spaces free."""
    parts = re.split(r"(\d[\d.,]*)", " ".join(shown.split()))
    return re.compile("".join(r"[\d.,]+" if i % 2 else re.escape(p).replace(r"\ ", r"\s+")
                              for i, p in enumerate(parts)))


def test_guide_lists_every_page_and_each_page_has_examples():
    index = (GUIDE / "README.md").read_text()
    assert sorted(p.name for p in GUIDE.glob("[0-9]-*.md")) == PAGES
    for page in PAGES:
        assert f"({page})" in index
        assert examples(GUIDE / page), page
    readme = (REPO / "README.md").read_text()
    for doc in [*sorted((REPO / "docs").glob("*.md")), GUIDE / "README.md",
                *(GUIDE / p for p in PAGES)]:
        assert f"]({doc.relative_to(REPO)})" in readme, f"README does not link {doc.name}"


@pytest.mark.slow
@pytest.mark.icarus
@pytest.mark.synth
def test_every_console_example_runs(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "NSM_PYTHON": sys.executable}
    nsm = 'nsm() { "$NSM_PYTHON" -m nsm.cli "$@"; }\n'
    ran = 0
    for page in PAGES:
        for command, shown in examples(GUIDE / page):
            res = subprocess.run(["bash", "-c", nsm + command], cwd=tmp_path, env=env,
                                 capture_output=True, text=True, timeout=600)
            where = f"{page}: `{command}`"
            assert res.returncode == 0, f"{where} failed: {res.stderr[-2000:]}"
            got = [" ".join(line.split()) for line in res.stdout.splitlines()]
            for line in shown:
                pat = _pattern(line)
                assert any(pat.fullmatch(g) for g in got), \
                    f"{where}: the guide shows {line!r}; the output was:\n{res.stdout}"
            ran += 1
    assert ran >= 10
    # What the pages promise exists: the bitstream, the report and its twin.
    build = tmp_path / "build"
    assert (build / "synth" / "icebreaker" / "icebreaker_top.bin").stat().st_size == 104_090
    assert {"report.html", "report.md", "report.json"} <= {p.name for p in build.iterdir()}


def test_pattern_allows_numbers_only():
    pat = _pattern("  LUT4s         1,341 / 5,280  (25.4 %)")
    assert pat.fullmatch("LUT4s 990 / 5,280 (18.8 %)")
    assert not pat.fullmatch("FFs 990 / 5,280 (18.8 %)")
