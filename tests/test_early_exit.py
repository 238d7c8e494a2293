"""Early exit (issue 20): the stopping rules in the IR, the golden model, the mask drawers'
LFSR restart and the popcount core, bit- and cycle-exact against the golden and cycle models."""

import json

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.maskdraw import MaskDrawer, draw_batches_model
from hw.top import generate_verilog, hardware_unsupported
from nsm_export import early_exit as ee
from nsm_export import golden, ir as irmod, lfsr, schedule
from nsm_export.build import IntLayer, build_ir
from nsm_export.early_exit import EarlyExit
from nsm_export.schema import IRError, LfsrSpec
from nsm_export.testing import random_pixels, random_pop_conv_ir, random_pop_ir, random_weights
from sim.runner import compare, golden_with_resets, run_rtl
from tests.support import SIMULATORS


# --- the rule ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text,rule", [
    ("none", EarlyExit()), ("exact", EarlyExit("exact")),
    ("margin:0.25", EarlyExit("margin", 64)), ("margin:1", EarlyExit("margin", 256)),
    ("margin:0.001", EarlyExit("margin", 1)), ("exact,min=4", EarlyExit("exact", 256, 4)),
    ("margin:0.5, min=2", EarlyExit("margin", 128, 2))])
def test_rules_parse(text, rule):
    assert ee.parse_rule(text) == rule
    assert ee.parse_rule(ee.rule_label(rule).replace("margin ", "margin:")
                         .replace(", min ", ",min=")) == rule


@pytest.mark.parametrize("text", ["fast", "margin", "margin:0", "margin:1.5", "margin:x",
                                  "exact:0.5", "exact,min=-1", "exact,max=3", "none,min=2", ""])
def test_bad_rules_are_one_line(text):
    with pytest.raises(ValueError, match="early-exit rule") as e:
        ee.parse_rule(text)
    assert "\n" not in str(e.value)


