"""The popcount accumulator (hw/popcount.py) against its model, cycle by cycle: every
accumulator exactly, and ``out_valid``, ``LATENCY`` cycles after each beat; the model's counts
against a plain dot product; no multiplier in the generated netlist."""

import itertools
import re

import numpy as np
import pytest
from amaranth.back import rtlil, verilog
from amaranth.sim import Simulator
from hypothesis import given, settings, strategies as st

from hw.dense import pack_lanes
from hw.popcount import (LATENCY, PopcountAccumulator, accumulate_model, beat_bits, beat_model,
                         pack_bits, pack_weights, unpack_acc, wrap)


def _weight_range(weight_bits):
    return (-1, 1) if weight_bits == 1 else (-(1 << (weight_bits - 1)),
                                             (1 << (weight_bits - 1)) - 1)


def _random_weights(rng, shape, weight_bits):
    lo, hi = _weight_range(weight_bits)
    if weight_bits == 1:
        return rng.choice([-1, 1], size=shape)
    return rng.integers(lo, hi + 1, size=shape)


def _random_beats(rng, n, pe, simd, samples, weight_bits, p_valid=0.8, p_clear=0.05):
    """``n`` cycles of inputs: valid with gaps, an occasional clear, keep densities that vary
    from beat to beat (all blanked and all kept included)."""
    beats = []
    for _ in range(n):
        density = rng.choice([0.0, 0.3, 0.75, 1.0])
        beats.append({"valid": int(rng.random() < p_valid), "clear": int(rng.random() < p_clear),
                      "weights": _random_weights(rng, (pe, simd), weight_bits),
                      "spikes": rng.integers(0, 2, size=(samples, simd)),
                      "keep": (rng.random((samples, simd)) < density).astype(np.int64)})
    return beats


def _expected(beats, pe, samples, weight_bits, acc_bits):
    """The model's accumulators after each cycle's inputs."""
    acc = np.zeros((samples, pe), dtype=np.int64)
    states = []
    for b in beats:
        if b["clear"]:
            acc = np.zeros_like(acc)
        if b["valid"]:
            acc = accumulate_model(acc, b["weights"], b["spikes"], b["keep"], weight_bits,
                                   acc_bits)
        states.append(acc)
    return states


def _simulate(dut, beats):
    """Drive one beat a cycle (then ``LATENCY`` idle cycles); return ``acc`` and ``out_valid``
    as seen in each cycle."""
    seen = []
    idle = {"valid": 0, "clear": 0, "weights": np.zeros((dut.pe, dut.simd), np.int64) - 1,
            "spikes": np.zeros((dut.samples, dut.simd)), "keep": np.zeros((dut.samples, dut.simd))}

    async def bench(ctx):
        for b in beats + [idle] * LATENCY:
            ctx.set(dut.valid, b["valid"])
            ctx.set(dut.clear, b["clear"])
            ctx.set(dut.weights, pack_weights(b["weights"], dut.weight_bits))
            ctx.set(dut.spikes, pack_bits(b["spikes"]))
            ctx.set(dut.keep, pack_bits(b["keep"]))
            seen.append((unpack_acc(ctx.get(dut.acc), dut.samples, dut.pe, dut.acc_bits),
                         ctx.get(dut.out_valid)))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return seen


def _check(beats, pe, simd, samples, weight_bits, acc_bits):
    dut = PopcountAccumulator(pe, simd, samples, weight_bits, acc_bits)
    seen = _simulate(dut, beats)
    expected = _expected(beats, pe, samples, weight_bits, acc_bits)
    for c in range(LATENCY):                       # nothing has arrived yet
        assert not seen[c][0].any() and seen[c][1] == 0
    for c, (state, b) in enumerate(zip(expected, beats)):
        acc, out_valid = seen[c + LATENCY]
        assert np.array_equal(acc, state), f"cycle {c}: {acc.tolist()} != {state.tolist()}"
        assert out_valid == b["valid"], f"cycle {c}"


# --- the model --------------------------------------------------------------------------------

