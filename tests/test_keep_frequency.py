"""Random bits that mean what the IR says (issue 19, item 7).

Every keep bit the hardware draws is ``u < p_num``, ``u`` the low ``p_bits`` bits of a Galois
LFSR state that leaps ``leap`` steps a draw (``hw.lfsr.Lfsr``, ``lanes`` draws a clock; the
mask drawers, the kept-list engines and the stochastic input encoder all use it). The IR states
the keep frequency that realizes over one period, exactly (``p_realized = [keeps, 2**width -
1]``, :func:`nsm_export.lfsr.keep_count`). These tests check that statement for every supported
combination:

* the counting: over all non-zero ``width``-bit states, enumerated, for widths 8 to 16, every
  ``p_bits`` and every ``p_num`` at once;
* the stream: the hardware LFSR run for a whole period, every ``lanes`` (1 to 16), a partial
  last clock, several leaps, visits every non-zero state once (widths 8 to 10);
* the same for every width 8 to 32 and leap: the leap map has the full order ``2**width - 1``
  exactly when the leap is coprime to it (the masks are primitive), which validation requires;
* the golden model (bit-exact with the RTL by the co-simulation tests) keeps exactly
  ``p_realized[0]`` inputs over an image that draws one period, the encoder included.
"""

from __future__ import annotations

from math import gcd

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.lfsr import Lfsr
from nsm_export import lfsr
from nsm_export.build import IntLayer, bernoulli_probs, build_ir, default_leap, quantize_p
from nsm_export.golden import GoldenModel
from nsm_export.ir import IRError
from nsm_export.schema import LfsrSpec


def _states(width: int) -> np.ndarray:
    return np.arange(1, 1 << width, dtype=np.int64)


@pytest.mark.parametrize("width", range(8, 17))
def test_keep_count_is_the_count_over_every_nonzero_state(width):
    states = _states(width)
    for bits in range(1, min(16, width) + 1):
        hist = np.bincount(states & ((1 << bits) - 1), minlength=1 << bits)
        below = np.concatenate([[0], np.cumsum(hist)])          # below[p] = #(u < p)
        want = [lfsr.keep_count(width, bits, p) for p in range((1 << bits) + 1)]
        assert below.tolist() == want


@pytest.mark.parametrize("width", range(8, 33))
def test_every_mask_is_maximal_and_leaps_keep_the_whole_cycle_iff_coprime(width):
    mask = lfsr.galois_mask(width)
    assert lfsr.is_maximal(width, mask)
    period = lfsr.period(width)
    # Leaps the IR may hold (p_bits to 4 * width): the coprime ones, the first non-coprime
    # ones and the default leaps of a few p_bits.
    leaps = {default_leap(width, b) for b in (1, min(8, width))} if width >= 20 else set()
    coprime = [v for v in range(1, 4 * width + 1) if gcd(v, period) == 1]
    shared = [v for v in range(1, 4 * width + 1) if gcd(v, period) != 1]
    leaps |= set(coprime[:3]) | set(shared[:3])
    for leap in sorted(leaps):
        assert lfsr.is_maximal(width, mask, leap) == (gcd(leap, period) == 1), leap


def test_validation_refuses_a_leap_that_shares_a_factor_with_the_period():
    # 2**16 - 1 = 3 * 5 * 17 * 257: a leap of 9 visits a third of the states.
    spec = LfsrSpec(width=16, mask=lfsr.galois_mask(16), seed=1, leap=9)
    with pytest.raises(IRError, match="leap"):
        spec.validate("rng", 8)
    LfsrSpec(width=16, mask=lfsr.galois_mask(16), seed=1, leap=8).validate("rng", 8)


def _run_lfsr(width: int, leap: int, lanes: int, seed: int) -> list[int]:
    """The draws (whole states) of the hardware LFSR over one period: full clocks of ``lanes``
    draws, then a partial clock of the rest."""
    period = lfsr.period(width)
    tail = period % lanes or lanes
    dut = Lfsr(width, seed, leap, lanes, tail)
    out: list[int] = []

    async def bench(ctx):
        while len(out) < period:
            n = min(lanes, period - len(out))
            ahead = ctx.get(dut.ahead)
            out.extend((ahead >> (k * width)) & ((1 << width) - 1) for k in range(n))
            ctx.set(dut.en, int(n == lanes))
            ctx.set(dut.en_tail, int(n < lanes))
            await ctx.tick()
        ctx.set(dut.en, 0)
        ctx.set(dut.en_tail, 0)
        await ctx.tick()
        assert ctx.get(dut.state) == seed           # a whole period brings it back

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return out


