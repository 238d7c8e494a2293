"""The random bits are good random bits (issue 18, item 3), on the model the hardware is derived
from: over at least a million draws per configuration, the keep frequency within 4 standard
errors of p and every |correlation| under 0.01: lags 1 to 64 (lanes and T' batches are cuts of
the one stream), the same input of consecutive samples (lag n_in), two layers' streams and the
stochastic input encoder's, with the leaps the compiler gives by default
(:func:`nsm_export.build.default_leap`). ``benchmarks/rng_quality.py`` sweeps every width and
``p_bits``; this file checks the default width at every ``p_bits`` and a few others."""

import numpy as np
import pytest

from nsm_export import lfsr
from nsm_export.build import IntLayer, bernoulli_probs, build_ir, default_leap, leap_probe_p_nums
from nsm_export.golden import GoldenModel

DRAWS = 1_000_000


@pytest.fixture
def bench(load_benchmark):
    return load_benchmark("rng_quality")


def _failures(records: list[dict]) -> list[dict]:
    return [r for r in records if not r["ok"]]


@pytest.mark.parametrize("p_bits", range(1, 17))
def test_default_leap_passes_the_bar_at_32_bits(bench, p_bits):
    """Every p_bits the CLI accepts, at p = 1/2**p_bits, 0.1, 0.25, 0.5, 0.75, 0.9 and
    1 - 1/2**p_bits: two layers' streams and the encoder's, sample lags 64, 784 and 2304."""
    leap = default_leap(32, p_bits)
    records = bench.measure(32, leap, p_bits, leap_probe_p_nums(p_bits), DRAWS)
    assert not _failures(records), _failures(records)


@pytest.mark.parametrize("width,p_bits", [(24, 8), (24, 16), (20, 4), (20, 12), (28, 8)])
def test_default_leap_passes_the_bar_at_other_widths(bench, width, p_bits):
    leap = default_leap(width, p_bits)
    records = bench.measure(width, leap, p_bits, leap_probe_p_nums(p_bits), DRAWS)
    assert not _failures(records), _failures(records)


def test_the_bar_rejects_the_old_rule(bench):
    """leap = p_bits, the rule before ``default_leap``: on 32 bits with 8-bit p, draws 4 apart
    (32 steps) correlate at p = 0.1 by +0.026, which both the measurement and the exact
    computation see."""
    (rec,) = bench.measure(32, 8, 8, [26], DRAWS)
    assert not rec["ok"] and rec["worst_lag"] == 4 and rec["max_abs_autocorr"] > 0.02, rec
    assert abs(rec["exact_max_abs_autocorr"] - 0.0261) < 1e-3, rec


def test_default_leaps_of_the_default_width():
    """The figures the docstring of default_leap gives (the rule itself is computed)."""
    assert [default_leap(32, k) for k in range(1, 17)] == \
        [1, 2, 4, 4, 7, 7, 7, 11, 11, 11, 19, 19, 19, 19, 19, 19]


@pytest.mark.parametrize("width,leap,p_bits,p_num", [(32, 8, 8, 26), (24, 8, 8, 26),
                                                     (32, 27, 8, 26), (32, 9, 8, 230)])
def test_exact_correlations_equal_the_measured_ones(bench, width, leap, p_bits, p_num):
    """The exact lag correlations (over one period, without drawing) agree with a million
    draws' within 5 standard errors (about 0.001 each)."""
    mask = lfsr.galois_mask(width)
    exact = lfsr.lag_correlations(width, mask, leap, p_bits, [p_num], range(1, 65))[:, 0]
    u, _ = lfsr.draws(width, mask, leap, 0x5EED1 & mask, DRAWS, p_bits)
    measured = bench.lag_corr(u < p_num, range(1, 65))
    assert np.abs(measured - exact).max() < 5 / np.sqrt(DRAWS)
    assert np.abs(exact).max() > 0.005            # each of these has a correlated lag


def test_exact_correlation_of_a_shared_read_is_one():
    """Two reads of the same bits (distance 0) correlate by 1; disjoint fresh bits by 0."""
    r = lfsr.keep_correlation(32, 4, [1, 2, 4, 8], [1, 2, 4, 8], [1, 5, 8, 15])
    assert np.allclose(r, 1)
    r = lfsr.keep_correlation(32, 4, [1, 2, 4, 8], [16, 32, 64, 128], [1, 5, 8, 15])
    assert np.abs(r).max() < 1e-8


def test_golden_model_streams_pass_the_bar(bench):
    """Through the golden model of a design compiled with the defaults: two layers' masks and
    the stochastic encoder's spikes (a uniform image at p = 26/256), 1,003,520 draws each."""
    rng = np.random.default_rng(5)
    n_in, t = 784, 8
    layers = [IntLayer(weights=rng.integers(-1, 2, (n_in, n_in)), offsets=np.zeros(n_in, int),
                       p=0.1, weight_bits=2),
              IntLayer(weights=rng.integers(-1, 2, (10, n_in)), offsets=np.zeros(10, int),
                       p=0.9, weight_bits=2)]
    ir = build_ir(layers, input_size=n_in, input_threshold=128, samples=t,
                  probs=bernoulli_probs(255, 8, 8), prob_bits=8)
    assert {ir.layers[0].rng.leap, ir.input.rng.leap} == {default_leap(32, 8)}
    images = -(-DRAWS // (n_in * t))
    pixels = np.full((images, n_in), 26)                  # probs[26] = 26: p = 0.1016
    model = GoldenModel(ir)
    masks = model.run(pixels, record=True).masks
    encoder = GoldenModel(ir)._encode(pixels)             # the golden model's own encoder path
    streams = [m.reshape(-1) for m in masks] + [encoder.reshape(-1)]
    for bits, p in zip(streams, (26 / 256, 230 / 256, 26 / 256)):
        rec = bench.stream_stats(bits, p, n_ins=(n_in,))
        assert bench.passes(rec), rec
    pairs = [(0, 1), (0, 2), (1, 2)]
    assert max(abs(bench.corr(streams[a], streams[b])) for a, b in pairs) < bench.BAR
