"""The popcount core (``hw.pdense`` and ``hw.pconv`` engines in ``hw.ptop``'s pass pipeline):
RTL == golden model, exactly, and the cycle model exact image by image, on random dense and
conv networks, with input gaps, output back-pressure, resets and run seeds; and the IRs it
refuses, each in one line."""

import json

import numpy as np
import pytest

from hw.dense import pop_weight_words
from hw.top import HardwareError, generate_verilog, weight_image
from nsm_export import golden, schedule
from nsm_export.build import IntConv, IntLayer, IntPool, build_ir
from nsm_export.plan import POP_DRAIN, plan
from nsm_export.testing import (random_conv_ir, random_ir, random_pixels, random_pop_conv_ir,
                                random_pop_ir, random_weights)
from sim.runner import compare, golden_with_resets, run_rtl
from tests.support import SIMULATORS


def _build(tmp_path, ir):
    path = tmp_path / f"{ir.name}.v"
    path.write_text(generate_verilog(ir))
    return path


def _exact(tmp_path, ir, px, simulator="icarus"):
    """Images back to back: bit-exact, and every latency and handshake interval the cycle
    model's."""
    rtl = run_rtl(_build(tmp_path, ir), ir, px, simulator=simulator, work_dir=tmp_path)
    exp = golden.run(ir, px, record=True)
    cmp = compare(exp, rtl)
    assert cmp.mismatches == 0, cmp.first_mismatch
    assert rtl.latency.tolist() == schedule.latency_cycles(ir, exp.masks).tolist()
    assert np.diff(rtl.done_at).tolist() == schedule.cycles_per_inference(ir, exp.masks)[1:] \
        .tolist()