@pytest.mark.parametrize("width,leap", [(8, 7), (8, 11), (9, 8), (10, 13)])
@pytest.mark.parametrize("lanes", [1, 2, 4, 8, 16])
def test_hardware_lfsr_visits_every_state_once_a_period(width, leap, lanes):
    draws = _run_lfsr(width, leap, lanes, seed=0x5A % lfsr.period(width) or 1)
    assert sorted(draws) == _states(width).tolist()
    # The same stream the golden model draws, whatever the lanes.
    u, _ = lfsr.draws(width, lfsr.galois_mask(width), leap, 0x5A, len(draws), width)
    assert draws == u.tolist()
    for bits in range(1, width + 1):
        low = np.asarray(draws) & ((1 << bits) - 1)
        for p_num in (1, (1 << bits) // 3 or 1, (1 << bits) - 1):
            assert int((low < p_num).sum()) == lfsr.keep_count(width, bits, p_num)


def _one_period_ir(width, n_in, samples, p, p_bits, **kw):
    layers = [IntLayer(np.ones((3, n_in), int), np.zeros(3, int), p, 2),
              IntLayer(np.ones((2, 3), int), np.zeros(2, int), 1.0, 2)]
    return build_ir(layers, input_size=n_in, input_threshold=1, samples=samples, pe=1,
                    p_bits=p_bits, lfsr_width=width, seed=5, **kw)


@pytest.mark.parametrize("width,n_in,samples", [(8, 17, 15), (10, 31, 33), (12, 45, 91),
                                                (16, 257, 255)])
@pytest.mark.parametrize("p,p_bits", [(0.75, 8), (0.5, 1), (0.25, 2), (0.3125, 4),
                                      (0.9, 7)])
def test_golden_model_keeps_exactly_what_the_ir_states_over_a_period(width, n_in, samples, p,
                                                                     p_bits):
    assert n_in * samples == lfsr.period(width)            # one image draws one period
    ir = _one_period_ir(width, n_in, samples, p, p_bits, p_tolerance=0.02)
    layer = ir.layers[0]
    assert layer.p_realized == [lfsr.keep_count(width, p_bits, layer.p_num),
                                lfsr.period(width)]
    assert ir.to_json()["layers"][0]["p_realized"] == layer.p_realized
    model = GoldenModel(ir)
    for _ in range(2):                                     # and again the next period
        masks = model.run(np.full((1, n_in), 9), record=True).masks
        assert int(masks[0].sum()) == layer.p_realized[0]


@pytest.mark.parametrize("width,size,samples", [(8, 15, 17), (10, 33, 31)])
def test_encoder_keeps_exactly_its_realized_probability_over_a_period(width, size, samples):
    probs = bernoulli_probs(255, 8, 8)
    layers = [IntLayer(np.ones((3, size), int), np.zeros(3, int), 1.0, 2),
              IntLayer(np.ones((2, 3), int), np.zeros(2, int), 1.0, 2)]
    ir = build_ir(layers, input_size=size, input_threshold=0, samples=samples, pe=1,
                  lfsr_width=width, seed=3, probs=probs, prob_bits=8)
    model = GoldenModel(ir)
    for x in (1, 77, 128, 254):                # every pixel the same value: one period each
        z = model._encode(np.full((1, size), x))
        assert int(z.sum()) == lfsr.keep_count(width, 8, probs[x])


def test_quantizing_p_refuses_roundings_beyond_the_tolerance_or_to_0_or_1():
    assert quantize_p(0.75, 8) == 192
    assert quantize_p(1.0, 1) == 2
    with pytest.raises(IRError, match=r"p = 0.1 rounds to 0/2 .*nothing kept"):
        quantize_p(0.1, 1)                      # it used to become 0.5 without a word
    with pytest.raises(IRError, match=r"p = 0.3 becomes 0.5 .*more than the tolerance 0.01"):
        quantize_p(0.3, 1)
    with pytest.raises(IRError, match=r"rounds to 2/2 .*no noise"):
        quantize_p(0.9, 1)
    with pytest.raises(IRError, match=r"rounds to 0/256 .*nothing kept"):
        quantize_p(0.001, 8)
    # The realized value counts, not only the rounding: 0.75 on an LFSR as wide as p_bits
    # keeps 191 of 255 draws.
    assert quantize_p(0.75, 8, width=8, tolerance=0.001) == 192
    with pytest.raises(IRError, match="becomes 0.74902"):
        quantize_p(0.75, 8, width=8, tolerance=0.0009)
    assert quantize_p(0.3, 4, tolerance=0.02) == 5            # 0.3125
    with pytest.raises(IRError, match="tolerance 0.01"):
        quantize_p(0.3, 4)


def test_a_stream_that_repeats_within_one_image_is_refused():
    ir = _one_period_ir(8, 17, 15, 0.75, 8)                 # 255 draws: exactly one period
    with pytest.raises(IRError, match=r"layers\[0\].rng: a 8-bit LFSR repeats after 255 draws, "
                                      r"but one image draws 256"):
        _one_period_ir(8, 16, 16, 0.75, 8)
    ir.samples = 16
    with pytest.raises(IRError, match="repeats after 255 draws"):
        ir.validate()
    layers = [IntLayer(np.ones((3, 16), int), np.zeros(3, int), 1.0, 2),
              IntLayer(np.ones((2, 3), int), np.zeros(2, int), 1.0, 2)]
    with pytest.raises(IRError, match=r"input.rng: a 8-bit LFSR repeats"):
        build_ir(layers, input_size=16, input_threshold=0, samples=16, pe=1, lfsr_width=8,
                 probs=bernoulli_probs(255, 8, 8), prob_bits=8)


def test_a_layer_that_would_keep_nothing_is_refused():
    # p_num 1 on an LFSR as wide as p_bits: the only draw below it is the lock-up state.
    ir = _one_period_ir(8, 17, 15, 0.75, 8)
    layer = ir.layers[0]
    layer.p_num = 1
    assert layer.p_realized == [0, 255]
    with pytest.raises(IRError, match=r"layers\[0\].p_num 1: a 8-bit LFSR never draws"):
        ir.validate()
