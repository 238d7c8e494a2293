"""The Verilator harness (``sim/harness.cpp``), the lean bench of long co-simulations: on every
kind of core it records what the cocotb bench records on the same streams (classes, scores,
samples used, latencies and handshake intervals, integer for integer), and both equal the
golden model; a core that stops producing results fails in one line instead of hanging; the
bench choice refuses what the harness cannot do."""

import numpy as np
import pytest

import sim.runner as runner
from hw.top import generate_verilog
from nsm_export import golden, schedule
from nsm_export.early_exit import EarlyExit
from nsm_export.testing import (random_conv_ir, random_ir, random_pixels, random_pop_conv_ir,
                                random_pop_ir)
from sim.runner import SimError, compare, pick_bench, run_rtl


def _kept_list(rng):
    return random_ir(rng, sizes=[21, 24, 7], pe=[8, 7], weight_bits=2, p=[0.75, 0.5], samples=3,
                     seed=5, lfsr_width=16, lanes=[4, 1])


def _kept_list_conv(rng):
    return random_conv_ir(rng)


def _popcount_dense(rng):
    return random_pop_ir(rng)


def _popcount_conv_early_exit(rng):
    ir = random_pop_conv_ir(rng, samples=6, pass_samples=2)
    ir.early_exit = EarlyExit("margin", 48)
    ir.validate()
    return ir


CORES = [
    pytest.param(_kept_list, 1, id="kept-list-dense"),
    pytest.param(_kept_list_conv, 2, id="kept-list-conv", marks=pytest.mark.slow),
    pytest.param(_popcount_dense, 3, id="popcount-dense"),
    pytest.param(_popcount_conv_early_exit, 4, id="popcount-conv-early-exit"),
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
                   bench="harness")
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
