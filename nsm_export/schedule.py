"""Analytic cycle model of the generated hardware (``hw.dense``, ``hw.top``).

The engines are event-driven: a neuron group spends one cycle per *kept* input, so the exact
count depends on the blank-out draws, which the golden model knows (``record=True``). Tests
assert that simulated cycle counts equal :func:`latency_cycles` image by image.
"""

from __future__ import annotations

import numpy as np

from .ir import IR, DenseLayer

__all__ = ["layer_cycles", "group_overhead", "encode_cycles", "pipeline_end", "latency_cycles",
           "cycles_per_inference", "expected_latency_cycles",
           "expected_cycles_per_inference", "dense_bound"]

GROUP_OVERHEAD = 4      # three drain cycles and one write cycle per neuron group
TREE_STAGE = 1          # simd > 1: the registered adder tree adds one drain cycle
MASK_FLUSH = 3          # the draw-lookup-write pipeline of a sampling layer empties


def group_overhead(simd: int) -> int:
    """Drain and write cycles per neuron group."""
    return GROUP_OVERHEAD + (TREE_STAGE if simd > 1 else 0)


def layer_cycles(layer: DenseLayer, kept):
    """Cycles for one sample with ``kept`` inputs kept (array-friendly):
    IDLE + MASK (sampling layers: ``lanes`` draws per cycle) + per group (``ceil(kept / simd)``
    beats of ``simd`` kept inputs + drain + write)."""
    mask = -(-layer.n_in // layer.lanes) + MASK_FLUSH if layer.sampling else 0
    return 1 + mask \
        + layer.groups * (-(-kept // layer.simd) + group_overhead(layer.simd))


def latency_cycles(ir: IR, masks: list[np.ndarray]) -> np.ndarray:
    """Per image: clock edges from the last pixel's handshake to ``m_axis_tvalid`` going high.

    ``masks`` are the golden model's per-layer keep bits, ``(N, T, n_in)`` each. The layers
    overlap (see :mod:`hw.top`): :func:`pipeline_end` schedules them.
    """
    durations = [layer_cycles(layer, np.asarray(m).sum(axis=2)) for layer, m in zip(ir.layers, masks)]
    n = durations[0].shape[0]
    return np.array([pipeline_end(ir, [d[k] for d in durations]) for k in range(n)],
                    dtype=np.int64) + argmax_cycles(ir)


def pipeline_end(ir: IR, durations) -> float:
    """The cycle (counted from the last pixel's handshake) in which the output layer has
    finished its ``T``-th sample, for per-layer, per-sample ``durations`` (``[layer][t]``).

    Engine ``i`` starts sample ``t`` in the first cycle in which it is idle (its sample
    ``t - 1`` ended), its input is ready (engine 0: the spike memory, or, for the stochastic
    code, the encoder's code for ``t``; engine ``i > 0``: engine ``i - 1`` ended sample ``t``)
    and its previous output has been taken (engine ``i + 1`` started sample ``t - 1`` at least
    a cycle earlier). The stochastic encoder runs ``size + 3`` cycles per sample and waits for
    engine 0 to end the previous sample (they share the spike memory). Durations may be numpy
    arrays (one schedule per element, as the folding search uses)."""
    T, L = ir.samples, len(ir.layers)
    start = [[0.0] * T for _ in range(L)]
    end = [[0.0] * T for _ in range(L)]
    enc = encode_cycles(ir)
    enc_end = 0.0
    for t in range(T):
        if enc:
            enc_end = np.maximum(enc_end, end[0][t - 1] if t else 0.0) + enc
        for i in range(L):
            s = enc_end if i == 0 else end[i - 1][t]
            if t:
                s = np.maximum(s, end[i][t - 1])
                if i < L - 1:
                    s = np.maximum(s, start[i + 1][t - 1] + 1)
            start[i][t] = s
            end[i][t] = s + np.asarray(durations[i][t], dtype=float)
    return end[L - 1][T - 1]


ENCODE_OVERHEAD = 3     # the stochastic encoder's go cycle and its three-stage pipeline emptying


def encode_cycles(ir: IR) -> int:
    """Per sample: the stochastic input code is drawn anew (``size + 3`` cycles); fixed codes
    are encoded once while the pixels arrive (no cycles here)."""
    return ir.input.size + ENCODE_OVERHEAD if ir.input.encoding == "bernoulli" else 0


def argmax_cycles(ir: IR) -> int:
    """The top's two-stage scan of the class scores."""
    return ir.n_classes + 1


def cycles_per_inference(ir: IR, masks: list[np.ndarray]) -> np.ndarray:
    """Per image, back to back (input always valid, output always ready): load, compute, hand
    over the result."""
    return ir.input.size + latency_cycles(ir, masks) + 1


def expected_latency_cycles(ir: IR, durations=None) -> float:
    """Latency with every layer keeping its mean ``p * n_in`` inputs each sample, through the
    same pipeline schedule (an estimate: the mean of a maximum is not the maximum of means).
    ``durations``: per layer, the cycles of one such sample (default: the IR's folding)."""
    if durations is None:
        durations = [layer_cycles(layer, layer.p * layer.n_in) for layer in ir.layers]
    return pipeline_end(ir, [[d] * ir.samples for d in durations]) + argmax_cycles(ir)


def expected_cycles_per_inference(ir: IR, durations=None) -> float:
    return ir.input.size + expected_latency_cycles(ir, durations) + 1


def dense_bound(ir: IR) -> float:
    """Cycles a dense schedule needs at best: T x synaptic operations / adder lanes
    (``pe x simd`` per layer)."""
    ops = sum(layer.n_in * layer.n_out for layer in ir.layers)
    lanes = sum(layer.pe * layer.simd for layer in ir.layers)
    return ir.samples * ops / lanes
