"""The hardware LFSR against its Python model, exhaustively over a full 16-bit period."""

import numpy as np
import pytest
from amaranth.sim import Simulator
from hypothesis import given, settings, strategies as st

from hw.lfsr import Lfsr
from nsm_export import lfsr


def test_python_model_full_period_and_no_lockup():
    mask = lfsr.galois_mask(16)
    s, seen = 0xACE1, set()
    for _ in range((1 << 16) - 1):
        assert s != 0
        seen.add(s)
        s = lfsr.step(s, mask)
    assert s == 0xACE1 and len(seen) == (1 << 16) - 1


@pytest.mark.slow
@pytest.mark.parametrize("leap", [1, 8])
def test_hardware_equals_model_over_full_period(leap):
    width, seed = 16, 0xACE1
    period = (1 << width) - 1
    expected, _ = lfsr.draws(width, lfsr.galois_mask(width), leap, seed, period, width)
    dut = Lfsr(width, seed, leap)
    got = np.zeros(period, dtype=np.int64)

    async def bench(ctx):
        ctx.set(dut.en, 1)
        for i in range(period):
            got[i] = ctx.get(dut.next)
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert np.array_equal(got, expected)
    assert 0 not in got                          # never the lock-up state
    # every non-zero state, once (gcd(leap, period) = 1)
    assert len(np.unique(got)) == period


def test_hardware_holds_without_enable():
    dut = Lfsr(16, 0x1234, 3)

    async def bench(ctx):
        for _ in range(5):
            assert ctx.get(dut.state) == 0x1234
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


@settings(max_examples=40, deadline=None)
@given(width=st.integers(8, 32), leap=st.integers(1, 40), a=st.integers(1, 2**32 - 1),
       b=st.integers(1, 2**32 - 1))
def test_leap_map_is_linear_and_equals_repeated_steps(width, leap, a, b):
    mask = lfsr.galois_mask(width)
    a &= (1 << width) - 1
    b &= (1 << width) - 1
    cols = lfsr.leap_matrix(width, mask, leap)
    assert lfsr.apply_matrix(cols, a) == lfsr.advance(a, mask, leap)
    assert lfsr.apply_matrix(cols, a ^ b) == lfsr.apply_matrix(cols, a) ^ lfsr.apply_matrix(cols, b)


@pytest.mark.parametrize("width", [8, 9, 10, 11, 12])
def test_table_masks_are_maximal_length(width):
    mask, s = lfsr.galois_mask(width), 1
    for i in range(1, 1 << width):
        s = lfsr.step(s, mask)
        if s == 1:
            break
    assert i == (1 << width) - 1


@pytest.mark.parametrize("bad", [dict(width=7, seed=1), dict(width=16, seed=0),
                                 dict(width=16, seed=1 << 16), dict(width=16, seed=1, leap=0)])
def test_constructor_rejects_bad_arguments(bad):
    with pytest.raises(ValueError):
        Lfsr(**bad)


@pytest.mark.parametrize("width,leap,count", [(16, 8, 70_000), (32, 8, 100_003), (24, 5, 65_536)])
def test_parallel_stream_generation_equals_the_sequential_loop(width, leap, count):
    mask, seed = lfsr.galois_mask(width), 0x1D
    fast, end_fast = lfsr.draws(width, mask, leap, seed, count, 8)      # takes the numpy path
    s, slow = seed, np.empty(count, dtype=np.int64)
    for i in range(count):
        s = lfsr.advance(s, mask, leap)
        slow[i] = s & 0xFF
    assert np.array_equal(fast, slow) and end_fast == s


def test_matrix_power_is_repeated_application():
    cols = lfsr.leap_matrix(16, lfsr.galois_mask(16), 3)
    assert lfsr.apply_matrix(lfsr.matrix_power(cols, 1000), 0xBEEF) == \
        lfsr.advance(0xBEEF, lfsr.galois_mask(16), 3000)