def _net(sizes, pe, simd, lanes, p, T, tp, wb=2, seed=0, thresholds=None):
    rng = np.random.default_rng(seed)
    n_in = [sizes[0] * (len(thresholds) if thresholds else 1)] + sizes[1:-1]
    layers = [IntLayer(random_weights(rng, wb, (b, a)),
                       rng.integers(-a // 3, a // 3 + 1, size=b), pv, wb)
              for a, b, pv in zip(n_in, sizes[1:], p)]
    return build_ir(layers, input_size=sizes[0], input_threshold=90, samples=T, pe=pe,
                    seed=seed + 1, lanes=lanes, simd=simd, pass_samples=tp,
                    thresholds=thresholds)


# Each write path into the next spike store, T' dividing T or not, no blank-out, binary and
# 8-bit weights, a thermometer code, partial last words and groups.
CASES = [
    # sizes, pe, simd, lanes, p, T, T', weight bits, thermometer thresholds
    pytest.param([13, 8, 4], [6, 2], [1, 1], [1, 1], [1.0, 1.0], 2, 2, 2, None,
                 id="pe6-into-simd1-chunks-partial-group"),
    pytest.param([13, 12, 5], [2, 5], [4, 8], [4, 2], [0.5, 0.75], 5, 2, 3, None,
                 id="pe2-into-simd8-Tp2-of-5"),
    pytest.param([9, 16, 10], [8, 5], [2, 4], [2, 4], [0.75, 0.5], 4, 3, 1, None,
                 id="binary-pe8-into-simd4-Tp3-of-4"),
    pytest.param([7, 6, 3], [6, 3], [8, 2], [8, 1], [0.25, 1.0], 3, 3, 8, (40, 120, 200, 250),
                 id="thermometer4-simd8-8bit"),
    # 15 classes, one short pass: the result's copy and scan set the pace (fuzz seed 30)
    pytest.param([5, 15], [12], [16], [2], [0.9], 1, 1, 2, None, id="result-stage-bound"),
]


@pytest.mark.icarus
@pytest.mark.parametrize("sizes,pe,simd,lanes,p,T,tp,wb,thr", CASES)
def test_cases_equal_golden_and_cycle_model(tmp_path, sizes, pe, simd, lanes, p, T, tp, wb, thr):
    ir = _net(sizes, pe, simd, lanes, p, T, tp, wb, thresholds=thr)
    assert plan(ir).popcount
    _exact(tmp_path, ir, random_pixels(np.random.default_rng(1), ir, 6))


@pytest.mark.icarus
@pytest.mark.parametrize("case", [pytest.param(c.values, id=c.id) for c in (CASES[1], CASES[3])])
def test_input_stage_cores_equal_golden_and_cycle_model(tmp_path, case):
    """The IR's ``input_stage`` on dense popcount cores (hidden and output engines): bit-exact,
    every latency and interval the cycle model's."""
    sizes, pe, simd, lanes, p, T, tp, wb, thr = case
    ir = _net(sizes, pe, simd, lanes, p, T, tp, wb, thresholds=thr)
    ir.input_stage = True
    _exact(tmp_path, ir, random_pixels(np.random.default_rng(1), ir, 6))


@pytest.mark.slow
@pytest.mark.parametrize("simulator", SIMULATORS)
@pytest.mark.parametrize("seed", range(6))
def test_random_networks_equal_golden_and_cycle_model(tmp_path, simulator, seed):
    rng = np.random.default_rng(1000 + seed)
    ir = random_pop_ir(rng)
    ir.input_stage = bool(seed % 2)       # half of them with the accumulators' input stage
    _exact(tmp_path, ir, random_pixels(rng, ir, 8), simulator)


@pytest.mark.slow
@pytest.mark.parametrize("simulator", SIMULATORS)
def test_gaps_backpressure_resets_and_seeds(tmp_path, simulator):
    """Input gaps and output stalls: the results stay exact, and every result goes valid in the
    cycle the model gives for the observed pixel and result handshakes. Then resets in the
    middle of images (the pipeline holds two) and run seeds: still the golden model's."""
    rng = np.random.default_rng(7)
    ir = _net([11, 8, 6, 4], [4, 2, 4], [2, 4, 2], [2, 4, 1], [0.5, 0.75, 0.5], 5, 2, 2)
    px = random_pixels(rng, ir, 10)
    rtl = run_rtl(_build(tmp_path, ir), ir, px, simulator=simulator, work_dir=tmp_path,
                  in_idle_prob=0.3, out_stall_prob=0.5, seed=3)
    cmp = compare(golden.run(ir, px, record=True), rtl)
    assert cmp.mismatches == 0, cmp.first_mismatch
    ev = schedule.pop_events(ir, len(px), last_pixel=rtl.last_pixel, handshake=rtl.done_at)
    assert (rtl.last_pixel + rtl.latency).tolist() == ev["valid"].tolist()

    resets, seeds = [(3, 5), (6, 60)], [(5, 0xBEEF), (8, 77)]
    rtl = run_rtl(_build(tmp_path, ir), ir, px, simulator=simulator, work_dir=tmp_path,
                  in_idle_prob=0.2, out_stall_prob=0.3, resets=resets, seeds=seeds, seed=4)
    exp = golden_with_resets(ir, px, resets=resets, seeds=seeds, record=True)
    cmp = compare(exp, rtl)
    assert cmp.mismatches == 0, cmp.first_mismatch
    assert np.array_equal(rtl.scores[3], golden.run(ir, px[3:4]).scores[0])


@pytest.mark.parametrize("simulator", SIMULATORS)
def test_loaded_weights_survive_resets(tmp_path, simulator):
    """RAM weights (SPRAM on iCE40): the weight image once through w_axis, with gaps; then the
    golden model's results, also after resets in the middle of images."""
    ir = _net([13, 12, 5], [4, 5], [4, 4], [4, 2], [0.5, 0.75], 5, 2, 3)
    ir.layers[0].weight_store = ir.layers[1].weight_store = "ram"
    assert weight_image(ir)
    px = random_pixels(np.random.default_rng(2), ir, 8)
    resets = [(2, 4), (5, 30)]
    rtl = run_rtl(_build(tmp_path, ir), ir, px, simulator=simulator, work_dir=tmp_path,
                  in_idle_prob=0.3, resets=resets, seed=2)
    cmp = compare(golden_with_resets(ir, px, resets=resets, record=True), rtl)
    assert cmp.mismatches == 0, cmp.first_mismatch


def test_cycles_do_not_depend_on_the_draws():
    """Blanked inputs are gated, not skipped: neither p nor the weights change a cycle."""
    a = _net([13, 12, 5], [2, 5], [4, 8], [4, 2], [0.5, 0.75], 5, 2)
    b = _net([13, 12, 5], [2, 5], [4, 8], [4, 2], [0.25, 0.9], 5, 2, seed=9)
    assert schedule.pop_events(a, 5)["valid"].tolist() == \
        schedule.pop_events(b, 5)["valid"].tolist()
    masks = golden.run(a, random_pixels(np.random.default_rng(0), a, 5), record=True).masks
    assert len(set(np.diff(schedule.latency_cycles(a, masks)[2:]).tolist())) == 1


def test_bounds_are_the_slowest_engines():
    """Adder bound: T x n_in x n_out / (pe x simd x T'); weight-bandwidth bound: passes x
    n_in x n_out / (pe x simd); the slowest engine's each (here layer 0's)."""
    ir = _net([13, 12, 5], [2, 5], [4, 8], [4, 2], [0.5, 0.75], 5, 2)
    assert schedule.bounds(ir) == {"adder_bound_cycles": round(5 * 156 / (8 * 2), 1),
                                   "weight_bound_cycles": round(3 * 156 / 8, 1)}


def test_weight_words_hold_each_weight_in_its_lane():
    rng = np.random.default_rng(3)
    for wb, pe, simd in ((1, 3, 4), (3, 2, 8), (8, 5, 1)):
        ir = _net([11, 7, 3], [pe, 3], [simd, 1], [1, 1], [1.0, 1.0], 2, 1, wb, seed=wb)
        layer = ir.layers[0]
        words = pop_weight_words(layer)
        assert len(words) == layer.groups * layer.words
        for _ in range(50):
            n, j = int(rng.integers(layer.n_out)), int(rng.integers(layer.n_in))
            g, k, w, s = n // pe, n % pe, j // simd, j % simd
            lane = (words[g * layer.words + w] >> ((s * pe + k) * wb)) & ((1 << wb) - 1)
            v = int(layer.weights[n, j])
            assert lane == ((v > 0) if wb == 1 else v & ((1 << wb) - 1))


@pytest.mark.parametrize("change,message", [
    (lambda ir: ir.layers[1].__setattr__("pass_samples", 1),
     r"^layers\[1\]\.pass_samples 1 differs from layers\[0\]'s 2"),
    (lambda ir: ir.layers[0].__setattr__("pe", 3),
     r"^layers\[0\]\.pe 3 and layers\[1\]\.simd 4 must divide one another"),
])
def test_what_the_popcount_core_refuses(change, message):
    ir = _net([13, 8, 4], [2, 2], [4, 4], [1, 1], [1.0, 1.0], 2, 2)
    change(ir)
    with pytest.raises(HardwareError, match=message):
        generate_verilog(ir)


def test_a_mixed_network_is_refused_in_one_line():
    ir = random_ir(np.random.default_rng(2), sizes=[6, 5, 3], lanes=[1, 1], simd=[1, 1],
                   p=[1.0, 1.0])
    ir.layers[0].pass_samples = 1
    with pytest.raises(HardwareError, match=r"^layers\[1\]\.pass_samples 0 differs"):
        generate_verilog(ir)


async def _run_pass(ctx, dut, each_cycle=None) -> int:
    """An engine's next pass in Amaranth's simulator: wait for ``ready``, raise ``start`` for a
    cycle, call ``each_cycle()`` in every cycle up to the one with ``done``; returns the cycles
    from the one after ``start`` to ``done`` (``pass_cycles - 1``)."""
    while not ctx.get(dut.ready):
        await ctx.tick()
    ctx.set(dut.start, 1)
    await ctx.tick()
    ctx.set(dut.start, 0)
    n = 1
    while True:
        if each_cycle is not None:
            each_cycle()
        if ctx.get(dut.done):
            break
        n += 1
        await ctx.tick()
    await ctx.tick()
    return n


def _writes(ctx, dut, q: int, banks: int, tp: int) -> list:
    """This cycle's writes at an engine's output port: ``(pass, bank, address, T' bits)``."""
    we = ctx.get(dut.out_we)
    return [(q, b, ctx.get(dut.out_addr), ctx.get(dut.out_data) >> (b * tp) & ((1 << tp) - 1))
            for b in range(banks) if we >> b & 1]


@pytest.mark.parametrize("pe,simd,next_simd,tp,T,input_stage", [
    (4, 4, 2, 3, 5, False), (2, 8, 8, 4, 4, False), (4, 4, 2, 3, 5, True)])
def test_engine_alone_against_its_pass_model(pe, simd, next_simd, tp, T, input_stage):
    """One hidden PopcountDenseEngine in Amaranth's simulator, fed through its spike store and
    read at its output port, pass by pass: every spike it writes is ``sum(keep * ±w) >=
    threshold`` with the keep bits of the golden draw order (``maskdraw.keep_batches``), into
    the right bank, word and half; ``done`` is high in the pass's last cycle, ``pass_cycles -
    1`` after the cycle that took ``start``."""
    from amaranth.sim import Simulator
    from hw.maskdraw import keep_batches
    from hw.pdense import PopcountDenseEngine, store_wbits
    ir = _net([9, 12, 10, 3], [4, pe, 3], [2, simd, next_simd], [2, 4, 1], [1.0, 0.75, 1.0],
              T, tp, 3)
    ir.input_stage = input_stage          # one more drain cycle a group (IR input_stage)
    st = plan(ir)[1]
    assert st.pop_drain == POP_DRAIN + input_stage
    layer = st.layer
    dut = PopcountDenseEngine(layer, ir, st)
    rng = np.random.default_rng(pe)
    counts = layer.pass_counts(T)[:2]
    z = rng.integers(0, 2, size=(len(counts), tp, layer.n_in))     # the spikes in, per pass
    keep, _ = keep_batches(layer.rng, layer.p_num, layer.p_bits, layer.n_in, counts,
                           layer.rng.seed)
    W, ab = layer.words, store_wbits(layer.words) + 1
    Wn = -(-layer.n_out // next_simd)
    nb = store_wbits(Wn) + 1
    seen, timing = [], []

    async def bench(ctx):
        for q in range(len(counts)):                       # fill both halves
            for w in range(W):
                data = 0
                for s in range(simd):
                    j = w * simd + s
                    bits = sum(int(z[q, t, j]) << t for t in range(tp)) if j < layer.n_in else 0
                    data |= bits << (s * tp)
                addr = (q % 2) << (ab - 1) | w
                ctx.set(dut.st_we, (1 << simd) - 1)
                ctx.set(dut.st_addr, addr)
                ctx.set(dut.st_data, data)
                await ctx.tick()
        ctx.set(dut.st_we, 0)
        ctx.set(dut.img_in, 1)
        await ctx.tick()
        ctx.set(dut.img_in, 0)
        for q in range(len(counts)):
            timing.append(await _run_pass(ctx, dut, lambda: seen.extend(
                _writes(ctx, dut, q, next_simd, tp))))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert timing == [st.pass_cycles() - 1] * len(counts), (timing, counts)
    w = layer.weights.astype(np.int64)
    got = {}
    for q, b, addr, bits in seen:
        assert addr >> (nb - 1) == q % 2
        got[(q, (addr & ((1 << (nb - 1)) - 1)) * next_simd + b)] = bits
    for q, count in enumerate(counts):
        x = np.where(keep[q], np.where(z[q, :count], 1, -1), 0)     # (count, n_in)
        spikes = (x @ w.T) >= layer.offsets                          # (count, n_out)
        for n in range(layer.n_out):
            bits = got[(q, n)]
            assert [bits >> t & 1 for t in range(count)] == spikes[:, n].astype(int).tolist()


@pytest.mark.parametrize("pe,simd,tp,T,wb", [(3, 4, 3, 5, 3), (5, 2, 2, 4, 1), (2, 8, 4, 4, 2)])
def test_output_engine_alone_against_its_score_model(pe, simd, tp, T, wb):
    """The output PopcountDenseEngine alone: after the passes of an image its scores are
    ``T x bias`` plus, over every sample, ``sum(keep * ±w)`` with the golden draw order's keep
    bits (its popcount spans ``T' x simd`` inputs and adds the samples of a pass together);
    ``clear`` brings back ``T x bias``; every pass takes ``pass_cycles``."""
    from amaranth.sim import Simulator
    from hw.maskdraw import keep_batches
    from hw.pdense import PopcountDenseEngine, store_wbits
    ir = _net([7, 11, 6], [1, pe], [1, simd], [1, min(simd, 2)], [1.0, 0.75], T, tp, wb)
    st = plan(ir)[1]
    layer, sb = st.layer, ir.score_bits
    dut = PopcountDenseEngine(layer, ir, st)
    rng = np.random.default_rng(pe)
    counts = layer.pass_counts(T)
    z = rng.integers(0, 2, size=(len(counts), tp, layer.n_in))
    keep, _ = keep_batches(layer.rng, layer.p_num, layer.p_bits, layer.n_in, counts,
                           layer.rng.seed)
    wbits = store_wbits(layer.words)
    scores, timing = [], []

    def read(ctx):
        raw = ctx.get(dut.scores)
        vals = [raw >> (c * sb) & ((1 << sb) - 1) for c in range(layer.n_out)]
        return [v - (1 << sb) if v >> (sb - 1) else v for v in vals]

    async def bench(ctx):
        scores.append(read(ctx))                        # at reset: T x bias
        for q in range(len(counts)):
            for w in range(layer.words):                # this pass's spikes, into half q % 2
                data = 0
                for sd in range(simd):
                    j = w * simd + sd
                    bits = sum(int(z[q, t, j]) << t for t in range(tp)) if j < layer.n_in else 0
                    data |= bits << (sd * tp)
                ctx.set(dut.st_we, (1 << simd) - 1)
                ctx.set(dut.st_addr, (q % 2) << wbits | w)
                ctx.set(dut.st_data, data)
                await ctx.tick()
            ctx.set(dut.st_we, 0)
            if q == 0:
                ctx.set(dut.img_in, 1)
                await ctx.tick()
                ctx.set(dut.img_in, 0)
            timing.append(await _run_pass(ctx, dut))
        scores.append(read(ctx))
        ctx.set(dut.clear, 1)
        await ctx.tick()
        ctx.set(dut.clear, 0)
        scores.append(read(ctx))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert timing == [st.pass_cycles() - 1] * len(counts)
    bias = [T * int(b) for b in layer.offsets]
    w = layer.weights.astype(np.int64)
    total = np.array(bias)
    for q, count in enumerate(counts):
        x = np.where(keep[q], np.where(z[q, :count], 1, -1), 0)
        total = total + (x @ w.T).sum(axis=0)
    assert scores == [bias, total.tolist(), bias]


# --- conv layers on the popcount core (hw.pconv) ----------------------------------------------

def _conv_net(pe, simd, lanes, *, c=(4, 8), k=3, pad=0, stride=1, pool=2, h=12, wb=1, p=0.75,
              T=4, tp=2, hidden=6, levels=(60, 120, 180, 240), seed=0):
    """conv(c[0]) [pool] conv(c[1]) [pool] dense(hidden) dense(4) on an ``h x h`` image, a
    level-major thermometer code (its levels are the first layer's channels); ``pe``,
    ``simd``, ``lanes`` per weighted layer."""
    rng = np.random.default_rng(seed)
    L, layers, fold = len(levels), [], []
    cin, size = L, h
    for co in c:
        ho = (size + 2 * pad - k) // stride + 1
        layers.append(IntConv(random_weights(rng, wb, (co, cin, k, k)),
                              rng.integers(-cin * k, cin * k + 1, co) // 3, p, wb, h_in=size,
                              w_in=size, stride=stride, padding=pad))
        fold.append(len(layers) - 1)
        size = ho
        if pool > 1:
            layers.append(IntPool(co, size, size, pool, "or"))
            size //= pool
        cin = co
    n = cin * size * size
    for b in (hidden, 4):
        layers.append(IntLayer(random_weights(rng, wb, (b, n)), rng.integers(-5, 6, b), p, wb))
        fold.append(len(layers) - 1)
        n = b
    full = [dict(zip(fold, v)) for v in (pe, simd, lanes)]
    return build_ir(layers, input_size=h * h, input_threshold=0, samples=T,
                    thresholds=list(levels), layout="level-major",
                    pe=[full[0].get(i, 1) for i in range(len(layers))],
                    simd=[full[1].get(i, 1) for i in range(len(layers))],
                    lanes=[full[2].get(i, 1) for i in range(len(layers))],
                    pass_samples=tp, seed=seed + 1)


# Each hand-over (conv into a conv store, pe above and below its simd; conv into a dense store,
# one filter a cycle, pe not a power of two, a partial last group), zero padding, stride, no
# pooling, T' not dividing T, multi-bit weights, no blank-out.
CONV_CASES = [
    pytest.param(dict(pe=[4, 4, 4, 4], simd=[4, 2, 4, 4], lanes=[2, 2, 2, 2]), id="conv-pool"),
    pytest.param(dict(pe=[2, 8, 4, 4], simd=[4, 4, 2, 4], lanes=[4, 4, 2, 4], pad=1, wb=2,
                      T=5, tp=2), id="pad1-2bit-Tp2-of-5-pe2-into-simd4"),
    pytest.param(dict(pe=[4, 3, 4, 4], simd=[4, 2, 4, 4], lanes=[1, 2, 1, 1], c=(6, 5),
                      stride=2, h=13, pool=1, p=1.0), id="stride2-no-pool-partial-group"),
    pytest.param(dict(pe=[8, 2, 2, 4], simd=[4, 4, 8, 1], lanes=[4, 1, 8, 1], c=(8, 16), k=5,
                      pad=2, h=14, wb=3, T=3, tp=3), id="k5-pad2-3bit-pe8-into-simd4"),
    # the dense layer's 2 inputs in one word of 8 (fuzz seed 214: the store word was lost)
    pytest.param(dict(pe=[4, 1, 2, 4], simd=[4, 4, 8, 2], lanes=[2, 1, 4, 2], c=(4, 2),
                      h=12, T=3, tp=2), id="conv-into-dense-2-inputs-simd8"),
]


@pytest.mark.icarus
@pytest.mark.parametrize("kw", CONV_CASES)
def test_conv_cases_equal_golden_and_cycle_model(tmp_path, kw):
    ir = _conv_net(**kw)
    assert plan(ir).popcount and ir.layers[0].draw_order == "hwc"
    _exact(tmp_path, ir, random_pixels(np.random.default_rng(1), ir, 4))


@pytest.mark.icarus
@pytest.mark.parametrize("kw", [pytest.param(c.values[0], id=c.id)
                                for c in (CONV_CASES[1], CONV_CASES[3])])
def test_input_stage_conv_cores_equal_golden_and_cycle_model(tmp_path, kw):
    """The IR's ``input_stage`` (every accumulator registers its beat words: one more drain
    cycle per group, both conv engines' pooling and hand-over a cycle later): still bit-exact,
    and the cycle model counts the extra cycles."""
    ir = _conv_net(**kw)
    plain = schedule.expected_cycles_per_inference(ir)
    ir.input_stage = True
    assert schedule.expected_cycles_per_inference(ir) > plain
    _exact(tmp_path, ir, random_pixels(np.random.default_rng(1), ir, 4))


@pytest.mark.slow
@pytest.mark.parametrize("simulator", SIMULATORS)
@pytest.mark.parametrize("seed", range(4))
def test_random_conv_networks_equal_golden_and_cycle_model(tmp_path, simulator, seed):
    rng = np.random.default_rng(2000 + seed)
    ir = random_pop_conv_ir(rng)
    ir.input_stage = bool(seed % 2)       # half of them with the accumulators' input stage
    _exact(tmp_path, ir, random_pixels(rng, ir, 4), simulator)


@pytest.mark.slow
@pytest.mark.parametrize("simulator", SIMULATORS)
def test_conv_core_with_gaps_resets_seeds_and_ram_weights(tmp_path, simulator):
    """A conv net with its second conv layer's weights in RAM: input gaps and output stalls
    (each result valid in the model's cycle for the observed handshakes), then resets in the
    middle of images and run seeds."""
    ir = _conv_net([4, 4, 4, 4], [4, 2, 4, 4], [2, 2, 2, 2], T=3, tp=2)
    ir.layers[2].weight_store = "ram"
    rng = np.random.default_rng(5)
    px = random_pixels(rng, ir, 6)
    rtl = run_rtl(_build(tmp_path, ir), ir, px, simulator=simulator, work_dir=tmp_path,
                  in_idle_prob=0.3, out_stall_prob=0.5, seed=3)
    cmp = compare(golden.run(ir, px, record=True), rtl)
    assert cmp.mismatches == 0, cmp.first_mismatch
    ev = schedule.pop_events(ir, len(px), last_pixel=rtl.last_pixel, handshake=rtl.done_at)
    assert (rtl.last_pixel + rtl.latency).tolist() == ev["valid"].tolist()
    resets, seeds = [(2, 40), (4, 300)], [(3, 0xBEEF)]
    rtl = run_rtl(_build(tmp_path, ir), ir, px, simulator=simulator, work_dir=tmp_path,
                  in_idle_prob=0.2, resets=resets, seeds=seeds, seed=4)
    cmp = compare(golden_with_resets(ir, px, resets=resets, seeds=seeds, record=True), rtl)
    assert cmp.mismatches == 0, cmp.first_mismatch


def test_conv_keep_bits_in_hwc_order_are_the_drawers_words():
    """A popcount conv layer draws pixel-major (hwc): the golden model's keep bit of channel
    ``c`` at pixel ``(y, x)`` is draw ``(y*W + x)*c_in + c`` of its sample, so the mask
    drawer's word ``pix * chunks + ch`` (its unchanged layout) holds channels ``ch*simd ..``
    of pixel ``pix``; the kept-list engine's layers still draw channel-major."""
    from hw.maskdraw import keep_batches
    ir = _conv_net([4, 4, 4, 4], [4, 2, 4, 4], [2, 2, 2, 2], T=3, tp=2)
    la = ir.layers[2]
    masks = golden.run(ir, random_pixels(np.random.default_rng(0), ir, 2), record=True).masks
    drawn, _ = keep_batches(la.rng, la.p_num, la.p_bits, la.n_in, [3, 3], la.rng.seed)
    hwc = np.concatenate(drawn).reshape(2, 3, la.h_in, la.w_in, la.c_in)
    assert np.array_equal(masks[2].reshape(2, 3, la.c_in, la.h_in, la.w_in),
                          hwc.transpose(0, 1, 4, 2, 3))
    kept = random_conv_ir(np.random.default_rng(4))
    assert all(la.draw_order == "chw" for la in kept.layers if la.kind == "conv2d")


def test_conv_popcount_fields_round_trip_and_old_files_load(tmp_path):
    """``simd``, ``pass_samples`` and ``draw_order`` are written only when set: a kept-list
    conv IR's file has none of them (files from before them load unchanged)."""
    from nsm_export.ir import load, save
    ir = _conv_net([4, 4, 4, 4], [4, 2, 4, 4], [2, 2, 2, 2])
    save(ir, tmp_path / "pop")
    back = load(tmp_path / "pop")
    assert [(la.simd, la.pass_samples, la.draw_order) for la in back.layers
            if la.kind == "conv2d"] == [(4, 2, "hwc"), (2, 2, "hwc")]
    old = random_conv_ir(np.random.default_rng(1))
    for m in old.to_json()["layers"]:
        if m["kind"] == "conv2d":
            assert not {"simd", "pass_samples", "draw_order"} & set(m)


def test_input_stage_round_trips_and_is_checked(tmp_path):
    """The IR's ``input_stage``: written only when true (``false`` also reads), a bool, and
    only on a popcount core; each engine's drain is one cycle longer with it."""
    from nsm_export.ir import IRError, from_json, load, save
    ir = _conv_net([4, 4, 4, 4], [4, 2, 4, 4], [2, 2, 2, 2])
    assert "input_stage" not in ir.to_json()
    ir.input_stage = True
    save(ir, tmp_path / "s")
    meta = json.loads((tmp_path / "s" / "ir.json").read_text())
    assert meta["input_stage"] is True and load(tmp_path / "s").input_stage
    assert all(e.pop_drain == POP_DRAIN + 1 for e in plan(load(tmp_path / "s")))
    arrays = dict(np.load(tmp_path / "s" / "weights.npz"))
    assert not from_json({**meta, "input_stage": False}, arrays).input_stage
    with pytest.raises(IRError, match=r"^input_stage must be"):
        from_json({**meta, "input_stage": 1}, arrays)
    kept = random_ir(np.random.default_rng(2), sizes=[6, 5, 3], lanes=[1, 1], simd=[1, 1],
                     p=[1.0, 1.0])
    kept.input_stage = True
    with pytest.raises(IRError, match=r"^input_stage needs the popcount engine"):
        kept.validate()


@pytest.mark.parametrize("change,message", [
    (lambda ir: ir.layers[2].__setattr__("draw_order", "chw"),
     r"^layers\[2\]\.draw_order chw: the popcount conv engine draws a pixel's channels in a "
     r"row \(hwc\)"),
    (lambda ir: ir.layers[0].__setattr__("simd", 2),
     r"^layers\[0\]\.simd 2 must be its 4 channels"),
    (lambda ir: ir.layers[2].__setattr__("simd", 8),
     r"^layers\[2\]\.simd 8 must divide its 4 channels"),
    (lambda ir: ir.layers[1].__setattr__("mode", "majority"),
     r"^layers\[1\] \(majority pooling\): the popcount conv engine computes OR pooling only"),
])
def test_what_the_popcount_core_refuses_in_conv_nets(change, message):
    ir = _conv_net([4, 4, 4, 4], [4, 2, 4, 4], [2, 2, 2, 2])
    change(ir)
    with pytest.raises(HardwareError, match=message):
        generate_verilog(ir)


def test_kept_list_conv_engine_refuses_the_hwc_order():
    ir = random_conv_ir(np.random.default_rng(3))
    conv = next(la for la in ir.layers if la.kind == "conv2d")
    conv.draw_order = "hwc"
    with pytest.raises(HardwareError, match=r"draw_order hwc: the kept-list conv engine"):
        generate_verilog(ir)


@pytest.mark.parametrize("engine,kw,input_stage", [
    (0, dict(pe=[2, 4, 4, 4], simd=[4, 4, 4, 4], lanes=[2, 2, 2, 2], pad=1, T=3, tp=2), False),
    (1, dict(pe=[4, 2, 4, 4], simd=[4, 2, 8, 4], lanes=[2, 2, 2, 2], T=3, tp=2), False),
    (1, dict(pe=[4, 8, 4, 4], simd=[4, 4, 2, 4], lanes=[1, 4, 2, 4], wb=2, pool=1, h=9,
             T=2, tp=2, c=(4, 8)), False),
    (0, dict(pe=[2, 4, 4, 4], simd=[4, 4, 4, 4], lanes=[2, 2, 2, 2], pad=1, T=3, tp=2), True),
    (1, dict(pe=[4, 2, 4, 4], simd=[4, 2, 8, 4], lanes=[2, 2, 2, 2], T=3, tp=2), True),
])
def test_conv_engine_alone_against_its_pass_model(engine, kw, input_stage):
    """One PopcountConvEngine in Amaranth's simulator, fed through its spike store and read at
    its output port, pass by pass: its threshold, pooling and hand-over stage writes, for
    every filter, pooled pixel and sample, the golden conv layer's spikes (``acc >=
    threshold``, then the OR pooling) with the keep bits of the hwc draw order, into the bank,
    word and half of the next engine's store (a conv engine's pixel-chunk words, or a dense
    engine's channel-major inputs); ``done`` comes ``pass_cycles - 1`` cycles after ``start``."""
    from amaranth.sim import Simulator
    from hw.maskdraw import keep_batches
    from hw.pconv import PopcountConvEngine
    from hw.pdense import store_wbits
    ir = _conv_net(**kw)
    ir.input_stage = input_stage          # one more drain cycle a group (IR input_stage)
    st = plan(ir)[engine]
    assert st.pop_drain == POP_DRAIN + input_stage
    layer, pool, T, tp = st.layer, st.pool, ir.samples, kw["tp"]
    first = engine == 0
    dut = PopcountConvEngine(layer, ir, st)
    rng = np.random.default_rng(engine)
    counts = layer.pass_counts(T)[:2]
    H, W, C, simd, chunks = layer.h_in, layer.w_in, layer.c_in, layer.simd, layer.chunks
    # spikes in, per pass: (count, c, y, x); the first layer's code is shared by every sample
    z = rng.integers(0, 2, size=(len(counts), tp, C, H, W)).astype(bool)
    if first:
        z[:] = z[:1, :1]
    drawn, _ = keep_batches(layer.rng, layer.p_num, layer.p_bits, layer.n_in, counts,
                            layer.rng.seed)
    wbits = store_wbits(H * W * chunks)
    sn = st.next_simd
    seen, timing = [], []

    async def bench(ctx):
        for q in range(len(counts) if not first else 1):       # fill the halves
            for pix in range(H * W):
                y, x = divmod(pix, W)
                for ch in range(1 if first else chunks):
                    if first:
                        data = sum(int(z[0, 0, c, y, x]) << c for c in range(C))
                        addr = pix
                    else:
                        data = sum(int(z[q, t, ch * simd + s, y, x]) << (s * tp + t)
                                   for s in range(simd) for t in range(tp))
                        addr = (q % 2) << wbits | (pix * chunks + ch)
                    ctx.set(dut.st_we, 1 if first else (1 << simd) - 1)
                    ctx.set(dut.st_addr, addr)
                    ctx.set(dut.st_data, data)
                    await ctx.tick()
        ctx.set(dut.st_we, 0)
        ctx.set(dut.img_in, 1)
        await ctx.tick()
        ctx.set(dut.img_in, 0)
        for q in range(len(counts)):
            timing.append(await _run_pass(ctx, dut, lambda: seen.extend(
                _writes(ctx, dut, q, sn, tp))))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert timing == [st.pass_cycles() - 1] * len(counts), (timing, counts)
    P = pool.size if pool else 1
    hp, wp = layer.h_out // P, layer.w_out // P
    nb = store_wbits(-(-layer.c_out * hp * wp // sn))
    got = {}
    for q, b, addr, bits in seen:
        assert addr >> nb == q % 2
        got[(q, addr & ((1 << nb) - 1), b)] = bits
    for q, count in enumerate(counts):
        keep = layer.keep_in_order(drawn[q][None])                 # (1, count, n_in)
        spikes = layer.execute(z[q if not first else 0, :count].reshape(1, count, -1), keep)
        if pool:
            spikes = pool.execute(spikes, None)
        spikes = spikes.reshape(count, layer.c_out, hp * wp)
        for f in range(layer.c_out):
            for p in range(hp * wp):
                if st.consumer == "map":
                    where = (p * -(-layer.c_out // sn) + f // sn, f % sn)
                else:
                    where = divmod(f * hp * wp + p, sn)
                bits = got[(q, *where)]
                assert [bits >> t & 1 for t in range(count)] == spikes[:, f, p].tolist()
