"""Galois LFSR model: the one definition of every random bit the hardware draws.

The hardware (``hw.lfsr``) derives its leap-forward XOR network from :func:`step` by running it on
basis vectors, the way Amaranth's CRC derives its matrices from its software model; nothing here is
typed in by hand except the primitive polynomials, which come from ``lfsr_taps.json``.

State update, one step::

    s = (s >> 1) ^ (mask if s & 1 else 0)

A draw advances the state ``leap`` steps and takes the low ``bits`` bits of the new state.

:func:`lag_correlations` computes, exactly and without drawing, how the keep bits ``u < p_num``
of two draws correlate over the LFSR's period (what the compiler's default leap is chosen by).
"""

from __future__ import annotations

import json
from fractions import Fraction
from functools import lru_cache
from importlib import resources

import numpy as np

__all__ = [
    "MIN_WIDTH", "MAX_WIDTH", "galois_mask", "step", "advance", "leap_matrix", "apply_matrix",
    "LeapTable", "draws", "keep_correlation", "lag_correlations", "period", "keep_count",
    "realized_keep", "prime_factors", "is_maximal",
]

MIN_WIDTH = 8
MAX_WIDTH = 32


@lru_cache(maxsize=None)
def _masks() -> dict[int, int]:
    text = resources.files(__package__).joinpath("lfsr_taps.json").read_text()
    return {int(w): int(m, 16) for w, m in json.loads(text)["galois_masks"].items()}


def galois_mask(width: int) -> int:
    """The maximal-length Galois mask for ``width`` bits (8 to 32)."""
    masks = _masks()
    if width not in masks:
        raise ValueError(f"LFSR width {width} is not supported (choose {MIN_WIDTH} to {MAX_WIDTH})")
    return masks[width]


def step(state: int, mask: int) -> int:
    """One Galois step. Linear over GF(2): step(a ^ b) == step(a) ^ step(b)."""
    return (state >> 1) ^ (mask if state & 1 else 0)


def advance(state: int, mask: int, steps: int) -> int:
    for _ in range(steps):
        state = step(state, mask)
    return state


def leap_matrix(width: int, mask: int, leap: int) -> list[int]:
    """Column images of the ``leap``-step map: ``columns[k] = advance(1 << k)``.

    The state after ``leap`` steps is the XOR of ``columns[k]`` over the set bits ``k`` of the
    state; the hardware builds exactly this network.
    """
    return [advance(1 << k, mask, leap) for k in range(width)]


def apply_matrix(columns: list[int], state: int) -> int:
    out = 0
    k = 0
    while state:
        if state & 1:
            out ^= columns[k]
        state >>= 1
        k += 1
    return out


class LeapTable:
    """Byte-sliced lookup tables for the leap map, for fast exact stream generation."""

    def __init__(self, width: int, mask: int, leap: int):
        self.width = width
        cols = leap_matrix(width, mask, leap)
        self.nbytes = (width + 7) // 8
        self.tables = []
        for b in range(self.nbytes):
            t = np.zeros(256, dtype=np.uint64)
            for v in range(256):
                t[v] = apply_matrix(cols, v << (8 * b)) if (v << (8 * b)) < (1 << width) else 0
            self.tables.append([int(x) for x in t])

    def next(self, state: int) -> int:
        out = 0
        for b, t in enumerate(self.tables):
            out ^= t[(state >> (8 * b)) & 0xFF]
        return out


@lru_cache(maxsize=64)
def _table(width: int, mask: int, leap: int) -> LeapTable:
    return LeapTable(width, mask, leap)


def compose(outer: list[int], inner: list[int]) -> list[int]:
    """Columns of the map ``outer ∘ inner`` (apply ``inner`` first)."""
    return [apply_matrix(outer, col) for col in inner]


def matrix_power(columns: list[int], n: int) -> list[int]:
    """Columns of the map applied ``n`` times (square and multiply)."""
    result = [1 << k for k in range(len(columns))]
    base = columns
    while n:
        if n & 1:
            result = compose(base, result)
        base = compose(base, base)
        n >>= 1
    return result