@pytest.mark.parametrize("weight_bits", range(1, 9))
def test_model_equals_dot_product(rng, weight_bits):
    pe, simd, samples = 5, 13, 400
    w = _random_weights(rng, (pe, simd), weight_bits)
    lo, hi = _weight_range(weight_bits)
    w[0], w[1] = lo, hi                            # the extremes, on every input
    z = rng.integers(0, 2, size=(samples, simd))
    k = rng.integers(0, 2, size=(samples, simd))
    direct = (k * (2 * z - 1)) @ w.T
    assert np.array_equal(beat_model(w, z, k, weight_bits), direct)
    acc = rng.integers(-1000, 1000, size=(samples, pe))
    assert np.array_equal(accumulate_model(acc, w, z, k, weight_bits), acc + direct)
    assert np.abs(direct).max() < 1 << (beat_bits(simd, weight_bits) - 1)


def test_accumulate_model_wraps_like_a_register():
    assert wrap([127 + 1, -128 - 1, 5], 8).tolist() == [-128, 127, 5]
    w, z, k = np.array([[1, 1]]), np.array([[1, 1]]), np.array([[1, 1]])
    assert accumulate_model([[3]], w, z, k, 1, acc_bits=3).tolist() == [[-3]]


def test_word_layouts():
    pe, simd, wb = 3, 2, 4
    w = np.array([[1, -2], [3, -8], [7, 0]])       # (pe, simd)
    word = pack_weights(w, wb)
    for n, s in itertools.product(range(pe), range(simd)):
        lane = (word >> ((s * pe + n) * wb)) & 0xF
        assert lane == w[n, s] & 0xF
    # input s's pe lanes are the dense engine's weight word of that input
    assert word == pack_lanes(w[:, 0], wb) | pack_lanes(w[:, 1], wb) << (pe * wb)
    assert pack_weights([[1, -1, -1, 1]], 1) == 0b1001
    bits = np.array([[1, 0, 0], [0, 1, 1]])        # (samples, simd)
    assert pack_bits(bits) == 0b110_001
    assert unpack_acc((5 << 8) | 0xFF, 2, 1, 8).tolist() == [[-1], [5]]


@pytest.mark.parametrize("weights, bits", [([[2]], 2), ([[-3]], 2), ([[0]], 1), ([[128]], 8)])
def test_pack_weights_rejects_out_of_range(weights, bits):
    with pytest.raises(ValueError, match=re.escape(str(weights))):
        pack_weights(weights, bits)


# --- the hardware -----------------------------------------------------------------------------

@pytest.mark.parametrize("weight_bits", [1, 2, 3])
def test_exhaustive_tiny(weight_bits):
    """pe=1, simd=2, samples=1: every weight, spike and keep combination, once as a fresh beat
    (``clear`` with it) and once accumulated into the narrowest legal register (it wraps)."""
    lo, hi = _weight_range(weight_bits)
    values = [-1, 1] if weight_bits == 1 else range(lo, hi + 1)
    beats = [{"valid": 1, "clear": 1, "weights": np.array([w]), "spikes": np.array([z]),
              "keep": np.array([k])}
             for w in itertools.product(values, repeat=2)
             for z in itertools.product((0, 1), repeat=2)
             for k in itertools.product((0, 1), repeat=2)]
    acc_bits = beat_bits(2, weight_bits)
    _check(beats, 1, 2, 1, weight_bits, acc_bits)
    for b in beats[1:]:
        b["clear"] = 0
    _check(beats, 1, 2, 1, weight_bits, acc_bits)


@pytest.mark.parametrize("weight_bits, acc_bits", [(1, 8), (1, 32), (2, 10), (4, 14), (8, 16)])
def test_random_beats(rng, weight_bits, acc_bits):
    """pe=4, simd=8, samples=3: beats back to back and with gaps, clears among them; the
    narrow accumulators wrap."""
    beats = _random_beats(rng, 150, 4, 8, 3, weight_bits)
    _check(beats, 4, 8, 3, weight_bits, acc_bits)


@pytest.mark.parametrize("simd", [1, 2, 3, 4, 5, 8, 16, 32])
@pytest.mark.parametrize("weight_bits", [1, 3])
def test_any_simd(rng, simd, weight_bits):
    beats = _random_beats(rng, 40, 2, simd, 2, weight_bits)
    _check(beats, 2, simd, 2, weight_bits, 24)


def test_clear_is_pipelined_with_the_beats(rng):
    """``clear`` drops the beats before it and keeps the one of its own cycle; ``clear``
    without ``valid`` leaves zero; without ``valid`` nothing is added."""
    one = _random_beats(rng, 1, 2, 4, 2, 2)[0]
    beat = dict(one, valid=1, clear=0)
    beats = [beat, beat, dict(beat, clear=1), dict(beat, valid=0), beat,
             dict(beat, valid=0, clear=1), dict(beat, valid=0), beat]
    _check(beats, 2, 4, 2, 2, 12)


