"""The int8 multiply-accumulate baseline core (hw/baseline_mac.py) equals its numpy model exactly:
every class, every score, and the cycle count of the schedule, image by image."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw import baseline_mac as mac
from hw.baseline_mac import (MacConv, MacCore, MacError, MacLayer, MacNet, random_mac_conv_net,
                             random_mac_net)
from tests.support import verilog_modules, verilog_ports


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


def _assert_core_equals_model(net, pixels, stall_every=0):
    """Every score, every class and every image's latency of the core equal the model's."""
    cls, scores, latency = _simulate(net, pixels, stall_every=stall_every)
    want_cls, want_scores = mac.mac_reference(net, pixels)
    assert scores.tolist() == want_scores.tolist()
    assert cls.tolist() == want_cls.tolist()
    assert latency.tolist() == [mac.mac_latency_cycles(net)] * len(pixels)


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
    _assert_core_equals_model(net, pixels, stall_every=5 if pe == 3 else 0)


# (input shape, convs as (c_out, kernel, stride, padding, pool), dense sizes, pe, bits, stores)
CONV_CASES = [
    ((1, 8, 8), [(4, 3, 1, 1, 2), (6, 2, 1, 0, 1)], [5], 4, 8, "rom"),
    ((2, 9, 8), [(5, 3, 1, 1, 2), (6, 2, 2, 0, 1)], [7, 4], 3, 4, ["ram", "rom", "ram", "rom"]),
    ((3, 7, 7), [(2, 3, 2, 2, 3)], [3], 1, 8, "ram"),
    ((1, 6, 5), [(3, 1, 1, 0, 1), (7, 3, 1, 0, 1)], [2], 8, 2, ["rom", "ram", "rom"]),
]


@pytest.mark.parametrize("shape,convs,sizes,pe,wb,store", CONV_CASES)
def test_conv_core_equals_the_integer_model(shape, convs, sizes, pe, wb, store):
    """Conv layers (padding, stride, max pooling, several input channels, pe not dividing the
    channels, pe above them) then dense ones: every score and the cycle count, exactly."""
    rng = np.random.default_rng(11)
    net = random_mac_conv_net(rng, shape, convs, sizes, pe, weight_bits=wb, weight_store=store)
    pixels = rng.integers(0, 256, (3, net.n_in))
    pixels[0] = 255
    _assert_core_equals_model(net, pixels, stall_every=4 if pe == 3 else 0)


def _random_conv_case(rng):
    """A random conv MAC net: 1-2 conv layers (kernel, stride, padding, pooling drawn), 1-2
    dense layers, pe 1-5, weights 2-8 bits, each layer in ROM or RAM."""
    shape = (int(rng.integers(1, 4)), int(rng.integers(4, 11)), int(rng.integers(4, 11)))
    convs, c, h, w = [], *shape
    for _ in range(int(rng.integers(1, 3))):
        k = int(rng.integers(1, min(4, h, w) + 1))
        s, pad = int(rng.integers(1, 3)), int(rng.integers(0, k))
        oh, ow = (h + 2 * pad - k) // s + 1, (w + 2 * pad - k) // s + 1
        pool = int(rng.integers(1, 3)) if min(oh, ow) >= 2 else 1
        c, h, w = int(rng.integers(1, 7)), oh // pool, ow // pool
        convs.append((c, k, s, pad, pool))
        if min(h, w) < 2:
            break
    sizes = [int(rng.integers(2, 9)) for _ in range(int(rng.integers(0, 2)))] \
        + [int(rng.integers(2, 6))]
    stores = [str(x) for x in rng.choice(["rom", "ram"], len(convs) + len(sizes))]
    return random_mac_conv_net(rng, shape, convs, sizes, int(rng.integers(1, 6)),
                               weight_bits=int(rng.integers(2, 9)), weight_store=stores)


@pytest.mark.parametrize("seed", range(1000, 1008))
def test_random_conv_nets_equal_the_integer_model(seed):
    rng = np.random.default_rng(seed)
    net = _random_conv_case(rng)
    pixels = rng.integers(0, 256, (2, net.n_in))
    _assert_core_equals_model(net, pixels)


def test_conv_model_is_conv_relu_maxpool():
    """mac_reference's conv layer against torch's conv2d, floor shift, clamp and max pooling."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    net = random_mac_conv_net(rng, (2, 11, 10), [(4, 3, 2, 1, 2)], [3], 2)
    conv = net.layers[0]
    x = rng.integers(0, 256, (5, net.n_in))
    net.layers[0].weights[1] = abs(net.layers[0].weights[1])    # a channel that saturates
    t = torch.nn.functional.conv2d(torch.tensor(x, dtype=torch.float64).reshape(5, 2, 11, 10),
                                   torch.tensor(conv.weights, dtype=torch.float64),
                                   torch.tensor(conv.bias, dtype=torch.float64), stride=2,
                                   padding=1)
    t = torch.nn.functional.max_pool2d(torch.clamp(torch.floor(t / 2 ** conv.shift), 0, 255), 2)
    a = t.reshape(5, -1).numpy().astype(np.int64)
    want = a @ net.layers[1].weights.T + net.layers[1].bias
    assert mac.mac_reference(net, x)[1].tolist() == want.tolist()
    assert (a == 0).any() and (a == 255).any()


