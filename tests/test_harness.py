"""The Verilator harness (``sim/harness.cpp``), the lean bench of long co-simulations: on every
kind of core it records what the cocotb bench records on the same streams (classes, scores,
samples used, latencies and handshake intervals, integer for integer), and both equal the
golden model; a core that stops producing results fails in one line instead of hanging; the
bench choice refuses what the harness cannot do."""

import numpy as np
import pytest

import sim.runner as runner
from hw.top import generate_verilog
from hw.top import weight_image
from nsm_export import golden, schedule
from nsm_export.build import IntLayer, build_ir
from nsm_export.early_exit import EarlyExit
from nsm_export.testing import (random_conv_ir, random_ir, random_pixels, random_pop_conv_ir,
                                random_pop_ir, random_weights)
from sim.runner import SimError, compare, pick_bench, run_rtl


def _kept_list(rng):
    return random_ir(rng, sizes=[21, 24, 7], pe=[8, 7], weight_bits=2, p=[0.75, 0.5], samples=3,
                     seed=5, lfsr_width=16, lanes=[4, 1])


def _kept_list_conv(rng):
    return random_conv_ir(rng)


def _popcount_dense(rng):
    return random_pop_ir(rng)


def _popcount_ram_wide(rng):
    """RAM weights through w_axis on both layers, ten classes: m_axis_tuser past 64 bits."""
    sizes = [13, 12, 10]
    layers = [IntLayer(random_weights(rng, 4, (b, a)), rng.integers(-a // 3, a // 3 + 1, size=b),
                       0.75, 4) for a, b in zip(sizes, sizes[1:])]
    ir = build_ir(layers, input_size=13, input_threshold=90, samples=5, pe=[4, 5], seed=3,
                  lanes=[4, 2], simd=[4, 4], pass_samples=2, weight_store="ram")
    assert weight_image(ir) and ir.n_classes * ir.score_bits > 64
    return ir


def _popcount_conv_early_exit(rng):
    ir = random_pop_conv_ir(rng, samples=6, pass_samples=2)
    ir.early_exit = EarlyExit("margin", 48)
    ir.validate()
    return ir


CORES = [
    pytest.param(_kept_list, 1, id="kept-list-dense"),
    pytest.param(_kept_list_conv, 2, id="kept-list-conv", marks=pytest.mark.slow),
    pytest.param(_popcount_dense, 3, id="popcount-dense"),
    pytest.param(_popcount_ram_wide, 5, id="popcount-ram-weights-wide-scores",
                 marks=pytest.mark.slow),
    pytest.param(_popcount_conv_early_exit, 4, id="popcount-conv-early-exit",
                 marks=pytest.mark.slow),
]


def _verilog(tmp_path, ir):
    path = tmp_path / f"{ir.name}.v"
    path.write_text(generate_verilog(ir))
    return path


@pytest.mark.verilator
@pytest.mark.parametrize("make,seed", CORES)
def test_the_harness_records_what_the_cocotb_bench_records(tmp_path, make, seed):
    rng = np.random.default_rng(seed)
    ir = make(rng)
    px = random_pixels(rng, ir, 8)
    verilog = _verilog(tmp_path, ir)
    fast = run_rtl(verilog, ir, px, simulator="verilator", work_dir=tmp_path / "h",
                   bench="auto")                                  # the harness
    slow = run_rtl(verilog, ir, px, simulator="verilator", work_dir=tmp_path / "c")
    for field in ("classes", "scores", "samples", "latency"):
        assert getattr(fast, field).tolist() == getattr(slow, field).tolist(), field
    assert np.diff(fast.done_at).tolist() == np.diff(slow.done_at).tolist()
    # The same timeline up to its origin (the cocotb drivers start a cycle or two later).
    assert (fast.done_at - fast.last_pixel).tolist() == (slow.done_at - slow.last_pixel).tolist()
    exp = golden.run(ir, px, record=True)
    cmp = compare(exp, fast)
    assert cmp.mismatches == 0, cmp.first_mismatch
    assert fast.latency.tolist() == schedule.latency_cycles(ir, exp.masks, exp.samples).tolist()
    assert (tmp_path / "h" / "build_harness" / "Vtop").is_file()
    assert not (tmp_path / "h" / "build_verilator").exists()


def test_records_decode_to_signed_scores_and_samples(tmp_path):
    """Hand-made records: negative scores, a field across a 32-bit word, the samples used
    above the scores; a file of the wrong size is one line."""
    rng = np.random.default_rng(11)
    ir = random_pop_conv_ir(rng, samples=6, pass_samples=2)
    ir.early_exit = EarlyExit("margin", 48)
    C, sb = ir.n_classes, ir.score_bits
    scores = rng.integers(-(1 << (sb - 1)), 1 << (sb - 1), size=(3, C))
    used = [2, 6, 4]
    words = -(-(C * sb + 3) // 32)
    recs = b""
    for n in range(3):
        u = sum((int(v) & ((1 << sb) - 1)) << (c * sb) for c, v in enumerate(scores[n]))
        u |= used[n] << (C * sb)
        recs += np.array([n % C, 100 * n + 9, 100 * n + 10, 100 * n], "<i8").tobytes()
        recs += np.array([(u >> (32 * i)) & 0xFFFFFFFF for i in range(words)], "<u4").tobytes()
    (tmp_path / "rtl.bin").write_bytes(recs)
    r = runner._read_harness(tmp_path / "rtl.bin", ir, 3, 0.0, 0.0)
    assert r.scores.tolist() == scores.tolist() and r.samples.tolist() == used
    assert r.classes.tolist() == [0, 1, 2] and r.latency.tolist() == [9, 9, 9]
    assert r.done_at.tolist() == [10, 110, 210] and r.last_pixel.tolist() == [0, 100, 200]
    (tmp_path / "rtl.bin").write_bytes(recs[:-4])
    with pytest.raises(SimError, match=r"rtl\.bin: \d+ bytes are not 3 harness records"):
        runner._read_harness(tmp_path / "rtl.bin", ir, 3, 0.0, 0.0)


@pytest.mark.verilator
def test_a_core_that_stops_answering_is_one_line(tmp_path, monkeypatch):
    rng = np.random.default_rng(7)
    ir = random_pop_ir(rng)
    px = random_pixels(rng, ir, 3)
    monkeypatch.setattr(runner, "_max_cycles", lambda ir, images: 50)
    with pytest.raises(SimError, match=r"harness failed on nsm\.v: harness: 0 of 3 results "
                                       r"after 50 cycles \(the limit\)"):
        run_rtl(_verilog(tmp_path, ir), ir, px, simulator="verilator", work_dir=tmp_path,
                bench="harness")


def test_the_bench_choice():
    assert pick_bench("verilator") == "harness"
    assert pick_bench("icarus") == "cocotb"
    assert pick_bench("verilator", asked=["stalls"]) == "cocotb"
    assert pick_bench("verilator", "cocotb") == "cocotb"
    assert runner.cocotb_only(in_idle_prob=0.1, resets=[(1, 2)], waves=True) == \
        ["stalls", "resets", "waves"]
    assert runner.cocotb_only() == []
    with pytest.raises(ValueError, match="not with the icarus simulator"):
        pick_bench("icarus", "harness")
    with pytest.raises(ValueError, match="not with spike vectors"):
        pick_bench("verilator", "harness", ["spike vectors"])
    with pytest.raises(ValueError, match="choose from auto, cocotb, harness"):
        pick_bench("verilator", "fast")
    with pytest.raises(ValueError, match="not with seeds"):
        run_rtl("nsm.v", None, np.zeros((1, 1)), simulator="verilator", seeds=[(0, 5)],
                bench="harness")


def test_nsm_sim_refuses_the_harness_where_it_cannot_run(tmp_path):
    from click.testing import CliRunner

    from nsm.cli import main
    for args, why in ((["--bench", "harness"], "not with the icarus simulator"),
                      (["--simulator", "verilator", "--bench", "harness", "--spikes"],
                       "not with spike vectors")):
        res = CliRunner().invoke(main, ["sim", str(tmp_path / "build"), *args])
        assert res.exit_code == 2 and why in res.output, res.output
        assert not (tmp_path / "build").exists()
