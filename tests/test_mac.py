"""The int8 multiply-accumulate reference core (hw/mac.py) equals its numpy model exactly: every
class, every score, and the cycle count of the schedule, image by image."""

import shutil

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw import mac
from hw.mac import MacCore, MacError, MacLayer, MacNet, random_mac_net


def _simulate(net, pixels, ram_model=True, stall_every=0):
    """Stream ``pixels`` through the core (after the weight image, if any); return classes,
    scores and the cycles from each last-pixel handshake to ``m_axis_tvalid``."""
    dut = MacCore(net, ram_model=ram_model)
    sb, C = dut.score_bits, net.n_classes
    out = {"cls": [], "scores": [], "latency": []}

    async def bench(ctx):
        image = mac.mac_weight_image(net)
        if image:
            ctx.set(dut.w_axis_tvalid, 1)
            for k, beat in enumerate(image):
                ctx.set(dut.w_axis_tdata, beat)
                await ctx.tick()
            ctx.set(dut.w_axis_tvalid, 0)
            while not ctx.get(dut.s_axis_tready):
                await ctx.tick()
        for img in pixels:
            k = 0
            while k < len(img):
                stall = stall_every and (k % stall_every == stall_every - 1) and \
                    not getattr(bench, "stalled", False)
                bench.stalled = stall
                ctx.set(dut.s_axis_tvalid, 0 if stall else 1)
                ctx.set(dut.s_axis_tdata, int(img[k]))
                ready = ctx.get(dut.s_axis_tready)
                await ctx.tick()
                if ready and not stall:
                    k += 1
            ctx.set(dut.s_axis_tvalid, 0)
            cycles = 0
            while not ctx.get(dut.m_axis_tvalid):
                await ctx.tick()
                cycles += 1
            out["latency"].append(cycles)
            out["cls"].append(ctx.get(dut.m_axis_tdata))
            word = ctx.get(dut.m_axis_tuser)
            sc = [(word >> (c * sb)) & ((1 << sb) - 1) for c in range(C)]
            out["scores"].append([s - (1 << sb) if s >> (sb - 1) else s for s in sc])
            ctx.set(dut.m_axis_tready, 1)
            await ctx.tick()
            ctx.set(dut.m_axis_tready, 0)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return np.array(out["cls"]), np.array(out["scores"]), np.array(out["latency"])


@pytest.mark.parametrize("sizes,pe,wb,store", [
    ([20, 12, 5], 4, 8, ["rom", "rom"]),
    ([20, 12, 5], 4, 8, ["ram", "rom"]),
    ([17, 9, 6, 3], 3, 3, ["ram", "ram", "rom"]),
    ([9, 4], 1, 8, "ram"),
])
def test_core_equals_the_integer_model(sizes, pe, wb, store):
    rng = np.random.default_rng(5)
    net = random_mac_net(rng, sizes, pe, weight_bits=wb, weight_store=store)
    pixels = rng.integers(0, 256, (4, sizes[0]))
    pixels[0] = 255                                       # saturates the ReLU
    pixels[1] = 0
    cls, scores, latency = _simulate(net, pixels, stall_every=5 if pe == 3 else 0)
    want_cls, want_scores = mac.mac_reference(net, pixels)
    assert scores.tolist() == want_scores.tolist()
    assert cls.tolist() == want_cls.tolist()
    assert latency.tolist() == [mac.mac_latency_cycles(net)] * len(pixels)


def test_hidden_activations_clip_at_both_ends():
    rng = np.random.default_rng(1)
    net = random_mac_net(rng, [20, 12, 5], 4)
    a = np.clip((rng.integers(0, 256, (50, 20)) @ net.layers[0].weights.T
                 + net.layers[0].bias) >> net.layers[0].shift, 0, 255)
    assert (a == 0).any() and (a == 255).any() and ((a > 0) & (a < 255)).any()


def test_ties_go_to_the_lowest_class():
    w = np.zeros((3, 4), dtype=np.int64)
    net = MacNet((MacLayer(w, np.array([5, 7, 7])),), pe=2)
    cls, scores, _ = _simulate(net, np.full((1, 4), 9))
    assert cls.tolist() == [1] and scores.tolist() == [[5, 7, 7]]
    assert mac.mac_reference(net, np.full((1, 4), 9))[0].tolist() == [1]


def test_bad_networks_fail_with_one_line():
    w = np.ones((3, 4), dtype=np.int64)
    with pytest.raises(MacError, match="weights outside"):
        MacNet((MacLayer(w * 200, np.zeros(3)),), pe=2).validate()
    with pytest.raises(MacError, match="takes 5 inputs"):
        MacNet((MacLayer(w, np.zeros(3)), MacLayer(np.ones((2, 5)), np.zeros(2))), 2).validate()
    with pytest.raises(MacError, match="pe 0"):
        MacNet((MacLayer(w, np.zeros(3)),), pe=0).validate()
    with pytest.raises(MacError, match="weight_store 'flash'"):
        MacNet((MacLayer(w, np.zeros(3), weight_store="flash"),), pe=2).validate()
    with pytest.raises(MacError, match=r"\(N, 4\)"):
        mac.mac_reference(MacNet((MacLayer(w, np.zeros(3)),), pe=2), np.full((1, 4), 300))


def test_cycle_model_and_dense_bound():
    net = random_mac_net(np.random.default_rng(0), [784, 128, 10], 8)
    # 16 groups x (784 + 4) + 2 x (128 + 4) + argmax 11, after 784 pixels, + 1 to hand over
    assert mac.mac_latency_cycles(net) == 16 * 788 + 2 * 132 + 11
    assert mac.mac_cycles_per_inference(net) == 784 + 16 * 788 + 2 * 132 + 11 + 1
    assert mac.mac_dense_bound(net) == (784 * 128 + 128 * 10) / 8


def test_verilog_uses_the_ram_module_only_for_ram_layers():
    rng = np.random.default_rng(2)
    rom = mac.generate_mac_verilog(random_mac_net(rng, [20, 12, 5], 4, name="mac_rom"))
    ram = mac.generate_mac_verilog(random_mac_net(rng, [20, 12, 5], 4, weight_store="ram"))
    assert "module mac_rom" in rom and "nsm_ram16" not in rom
    assert "module mac(" in ram.replace(" (", "(") and "module nsm_ram16" in ram
    assert "w_axis_tdata" in ram and "w_axis_tdata" not in rom


@pytest.mark.synth
def test_multipliers_map_to_dsps(tmp_path):
    from hw import synth
    net = random_mac_net(np.random.default_rng(3), [16, 8, 4], 4)
    v = tmp_path / "mac.v"
    v.write_text(mac.generate_mac_verilog(net))
    for target, dsp in (("ice40-up5k", "SB_MAC16"), ("ecp5-25k", "MULT18X18D")):
        r = synth.synthesize(v, net.name, target, tmp_path / target, log=lambda m: None)
        assert r["dsps"]["used"] == net.pe == r["yosys_cells"][dsp]