@settings(max_examples=15, deadline=None)
@given(pe=st.integers(1, 3), simd=st.integers(1, 9), samples=st.integers(1, 3),
       weight_bits=st.integers(1, 8), seed=st.integers(0, 2**32 - 1), extra=st.integers(0, 6))
def test_random_configs(pe, simd, samples, weight_bits, seed, extra):
    rng = np.random.default_rng(seed)
    beats = _random_beats(rng, 12, pe, simd, samples, weight_bits)
    _check(beats, pe, simd, samples, weight_bits, beat_bits(simd, weight_bits) + extra)


@pytest.mark.parametrize("kwargs, name", [
    (dict(pe=0), "pe 0"), (dict(simd=-1), "simd -1"), (dict(samples=True), "samples True"),
    (dict(simd=2.0), "simd 2.0"), (dict(weight_bits=0), "weight_bits 0"),
    (dict(weight_bits=9), "weight_bits 9"), (dict(acc_bits=4), "acc_bits 4"),
    (dict(acc_bits=65), "acc_bits 65")])
def test_invalid_arguments(kwargs, name):
    args = dict(pe=2, simd=4, samples=2, weight_bits=2, acc_bits=16) | kwargs
    with pytest.raises(ValueError, match=name):
        PopcountAccumulator(**args)


@pytest.mark.parametrize("weight_bits", [1, 2, 8])
def test_verilog_has_no_multiplier(weight_bits):
    def dut():
        return PopcountAccumulator(4, 8, 3, weight_bits, 20)
    assert "$mul" not in rtlil.convert(dut(), name="popcount", emit_src=False)
    text = verilog.convert(dut(), name="popcount", emit_src=False)
    assert "module popcount" in text
    # Attributes (* ... *), comments /* ... */ and `always @*` aside, no `*` is left.
    code = re.sub(r"\(\*.*?\*\)|/\*.*?\*/|@\*", "", text, flags=re.S)
    assert "*" not in code


@pytest.mark.parametrize("gate_stage,input_stage", [(False, False), (True, False),
                                                    (True, True), (False, True)])
@pytest.mark.parametrize("weight_bits", [1, 3])
def test_shared_spikes_and_init(rng, weight_bits, gate_stage, input_stage):
    """``shared_spikes``: one spike word that every sample sees; ``init``: what a ``clear``
    loads, per neuron, for every sample (held from the clear on); ``gate_stage`` and
    ``input_stage``: one more cycle of latency each: against the model."""
    pe, simd, samples, acc_bits = 3, 5, 4, 14
    dut = PopcountAccumulator(pe, simd, samples, weight_bits, acc_bits, shared_spikes=True,
                              gate_stage=gate_stage, input_stage=input_stage)
    assert dut.latency == LATENCY + gate_stage + input_stage
    init = rng.integers(-50, 50, size=pe)
    beats = _random_beats(rng, 60, pe, simd, 1, weight_bits)
    for b in beats:
        b["keep"] = (rng.random((samples, simd)) < 0.6).astype(np.int64)
    beats[0]["clear"] = 1
    seen = []

    async def bench(ctx):
        ctx.set(dut.init, pack_lanes(init, acc_bits))
        for b in beats + [{**beats[-1], "valid": 0, "clear": 0}] * dut.latency:
            for name in ("valid", "clear"):
                ctx.set(getattr(dut, name), b[name])
            ctx.set(dut.weights, pack_weights(b["weights"], weight_bits))
            ctx.set(dut.spikes, pack_bits(b["spikes"]))
            ctx.set(dut.keep, pack_bits(b["keep"]))
            seen.append(unpack_acc(ctx.get(dut.acc), samples, pe, acc_bits))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    acc = np.zeros((samples, pe), dtype=np.int64)
    for c, b in enumerate(beats):
        if b["clear"]:
            acc = np.broadcast_to(init, (samples, pe)).astype(np.int64)
        if b["valid"]:
            acc = accumulate_model(acc, b["weights"], b["spikes"], b["keep"], weight_bits,
                                   acc_bits)
        assert np.array_equal(seen[c + dut.latency], acc), f"cycle {c}"
