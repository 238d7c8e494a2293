"""The popcount conv engine's window streamer (hw/window.py) against its model, beat by beat:
the running word address (no multiplier) equals the formula's, on kernels, strides, zero
padding, poolings, channel chunks and filter groups; with gaps between beats, a restart in the
middle of a pass, and two passes back to back."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.window import FLAGS, WindowWalk, walk_model
from nsm_export.layers import ConvLayer


def _layer(c_in, h, k, stride, pad, c_out, pe, simd):
    rng = np.random.default_rng(0)
    return ConvLayer(c_in=c_in, h_in=h, w_in=h + 1, c_out=c_out, kernel=k, stride=stride,
                     padding=pad, weights=rng.choice([-1, 1], (c_out, c_in, k, k)),
                     offsets=np.zeros(c_out, dtype=np.int64), weight_bits=1, p_num=1,
                     p_bits=1, rng=None, acc_bits=16, offset_bits=1, pe=pe, simd=simd,
                     pass_samples=1, draw_order="hwc")


@pytest.mark.parametrize("c_in,h,k,stride,pad,c_out,pe,simd,pool", [
    (4, 6, 3, 1, 0, 4, 2, 2, 2),      # two chunks, two groups, pooling
    (2, 7, 3, 2, 1, 3, 2, 2, 1),      # stride 2, padding, a partial group
    (8, 5, 2, 1, 1, 2, 2, 4, 2),      # padding under pooling, chunks of 4
    (1, 4, 1, 1, 0, 2, 1, 1, 1),      # 1x1 kernel: one beat a position
    (6, 9, 5, 1, 2, 4, 4, 2, 3),      # 5x5, padding 2, 3x3 pooling, three chunks
])
def test_walk_equals_its_model(c_in, h, k, stride, pad, c_out, pe, simd, pool):
    layer = _layer(c_in, h, k, stride, pad, c_out, pe, simd)
    want = walk_model(layer, pool)
    dut = WindowWalk(layer, pool)
    keys = ("word", "waddr", "inside", *FLAGS)
    rng = np.random.default_rng(k * 7 + pool)
    runs = [[], []]                       # a third of a pass; then, restarted, two passes

    async def bench(ctx):
        for run, beats in zip(runs, (len(want) // 3, 2 * len(want))):
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            while len(run) < beats:
                en = int(rng.random() < 0.7)
                ctx.set(dut.en, en)
                if en:
                    beat = {key: ctx.get(getattr(dut, key)) for key in keys}
                    if not beat["inside"]:
                        beat["word"] = None          # a padding word: gated, any value
                    run.append(beat)
                await ctx.tick()
            ctx.set(dut.en, 0)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    expect = [{**b, "word": b["word"] if b["inside"] else None} for b in want]
    assert runs[0] == expect[:len(runs[0])]
    assert runs[1] == expect + expect
    assert sum(b["pass_last"] for b in want) == 1 and want[-1]["pass_last"]
