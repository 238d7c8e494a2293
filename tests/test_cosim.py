"""RTL == golden model, exactly, on random networks (Icarus via cocotb)."""

import numpy as np
import pytest

from hw.top import generate_verilog
from nsm_export import golden, schedule
from nsm_export.random_ir import random_ir, random_pixels
from sim.runner import compare, run_rtl

CASES = [
    # sizes, pe per layer, weight bits, keep probabilities, T, seed
    pytest.param([13, 7, 5], [3, 2], 3, [0.5, 0.75], 3, 11, id="13-7-5-pe3x2-indivisible"),
    pytest.param([20, 16, 12, 10], [4, 5, 10], 4, [0.5, 1.0, 0.25], 2, 12, id="20-16-12-10-mixed-p"),
    pytest.param([9, 6, 4], [6, 1], 1, [0.75, 0.5], 4, 13, id="9-6-4-binary-weights"),
    pytest.param([16, 5, 3], [5, 3], 8, [1.0, 1.0], 1, 14, id="16-5-3-no-sampling-8bit"),
]


@pytest.mark.icarus
@pytest.mark.parametrize("sizes,pe,wb,p,T,seed", CASES)
def test_rtl_equals_golden(tmp_path, sizes, pe, wb, p, T, seed):
    rng = np.random.default_rng(seed)
    ir = random_ir(rng, sizes=sizes, pe=pe, weight_bits=wb, p=p, samples=T, seed=seed,
                   lfsr_width=16 + seed % 3 * 8)
    vfile = tmp_path / "nsm.v"
    vfile.write_text(generate_verilog(ir))
    px = random_pixels(rng, ir, 24)
    px[0] = 0                                  # all -1 spikes
    px[1] = (1 << ir.input.pixel_bits) - 1     # all +1 spikes
    rtl = run_rtl(vfile, ir, px, work_dir=tmp_path)
    cmp = compare(golden.run(ir, px), rtl)
    assert cmp.mismatches == 0, cmp.first_mismatch
    # The analytic cycle model is exact.
    assert set(rtl.latency.tolist()) == {schedule.latency_cycles(ir)}
    assert set(np.diff(rtl.done_at).tolist()) == {schedule.cycles_per_inference(ir)}


@pytest.mark.icarus
def test_input_idle_gaps_change_nothing(tmp_path):
    rng = np.random.default_rng(5)
    ir = random_ir(rng, sizes=[10, 6, 4], pe=[4, 4], weight_bits=2, p=[0.5, 0.5], samples=2)
    vfile = tmp_path / "nsm.v"
    vfile.write_text(generate_verilog(ir))
    px = random_pixels(rng, ir, 10)
    rtl = run_rtl(vfile, ir, px, work_dir=tmp_path, in_idle_prob=0.4, seed=3)
    assert compare(golden.run(ir, px), rtl).mismatches == 0
    assert set(rtl.latency.tolist()) == {schedule.latency_cycles(ir)}
