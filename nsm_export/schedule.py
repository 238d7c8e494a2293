"""Analytic cycle model of the generated hardware (``hw.dense``, ``hw.top``).

The engines are event-driven: a neuron group spends one cycle per *kept* input, so the exact
count depends on the blank-out draws, which the golden model knows (``record=True``). Tests
assert that simulated cycle counts equal :func:`latency_cycles` image by image.
"""

from __future__ import annotations

import numpy as np

from .ir import IR, DenseLayer

__all__ = ["layer_cycles", "encode_cycles", "latency_cycles", "cycles_per_inference", "expected_latency_cycles",
           "expected_cycles_per_inference", "dense_bound"]

GROUP_OVERHEAD = 4      # three drain cycles and one write cycle per neuron group
MASK_FLUSH = 3          # the draw-lookup-write pipeline of a sampling layer empties


def layer_cycles(layer: DenseLayer, kept):
    """Cycles for one sample with ``kept`` inputs kept (array-friendly):
    IDLE + MASK (sampling layers: ``lanes`` draws per cycle) + per group (kept + drain + write)."""
    mask = -(-layer.n_in // layer.lanes) + MASK_FLUSH if layer.sampling else 0
    return 1 + mask \
        + layer.groups * (kept + GROUP_OVERHEAD)


def latency_cycles(ir: IR, masks: list[np.ndarray]) -> np.ndarray:
    """Per image: clock edges from the last pixel's handshake to ``m_axis_tvalid`` going high.

    ``masks`` are the golden model's per-layer keep bits, ``(N, T, n_in)`` each.
    """
    total = 0
    for layer, m in zip(ir.layers, masks):
        kept = np.asarray(m).sum(axis=2)                       # (N, T)
        total = total + layer_cycles(layer, kept).sum(axis=1)
    return np.asarray(total, dtype=np.int64) + ir.samples * encode_cycles(ir) + argmax_cycles(ir)


ENCODE_FLUSH = 2        # the stochastic encoder's pixel -> probability -> spike pipeline empties


def encode_cycles(ir: IR) -> int:
    """Per sample: the stochastic input code is drawn anew (``size + 2`` cycles); fixed codes
    are encoded once while the pixels arrive (no cycles here)."""
    return ir.input.size + ENCODE_FLUSH if ir.input.encoding == "bernoulli" else 0


def argmax_cycles(ir: IR) -> int:
    """The top's two-stage scan of the class scores."""
    return ir.n_classes + 1


def cycles_per_inference(ir: IR, masks: list[np.ndarray]) -> np.ndarray:
    """Per image, back to back (input always valid, output always ready): load, compute, hand
    over the result."""
    return ir.input.size + latency_cycles(ir, masks) + 1


def expected_latency_cycles(ir: IR) -> float:
    """Mean latency over the blank-out draws (``kept = p * n_in`` on average)."""
    per_sample = sum(layer_cycles(layer, layer.p * layer.n_in) for layer in ir.layers)
    return ir.samples * (per_sample + encode_cycles(ir)) + argmax_cycles(ir)


def expected_cycles_per_inference(ir: IR) -> float:
    return ir.input.size + expected_latency_cycles(ir) + 1


def dense_bound(ir: IR) -> float:
    """Cycles a dense schedule needs at best: T x synaptic operations / adder lanes."""
    ops = sum(layer.n_in * layer.n_out for layer in ir.layers)
    lanes = sum(layer.pe for layer in ir.layers)
    return ir.samples * ops / lanes