def _draws_parallel(width: int, mask: int, leap: int, state: int, count: int, bits: int,
                    lanes: int | None = None) -> tuple[np.ndarray, int]:
    """Same values as the sequential loop: ``lanes`` stretches of the one stream, each started
    at its exact position by jumping ahead, then stepped together in numpy."""
    if lanes is None:
        lanes = int(np.clip(int(np.sqrt(count) * 4), 256, 16384))
    per_lane = -(-count // lanes)
    leap_cols = leap_matrix(width, mask, leap)
    jump = matrix_power(leap_cols, per_lane)
    starts = np.empty(lanes, dtype=np.uint64)
    s = state
    for i in range(lanes):
        starts[i] = s
        s = apply_matrix(jump, s)
    tables = [np.asarray(t, dtype=np.uint64) for t in _table(width, mask, leap).tables]
    out = np.empty((per_lane, lanes), dtype=np.uint16)          # bits <= 16
    low = np.uint64((1 << bits) - 1)
    last_lane, last_k = divmod(count - 1, per_lane)
    final = state
    cur = starts
    for k in range(per_lane):
        nxt = tables[0][cur & np.uint64(0xFF)]
        for b in range(1, len(tables)):
            nxt ^= tables[b][(cur >> np.uint64(8 * b)) & np.uint64(0xFF)]
        cur = nxt
        out[k] = cur & low
        if k == last_k:
            final = int(cur[last_lane])
    return out.T.reshape(-1)[:count].astype(np.int64), final


def draws(width: int, mask: int, leap: int, state: int, count: int, bits: int
          ) -> tuple[np.ndarray, int]:
    """``count`` successive draws from ``state``; returns (values, final state).

    Each draw advances ``leap`` steps, then reads the low ``bits`` bits of the state.
    """
    if count >= 1 << 16 and bits <= 16:
        return _draws_parallel(width, mask, leap, state, count, bits)
    table = _table(width, mask, leap)
    low = (1 << bits) - 1
    out = np.empty(count, dtype=np.int64)
    tabs = table.tables
    s = state
    if len(tabs) == 4:
        t0, t1, t2, t3 = tabs
        for i in range(count):
            s = t0[s & 0xFF] ^ t1[(s >> 8) & 0xFF] ^ t2[(s >> 16) & 0xFF] ^ t3[s >> 24]
            out[i] = s & low
    else:
        for i in range(count):
            s = table.next(s)
            out[i] = s & low
    return out, s


# Exact keep frequency. A maximal-length LFSR runs through every non-zero state once a period,
# and so does a stream that leaps a number of steps coprime to the period (it is a permutation of
# the same cycle). Over one period, the draws ``u`` (any fixed ``bits`` bits of the state) take
# each ``bits``-bit value ``2**(width - bits)`` times, except 0, which the lock-up state would
# have given once more: the keep bit ``u < p_num`` is set ``p_num * 2**(width - bits) - 1`` times
# in ``2**width - 1`` draws. No LFSR reaches ``p_num / 2**bits`` exactly (its period is odd);
# the IR states this value (``p_realized``). It lies ``(1 - p) / (2**width - 1)`` below ``p``:
# from 24 bits on, below the resolution of the float32 noise training draws with ``p``.

def period(width: int) -> int:
    """Draws before a maximal-length ``width``-bit stream repeats."""
    return (1 << width) - 1


def keep_count(width: int, bits: int, p_num: int) -> int:
    """Draws ``u < p_num`` over one period of a maximal ``width``-bit stream whose draws read
    ``bits`` bits (``0 <= p_num <= 2**bits``)."""
    if not 0 <= p_num <= 1 << bits or not 1 <= bits <= width:
        raise ValueError(f"p_num {p_num} with {bits} bits on {width} bits")
    return (p_num << (width - bits)) - 1 if p_num else 0


def realized_keep(width: int, bits: int, p_num: int) -> Fraction:
    """The keep frequency the hardware realizes, exactly: :func:`keep_count` over
    :func:`period`."""
    return Fraction(keep_count(width, bits, p_num), period(width))


def prime_factors(n: int) -> list[int]:
    """The distinct primes dividing ``n`` (trial division: ``n`` up to about 2**40)."""
    out, d = [], 2
    while d * d <= n:
        if n % d == 0:
            out.append(d)
            while n % d == 0:
                n //= d
        d += 1 if d == 2 else 2
    return out + ([n] if n > 1 else [])


def is_maximal(width: int, mask: int, leap: int = 1) -> bool:
    """Whether the map ``leap`` Galois steps has order exactly ``2**width - 1`` (every non-zero
    state on one cycle): the map to that power is the identity and to no power ``P / q`` for a
    prime ``q`` dividing ``P``. With ``leap = 1`` this says the mask is primitive."""
    cols = leap_matrix(width, mask, leap)
    ident = [1 << k for k in range(width)]
    n = period(width)
    return matrix_power(cols, n) == ident and all(
        matrix_power(cols, n // q) != ident for q in prime_factors(n))


# Exact pair statistics. Over one period the state runs through every non-zero value once, so
# the bits two draws read, ``(a, b) = G x`` for the start state ``x`` (a row of ``G`` per bit read:
# a linear functional of ``x``), are uniform on the image of ``G``, less ``x = 0``. Two draws whose
# 2 * bits functionals are independent are independent; a linear relation between them (the
# kernel of ``G``'s rows) correlates their keep bits by the Walsh coefficients of ``u < p_num`` at
# the relation's two halves, which is large only where a relation joins high bits of both reads.

def _functional_step(functional: int, mask: int, full: int) -> int:
    """The functional ``f`` of the state one step later, as a functional of the state now:
    ``f . step(x) == _functional_step(f) . x`` (``f . x`` = parity of ``f & x``)."""
    return ((functional << 1) & full) | (int(functional & mask).bit_count() & 1)


def _relations(rows: list[int]) -> list[int]:
    """A basis of the combinations (bit ``i`` takes ``rows[i]``) that XOR to zero."""
    pivots: dict[int, tuple[int, int]] = {}
    kernel = []
    for i, v in enumerate(rows):
        combo = 1 << i
        while v:
            top = v.bit_length() - 1
            if top not in pivots:
                pivots[top] = (v, combo)
                break
            pv, pc = pivots[top]
            v, combo = v ^ pv, combo ^ pc
        if not v:
            kernel.append(combo)
    return kernel


def _below(p_num: int, bits: int, a: np.ndarray) -> np.ndarray:
    """Walsh coefficients ``sum over u < p_num of (-1)^popcount(a & u)``, for each ``a``: the
    values below ``p_num`` are, for each set bit ``j`` of it, the block of ``2**j`` values that
    share its bits above ``j`` and have bit ``j`` clear."""
    out = np.zeros(a.shape, dtype=np.float64)
    for j in range(bits):
        if p_num >> j & 1:
            high = np.uint64((p_num >> (j + 1)) << (j + 1))
            sign = 1.0 - 2.0 * (np.bitwise_count(a & high) & 1)
            out += np.where(a & np.uint64((1 << j) - 1) == 0, float(1 << j) * sign, 0.0)
    return out


def keep_correlation(width: int, bits: int, first: list[int], second: list[int],
                     p_nums) -> np.ndarray:
    """Exact correlation, over one period, of the keep bits ``u < p_num`` of two draws.

    ``first`` and ``second`` are the functionals of the ``bits`` bits each draw reads (bit ``j``
    of ``u`` is the parity of ``functional[j] & x`` for the start state ``x``); each draw's own
    functionals must be independent. Returns one correlation per ``p_num`` (1 to
    ``2**bits - 1``); 0 where the keep bit never changes (``p_num = 1`` with ``bits == width``:
    the one state below it is the lock-up state).
    """
    kernel = _relations(list(first) + list(second))
    span = np.zeros(1, dtype=np.uint64)
    for c in kernel:
        span = np.concatenate([span, span ^ np.uint64(c)])
    low = np.uint64((1 << bits) - 1)
    a, b = span & low, span >> np.uint64(bits)
    total = float((1 << width) - 1)
    out = []
    for p_num in p_nums:
        # Start states (0 included) whose two reads are both below p_num, less the state 0.
        both = float((_below(p_num, bits, a) * _below(p_num, bits, b)).sum())
        both = both * 2.0 ** (width - 2 * bits) - 1
        one = (float(p_num) * 2.0 ** (width - bits) - 1) / total
        var = one * (1 - one)
        out.append((both / total - one * one) / var if var > 0 else 0.0)
    return np.array(out)


def lag_correlations(width: int, mask: int, leap: int, bits: int, p_nums, lags,
                     stop_above: float = np.inf) -> np.ndarray:
    """Exact keep-bit correlations of draws ``lag`` apart in one stream, for each lag in
    ``lags`` (ascending) and ``p_num`` in ``p_nums``: shape ``(len(lags), len(p_nums))``.

    Stops at the first lag whose largest ``|correlation|`` exceeds ``stop_above``; the rows
    returned are the lags reached.
    """
    full = (1 << width) - 1
    # Column i of the transposed leap map: state bit i after ``leap`` steps, as a functional.
    moved = []
    for i in range(width):
        f = 1 << i
        for _ in range(leap):
            f = _functional_step(f, mask, full)
        moved.append(f)
    first = [1 << j for j in range(bits)]
    out = np.zeros((len(lags), len(p_nums)))
    funcs, at = first, 0
    for row, lag in enumerate(lags):
        for _ in range(lag - at):
            funcs = [apply_matrix(moved, f) for f in funcs]
        at = lag
        out[row] = keep_correlation(width, bits, first, funcs, p_nums)
        if np.abs(out[row]).max() > stop_above:
            return out[:row + 1]
    return out
