"""Line buffers between conv engines (ConvLayer.line_rows): a ring of R input rows written row by
row by the conv engine before, on the same sample. Bit-exact against the golden model, the
row-level cycle model exact image by image, less map memory; IR checks are one line."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from nsm_export.plan import plan
from hw.top import generate_verilog
from nsm_export import ir as irmod, schedule
from nsm_export.build import IntConv, IntLayer, IntPool, build_ir
from nsm_export.ir import IRError, min_line_rows, use_line_buffers
from nsm_export.testing import random_conv_ir, random_pixels
from sim.runner import run_rtl
from tests.support import SIMULATORS
from tests.test_conv_hw import _check, _two_conv_ir


def _three_conv_ir(rng, extra=0):
    """1-channel 20x12 image -> conv 3x3 pad 1 -> OR pool 2 (10x6) -> conv 2x2 pad 1 (11x7)
    -> OR pool 3 (3x2: conv rows 9, 10 and input row 9 never read) -> conv 2x2 stride 2
    pad 1 (2x2) -> output. Line buffers of the fewest rows + ``extra`` on both later convs:
    4 (+extra) of 10 rows, and 2 (+extra, at most 3) of 3."""
    c0 = IntConv(rng.integers(-3, 4, (4, 1, 3, 3)), rng.integers(2, 7, 4), p=0.5,
                 weight_bits=3, h_in=20, w_in=12, stride=1, padding=1)
    c1 = IntConv(rng.integers(-1, 2, (5, 4, 2, 2)), rng.integers(-3, 4, 5), p=0.75,
                 weight_bits=2, h_in=10, w_in=6, stride=1, padding=1)
    c2 = IntConv(rng.integers(-3, 4, (6, 5, 2, 2)), rng.integers(-4, 5, 6), p=0.5,
                 weight_bits=3, h_in=3, w_in=2, stride=2, padding=1)
    out = IntLayer(rng.integers(-3, 4, (3, 24)), rng.integers(-2, 3, 3), p=1.0, weight_bits=3)
    ir = build_ir([c0, IntPool(4, 20, 12, 2, "or"), c1, IntPool(5, 11, 7, 3, "or"), c2, out],
                  input_size=240, input_threshold=90, samples=2, pe=[3, 1, 2, 1, 4, 3],
                  lanes=[1, 1, 2, 1, 4, 1], seed=5)
    assert use_line_buffers(ir, extra) == [2, 4]
    ir.validate()
    return ir


def _with_lines(ir, extra=0):
    assert use_line_buffers(ir, extra)
    ir.validate()
    return ir


def _smem_depth(verilog: str, module: str) -> tuple[int, int]:
    """(word bits, words) of the input map memory in the Verilog module of one engine."""
    body = verilog.split(f"module \\{module} ", 1)[1].split("endmodule", 1)[0]
    hi, depth = re.search(r"reg \[(\d+):0\] smem \[(\d+):0\];", body).groups()
    return int(hi) + 1, int(depth) + 1


@pytest.mark.slow
@pytest.mark.parametrize("simulator", SIMULATORS)
def test_two_conv_layers_with_a_line_buffer_equal_golden(tmp_path, simulator):
    """conv -> pool 2 -> conv with a 2-row ring (its fewest: a 2x2 kernel, no pooling)."""
    rng = np.random.default_rng(1)
    ir = _with_lines(_two_conv_ir(rng))
    assert ir.layers[2].line_rows == 2
    assert [st.ring_out for st in plan(ir)] == [2, 0, 0, 0]
    px = rng.integers(0, 256, size=(6, ir.input.size))
    px[0] = 255
    (tmp_path / "nsm.v").write_text(generate_verilog(ir))
    rtl = run_rtl(tmp_path / "nsm.v", ir, px, simulator=simulator, work_dir=tmp_path)
    _check(ir, px, rtl)
    assert len(set(rtl.latency.tolist())) > 1


@pytest.mark.slow
@pytest.mark.parametrize("simulator,extra", [
    pytest.param("icarus", 0, marks=pytest.mark.icarus),
    pytest.param("icarus", 3, marks=pytest.mark.icarus),
    pytest.param("verilator", 0, marks=pytest.mark.verilator)])
def test_three_conv_layers_stride_padding_pool_2_and_3(tmp_path, simulator, extra):
    """Two line buffers in a row (the middle engine both consumes and produces rows), stride 2
    with padding, pool 2 before and pool 3 after a ring, input rows no pooled row reads; with
    a reset in mid-inference and gaps in the input."""
    rng = np.random.default_rng(8)
    ir = _three_conv_ir(rng, extra)
    assert [ir.layers[i].line_rows for i in (2, 4)] == [4 + extra, min(2 + extra, 3)]
    px = rng.integers(0, 256, size=(4, ir.input.size))
    resets = [(1, 2000)] if extra else []
    (tmp_path / "nsm.v").write_text(generate_verilog(ir))
    rtl = run_rtl(tmp_path / "nsm.v", ir, px, simulator=simulator, work_dir=tmp_path,
                  in_idle_prob=0.2 if extra else 0.0, resets=resets, seed=3)
    _check(ir, px, rtl, resets)


# Random conv nets (up to three conv layers) in which some conv layer is fed by a conv layer.
FUZZ_SEEDS = [3001, 3005, 3016, 3020, 3024, 3027, 3031, 3034, 3035, 3042, 3053, 3054]


@pytest.mark.slow
@pytest.mark.icarus
@pytest.mark.parametrize("seed", FUZZ_SEEDS)
def test_fuzz_random_conv_nets_with_line_buffers(tmp_path, seed):
    rng = np.random.default_rng(seed)
    ir = random_conv_ir(rng, max_conv=3, line_buffer=True)
    assert any(getattr(layer, "line_rows", 0) for layer in ir.layers)
    px = random_pixels(rng, ir, 4)
    (tmp_path / "nsm.v").write_text(generate_verilog(ir))
    rtl = run_rtl(tmp_path / "nsm.v", ir, px, work_dir=tmp_path)
    _check(ir, px, rtl)


def test_line_buffer_uses_fewer_map_memory_bits():
    """The two-conv net: 2 rows of 3 pixel words instead of two halves of 16 (4 bits each)."""
    base = _two_conv_ir(np.random.default_rng(1))
    ring = _with_lines(_two_conv_ir(np.random.default_rng(1)))
    layer = base.layers[2]
    assert layer.c_in * layer.map_depth(True) == 4 * 32
    assert ring.layers[2].c_in * ring.layers[2].map_depth(True) == 4 * 6
    assert _smem_depth(generate_verilog(base), "nsm.layer2") == (4, 32)
    assert _smem_depth(generate_verilog(ring), "nsm.layer2") == (4, 6)
    # The three-conv net: 4 of 10 rows and 2 of 3 rows, against two 64- and 8-word halves.
    three = _three_conv_ir(np.random.default_rng(8))
    assert [three.layers[i].map_depth(True) for i in (2, 4)] == [24, 4]
    for i in (2, 4):
        three.layers[i].line_rows = 0
    assert [three.layers[i].map_depth(True) for i in (2, 4)] == [128, 16]


def test_line_rows_ir_checks_are_one_line(tmp_path):
    ir = _two_conv_ir(np.random.default_rng(1))
    ir.layers[0].line_rows = 3
    with pytest.raises(IRError, match=r"^layers\[0\]\.line_rows 3: a line buffer needs a conv "
                                      r"layer writing this layer's input, not the input image "
                                      r"\(use 0\)$"):
        ir.validate()
    ir.layers[0].line_rows = 0
    ir.layers[2].line_rows = 1
    with pytest.raises(IRError, match=r"^layers\[2\]\.line_rows 1 is below 2: one pooled output "
                                      r"row reads \(pool - 1\) \* stride \+ kernel input rows"):
        ir.validate()
    ir.layers[2].line_rows = 4
    with pytest.raises(IRError, match=r"^layers\[2\]\.line_rows = 4 is outside \[0, 3\]$"):
        ir.validate()
    three = _three_conv_ir(np.random.default_rng(8))
    assert min_line_rows(three.layers[2], three.layers[3]) == 4     # (3 - 1) * 1 + 2
    three.layers[2].line_rows = 3
    with pytest.raises(IRError, match=r"^layers\[2\]\.line_rows 3 is below 4"):
        three.validate()


def test_line_rows_round_trip_and_old_files(tmp_path):
    ir = _with_lines(_two_conv_ir(np.random.default_rng(1)), extra=1)
    irmod.save(ir, tmp_path / "a")
    meta = json.loads((tmp_path / "a" / "ir.json").read_text())
    assert meta["layers"][2]["line_rows"] == 3
    assert "line_rows" not in meta["layers"][0]          # 0 is not written: old files unchanged
    assert irmod.load(tmp_path / "a").layers[2].line_rows == 3
    del meta["layers"][2]["line_rows"]                   # a file from before the field
    (tmp_path / "a" / "ir.json").write_text(json.dumps(meta))
    assert irmod.load(tmp_path / "a").layers[2].line_rows == 0


def test_row_model_cost_and_folding_estimates():
    """The streaming pair works on one sample at a time, so it takes more cycles than the
    double buffer (here); the folding search's array durations give the scalar schedule per
    element, and an all-even split of rows equals the model's per-row means when rows cost
    alike."""
    base = _two_conv_ir(np.random.default_rng(1))
    ring = _with_lines(_two_conv_ir(np.random.default_rng(1)))
    assert schedule.expected_cycles_per_inference(ring) > \
        schedule.expected_cycles_per_inference(base)
    per = [2000.0, 0.0, 900.0, 300.0, 60.0]
    arr = [np.array([d, d + 7.0]) for d in per]
    both = schedule.expected_cycles_per_inference(ring, arr)
    assert both[0] == schedule.expected_cycles_per_inference(ring, per)
    assert both[1] == schedule.expected_cycles_per_inference(ring, [d + 7.0 for d in per])
    # A bigger ring lets the producer run ahead by whole pooled rows: never slower here.
    wide = _with_lines(_two_conv_ir(np.random.default_rng(1)), extra=1)
    assert schedule.expected_cycles_per_inference(wide) <= \
        schedule.expected_cycles_per_inference(ring)