@pytest.mark.parametrize("lanes,tail", [(4, 4), (8, 3), (16, 1)])
def test_hardware_lanes_are_consecutive_draws_of_the_one_stream(lanes, tail):
    """Lane k reads the state (k+1)*leap steps ahead; en takes ``lanes`` draws, en_tail ``tail``."""
    width, seed, leap = 24, 0x5EED1, 8
    mask = lfsr.galois_mask(width)
    batches = [lanes, lanes, tail, lanes, tail, tail, lanes] * 20
    stream, _ = lfsr.draws(width, mask, leap, seed, sum(batches) + lanes, width)
    dut = Lfsr(width, seed, leap, lanes, tail)

    async def bench(ctx):
        pos = 0
        for n in batches:
            ahead = ctx.get(dut.ahead)
            lane = [(ahead >> (k * width)) & ((1 << width) - 1) for k in range(lanes)]
            assert lane == stream[pos:pos + lanes].tolist()
            ctx.set(dut.en, n == lanes)
            ctx.set(dut.en_tail, n != lanes)
            await ctx.tick()
            pos += n

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


# Keep-bit statistics of the streams at leap = p_bits (the rule before build.default_leap; the bar
# itself is tests/test_rng_quality.py),
# over 3.2e6 draws each (2e5 clocks of 16 lanes, so that the largest of 120 pairwise sample
# correlations has a standard error near 0.002): lag-1 correlation, the correlation between every
# pair of the 16 lanes one clock draws, lane k against itself one clock later, and the firing
# frequency against the quantized p within 5 standard errors.
STAT_DRAWS = 16 * 200_000


@pytest.mark.parametrize("width,p_bits,p_num", [(32, 8, 192), (32, 2, 3), (32, 4, 4), (16, 8, 64),
                                                (24, 8, 230)])
def test_keep_bits_are_uncorrelated_and_fire_at_p(width, p_bits, p_num):
    mask = lfsr.galois_mask(width)
    u, _ = lfsr.draws(width, mask, p_bits, 0xC0FFEE & ((1 << width) - 1), STAT_DRAWS, p_bits)
    keep = (u < p_num).astype(np.float64)
    p = p_num / (1 << p_bits)
    assert abs(keep.mean() - p) < 5 * np.sqrt(p * (1 - p) / STAT_DRAWS)
    assert abs(np.corrcoef(keep[:-1], keep[1:])[0, 1]) < 0.01
    lanes = keep.reshape(-1, 16)                                 # row = one clock, 16 lanes
    c = np.corrcoef(lanes, rowvar=False)
    assert np.abs(c[np.triu_indices(16, 1)]).max() < 0.01
    # Lane k at one clock against lane k at the next: lag 16 of the stream.
    assert max(abs(np.corrcoef(lanes[:-1, k], lanes[1:, k])[0, 1]) for k in range(16)) < 0.01


def test_single_steps_would_be_correlated():
    """Why ``leap >= p_bits``: one step per draw shares p_bits - 1 bits between draws."""
    mask = lfsr.galois_mask(32)
    u, _ = lfsr.draws(32, mask, 1, 0xC0FFEE, STAT_DRAWS, 2)
    keep = (u < 1).astype(np.float64)                            # p = 0.25
    assert np.corrcoef(keep[:-1], keep[1:])[0, 1] > 0.2


@pytest.mark.parametrize("run_seed", [0, 0x1234, 0xACE1, 0xFFFF_ACE1])
def test_hardware_reseed_is_the_specs_rule(run_seed):
    """``reseed`` loads ``LfsrSpec.reseeded(run_seed)``; a run seed that would give the lock-up
    state (here 0xACE1 on 16 bits) falls back to the reset seed."""
    from nsm_export.ir import LfsrSpec
    spec = LfsrSpec(width=16, mask=lfsr.galois_mask(16), seed=0xACE1, leap=8)
    dut = Lfsr(16, spec.seed, 8)

    async def bench(ctx):
        ctx.set(dut.run_seed, run_seed)
        ctx.set(dut.reseed, 1)
        await ctx.tick()
        assert ctx.get(dut.state) == spec.reseeded(run_seed)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
