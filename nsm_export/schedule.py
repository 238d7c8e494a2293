"""Analytic cycle model of the generated hardware (``hw.dense``, ``hw.top``).

Tests assert that simulated cycle counts equal these numbers exactly.
"""

from __future__ import annotations

from .ir import IR, DenseLayer

__all__ = ["layer_cycles", "sample_cycles", "latency_cycles", "cycles_per_inference",
           "dense_bound"]


def layer_cycles(layer: DenseLayer) -> int:
    """IDLE + MASK (sampling layers) + per group ACC, DRAIN, WRITE."""
    return 1 + (layer.n_in if layer.sampling else 0) + layer.groups * (layer.n_in + 2)


def sample_cycles(ir: IR) -> int:
    return sum(layer_cycles(layer) for layer in ir.layers)


def latency_cycles(ir: IR) -> int:
    """Clock edges from the last pixel's handshake to ``m_axis_tvalid`` going high."""
    return ir.samples * sample_cycles(ir) + ir.n_classes


def cycles_per_inference(ir: IR) -> int:
    """Cycles per image with input always valid and output always ready (back to back)."""
    return ir.input.size + latency_cycles(ir) + 1


def dense_bound(ir: IR) -> float:
    """Cycles a dense schedule needs at best: T x synaptic operations / adder lanes."""
    ops = sum(layer.n_in * layer.n_out for layer in ir.layers)
    lanes = sum(layer.pe for layer in ir.layers)
    return ir.samples * ops / lanes
