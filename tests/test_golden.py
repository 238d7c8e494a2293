"""The golden model: mask statistics, stream continuity, and its integer semantics."""

import numpy as np
import pytest

from nsm_export import golden, lfsr
from nsm_export.build import IntLayer, build_ir
from nsm_export.testing import random_ir, random_pixels


@pytest.mark.parametrize("p", [0.25, 0.5, 0.75, 0.9])
def test_mask_frequency_matches_quantized_p(p):
    ir = build_ir([IntLayer(np.ones((4, 50), int), np.zeros(4, int), p, 2),
                   IntLayer(np.ones((3, 4), int), np.zeros(3, int), 1.0, 2)],
                  input_size=50, input_threshold=1, samples=8, seed=7)
    res = golden.run(ir, np.zeros((500, 50), int), record=True)
    m = res.masks[0]
    n = m.size                                           # 200,000 draws
    pq = ir.layers[0].p
    # Bound: 5 binomial standard deviations (two-sided tail < 6e-7) plus the LFSR's bias
    # (the all-zero state never occurs: at most 2**-(width - p_bits) on any value's frequency).
    bound = 5 * np.sqrt(pq * (1 - pq) / n) + 2.0 ** -(ir.layers[0].rng.width - 8)
    assert abs(m.mean() - pq) < bound
    # Neighbouring draws are not correlated (leap-forward of p_bits steps per draw).
    x = m.reshape(-1).astype(float)
    lag1 = np.corrcoef(x[:-1], x[1:])[0, 1]
    assert abs(lag1) < 5 / np.sqrt(n)


def test_p_one_draws_nothing_and_is_deterministic(rng):
    ir = random_ir(rng, sizes=[12, 8, 5], p=[1.0, 1.0], samples=3)
    assert all(layer.rng is None for layer in ir.layers)
    px = random_pixels(rng, ir, 20)
    a, b = golden.run(ir, px), golden.run(ir, px[::-1])
    assert np.array_equal(a.scores, b.scores[::-1])
    # Deterministic: every sample is the same, so the scores are T times one sample.
    assert np.all(a.scores % 3 == 0)


def test_streams_continue_across_calls(rng):
    ir = random_ir(rng, sizes=[10, 7, 4], p=[0.5, 0.5], samples=2)
    px = random_pixels(rng, ir, 30)
    whole = golden.run(ir, px)
    gm = golden.GoldenModel(ir)
    parts = [gm.run(px[:7]), gm.run(px[7:8]), gm.run(px[8:])]
    assert np.array_equal(whole.scores, np.concatenate([p.scores for p in parts]))


def test_matches_a_plain_loop_reference(rng):
    """An independent, slow, per-synapse loop over the IR's documented semantics."""
    ir = random_ir(rng, sizes=[6, 5, 3], p=[0.5, 0.75], samples=3, weight_bits=3)
    px = random_pixels(rng, ir, 5)
    states = [layer.rng.seed for layer in ir.layers]
    expect = np.zeros((5, 3), dtype=np.int64)
    for n in range(5):
        for _ in range(ir.samples):
            z = [1 if v >= ir.input.threshold else -1 for v in px[n]]
            for li, layer in enumerate(ir.layers):
                keep = []
                for _j in range(layer.n_in):
                    states[li] = lfsr.advance(states[li], layer.rng.mask, layer.rng.leap)
                    keep.append((states[li] & 0xFF) < layer.p_num)
                acc = [sum(layer.weights[i, j] * z[j] for j in range(layer.n_in) if keep[j])
                       for i in range(layer.n_out)]
                if layer.output:
                    expect[n] += np.array(acc) + layer.offsets
                else:
                    z = [1 if a >= t else -1 for a, t in zip(acc, layer.offsets)]
    res = golden.run(ir, px)
    assert np.array_equal(res.scores, expect)
    assert np.array_equal(res.classes, np.argmax(expect, axis=1))


def test_ties_go_to_the_lowest_index():
    ir = build_ir([IntLayer(np.ones((2, 3), int), np.zeros(2, int), 1.0, 2),
                   IntLayer(np.zeros((4, 2), int), np.array([1, 3, 3, 2]), 1.0, 2)],
                  input_size=3, input_threshold=1, samples=2)
    res = golden.run(ir, np.zeros((1, 3), int))
    assert res.scores.tolist() == [[2, 6, 6, 4]] and res.classes.tolist() == [1]


def test_rejects_wrong_input_shape_and_range(rng):
    ir = random_ir(rng, sizes=[5, 3, 2])
    with pytest.raises(ValueError, match="shape"):
        golden.run(ir, np.zeros((2, 4), int))
    with pytest.raises(ValueError, match="outside"):
        golden.run(ir, np.full((2, 5), 256))


def test_streams_are_decorrelated_within_and_across_layers():
    """Over 2e5 draws per layer: lag-1 correlation within each layer's keep bits and the
    correlation between any two layers' bits stay under 0.01, and each firing frequency is
    within 5 binomial standard deviations of its quantized p."""
    n_in, images, T = 50, 500, 8                                 # 200,000 draws per layer
    layers = [IntLayer(np.ones((n_in, n_in), int), np.zeros(n_in, int), p, 2)
              for p in (0.5, 0.75, 0.25)]
    layers.append(IntLayer(np.ones((2, n_in), int), np.zeros(2, int), 0.5, 2))
    ir = build_ir(layers, input_size=n_in, input_threshold=1, samples=T, seed=99)
    masks = [m.reshape(-1).astype(float) for m in
             golden.run(ir, np.zeros((images, n_in), int), record=True).masks]
    for layer, m in zip(ir.layers, masks):
        assert len(m) >= 100_000
        assert abs(np.corrcoef(m[:-1], m[1:])[0, 1]) < 0.01
        assert abs(m.mean() - layer.p) < 5 * np.sqrt(layer.p * (1 - layer.p) / len(m))
    for a in range(len(masks)):
        for b in range(a + 1, len(masks)):
            assert abs(np.corrcoef(masks[a], masks[b])[0, 1]) < 0.01, (a, b)