def test_conv_cycle_model():
    net = random_mac_conv_net(np.random.default_rng(0), (1, 28, 28),
                              [(16, 5, 1, 0, 2), (32, 5, 1, 0, 2)], [128, 10], 8)
    # conv1: 2 groups x 12 x 12 pooled pixels x (4 positions x (25 taps + 4) + 1);
    # conv2: 4 groups x 4 x 4 x (4 x (400 + 4) + 1); dense 512 -> 128 -> 10
    want = 2 * 144 * (4 * 29 + 1) + 4 * 16 * (4 * 404 + 1) + 16 * 516 + 2 * 132 + 11
    assert mac.mac_latency_cycles(net) == want
    assert mac.mac_multiplies(net) == 24 * 24 * 25 * 16 + 8 * 8 * 400 * 32 + 512 * 128 + 1280


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
    conv = MacConv(np.ones((2, 1, 3, 3), dtype=np.int64), np.zeros(2))
    with pytest.raises(MacError, match="needs the network's input_shape"):
        MacNet((conv, MacLayer(np.ones((3, 8)), np.zeros(3))), 2).validate()
    with pytest.raises(MacError, match="last layer must be a dense"):
        MacNet((conv,), 2, input_shape=(1, 4, 4)).validate()
    with pytest.raises(MacError, match="takes 1 channels, its input has 3"):
        MacNet((conv, MacLayer(np.ones((3, 8)), np.zeros(3))), 2, input_shape=(3, 4, 4)).validate()
    with pytest.raises(MacError, match="leave no output"):
        MacNet((conv, MacLayer(np.ones((3, 8)), np.zeros(3))), 2, input_shape=(1, 2, 2)).validate()
    with pytest.raises(MacError, match="layers\\[1\\] takes 9 inputs, layer 0 gives 8"):
        MacNet((conv, MacLayer(np.ones((3, 9)), np.zeros(3))), 2, input_shape=(1, 4, 4)).validate()
    with pytest.raises(MacError, match="after a dense layer"):
        MacNet((MacLayer(np.ones((16, 4)), np.zeros(16)), conv, MacLayer(w, np.zeros(3))), 2,
               input_shape=(1, 2, 2)).validate()
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
    assert "nsm_ram16" not in verilog_modules(rom) and "nsm_ram16" in verilog_modules(ram)
    assert "w_axis_tdata" in verilog_ports(ram, "mac")
    assert "w_axis_tdata" not in verilog_ports(rom, "mac_rom")


@pytest.mark.slow
@pytest.mark.synth
@pytest.mark.parametrize("conv", [False, True], ids=["mlp", "conv"])
def test_multipliers_map_to_dsps(tmp_path, conv):
    """The lanes' multipliers and nothing else: the conv walk's addresses are running sums."""
    from hw import synth
    rng = np.random.default_rng(3)
    net = random_mac_conv_net(rng, (2, 10, 9), [(5, 3, 2, 1, 2)], [8, 4], 4) if conv \
        else random_mac_net(rng, [16, 8, 4], 4)
    v = tmp_path / "mac.v"
    v.write_text(mac.generate_mac_verilog(net))
    for target, dsp in (("ice40-up5k", "SB_MAC16"), ("ecp5-25k", "MULT18X18D")):
        r = synth.synthesize(v, net.name, target, tmp_path / target, log=lambda m: None)
        assert r["dsps"]["used"] == net.pe == r["yosys_cells"][dsp]
