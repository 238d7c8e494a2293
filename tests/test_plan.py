"""The hardware plan (nsm_export.plan): what it says about engines and links, and that the
pipeline depths it defines are the ones both the Amaranth engines and the cycle model use."""

import numpy as np
import pytest
from amaranth.sim import Simulator

import hw.conv
import hw.dense
import nsm_export.layers.conv
import nsm_export.layers.dense
from hw.top import NsmCore
from nsm_export import golden, plan as planmod, schedule
from nsm_export.build import IntConv, IntLayer, IntPool, build_ir
from nsm_export.plan import plan


def _conv_net(rng, line_rows=False):
    def w(*shape):
        return rng.choice([-1, 1], shape)
    layers = [IntConv(w(3, 1, 3, 3), rng.integers(-2, 3, 3), 0.75, 1, h_in=8, w_in=8,
                      stride=1, padding=1),
              IntPool(3, 8, 8, 2, "or"),
              IntConv(w(4, 3, 3, 3), rng.integers(-3, 4, 4), 0.75, 1, h_in=4, w_in=4,
                      stride=1, padding=0),
              IntLayer(w(5, 16), rng.integers(-2, 3, 5), 0.5, 1),
              IntLayer(w(3, 5), rng.integers(-2, 3, 3), 0.75, 1)]
    ir = build_ir(layers, input_size=64, input_threshold=100, samples=2,
                  pe=[2, 1, 4, 4, 3], lanes=[1, 1, 2, 2, 1])
    if line_rows:
        ir.layers[2].line_rows = 3
        ir.validate()
    return ir


def test_plan_engines_and_links(rng):
    ir = _conv_net(rng)
    p = plan(ir)
    assert [e.index for e in p] == [0, 2, 3, 4]            # the pooling layer has no engine
    assert p[0].pool is ir.layers[1] and p[1].pool is None
    assert [e.consumer for e in p] == ["map", "bits", None, None]
    assert [e.linked for e in p] == [True, True, True, False]   # pe 4 writes a spike word
    assert [e.fed for e in p] == [False, True, True, True]
    assert [e.double for e in p] == [False, True, True, True]
    assert [e.spike_memory for e in p[2:]] == [True, True]
    assert not p.gated and not p.stochastic
    assert p[1].memories()["map"]["depth"] == 32             # 16 pixels, two halves of 16


def test_plan_line_buffer_and_debug(rng):
    p = plan(_conv_net(rng, line_rows=True))
    assert p[0].ring_out == 3 and p[0].streams and p[0].gated and p[1].gated
    assert not p[1].double and p[1].memories()["map"]["depth"] == 3 * 4
    mlp = build_ir([IntLayer(rng.choice([-1, 1], (4, 6)), np.zeros(4, int), 0.5, 1),
                    IntLayer(rng.choice([-1, 1], (3, 4)), np.zeros(3, int), 0.5, 1)],
                   input_size=6, input_threshold=1, samples=1, pe=[4, 3])
    assert plan(mlp)[0].linked and not plan(mlp, debug=True)[0].linked


def _latencies(ir, pixels):
    """Per image, cycles from the last pixel's handshake to m_axis_tvalid, simulated."""
    dut = NsmCore(ir, rom_modules=False)
    seen = []

    async def bench(ctx):
        ctx.set(dut.m_axis_tready, 1)
        for row in pixels:
            for k, v in enumerate(row):
                ctx.set(dut.s_axis_tdata, int(v))
                ctx.set(dut.s_axis_tvalid, 1)
                await ctx.tick().until(dut.s_axis_tready)
            ctx.set(dut.s_axis_tvalid, 0)
            n = 0
            while not ctx.get(dut.m_axis_tvalid):
                await ctx.tick()
                n += 1
            seen.append(n)
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return seen


@pytest.mark.parametrize("extra", [pytest.param(0, marks=pytest.mark.slow), 1])
def test_depths_move_engines_and_cycle_model_together(rng, monkeypatch, extra):
    """One more cycle in every fixed pipeline stage of the plan: the engines build it and the
    cycle model counts it, so simulation and model still agree image by image."""
    for mod in (hw.dense, nsm_export.layers.dense):
        monkeypatch.setattr(mod, "MASK_FLUSH", planmod.MASK_FLUSH + extra)
    for mod in (hw.conv, nsm_export.layers.conv):
        monkeypatch.setattr(mod, "BUILD_FLUSH", planmod.BUILD_FLUSH + extra)
    monkeypatch.setattr(hw.conv, "DRAIN", planmod.DRAIN + extra)
    monkeypatch.setattr(nsm_export.layers.conv, "GROUP_OVERHEAD",
                        planmod.GROUP_OVERHEAD + extra)
    grp = planmod.group_overhead
    for mod in (hw.dense, nsm_export.layers.dense):
        monkeypatch.setattr(mod, "group_overhead", lambda simd: grp(simd) + extra)
    ir = _conv_net(rng)
    pixels = rng.integers(0, 256, (2, 64))
    res = golden.run(ir, pixels, record=True)
    model = schedule.latency_cycles(ir, res.masks).tolist()
    assert _latencies(ir, pixels) == model
    if extra:
        monkeypatch.undo()
        assert model != schedule.latency_cycles(ir, res.masks).tolist()
