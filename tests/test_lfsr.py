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
    assert len(np.unique(got)) == period         # every non-zero state, once (gcd(leap, period) = 1)


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