def _ir(T=8, tp=2, sizes=(13, 12, 5), seed=0, rule=None):
    rng = np.random.default_rng(seed)
    layers = [IntLayer(random_weights(rng, 2, (b, a)), rng.integers(-a // 3, a // 3 + 1, size=b),
                       0.75, 2) for a, b in zip(sizes, sizes[1:])]
    ir = build_ir(layers, input_size=sizes[0], input_threshold=90, samples=T, pe=4,
                  seed=seed + 1, lanes=2, simd=4, pass_samples=tp)
    if rule is not None:
        ir.early_exit = rule
        ir.validate()
    return ir


def test_ir_round_trip_and_old_files(tmp_path):
    ir = _ir(rule=EarlyExit("margin", 40, 2))
    irmod.save(ir, tmp_path / "a")
    meta = json.loads((tmp_path / "a" / "ir.json").read_text())
    assert meta["early_exit"] == {"rule": "margin", "param": 40, "min_samples": 2}
    assert irmod.load(tmp_path / "a").early_exit == ir.early_exit
    # none: no key (files are what they were); a file without the key means none
    plain = _ir()
    irmod.save(plain, tmp_path / "b")
    assert "early_exit" not in json.loads((tmp_path / "b" / "ir.json").read_text())
    assert irmod.load(tmp_path / "b").early_exit == EarlyExit()


@pytest.mark.parametrize("record,message", [
    ({"rule": "fast"}, "early_exit.rule 'fast' must be one of"),
    ({"rule": True}, "early_exit.rule must be a string"),
    ({"rule": "margin", "param": 0}, r"early_exit.param = 0 is outside \[1, 256\]"),
    ({"rule": "margin", "param": 1.5}, "early_exit.param must be an integer"),
    ({"rule": "exact", "param": 3}, "belongs to the margin rule"),
    ({"rule": "exact", "min_samples": 9}, "min_samples 9 exceeds samples 8"),
    ({"rule": "exact", "stop": 1}, "'stop' is an unknown field"),
    ({"rule": "none", "min_samples": 2}, "min_samples 2 belongs to a rule"),
    ([1], "early_exit must be a JSON object")])
def test_ir_refuses_bad_rules(tmp_path, record, message):
    irmod.save(_ir(), tmp_path)
    path = tmp_path / "ir.json"
    meta = json.loads(path.read_text())
    meta["early_exit"] = record
    path.write_text(json.dumps(meta))
    with pytest.raises(IRError, match=message):
        irmod.load(tmp_path)


def test_need_table_and_tie_rule():
    swing = np.array([[0, 3, 5], [3, 0, 4], [5, 4, 0]])
    bounds = [2, 4, 6]
    never = 1 << 10
    exact = ee.need_table(EarlyExit("exact"), 6, bounds, swing, never)
    assert exact[0].tolist() == (4 * swing).tolist() and exact[1].tolist() == (2 * swing).tolist()
    margin = ee.need_table(EarlyExit("margin", 100, 4), 6, bounds, swing, never)
    assert (margin[0] == never).all()                 # before min_samples: never
    assert margin[1].tolist() == [[0, -(-200 * 3 // 256), -(-200 * 5 // 256)],
                                  [-(-200 * 3 // 256), 0, -(-200 * 4 // 256)],
                                  [-(-200 * 5 // 256), -(-200 * 4 // 256), 0]]
    # a lead equal to the need stops against a class of higher index, not of lower index
    need = np.zeros((1, 3, 3), dtype=np.int64)
    need[0, 1, 0] = need[0, 1, 2] = 2
    partial = np.array([[[0, 2, 0], [0, 9, 0]],      # class 1 leads class 0 by 2: tie risk
                        [[-1, 2, 0], [0, 9, 0]]])    # by 3 and 2: stops
    d = ee.decide(partial, need, [1, 2])
    assert d.stop.tolist() == [1, 0] and d.samples.tolist() == [2, 1]
    assert d.classes.tolist() == [1, 1] and d.scores[1].tolist() == [-1, 2, 0]


def _exact_holds(ir, pixels):
    """The exact rule's classes are the full-T classes: one run with the rule, its last
    boundary's scores being the full run's (checked on a small net below)."""
    ir.early_exit = EarlyExit("exact")
    cut = golden.run(ir, pixels, record=True)
    assert np.array_equal(cut.classes, np.argmax(cut.partial[:, -1], axis=1))
    assert (cut.samples <= ir.samples).all()
    return cut


def test_the_last_boundary_holds_the_full_scores(rng):
    ir = random_pop_ir(rng, sizes=[20, 12, 5], samples=6, pass_samples=2)
    px = random_pixels(rng, ir, 30)
    full = golden.run(ir, px)
    ir.early_exit = EarlyExit("margin", 30)
    cut = golden.run(ir, px, record=True)
    assert np.array_equal(cut.partial[:, -1], full.scores)
    assert (cut.samples < 6).any()


def _template_net(x, y, threshold):
    """A nearest-template classifier, decisive on many images: hidden unit ``c`` fires where the
    image agrees with class ``c``'s mean image (±1 weights), the output votes for its unit."""
    C = int(y.max()) + 1
    mean = x.mean(axis=0)
    w1 = np.where(np.stack([x[y == c].mean(axis=0) for c in range(C)]) >= mean, 1, -1)
    w2 = 2 * np.eye(C, dtype=np.int64) - 1
    agree = np.where(x >= threshold, 1, -1) @ w1.T * 0.75       # (N, C), the mean sample's
    thr = np.array([np.percentile(agree[y == c, c], 40) for c in range(C)]).astype(np.int64)
    layers = [IntLayer(w1, thr, 0.75, 2),
              IntLayer(w2, np.zeros(C, dtype=np.int64), 0.75, 2)]
    return build_ir(layers, input_size=x.shape[1], input_threshold=threshold, samples=16,
                    pe=[2, 2], simd=[8, 2], lanes=[4, 2], pass_samples=2)


def test_exact_is_the_full_T_class_on_every_digits_test_image(digits):
    _, _, x, y = digits
    cut = _exact_holds(_template_net(x, y, 8), x.astype(np.int64))
    assert len(cut.classes) == len(x) and (cut.samples < 16).mean() > 0.3


@pytest.mark.slow
def test_exact_is_the_full_T_class_on_every_fashion_mnist_test_image():
    from nsm_train.data import DatasetError, load_dataset
    try:
        _, _, x, y = load_dataset("fashion-mnist")
    except DatasetError as e:
        pytest.skip(str(e))
    cut = _exact_holds(_template_net(x, y, 100), x.astype(np.int64))
    assert len(cut.classes) == 10000 and (cut.samples < 16).mean() > 0.3


def test_margin_trades_samples_for_agreement(rng):
    ir = random_pop_ir(rng, sizes=[40, 24, 6], samples=12, pass_samples=1)
    px = random_pixels(rng, ir, 200)
    res = golden.run(ir, px, record=True)
    bounds, sw = ee.boundaries(ir), ee.pair_swing(ir.layers[-1].weights)
    means = [ee.decide(res.partial, ee.need_table(ee.parse_rule(r), 12, bounds, sw,
                                                  1 << ir.score_bits), bounds).samples.mean()
             for r in ("exact", "margin:0.5", "margin:0.1", "margin:0.02")]
    assert means == sorted(means, reverse=True) and means[-1] < means[0]


# --- the LFSR after a stop ------------------------------------------------------------------

async def _draw(ctx, dut, count, image, abort_after=None):
    """One batch of the drawer (an image's first where ``image``): its front bank's words once
    drawn and swapped in, or, with ``abort_after``, aborted that many cycles in (then it must
    stay idle, with no ``done``)."""
    ctx.set(dut.count, count)
    ctx.set(dut.image, image)
    ctx.set(dut.start, 1)
    await ctx.tick()
    ctx.set(dut.start, 0)
    ctx.set(dut.image, 0)
    if abort_after is not None:
        await ctx.tick().repeat(abort_after)
        ctx.set(dut.abort, 1)
        await ctx.tick()
        ctx.set(dut.abort, 0)
        for _ in range(20):
            assert not ctx.get(dut.busy) and not ctx.get(dut.done)
            await ctx.tick()
        return None
    while not ctx.get(dut.done):
        await ctx.tick()
    ctx.set(dut.swap, 1)
    await ctx.tick()
    ctx.set(dut.swap, 0)
    words = []
    for w in range(dut.words):
        ctx.set(dut.raddr, w)
        await ctx.tick()
        words.append(ctx.get(dut.rdata))
    return words


def test_an_image_starts_its_draws_where_all_T_samples_leave_them():
    """The drawer's image-first batches draw from the stream's full-T positions however few
    batches each image drew: image k's first batch is the model's draws from k * T * n_in on."""
    spec = LfsrSpec(width=16, mask=lfsr.galois_mask(16), seed=0x1D2B, leap=11)
    n_in, tp, simd, T = 7, 2, 4, 6
    jump = ee.jump_columns(16, spec.mask, spec.leap, T * n_in)
    dut = MaskDrawer(spec, 150, 8, n_in, tp, simd, 2, jump=jump)
    # batches drawn per image (of T / T' = 3): stops after 1, 3 and 2 batches
    plan = [1, 3, 2, 1]
    got = []

    async def bench(ctx):
        for batches in plan:
            for b in range(batches):
                got.append(await _draw(ctx, dut, tp, int(b == 0)))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    k = 0
    for image, batches in enumerate(plan):
        state = lfsr.apply_matrix(lfsr.matrix_power(jump, image), spec.seed) if image \
            else spec.seed
        want, _ = draw_batches_model(spec, 150, 8, n_in, tp, simd, [tp] * batches, state)
        assert got[k:k + batches] == want, f"image {image}"
        k += batches


def test_an_aborted_batch_leaves_no_trace():
    """A stop while a batch is being drawn aborts it (busy low, no done); the next image's
    first batch is the model's, whatever the aborted one left in the word stage."""
    spec = LfsrSpec(width=16, mask=lfsr.galois_mask(16), seed=0x3C1, leap=9)
    n_in, tp, simd, lanes, T = 11, 2, 8, 2, 4
    jump = ee.jump_columns(16, spec.mask, spec.leap, T * n_in)
    dut = MaskDrawer(spec, 100, 8, n_in, tp, simd, lanes, jump=jump)
    got = []

    async def bench(ctx):
        for image in range(3):               # each image: one batch, then one aborted
            got.append(await _draw(ctx, dut, tp, 1))
            await _draw(ctx, dut, tp, 0, abort_after=5 - 4 * (image % 2))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    for image, words in enumerate(got):
        state = lfsr.apply_matrix(lfsr.matrix_power(jump, image), spec.seed)
        want, _ = draw_batches_model(spec, 100, 8, n_in, tp, simd, [tp], state)
        assert words == want[0], f"image {image}"


# --- the core ---------------------------------------------------------------------------------

def _rtl(tmp_path, ir, px, simulator="icarus", **kw):
    path = tmp_path / f"{ir.name}.v"
    path.write_text(generate_verilog(ir))
    return run_rtl(path, ir, px, simulator=simulator, work_dir=tmp_path, **kw)


def _exact(tmp_path, ir, px, simulator="icarus"):
    """Bit-exact (classes, scores, samples used) and cycle-exact image by image; returns the
    samples used."""
    rtl = _rtl(tmp_path, ir, px, simulator)
    exp = golden.run(ir, px, record=True)
    cmp = compare(exp, rtl)
    assert cmp.mismatches == 0, cmp.first_mismatch
    assert rtl.samples.tolist() == exp.samples.tolist()
    assert rtl.latency.tolist() == schedule.latency_cycles(ir, exp.masks, exp.samples).tolist()
    assert np.diff(rtl.done_at).tolist() == \
        schedule.cycles_per_inference(ir, exp.masks, exp.samples)[1:].tolist()
    return exp.samples


def _dense(sizes, pe, simd, lanes, T, tp, rule, seed=0, p=0.75):
    rng = np.random.default_rng(seed)
    layers = [IntLayer(random_weights(rng, 2, (b, a)), rng.integers(-a // 3, a // 3 + 1, size=b),
                       p, 2) for a, b in zip(sizes, sizes[1:])]
    ir = build_ir(layers, input_size=sizes[0], input_threshold=90, samples=T, pe=pe, simd=simd,
                  lanes=lanes, seed=seed + 1, pass_samples=tp)
    ir.early_exit = ee.parse_rule(rule)
    ir.validate()
    return ir


CASES = [
    pytest.param([13, 12, 5], [2, 5], [4, 8], [4, 2], 8, 2, "margin:0.25", id="two-layers"),
    pytest.param([13, 12, 5], [2, 5], [4, 8], [4, 2], 8, 2, "exact", id="exact"),
    pytest.param([11, 8, 6, 4], [4, 2, 4], [2, 4, 2], [2, 4, 1], 7, 2, "margin:0.2,min=2",
                 id="three-layers-Tp2-of-7"),
    pytest.param([9, 6], [3], [4], [2], 6, 1, "margin:0.3", id="one-layer-Tp1"),
    pytest.param([13, 12, 5], [4, 1], [2, 4], [2, 4], 9, 4, "margin:0.6", id="Tp4-of-9"),
]


@pytest.mark.icarus
@pytest.mark.parametrize("sizes,pe,simd,lanes,T,tp,rule", CASES)
def test_cases_equal_golden_and_cycle_model(tmp_path, sizes, pe, simd, lanes, T, tp, rule):
    ir = _dense(sizes, pe, simd, lanes, T, tp, rule)
    used = _exact(tmp_path, ir, random_pixels(np.random.default_rng(1), ir, 10))
    assert len(set(used.tolist())) > 1 or rule == "exact"


@pytest.mark.icarus
def test_conv_net_equals_golden_and_cycle_model(tmp_path):
    rng = np.random.default_rng(11)
    ir = random_pop_conv_ir(rng, samples=6, pass_samples=2)
    ir.early_exit = EarlyExit("margin", 48)
    ir.validate()
    _exact(tmp_path, ir, random_pixels(rng, ir, 6))


@pytest.mark.slow
@pytest.mark.parametrize("simulator", SIMULATORS)
@pytest.mark.parametrize("seed", range(2))
def test_random_networks_equal_golden_and_cycle_model(tmp_path, simulator, seed):
    rng = np.random.default_rng(2000 + seed)
    ir = random_pop_conv_ir(rng) if seed % 2 else random_pop_ir(rng)
    ir.early_exit = EarlyExit(str(rng.choice(["exact", "margin"])), 256, 0)
    if ir.early_exit.rule == "margin":
        ir.early_exit.param = int(rng.integers(8, 200))
    ir.validate()
    _exact(tmp_path, ir, random_pixels(rng, ir, 8), simulator)


@pytest.mark.slow
@pytest.mark.parametrize("simulator", SIMULATORS)
def test_gaps_backpressure_resets_and_seeds(tmp_path, simulator):
    """Input gaps and output stalls: exact, and every result valid in the cycle the model gives
    for the observed handshakes; then resets in the middle of images and run seeds."""
    rng = np.random.default_rng(8)
    ir = _dense([11, 8, 6, 4], [4, 2, 4], [2, 4, 2], [2, 4, 1], 8, 2, "margin:0.2")
    px = random_pixels(rng, ir, 12)
    rtl = _rtl(tmp_path, ir, px, simulator, in_idle_prob=0.3, out_stall_prob=0.5, seed=3)
    exp = golden.run(ir, px, record=True)
    assert compare(exp, rtl).mismatches == 0
    assert len(set(exp.samples.tolist())) > 1
    ev = schedule.pop_events(ir, len(px), last_pixel=rtl.last_pixel, handshake=rtl.done_at,
                             passes=schedule.passes_used(ir, exp.samples))
    assert (rtl.last_pixel + rtl.latency).tolist() == ev["valid"].tolist()

    resets, seeds = [(3, 5), (6, 40)], [(5, 0xBEEF), (9, 77)]
    rtl = _rtl(tmp_path, ir, px, simulator, in_idle_prob=0.2, out_stall_prob=0.3,
               resets=resets, seeds=seeds, seed=4)
    exp = golden_with_resets(ir, px, resets=resets, seeds=seeds, record=True)
    cmp = compare(exp, rtl)
    assert cmp.mismatches == 0, cmp.first_mismatch
    assert rtl.samples.tolist() == exp.samples.tolist()


def test_the_kept_list_core_refuses_a_rule():
    rng = np.random.default_rng(3)
    layers = [IntLayer(random_weights(rng, 2, (6, 9)), np.zeros(6, dtype=np.int64), 0.75, 2),
              IntLayer(random_weights(rng, 2, (3, 6)), np.zeros(3, dtype=np.int64), 0.75, 2)]
    ir = build_ir(layers, input_size=9, input_threshold=90, samples=4)
    ir.early_exit = EarlyExit("exact")
    ir.validate()
    why = hardware_unsupported(ir)
    assert why and "only the popcount core stops early" in why and "\n" not in why


def test_the_folding_search_leaves_a_rule_boundaries():
    """With a rule (and no --pass-samples), the search keeps to four passes or more: at one
    pass the rule never stops an image."""
    from nsm_export.folding import choose_folding
    ir = _ir(T=8, tp=0, rule=None)
    ir.early_exit = EarlyExit("margin", 20)
    assert choose_folding(_ir(T=8, tp=0), "ice40-up5k").pass_samples == 8   # without a rule
    fold = choose_folding(ir, "ice40-up5k")
    assert 1 <= fold.pass_samples <= 2
