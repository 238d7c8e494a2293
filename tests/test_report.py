"""`nsm report`: the page renders in a browser, the markdown twin matches it, the numbers are the
golden model's, and bad input is one line with nothing written."""

import base64
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner

from nsm.cli import main
from nsm.flow import compile_to_dir, write_build
from nsm.report import cycle_summary, ir_at_samples, lfsr_statistics, resource_rows, run_golden
from nsm_export import golden, schedule
from nsm_export.plan import plan
from nsm_export import ir as irmod
from nsm_export.build import IntConv, IntLayer, IntPool, build_ir

SECTIONS = ["overview", "accuracy", "earlyexit", "resources", "cycles", "lfsr",
            "verification", "edge"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def no_preset_records(monkeypatch, tmp_path):
    """The presets section reads no ``edge.json`` of this checkout (``benchmarks/edge.py``'s
    results would add a plot to those counted here; tests/test_report_edge.py tests it)."""
    monkeypatch.setenv("NSM_EDGE_RESULTS", str(tmp_path / "no-edge.json"))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny NSM trained on digits, exported to ONNX beside its build directory, compiled."""
    from nsm_export.onnx_export import export_onnx
    from nsm_train.train import TrainConfig, train

    root = tmp_path_factory.mktemp("report")
    model, _ = train(TrainConfig(dataset="digits", hidden=[16], epochs=2, samples=4),
                     progress=False)
    export_onnx(model, root / "model.onnx", samples=4)
    compile_to_dir(root / "model.onnx", root / "build", samples=4, pe=4)
    return root


def _report(build, *args):
    res = CliRunner().invoke(main, ["report", str(build), "--count", "60", "--no-progress",
                                    *args])
    assert res.exit_code == 0, res.output
    return res


# A probe the test adds to a copy of the page: after load, it records for every image whether
# the browser decoded it (complete, with a non-zero natural width) and which sections exist.
PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.map.call(document.images, function (i) {
    return {figure: i.parentNode.id, ok: i.complete && i.naturalWidth > 0,
            width: i.naturalWidth, height: i.naturalHeight};
  });
  var secs = Array.prototype.map.call(document.querySelectorAll('section'),
                                      function (s) { return s.id; });
  var p = document.createElement('pre');
  p.id = 'probe';
  p.textContent = JSON.stringify({images: imgs, sections: secs});
  document.body.appendChild(p);
});
</script>"""


def _render_in_chromium(page: str, tmp_path) -> dict:
    path = tmp_path / "probe.html"
    path.write_text(page.replace("</body>", PROBE + "</body>"))
    res = subprocess.run([shutil.which("chromium"), "--headless", "--no-sandbox", "--disable-gpu",
                          "--virtual-time-budget=10000", "--dump-dom", path.as_uri()],
                         capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="probe">(.*?)</pre>', res.stdout, re.S)
    assert m, f"chromium produced no probe output (exit {res.returncode}): {res.stderr[-500:]}"
    return json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="chromium not installed (apt-get install chromium; CI installs it)")
def test_every_plot_renders_in_headless_chromium(built, tmp_path):
    _report(built / "build", "-o", str(tmp_path / "out"))
    page = (tmp_path / "out" / "report.html").read_text()
    # Self-contained: every image is an embedded PNG, nothing points at a file or the network.
    srcs = re.findall(r'<img src="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'(src|href)="(?!data:|#)', page)
    seen = _render_in_chromium(page, tmp_path)
    assert seen["sections"] == SECTIONS
    figures = [i["figure"] for i in seen["images"]]
    assert figures == ["fig-accuracy", "fig-early-exit", "fig-cycles", "fig-lfsr-frequency",
                       "fig-lfsr-autocorr"]
    for img in seen["images"]:
        assert img["ok"] and img["width"] > 100 and img["height"] > 100, img
    # The probe can fail: the same page with one image's data damaged is seen as broken.
    broken = page.replace('src="data:image/png;base64,iVBOR', 'src="data:image/png;base64,AAAA', 1)
    seen = _render_in_chromium(broken, tmp_path)
    assert [i["ok"] for i in seen["images"]] == [False, True, True, True, True]


def test_markdown_twin_and_json_agree_with_the_golden_model(built, tmp_path):
    out = tmp_path / "out"
    _report(built / "build", "-o", str(out), "--samples", "1,2,8")
    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    data = json.loads((out / "report.json").read_text())
    # The same sections, in the same order, in both.
    assert re.findall(r'<a id="([a-z]+)"></a>', md) == SECTIONS
    assert re.findall(r'<section id="([a-z]+)">', page) == SECTIONS
    # Every plot of the page is a PNG file beside the markdown, byte for byte the same.
    linked = re.findall(r"\]\((report-[a-z-]+\.png)\)", md)
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(linked) == len(embedded) == 5
    assert sorted(p.name for p in out.glob("report-*.png")) == sorted(linked)
    for name, b64 in zip(linked, embedded):
        png = (out / name).read_bytes()
        assert png.startswith(PNG_MAGIC) and png == base64.b64decode(b64)

    # Golden accuracy at every T: the IR recompiled for T, from reset, on the first 60 images.
    from nsm.flow import _test_images
    ir = irmod.load(built / "build")
    assert data["accuracy"]["samples"] == [1, 2, 4, 8]          # the IR's own T is added
    x, y = _test_images("digits", 0, ir, 60)
    for t in (1, 2, 4, 8):
        right = int((golden.run(ir_at_samples(ir, t), x).classes == y).sum())
        assert round(data["accuracy"]["golden"][str(t)] * 60) == right
        assert f"| {100 * right / 60:.2f} % |" in md
    # The float model is the ONNX file beside the build, run by onnxruntime.
    assert data["accuracy"]["float_model"].endswith("model.onnx")
    assert set(data["accuracy"]["float"]) == {"1", "2", "4", "8"}
    # Cycles: exact per image from the recorded draws.
    res = golden.run(ir, x, record=True)
    assert data["cycles"]["cycles_per_inference"] == \
        schedule.cycles_per_inference(ir, res.masks).tolist()
    # Missing sources are named with the command that makes them.
    assert "**Not run**: co-simulation" in md and f"nsm sim {built / 'build'}" in md
    assert "**Not run**: synthesis" in md and "--target ice40-up5k" in md


def test_chunked_golden_run_equals_one_call(rng):
    from nsm_export.testing import random_ir, random_pixels
    ir = random_ir(rng, sizes=[12, 9, 4], p=[0.5, 0.75], samples=3)
    px = random_pixels(rng, ir, 25)
    one = golden.run(ir, px, record=True)
    chunked = run_golden(ir, px, record=True, chunk=4)
    assert np.array_equal(one.scores, chunked.scores)
    for a, b in zip(one.masks, chunked.masks):
        assert np.array_equal(a, b)


def test_lfsr_statistics_see_frequency_and_correlation(rng):
    from nsm_export.testing import random_ir
    ir = random_ir(rng, sizes=[8, 6, 3], p=[0.5, 0.25], samples=2)
    fair = [rng.random((400, 2, layer.n_in)) < layer.p for layer in ir.layers]
    rows = lfsr_statistics(ir, fair)
    for r, m in zip(rows, fair):
        assert r["draws"] == m.size and r["frequency"] == m.mean()
        assert abs(r["z"]) < 5 and abs(r["lag1"]) < 0.05
    # A stream 1,1,0,0,... has the right frequency but lag-1 0 and lag-2 -1: it must show.
    pattern = np.resize([True, True, False, False], 400 * 2 * 8).reshape(400, 2, 8)
    rows = lfsr_statistics(ir, [pattern, fair[1]])
    assert rows[0]["frequency"] == 0.5 and abs(rows[0]["autocorr"][1] + 1) < 1e-3


def _one_error_line(res, *needles):
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("nsm report: error: ")
    for n in needles:
        assert n in lines[0], lines[0]


def test_bad_input_is_one_line_and_writes_nothing(built, tmp_path):
    r = CliRunner()
    _one_error_line(r.invoke(main, ["report", str(tmp_path / "nope")]),
                    "nope", "no such build directory")
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_error_line(r.invoke(main, ["report", str(empty)]), "ir.json", "not an IR directory")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    res = r.invoke(main, ["report", str(built / "build"), "-o", str(a_file)])   # click's check
    assert res.exit_code == 2 and "is a file" in res.stderr and "Traceback" not in res.output
    # A dataset whose images do not fit the IR, and a corrupt co-simulation summary: nothing
    # is written, not even the plots.
    out = tmp_path / "out"
    _one_error_line(r.invoke(main, ["report", str(built / "build"), "-o", str(out),
                                    "--dataset", "fashion-mnist", "--data-dir", str(empty)]))
    build = tmp_path / "build"
    shutil.copytree(built / "build", build)
    (build / "sim").mkdir()
    (build / "sim" / "summary.json").write_text("{not json")
    _one_error_line(r.invoke(main, ["report", str(build), "-o", str(out)]),
                    "summary.json", "not valid JSON")
    assert not out.exists() or not any(out.iterdir())
    # Odd types where the report reads numbers, names or resource counts: one line each.
    odd = [("sim/summary.json", {"rtl_accuracy": "0.9"}, "rtl_accuracy = '0.9' is not number"),
           ("sim/summary.json", {"split_seed": "x"}, "split_seed = 'x' is not integer"),
           ("sim/summary.json", [1, 2], "not a JSON object"),
           ("sim/summary.json", {"dataset": ["digits"]}, "is not string"),
           ("synth/ice40-up5k/report.json", {"luts": {"used": "9", "available": 5280}},
            "luts = \"{'used': '9', 'available': 5280}\" is not resource"),
           ("synth/ice40-up5k/report.json", {"luts": {"used": 9, "available": 9},
                                             "fmax_mhz": float("nan")}, "is not number"),
           ("summary.json", {"float_accuracy": True}, "float_accuracy = 'True' is not number")]
    for name, data, needle in odd:
        build = tmp_path / f"odd-{len(name)}-{abs(hash(needle))}"
        shutil.copytree(built / "build", build)
        (build / name).parent.mkdir(parents=True, exist_ok=True)
        (build / name).write_text(json.dumps(data))
        _one_error_line(r.invoke(main, ["report", str(build), "-o", str(out)]), needle)
        assert not out.exists() or not any(out.iterdir())
    res = r.invoke(main, ["report", str(built / "build"), "--samples", "0,4"])
    assert res.exit_code == 2 and "--samples" in res.output
    # A float model that is not the build's network (it used to be plotted as if it were).
    from nsm_export.onnx_export import export_onnx
    from nsm_train.train import TrainConfig, save_checkpoint, train
    other, _ = train(TrainConfig(dataset="digits", hidden=[9], epochs=1, samples=4,
                                 train_limit=100), progress=False)
    export_onnx(other, tmp_path / "other.onnx", samples=4)
    save_checkpoint(other, tmp_path / "other.pt")
    for m in ("other.onnx", "other.pt"):
        _one_error_line(r.invoke(main, ["report", str(built / "build"), "-o", str(out),
                                        "--model", str(tmp_path / m)]),
                        f"{m}: a 64-9-10 network (threshold input), not the build's 64-16-10 "
                        f"(threshold input)")
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.icarus
def test_report_shows_the_cosimulation(built, tmp_path):
    build = tmp_path / "build"
    shutil.copytree(built / "build", build)
    r = CliRunner()
    res = r.invoke(main, ["sim", str(build), "--count", "6", "--json"])
    assert res.exit_code == 0, res.output
    sim = json.loads(res.stdout)
    res = r.invoke(main, ["report", str(build), "--count", "6", "--no-progress"])
    assert res.exit_code == 0, res.output
    data = json.loads((build / "report.json").read_text())
    md = (build / "report.md").read_text()
    T = data["network"]["samples"]
    # The report's golden model and the co-simulation's saw the same six images from reset.
    assert data["accuracy"]["golden"][str(T)] == sim["golden_accuracy"]
    assert data["accuracy"]["rtl"]["accuracy"] == sim["rtl_accuracy"]
    assert round(data["cycles"]["latency_mean"], 1) == sim["latency_cycles_model"]
    assert "**bit-exact**" in md and "| simulator | icarus |" in md
    assert "**Not run**: co-simulation" not in md
    assert "| cycle model exact (every image) | yes |" in md
    # Compiled over since (another core): the old run verifies nothing of this one.
    summary = json.loads((build / "sim" / "summary.json").read_text())
    (build / "sim" / "summary.json").write_text(json.dumps(dict(summary,
                                                                verilog_sha256="0" * 64)))
    res = r.invoke(main, ["report", str(build), "--count", "6", "--no-progress"])
    assert res.exit_code == 0, res.output
    md = (build / "report.md").read_text()
    assert "**stale**: this run verified another core" in md and "**bit-exact**" not in md
    assert json.loads((build / "report.json").read_text())["accuracy"]["rtl"] is None
    # A summary that compared nothing says so.
    (build / "sim" / "summary.json").write_text(json.dumps(
        {"mismatches": 0, "verilog_sha256": summary["verilog_sha256"]}))
    res = r.invoke(main, ["report", str(build), "--count", "6", "--no-progress"])
    assert "**nothing compared**" in (build / "report.md").read_text()


def _conv_ir(samples=3, **fold):
    """Digits-shaped (1x8x8) like test_conv_hw's two-conv IR: conv 3x3 pad 1 (pe 3 of 4
    filters) -> OR pool 2 -> conv 2x2 (pe 5 of 8, 4 channels a clock, its map written by the
    first conv engine) -> dense (pe 2) -> output; ``fold`` replaces that folding (``pe``,
    ``lanes``, ``simd``, ``pass_samples``: :func:`build_ir`'s)."""
    rng = np.random.default_rng(5)
    c0 = IntConv(rng.integers(-3, 4, (4, 1, 3, 3)), rng.integers(-4, 5, 4), p=0.5,
                 weight_bits=3, h_in=8, w_in=8, stride=1, padding=1)
    c1 = IntConv(rng.integers(-1, 2, (8, 4, 2, 2)), rng.integers(-4, 5, 8), p=0.75,
                 weight_bits=2, h_in=4, w_in=4, stride=1, padding=0)
    hid = IntLayer(rng.integers(-3, 4, (6, 72)), rng.integers(-2, 3, 6), p=0.5, weight_bits=3)
    out = IntLayer(rng.integers(-3, 4, (10, 6)), rng.integers(-2, 3, 10), p=1.0, weight_bits=3)
    fold = {"pe": [3, 1, 5, 2, 3], "lanes": [1, 1, 4, 2, 1], **fold}
    return build_ir([c0, IntPool(4, 8, 8, 2, "or"), c1, hid, out], input_size=64,
                    input_threshold=8, samples=samples, seed=7, **fold)


def test_conv_resources_cycles_and_lfsr_rows():
    """The numbers by hand: memory shapes as hw.conv builds them, a dense walk per engine, no
    LFSR row for the pooling layer."""
    from hw.dense import memory_words
    ir = _conv_ir()
    rows = resource_rows(ir)
    assert [r["kind"] for r in rows] == ["conv2d", "pool", "conv2d", "hidden", "output"]
    mem = [{k: (m["width"], m["depth"]) for k, m in r["memories"].items()} for r in rows]
    # conv 0: 3 lanes x 3 bits, 2 groups x 1·3² window inputs; the encoder writes its map.
    assert mem[0] == {"weights": (9, 18), "thresholds": (9, 2), "map": (1, 64), "mask": (1, 64)}
    assert len(memory_words(ir.layers[0])[0]) == 18
    # conv 2: 5 lanes x 2 bits, 2 groups x 4·2² inputs; its 4x4 map is written by conv 0: two
    # halves of 16 pixel words.
    assert mem[2] == {"weights": (10, 32), "thresholds": (20, 2), "map": (4, 32),
                      "mask": (4, 16)}
    assert rows[2]["double_buffered"] and not rows[0]["double_buffered"]
    assert rows[0]["memory_bits"] == 9 * 18 + 9 * 2 + 64 + 64
    assert rows[0]["weights"] == 4 * 9 and rows[2]["weights"] == 8 * 16
    assert rows[1]["memories"] == {} and rows[1]["memory_bits"] == 0 and rows[1]["engine"] == 0
    assert mem[3] == {"weights": (6, 3 * 72), "thresholds": (4, 3)}

    x = np.random.default_rng(0).integers(0, 17, size=(7, 64))
    res = golden.run(ir, x, record=True)
    c = cycle_summary(ir, res.masks)
    assert [s["label"] for s in c["stages"]] == ["0 conv2d+pool", "2 conv2d", "3 dense",
                                                 "4 dense"]
    # Dense walks: 8x8 positions x 2 groups x 9; 3x3 x 2 x 16; 3 groups x 72; 4 x 6.
    assert [s["dense_cycles_per_sample"] for s in c["stages"]] == [1152, 288, 216, 24]
    for s, st in zip(c["stages"], plan(ir)):
        m = res.masks[st.index]
        assert s["cycles_per_sample"] == st.cycles(m).mean()
        assert s["cycles_per_sample_model"] == \
            st.cycles(np.full(st.layer.n_in, st.layer.p))
        assert s["kept_mean"] == m.sum(axis=-1).mean()
    assert c["cycles_per_inference"] == schedule.cycles_per_inference(ir, res.masks).tolist()
    assert c["model_mean"] == schedule.expected_cycles_per_inference(ir)
    b = schedule.bounds(ir)
    assert (c["adder_bound"], c["weight_bound"]) == (b["adder_bound_cycles"],
                                                     b["weight_bound_cycles"])

    lf = lfsr_statistics(ir, res.masks)
    assert [r["layer"] for r in lf] == [0, 2, 3, 4]
    assert lf[0]["draws"] == 7 * 3 * 64 and lf[0]["frequency"] == res.masks[0].mean()
    assert not lf[3]["sampling"] and "max_cross_corr" in lf[2]


@pytest.mark.slow
@pytest.mark.icarus
def test_conv_report_with_cosimulation(tmp_path):
    ir = write_build(_conv_ir(), tmp_path / "build")
    build = tmp_path / "build"
    r = CliRunner()
    res = r.invoke(main, ["sim", str(build), "--count", "4", "--json"])
    assert res.exit_code == 0, res.output
    sim = json.loads(res.stdout)
    assert sim["mismatches"] == 0 and sim["cycle_model_exact"]
    _report(build, "--count", "4", "--samples", "1,3")
    md = (build / "report.md").read_text()
    page = (build / "report.html").read_text()
    data = json.loads((build / "report.json").read_text())
    assert re.findall(r'<a id="([a-z]+)"></a>', md) == SECTIONS
    assert re.findall(r'<section id="([a-z]+)">', page) == SECTIONS
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 5
    # The report's cycles are the schedule's on the co-simulated images, and the RTL's.
    from nsm.flow import _test_images
    x, _ = _test_images("digits", 0, ir, 4)
    masks = golden.run(ir, x, record=True).masks
    c = data["cycles"]
    assert c["cycles_per_inference"] == schedule.cycles_per_inference(ir, masks).tolist()
    # The RTL measured latencies and back-to-back intervals (from image 1 on).
    assert round(c["latency_mean"], 1) == sim["latency_cycles"]
    assert round(float(np.mean(c["cycles_per_inference"][1:])), 1) == sim["cycles_per_inference"]
    assert c["model_mean"] == schedule.expected_cycles_per_inference(ir)
    assert data["accuracy"]["rtl"]["accuracy"] == sim["rtl_accuracy"]
    # The page shows the conv rows' memory shapes, the pooling row and the engines.
    assert "(1×8×8-4×8×8-4×4×4-8×3×3-6-10, T = 3)" in md
    assert "(weights 9×18 ROM, thresholds 9×2, input map 1×64, mask 1×64)" in md
    assert "input map 4×32 (double-buffered), mask 4×16" in md
    assert "| 1 | OR pool 2×2 | 4×8×8 → 4×4×4 |" in md and "computed by the conv engine" in md
    assert "| 0 conv2d+pool |" in md and "| 2 conv2d |" in md and "| 3 dense |" in md
    assert "**bit-exact**" in md and "| cycle model exact (every image) | yes |" in md


@pytest.mark.slow
@pytest.mark.icarus
def test_popcount_conv_report_with_cosimulation(tmp_path):
    """A conv net on the popcount core: ``nsm sim`` is bit-exact and cycle-exact, and the
    report's resource rows show its stores and folding (simd, T'), its cycles the core's."""
    ir = _conv_ir(pe=[2, 1, 4, 2, 3], simd=[1, 1, 2, 2, 1], lanes=[1, 1, 2, 2, 1],
                  pass_samples=2)
    build = tmp_path / "build"
    write_build(ir, build)
    r = CliRunner()
    res = r.invoke(main, ["sim", str(build), "--count", "4", "--json"])
    assert res.exit_code == 0, res.output
    sim = json.loads(res.stdout)
    assert sim["mismatches"] == 0 and sim["cycle_model_exact"]
    _report(build, "--count", "4", "--samples", "1,3")
    md = (build / "report.md").read_text()
    rows = json.loads((build / "report.json").read_text())["resources"]
    conv = [row for row in rows if row["kind"] == "conv2d"]
    assert [(row["simd"], row["pass_samples"], row["draw_order"]) for row in conv] == \
        [(1, 2, "hwc"), (2, 2, "hwc")]
    assert "keep bits 4×64, spikes in 4×64)" in md and "| 4 × 2, simd 2, T' 2 |" in md
