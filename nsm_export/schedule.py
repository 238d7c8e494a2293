"""Analytic cycle model of the generated hardware (``hw.dense``, ``hw.conv``, ``hw.top``).

The engines are event-driven: a neuron group spends one cycle per *kept* input, so the exact
count depends on the blank-out draws, which the golden model knows (``record=True``). Tests
assert that simulated cycle counts equal :func:`latency_cycles` image by image.
"""

from __future__ import annotations

import numpy as np

from dataclasses import dataclass

from .ir import IR, ConvLayer, DenseLayer, PoolLayer

__all__ = ["Stage", "hw_stages", "conv_cycles", "stage_cycles", "synaptic_ops", "layer_cycles",
           "group_overhead", "encode_cycles", "conv_positions", "pipeline_end", "latency_cycles", "cycles_per_inference", "expected_latency_cycles",
           "expected_cycles_per_inference", "dense_bound"]

GROUP_OVERHEAD = 4      # three drain cycles and one write cycle per neuron group
TREE_STAGE = 1          # simd > 1: the registered adder tree adds one drain cycle
MASK_FLUSH = 3          # the draw-lookup-write pipeline of a sampling layer empties


def group_overhead(simd: int) -> int:
    """Drain and write cycles per neuron group."""
    return GROUP_OVERHEAD + (TREE_STAGE if simd > 1 else 0)


BUILD_FLUSH = 4        # a conv position's address-read-select-write pipeline empties


@dataclass(frozen=True)
class Stage:
    """One hardware engine: IR layer ``index`` (dense or conv), the OR pooling layer after a
    conv layer that the engine computes too, and how a conv engine hands on its output
    (``map``: pixel words to the next conv engine; ``bits``: one spike a cycle into the next
    dense engine's spike memory)."""
    index: int
    layer: DenseLayer | ConvLayer
    pool: PoolLayer | None = None
    consumer: str | None = None


def hw_stages(ir: IR) -> list[Stage]:
    """The engines :class:`hw.top.NsmCore` builds for ``ir``, in order."""
    stages = []
    layers = ir.layers
    for i, layer in enumerate(layers):
        if isinstance(layer, PoolLayer):
            continue
        if isinstance(layer, ConvLayer):
            nxt = i + 1
            pool = layers[nxt] if isinstance(layers[nxt], PoolLayer) else None
            if pool is not None:
                nxt += 1
            consumer = "map" if isinstance(layers[nxt], ConvLayer) else "bits"
            stages.append(Stage(i, layer, pool, consumer))
        else:
            stages.append(Stage(i, layer))
    return stages


def conv_positions(stage: Stage) -> int:
    """Conv output positions the engine visits per sample: those some pooling window covers."""
    layer = stage.layer
    P = stage.pool.size if stage.pool else 1
    return (layer.h_out // P * P) * (layer.w_out // P * P)


def conv_cycles(stage: Stage, kept) -> np.ndarray:
    """Cycles of a conv engine for one sample, per sample: ``kept`` is the layer's keep bits
    ``(..., n_in)`` in the IR's channel-major order (bool, or the keep probability as a float
    for the mean). Positions that no pooling window covers are not computed."""
    layer = stage.layer
    k, s, pad = layer.kernel, layer.stride, layer.padding
    P = stage.pool.size if stage.pool else 1
    hp, wp = layer.h_out // P, layer.w_out // P
    kept = np.asarray(kept, dtype=np.float64)
    lead = kept.shape[:-1]
    per_pixel = kept.reshape(-1, layer.c_in, layer.h_in, layer.w_in).sum(axis=1)
    padded = np.pad(per_pixel, ((0, 0), (pad, pad), (pad, pad)))
    rows, cols = hp * P, wp * P
    window = np.zeros((per_pixel.shape[0], rows, cols))
    for i in range(k):
        for j in range(k):
            window += padded[:, i:i + s * (rows - 1) + 1:s, j:j + s * (cols - 1) + 1:s]
    total_kept = window.sum(axis=(1, 2))
    groups = -(-layer.c_out // layer.pe)
    chunks = -(-layer.c_in // layer.lanes)
    positions = conv_positions(stage)
    out = 1 if stage.consumer == "map" else layer.c_out
    fixed = 1 + (layer.n_in + 1 if layer.sampling else 0) + 1 \
        + positions * (k * k * chunks + BUILD_FLUSH + groups * GROUP_OVERHEAD) + hp * wp * out
    return (fixed + groups * total_kept).reshape(lead)


def stage_cycles(stage: Stage, mask) -> np.ndarray:
    """Cycles of one engine per sample for the layer's keep bits ``mask`` (``(..., n_in)``)."""
    if isinstance(stage.layer, ConvLayer):
        return conv_cycles(stage, mask)
    return layer_cycles(stage.layer, np.asarray(mask).sum(axis=-1))


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
    durations = [stage_cycles(st, masks[st.index]) for st in hw_stages(ir)]
    n = durations[0].shape[0]
    return np.array([pipeline_end(ir, [d[k] for d in durations]) for k in range(n)],
                    dtype=np.int64) + argmax_cycles(ir)


def pipeline_end(ir: IR, durations) -> float:
    """The cycle (counted from the last pixel's handshake) in which the output layer has
    finished its ``T``-th sample, for per-engine (:func:`hw_stages`), per-sample ``durations``
    (``[engine][t]``).

    Engine ``i`` starts sample ``t`` in the first cycle in which it is idle (its sample
    ``t - 1`` ended), its input is ready (engine 0: the spike memory, or, for the stochastic
    code, the encoder's code for ``t``; engine ``i > 0``: engine ``i - 1`` ended sample ``t``)
    and its previous output has been taken (engine ``i + 1`` started sample ``t - 1`` at least
    a cycle earlier; a conv engine writes into one half of engine ``i + 1``'s double-buffered
    map, which has then moved on to the other). The stochastic encoder runs ``size + 3`` cycles per sample and waits for
    engine 0 to end the previous sample (they share the spike memory). Durations may be numpy
    arrays (one schedule per element, as the folding search uses)."""
    stages = hw_stages(ir)
    T, L = ir.samples, len(stages)
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
    ``durations``: per IR layer, the cycles of one such sample (default: the IR's folding;
    a pooling layer's entry is ignored, its conv engine computes it)."""
    stages = hw_stages(ir)
    if durations is None:
        per = [float(stage_cycles(st, np.full(st.layer.n_in, st.layer.p))) for st in stages]
    else:
        per = [durations[st.index] for st in stages]
    return pipeline_end(ir, [[d] * ir.samples for d in per]) + argmax_cycles(ir)


def expected_cycles_per_inference(ir: IR, durations=None) -> float:
    return ir.input.size + expected_latency_cycles(ir, durations) + 1


def dense_bound(ir: IR) -> float:
    """Cycles a dense schedule needs at best: T x synaptic operations / adder lanes
    (``pe x simd`` per engine)."""
    ops = sum(synaptic_ops(layer) for layer in ir.layers)
    lanes = sum(st.layer.pe * getattr(st.layer, "simd", 1) for st in hw_stages(ir))
    return ir.samples * ops / lanes


def synaptic_ops(layer) -> int:
    """Synaptic operations of one dense sample: ``n_in x n_out`` for a dense layer, every
    filter tap at every output position for a conv layer, none for pooling."""
    if isinstance(layer, ConvLayer):
        return layer.n_out * layer.c_in * layer.kernel * layer.kernel
    if isinstance(layer, PoolLayer):
        return 0
    return layer.n_in * layer.n_out
