"""The presets' accuracy-against-speed plot: ``edge_figure`` on records and on none,
``benchmarks/plot_edge.py`` (the same SVG bytes every run, one line for a bad file) and
``nsm report``'s "Presets per FPGA part" section with and without an ``edge.json``.

``tests/fixtures/edge-results.json`` is a hand-made fixture in the form of
``benchmarks/edge.py``'s records, not measured numbers."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from nsm.cli import main
from nsm.report import (ReportError, edge_figure, edge_goals, edge_plotted, edge_table,
                        load_edge_records)

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "edge-results.json"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
T = 8


def _records():
    return load_edge_records(FIXTURE)


def test_figure_on_the_fixture_and_on_nothing():
    records = _records()
    assert [r["target"] for r in edge_plotted(records)] == ["ice40-up5k", "ice40-up5k",
                                                           "ecp5-25k"]      # 85k does not fit
    assert edge_figure(records).startswith(PNG_MAGIC)
    star = {"target": "ecp5-25k", "accuracy": 0.9, "inferences_per_s": 5e3, "label": "mine"}
    assert edge_figure(records, [star]).startswith(PNG_MAGIC)
    assert edge_figure([]).startswith(PNG_MAGIC)
    assert edge_figure([], [dict(star, target="xc7a35t")]).startswith(PNG_MAGIC)
    svg = edge_figure(records, fmt="svg")
    assert svg.startswith(b"<?xml") and svg == edge_figure(records, fmt="svg")
    assert b"<dc:date>" not in svg
    # Goals: one alternative, a list of them, a rate-less one.
    assert edge_goals(records[0]["goal"]) == [(0.9, 200.0), (0.88, 2000.0)]
    assert edge_goals(records[1]["goal"]) == [(0.88, 2000.0)]
    assert edge_goals(records[2]["goal"]) == [(0.91, None)]
    assert edge_goals({"text": "x", "any": records[0]["goal"]}) == [(0.9, 200.0), (0.88, 2000.0)]
    table, goals = edge_table(records)
    assert len(table.rows) == 4 and table.rows[-1][9] == "does not fit"
    assert table.rows[1][4] == "margin 0.25" and table.rows[0][11] == "22 EBR + 4 SPRAM"
    assert goals[1] == "`ecp5-25k` (LFE5U-25F-CABGA381) goal: ≥ 91.0 % at any rate."


@pytest.mark.parametrize("text, needle", [
    ("{not json", "not valid JSON"),
    ('{"target": "ice40-up5k"}', "not a JSON list of records"),
    ("[1]", "record 0 is not a JSON object"),
    ('[{"target": "ice40-up5k"}]', "record 0 has no network"),
    ('[{"target": "t", "network": "n", "fits": true, "rtl_accuracy": 1.5, '
     '"inferences_per_s": 1}]', "rtl_accuracy = 1.5 is not in [0, 1]"),
    ('[{"target": "t", "network": "n", "fits": "yes", "rtl_accuracy": 0.5, '
     '"inferences_per_s": 1}]', "fits = 'yes' is not boolean or null"),
    ('[{"target": "t", "network": "n", "fits": true, "rtl_accuracy": 0.5, '
     '"inferences_per_s": 0}]', "inferences_per_s = 0 is not positive"),
    ('[{"target": "t", "network": "n", "fits": true, "rtl_accuracy": 0.5, '
     '"inferences_per_s": 1, "goal": [{"inferences_per_s": 3}]}]', "has no accuracy"),
])
def test_plot_script_on_a_bad_file_is_one_line(load_benchmark, tmp_path, capsys, text, needle):
    bad = tmp_path / "edge.json"
    bad.write_text(text)
    with pytest.raises(ReportError, match=re.escape(needle)):
        load_edge_records(bad)
    out = tmp_path / "edge.svg"
    assert load_benchmark("plot_edge").main(["--input", str(bad), "--output", str(out)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("plot_edge.py: error: ") and needle in err[0]
    assert not out.exists()


def test_plot_script_writes_the_same_svg_every_run(tmp_path):
    outs = []
    for k in range(2):     # two processes: another hash seed, another default SVG id salt
        out = tmp_path / f"edge-{k}.svg"
        res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "plot_edge.py"),
                              "--input", str(FIXTURE), "--output", str(out)],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] and outs[0].startswith(b"<?xml")
    lines = res.stdout.splitlines()
    assert lines[0].startswith("| target | network | bits | T | rule | RTL accuracy |")
    assert "| `ice40-up5k` | 8c5s-p2-256-10 (4-level thermometer) | 1 | 16 (T' 8) | none | " \
           "88.12 % | 1,000 | 0 | 41.2 MHz | 1,609 | 4,044 | 22 EBR + 4 SPRAM | 0 | no |" in lines
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "plot_edge.py"),
                          "--input", str(tmp_path / "missing.json"), "--output",
                          str(tmp_path / "x.svg")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and res.stderr.strip().count("\n") == 0
    assert "missing.json: no such file" in res.stderr


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """A small random popcount build (no training), synthesized by hand: a synthesis report of
    the iCE40 with an Fmax and a co-simulation summary, so the build has its own point."""
    from nsm.flow import write_build
    from nsm_export import early_exit as ee
    from nsm_export.testing import random_pop_ir

    ir = random_pop_ir(np.random.default_rng(3), sizes=[64, 12, 10], samples=T,
                       pass_samples=2, levels=1)
    ir.early_exit = ee.parse_rule("margin:0.25")
    ir.validate()
    b = tmp_path_factory.mktemp("edge") / "build"
    write_build(ir, b)
    res = {k: {"used": 10, "available": 100} for k in ("luts", "ffs", "bram", "spram", "dsps",
                                                         "io")}
    (b / "synth" / "ice40-up5k").mkdir(parents=True)
    (b / "synth" / "ice40-up5k" / "report.json").write_text(json.dumps(dict(
        res, fmax_mhz=40.0, constraint_mhz=48.0, meets_timing=False, fits=True,
        device="iCE40UP5K-SG48")))
    (b / "sim").mkdir()
    (b / "sim" / "summary.json").write_text(json.dumps(
        {"rtl_accuracy": 0.5, "golden_accuracy": 0.5, "images": 10, "samples": T,
         "dataset": "digits", "mismatches": 0, "simulator": "icarus"}))
    return b


def _report(b, out):
    res = CliRunner().invoke(main, ["report", str(b), "-o", str(out), "--count", "30",
                                    "--samples", "1", "--no-progress"])
    assert res.exit_code == 0, res.output
    return ((out / "report.md").read_text(), (out / "report.html").read_text(),
            json.loads((out / "report.json").read_text()))


def test_table_names_the_conv_layers_width_where_it_differs(tmp_path):
    """A mixed-precision record (``conv_weight_bits``) reads "2 (convs 3)" in the bits column;
    the others keep their one width; a width that is no integer is one line from the loader."""
    records = _records()
    mixed = dict(records[-1], conv_weight_bits=3)
    table, _ = edge_table([*records, mixed])
    bits = table.header.index("bits")
    assert table.rows[-1][bits] == "2 (convs 3)"
    assert all("convs" not in row[bits] for row in table.rows[:-1])
    bad = tmp_path / "edge.json"
    bad.write_text(json.dumps([dict(mixed, conv_weight_bits="3")]))
    with pytest.raises(ReportError, match="conv_weight_bits"):
        load_edge_records(bad)


def test_report_section_with_the_fixture_and_this_build(build, tmp_path, monkeypatch):
    monkeypatch.setenv("NSM_EDGE_RESULTS", str(FIXTURE))
    md, page, data = _report(build, tmp_path / "out")
    assert re.findall(r'<a id="([a-z]+)"></a>', md)[-1] == "edge"
    assert re.findall(r'<section id="([a-z]+)">', page)[-1] == "edge"
    assert "## Presets per FPGA part" in md and "<h2>Presets per FPGA part</h2>" in page
    assert data["edge"]["records"] == _records() and data["edge"]["path"] == str(FIXTURE)
    # This build's point: the RTL accuracy at Fmax / the exact cycles of its rule.
    (point,) = data["edge"]["this_build"]
    cycles = data["early_exit"]["rule"]["cycles_per_inference"]
    assert point["accuracy"] == 0.5 and point["accuracy_source"] == "RTL, 10 images"
    assert point["inferences_per_s"] == pytest.approx(40e6 / cycles)
    assert f"This build on `ice40-up5k`: 50.00 % (RTL, 10 images of `digits`) at " \
           f"{point['inferences_per_s']:,.0f}" in md
    # The plot in both, the table and each part's goal.
    assert "(report-edge.png)" in md and '<figure id="fig-edge">' in page
    assert (tmp_path / "out" / "report-edge.png").read_bytes().startswith(PNG_MAGIC)
    assert "| `ecp5-85k` | 32c3s-p2-64c3s-p2-256-10 (4-level thermometer) | 2 | 16 (T' 4) | " \
           "none | — | — | — | — | does not fit |" in md
    assert "<td><code>ecp5-85k</code></td>" in page
    assert "`ice40-up5k` (iCE40UP5K-SG48) goal: ≥ 90.0 % at ≥ 200 inferences/s, or ≥ 88.0 % " \
           "at ≥ 2,000 inferences/s." in md


def test_report_section_without_records(build, tmp_path, monkeypatch):
    monkeypatch.setenv("NSM_EDGE_RESULTS", str(tmp_path / "none.json"))
    md, page, data = _report(build, tmp_path / "out")
    section = md.split('<a id="edge"></a>')[1]
    notes = [ln for ln in section.splitlines() if ln.startswith("No preset records")]
    assert notes == [f"No preset records found (`{tmp_path / 'none.json'}`: `python "
                     f"benchmarks/edge.py` writes it, `NSM_EDGE_RESULTS` names another file)."]
    assert data["edge"]["records"] == [] and data["edge"]["error"] is None
    assert "(report-edge.png)" in section and "| target |" not in section   # the build alone
    # A malformed file is a note too, not an error of the report.
    (tmp_path / "none.json").write_text("[1]")
    md, page, data = _report(build, tmp_path / "out")
    assert "No preset records shown: " in md and "record 0 is not a JSON object" in md
    assert data["edge"]["error"].endswith("record 0 is not a JSON object")
    # No synthesis: no point and no plot, one line says why.
    bare = tmp_path / "bare"
    shutil.copytree(build, bare)
    shutil.rmtree(bare / "synth")
    md, page, data = _report(bare, tmp_path / "out2")
    section = md.split('<a id="edge"></a>')[1]
    assert data["edge"]["this_build"] == [] and "report-edge.png" not in section
    assert "This build has no point in the plot: it needs a synthesis report with an Fmax" \
        in section
    assert not (tmp_path / "out2" / "report-edge.png").exists()
