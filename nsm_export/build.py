"""Assemble a valid IR from integer layers: quantize p, size every register, derive LFSR seeds.

The compiler calls :func:`build_ir` after it has folded an ONNX graph into integers; tests and the
fuzz benches call it with random integer networks.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from math import gcd

import numpy as np

from . import lfsr
from .ir import (MAX_P_BITS, IR, ConvLayer, DenseLayer, InputSpec, IRError, LfsrSpec, PoolLayer,
                 signed_bits)

__all__ = ["IntLayer", "IntConv", "IntPool", "build_ir", "quantize_p", "derive_seed",
           "DEFAULT_P_BITS", "DEFAULT_LFSR_WIDTH", "DEFAULT_PE", "bernoulli_probs",
           "default_leap", "leap_correlation", "LEAP_LAGS", "LEAP_MARGIN", "P_TOLERANCE"]

DEFAULT_P_BITS = 8
DEFAULT_LFSR_WIDTH = 32
DEFAULT_PE = 8
ENCODER_SEED_INDEX = 1000      # derive_seed index of the stochastic input encoder's LFSR
LEAP_LAGS = 64                 # draws apart that default_leap keeps uncorrelated
LEAP_MARGIN = 0.003            # its bound on the exact |correlation|, against the bar of 0.01
#: How far the keep probability the hardware realizes may lie from the model's ``p`` (absolute):
#: 8-bit ``p`` moves it by 1/512 at most, 6 bits by 1/128; fewer bits only where ``p`` is near
#: a multiple of ``2**-p_bits``.
P_TOLERANCE = 0.01


def leap_probe_p_nums(p_bits: int) -> list[int]:
    """The keep probabilities :func:`default_leap` checks: 1, 2**p_bits - 1 and the nearest
    ``p_num`` to 0.1, 0.25, 0.5, 0.75 and 0.9."""
    one = 1 << p_bits
    return sorted({min(max(round(p * one), 1), one - 1) for p in (0, .1, .25, .5, .75, .9, 1)})


@lru_cache(maxsize=None)
def default_leap(width: int, p_bits: int) -> int:
    """LFSR steps per draw for a newly compiled layer or stochastic encoder.

    A draw reads the low ``p_bits`` bits of the Galois state, which are linear functions of the
    start state; two draws are independent exactly when their ``2 * p_bits`` functions are, and
    a linear relation between them correlates their keep bits ``u < p_num``
    (:func:`nsm_export.lfsr.lag_correlations` computes that correlation over the period, without
    drawing). Which step distances carry such a relation depends on the feedback polynomial: on
    32 bits with 8-bit ``p``, distances 25 to 32 do, so ``leap = p_bits = 8`` correlates draws
    4 apart by +0.026 at p = 0.1 and 0.9, and leaps 9 and 10 draws 3 apart (27, 30 steps).

    The rule: the smallest leap from ``p_bits`` to ``4 * width`` that is coprime to the period
    ``2**width - 1`` (so the stream visits every state) and keeps the exact keep-bit correlation
    of every two draws 1 to :data:`LEAP_LAGS` apart (lanes of a clock, samples of a T' batch,
    nearby inputs) within :data:`LEAP_MARGIN` at each of :func:`leap_probe_p_nums`. The margin
    leaves room for the sampling error of a million-draw measurement (about 0.001 each) under
    the bar of 0.01 (``benchmarks/rng_quality.py``). Where no leap gets there (20 bits with
    8 to 13 ``p_bits``, 21 with 13, 22 with 7 to 15, most widths under 20), the leap with the
    smallest largest correlation; on 22 bits (x^22 + x + 1) that is still above 0.01 from 8
    ``p_bits`` up.
    32 bits: leap 11 for ``p_bits`` 8 to 10, 19 for 11 to 16.
    """
    mask = lfsr.galois_mask(width)
    probes = leap_probe_p_nums(p_bits)
    best, best_worst = None, np.inf
    for leap in range(p_bits, 4 * width + 1):
        if gcd(leap, (1 << width) - 1) != 1:
            continue
        r = lfsr.lag_correlations(width, mask, leap, p_bits, probes, range(1, LEAP_LAGS + 1),
                                  stop_above=best_worst)
        worst = float(np.abs(r).max())
        if len(r) == LEAP_LAGS and worst <= LEAP_MARGIN:
            return leap
        if len(r) == LEAP_LAGS and worst < best_worst:
            best, best_worst = leap, worst
    return best


@lru_cache(maxsize=None)
def leap_correlation(width: int, p_bits: int) -> float:
    """The largest exact keep-bit correlation (over :data:`LEAP_LAGS` lags and the probe
    ``p``'s) of :func:`default_leap`'s stream: above 0.01 where no leap of that width meets the
    bar (20 to 22 bits at some ``p_bits``, most widths under 20)."""
    leap = default_leap(width, p_bits)
    r = lfsr.lag_correlations(width, lfsr.galois_mask(width), leap, p_bits,
                              leap_probe_p_nums(p_bits), range(1, LEAP_LAGS + 1))
    return float(np.abs(r).max())


def bernoulli_probs(pixel_max: int, pixel_bits: int, prob_bits: int) -> list[int]:
    """``probs`` for ``P(+1 | x) = x / pixel_max`` (nsm_train's ``bernoulli`` encoding), each
    rounded to ``prob_bits`` bits; pixel values above ``pixel_max`` fire always."""
    one = 1 << prob_bits
    return [min(one, round(x * one / pixel_max)) for x in range(1 << pixel_bits)]


@dataclass
class IntLayer:
    """An integer dense layer before hardware sizing."""
    weights: np.ndarray       # (n_out, n_in) integers
    offsets: np.ndarray       # thresholds (hidden) or biases (output)
    p: float                  # keep probability of the per-input blank-out, in (0, 1]
    weight_bits: int


@dataclass
class IntConv:
    """An integer conv layer before sizing: ``weights`` (c_out, c_in, k, k), ``offsets`` the
    per-filter thresholds, on a ``(c_in, h_in, w_in)`` input map."""
    weights: np.ndarray
    offsets: np.ndarray
    p: float
    weight_bits: int
    h_in: int
    w_in: int
    stride: int = 1
    padding: int = 0


@dataclass
class IntPool:
    """Binary-spike pooling (``mode`` ``"or"`` or ``"majority"``) on a ``(channels, h_in, w_in)``
    map."""
    channels: int
    h_in: int
    w_in: int
    size: int
    mode: str


def quantize_p(p: float, p_bits: int, where: str = "p", width: int = DEFAULT_LFSR_WIDTH,
               tolerance: float = P_TOLERANCE) -> int:
    """The nearest ``p_num`` with ``p_num / 2**p_bits`` ≈ ``p``, refused (one line) where the
    keep frequency a ``width``-bit LFSR then realizes (:func:`lfsr.realized_keep`) lies more than
    ``tolerance`` from ``p``, or where ``p < 1`` would round to 0 (nothing kept) or to 1 (no
    noise). ``p = 1`` draws nothing and gives ``2**p_bits``."""
    if isinstance(p, bool) or not isinstance(p, (float, int)) or not 0.0 < float(p) <= 1.0:
        raise IRError(f"{where} = {p!r} is outside (0, 1]")
    one = 1 << p_bits
    if float(p) == 1.0:
        return one
    p_num = int(round(float(p) * one))
    fix = (f"use more --p-bits than {p_bits}" if p_bits < min(MAX_P_BITS, width)
           else "raise --p-tolerance or retrain with another p")
    if p_num == 0 or p_num == one:
        raise IRError(f"{where} = {p} rounds to {p_num}/{one} with {p_bits}-bit p "
                      f"({'nothing kept' if p_num == 0 else 'no noise'}): {fix}")
    real = float(lfsr.realized_keep(width, p_bits, p_num))
    if abs(real - float(p)) > tolerance:
        raise IRError(f"{where} = {p} becomes {real:.6g} with {p_bits}-bit p on a {width}-bit "
                      f"LFSR, {abs(real - float(p)):.3g} away (more than the tolerance "
                      f"{tolerance}): {fix}")
    return p_num


def derive_seed(base: int, index: int, width: int) -> int:
    """A non-zero ``width``-bit seed for LFSR ``index`` (splitmix64 of the base seed)."""
    x = (int(base) * 0x9E3779B97F4A7C15 + (index + 1) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    for _ in range(2):
        x ^= x >> 30
        x = (x * 0xBF58476D1CE4E5B9) & (2**64 - 1)
        x ^= x >> 27
        x = (x * 0x94D049BB133111EB) & (2**64 - 1)
        x ^= x >> 31
    s = x & ((1 << width) - 1)
    return s if s else 1


def build_ir(layers: list[IntLayer | IntConv | IntPool], input_size: int, input_threshold: int,
             samples: int,
             pe: int | list[int] = DEFAULT_PE, seed: int = 1, p_bits: int = DEFAULT_P_BITS,
             lfsr_width: int = DEFAULT_LFSR_WIDTH, pixel_bits: int = 8, name: str = "nsm",
             source: dict | None = None, lanes: int | list[int] = 1,
             weight_store: str | list[str] = "rom", thresholds=None,
             layout: str = "pixel-major", probs=None, prob_bits: int = 8,
             simd: int | list[int] = 1, pass_samples: int = 0,
             p_tolerance: float = P_TOLERANCE) -> IR:
    """``pe``: neuron lanes; ``lanes``: blank-out draws per clock (forced to 1 where p = 1);
    ``weight_store``: ``rom`` or ``ram``; ``simd``: kept inputs added per clock (a sampling
    layer's ``lanes`` is raised to its ``simd``; see :mod:`nsm_export.ir`). Each is one value for
    every layer or one per layer. ``thresholds``: a list makes the input a thermometer code
    (``layout`` says how its spikes are numbered; the first layer's inputs must already follow it).
    ``probs``: a list (one per pixel value) makes it a stochastic (``bernoulli``) code with
    ``P(+1 | x) = probs[x] / 2**prob_bits``. ``pass_samples`` (T', every dense and conv layer):
    build the popcount engines, ``T'`` samples at once (a sampling layer's ``lanes`` is then
    lowered to its ``simd`` instead). ``p_tolerance``: how far the realized keep probability may
    lie from each layer's ``p`` (:func:`quantize_p`)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed <= 0:
        raise IRError(f"seed {seed!r} must be a positive integer (zero would lock the LFSRs)")
    lfsr.galois_mask(lfsr_width) if lfsr_width in range(lfsr.MIN_WIDTH, lfsr.MAX_WIDTH + 1) \
        else _bad(f"lfsr_width {lfsr_width} is outside [{lfsr.MIN_WIDTH}, {lfsr.MAX_WIDTH}]")
    if not 1 <= p_bits <= min(16, lfsr_width):
        _bad(f"p_bits {p_bits} must be in [1, {min(16, lfsr_width)}]")
    pes = list(pe) if isinstance(pe, (list, tuple)) else [pe] * len(layers)
    dense = [i for i, il in enumerate(layers) if isinstance(il, IntLayer)]
    if len(pes) == len(dense) != len(layers):        # one per dense layer: spread them out
        given = dict(zip(dense, pes))
        pes = [given.get(i, 1) for i in range(len(layers))]
    if len(pes) != len(layers):
        _bad(f"pe lists {len(pes)} values for {len(layers)} layers")
    draws = list(lanes) if isinstance(lanes, (list, tuple)) else [lanes] * len(layers)
    if len(draws) != len(layers):
        _bad(f"lanes lists {len(draws)} values for {len(layers)} layers")
    stores = list(weight_store) if isinstance(weight_store, (list, tuple)) \
        else [weight_store] * len(layers)
    if len(stores) != len(layers):
        _bad(f"weight_store lists {len(stores)} values for {len(layers)} layers")
    simds = list(simd) if isinstance(simd, (list, tuple)) else [simd] * len(layers)
    if len(simds) != len(layers):
        _bad(f"simd lists {len(simds)} values for {len(layers)} layers")
    out = []
    for i, (il, lane, dl, ws, sd) in enumerate(zip(layers, pes, draws, stores, simds)):
        if isinstance(il, IntPool):
            out.append(PoolLayer(channels=il.channels, h_in=il.h_in, w_in=il.w_in, size=il.size,
                                 mode=il.mode))
            continue
        w = np.asarray(il.weights, dtype=np.int64)
        o = np.asarray(il.offsets, dtype=np.int64)
        is_out = i == len(layers) - 1
        n_out = w.shape[0]
        l1 = np.abs(w.reshape(n_out, -1)).sum(axis=1)
        if not is_out:
            # Lossless: a threshold beyond +-L1 behaves like one just past it.
            o = np.clip(o, -l1, l1 + 1)
        p_num = quantize_p(il.p, p_bits, f"layers[{i}].p", lfsr_width, p_tolerance)
        sampling = p_num < (1 << p_bits)
        rng = (LfsrSpec(width=lfsr_width, mask=lfsr.galois_mask(lfsr_width),
                        seed=derive_seed(seed, i, lfsr_width),
                        leap=default_leap(lfsr_width, p_bits))
               if sampling else None)
        common = dict(weights=w, offsets=o, weight_bits=il.weight_bits, p_num=p_num,
                      p_bits=p_bits, rng=rng, acc_bits=0,
                      offset_bits=signed_bits(int(o.min()), int(o.max())))
        if isinstance(il, IntConv):
            if w.ndim != 4 or w.shape[2] != w.shape[3]:
                _bad(f"layers[{i}].weights: a conv layer needs (c_out, c_in, k, k) weights, "
                     f"got shape {w.shape}")
            if not isinstance(lane, int) or lane < 1:
                _bad(f"layers[{i}].pe {lane!r} must be a positive integer")
            layer = ConvLayer(c_in=w.shape[1], h_in=il.h_in, w_in=il.w_in, c_out=n_out,
                              kernel=w.shape[2], stride=il.stride, padding=il.padding,
                              pe=min(lane, n_out), weight_store=ws, **common)
            layer = layer.on_pass_samples(pass_samples)
            if pass_samples:
                layer.simd = sd
                layer.lanes = min(dl, sd) if sampling else 1
            else:
                layer.lanes = dl
        else:
            if not isinstance(lane, int) or lane < 1:
                _bad(f"layers[{i}].pe {lane!r} must be a positive integer")
            if pass_samples and sampling and isinstance(sd, int):
                draw = min(dl, sd)
            elif sampling:
                draw = max(dl, sd) if isinstance(sd, int) else dl
            else:
                draw = 1
            layer = DenseLayer(n_in=w.shape[1], n_out=n_out, output=is_out,
                               pe=min(lane, n_out), lanes=draw, weight_store=ws, simd=sd,
                               pass_samples=pass_samples, **common)
        layer.acc_bits = max(layer.required_acc_bits(), layer.offset_bits)
        out.append(layer)
    thermo, stoch = thresholds is not None, probs is not None
    if thermo and stoch:
        _bad("an input is a thermometer or a bernoulli code, not both")
    ir = IR(input=InputSpec(size=input_size, threshold=int(input_threshold),
                            pixel_bits=pixel_bits,
                            encoding="thermometer" if thermo else "bernoulli" if stoch
                            else "threshold",
                            thresholds=tuple(int(t) for t in thresholds) if thermo else (),
                            layout=layout,
                            prob_bits=prob_bits if stoch else 0,
                            probs=tuple(int(q) for q in probs) if stoch else (),
                            rng=LfsrSpec(width=lfsr_width, mask=lfsr.galois_mask(lfsr_width),
                                         seed=derive_seed(seed, ENCODER_SEED_INDEX, lfsr_width),
                                         leap=default_leap(lfsr_width, prob_bits))
                            if stoch else None),
            layers=out, samples=samples, score_bits=1, name=name, source=source or {})
    ir.score_bits = ir.required_score_bits()
    ir.validate()
    return ir


def _bad(msg: str):
    raise IRError(msg)
