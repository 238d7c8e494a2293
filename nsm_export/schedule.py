"""Analytic cycle model of the generated hardware (``hw.dense``, ``hw.conv``, ``hw.top``).

The engines are event-driven: a neuron group spends one cycle per *kept* input, so the exact
count depends on the blank-out draws, which the golden model knows (``record=True``). Tests
assert that simulated cycle counts equal :func:`latency_cycles` image by image.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce

import numpy as np

from .ir import IR, ConvLayer, DenseLayer, PoolLayer

__all__ = ["Stage", "hw_stages", "conv_cycles", "stage_cycles", "synaptic_ops", "layer_cycles",
           "group_overhead", "encode_cycles", "conv_positions", "conv_row_cycles", "pipeline_end",
           "latency_cycles", "cycles_per_inference", "expected_latency_cycles",
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
    dense engine's spike memory). ``ring_out``: the rows of the next conv engine's line buffer
    that this conv engine writes (0: none)."""
    index: int
    layer: DenseLayer | ConvLayer
    pool: PoolLayer | None = None
    consumer: str | None = None
    ring_out: int = 0

    @property
    def gated(self) -> bool:
        """A conv engine that hands rows over through a line buffer (in or out): it waits in
        ``ROW`` (one cycle at least) before every pooled output row."""
        return isinstance(self.layer, ConvLayer) and bool(self.layer.line_rows or self.ring_out)


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
            ring = layers[nxt].line_rows if consumer == "map" else 0
            stages.append(Stage(i, layer, pool, consumer, ring))
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
    for the mean). Positions that no pooling window covers are not computed. A gated engine
    (line buffers) spends one ``ROW`` cycle more per pooled row, and one ``TAIL`` cycle with
    a line buffer in, when it need not wait."""
    pre, rows = conv_row_cycles(stage, kept)
    gated = rows.shape[-1] + _tail(stage) if stage.gated else 0
    return pre + rows.sum(axis=-1) + 1 + gated


def _tail(stage: Stage) -> int:
    """``TAIL``: a conv engine with a line buffer in waits (one cycle at least) after its last
    row for the producer to end the sample."""
    return 1 if isinstance(stage.layer, ConvLayer) and stage.layer.line_rows else 0


def conv_pre_cycles(layer: ConvLayer) -> int:
    """``IDLE`` and, for a sampling layer, ``MASK`` + ``MFLUSH``: before the first row."""
    return 1 + (layer.n_in + 1 if layer.sampling else 0)


def conv_row_cycles(stage: Stage, kept) -> tuple[int, np.ndarray]:
    """A conv engine's sample split into rows, for the line-buffer schedule: the cycles before
    the first pooled row (:func:`conv_pre_cycles`), and per pooled output row ``(..., hp)`` the
    cycles from its first ``BUILD`` to its last ``OUT`` (``ROW`` waits and ``FIN`` not
    counted)."""
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
    row_kept = window.sum(axis=2).reshape(-1, hp, P).sum(axis=2)
    groups = -(-layer.c_out // layer.pe)
    chunks = -(-layer.c_in // layer.lanes)
    out = 1 if stage.consumer == "map" else layer.c_out
    fixed = wp * P * P * (k * k * chunks + BUILD_FLUSH + groups * GROUP_OVERHEAD) + wp * out
    return conv_pre_cycles(layer), (fixed + groups * row_kept).reshape(*lead, hp)


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
    stages = hw_stages(ir)
    durations = [stage_cycles(st, masks[st.index]) for st in stages]
    rows = [conv_row_cycles(st, masks[st.index])[1] if st.gated else None for st in stages]
    n = durations[0].shape[0]
    return np.array([pipeline_end(ir, [d[k] for d in durations],
                                  [r if r is None else r[k] for r in rows])
                     for k in range(n)], dtype=np.int64) + argmax_cycles(ir)


def pipeline_end(ir: IR, durations, rows=None) -> float:
    """The cycle (counted from the last pixel's handshake) in which the output layer has
    finished its ``T``-th sample, for per-engine (:func:`hw_stages`), per-sample ``durations``
    (``[engine][t]``).

    Engine ``i`` starts sample ``t`` in the first cycle in which it is idle (its sample
    ``t - 1`` ended), its input is ready (engine 0: the spike memory, or, for the stochastic
    code, the encoder's code for ``t``; engine ``i > 0``: engine ``i - 1`` ended sample ``t``)
    and its previous output has been taken (engine ``i + 1`` started sample ``t - 1`` at least
    a cycle earlier; a conv engine writes into one half of engine ``i + 1``'s double-buffered
    map, which has then moved on to the other). The stochastic encoder runs ``size + 3`` cycles
    per sample and waits for engine 0 to end the previous sample (they share the spike memory).
    Durations may be numpy arrays (one schedule per element, as the folding search uses).

    Conv engines linked by a line buffer are scheduled row by row (:func:`_row_pipeline_end`);
    ``rows[engine][t]`` then gives a gated engine's per-row cycles (:func:`conv_row_cycles`),
    or, left out, the sample's cycles are split evenly over its rows (an estimate, as the
    folding search uses)."""
    stages = hw_stages(ir)
    if any(st.gated for st in stages):
        return _row_pipeline_end(ir, stages, durations, rows)
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


def _row_pipeline_end(ir: IR, stages: list[Stage], durations, rows) -> float:
    """:func:`pipeline_end` with line buffers. Cycles as :mod:`hw.top` counts them: engine i
    starts sample t in cycle ``S`` (``IDLE``, start seen) and is idle again in cycle ``E``
    (``E - S`` = its duration). Between a conv producer p and a conv consumer c with a ring of
    R rows the stage rule changes: c starts sample t a cycle after p started it (not after p
    ended it); p starts sample t a cycle after c started t - 1 (as before). A gated engine
    enters ``ROW`` for row 0 in cycle ``S + pre``, leaves it in the first cycle ``g`` its row
    handshake allows, ends the row (last ``OUT``) in ``D = g + row cycles``, enters ``ROW`` for
    the next row in ``D + 1``, and is idle in ``D + 2`` after its last row (``FIN``); with a
    line buffer in, ``TAIL`` first waits from ``D + 1`` for the producer to be idle (its ``E``),
    and ``FIN`` follows. The handshake, as the top's registers see it in cycle ``g``:

    * c's pooled row r reads input rows up to ``need = min(r*P*s - pad + (P-1)*s + k, H)``:
      ``g > D`` of p's row ``need - 1`` of sample t;
    * p's row y (sample t) overwrites ring slot ``y mod R``: for ``y < R``, c has ended
      sample t - 1 (``g >= E``); else c has finished ``n = (y - R + pad) // (P*s) + 1`` pooled
      rows of sample t (``g > D`` of its row ``n - 1``), or the whole sample if it has fewer.

    Each condition, once true, stays true while the engine waits, so ``g`` is the maximum of
    the cycles in which they become true. Every value depends only on earlier events, so the
    engines are advanced in turn until all have ended sample ``T - 1``."""
    T, L = ir.samples, len(stages)
    stream = [i + 1 < L and bool(stages[i].ring_out) for i in range(L)]
    S = [[None] * T for _ in range(L)]
    E = [[None] * T for _ in range(L)]
    D = [[[] for _ in range(T)] for _ in range(L)]
    enc = encode_cycles(ir)
    enc_end = [None] * T

    def geo(st):
        cl = st.layer
        P = st.pool.size if st.pool else 1
        return (P * cl.stride, cl.padding, (P - 1) * cl.stride + cl.kernel, cl.h_in,
                cl.line_rows, cl.h_out // P)

    per_rows = []
    for i, st in enumerate(stages):
        if not st.gated:
            per_rows.append(None)
            continue
        hp = geo(st)[5]
        pre = conv_pre_cycles(st.layer)
        if rows is not None and rows[i] is not None:
            per_rows.append([(pre, [rows[i][t][r] for r in range(hp)]) for t in range(T)])
        else:
            rest = pre + hp + 1 + _tail(st)
            per_rows.append([(pre, [(np.asarray(durations[i][t], dtype=float) - rest) / hp]
                                    * hp) for t in range(T)])

    def mx(values):
        return reduce(np.maximum, values)

    t_of = [0] * L
    row_of = [None] * L               # next pooled row of the current sample; None: not started
    ready = [0.0] * L                 # the cycle the engine enters ROW for that row

    def advance(i) -> bool:
        t = t_of[i]
        st = stages[i]
        if row_of[i] is None:
            need = [E[i][t - 1]] if t else []
            if i == 0:
                if enc:
                    enc_end[t] = (np.maximum(enc_end[t - 1], E[0][t - 1]) if t else 0.0) + enc
                    need.append(enc_end[t])
                else:
                    need.append(0.0)
            else:
                src = S[i - 1][t] if stream[i - 1] else E[i - 1][t]
                if src is None:
                    return False
                need.append(src + 1 if stream[i - 1] else src)
            if i < L - 1 and t:
                if S[i + 1][t - 1] is None:
                    return False
                need.append(S[i + 1][t - 1] + 1)
            S[i][t] = mx(need)
            if not st.gated:
                E[i][t] = S[i][t] + np.asarray(durations[i][t], dtype=float)
                t_of[i] += 1
                return True
            row_of[i] = 0
            ready[i] = S[i][t] + per_rows[i][t][0]
            return True
        r = row_of[i]
        if r == len(per_rows[i][t][1]):              # TAIL (line buffer in), FIN
            if i and stream[i - 1]:
                if E[i - 1][t] is None:
                    return False
                E[i][t] = np.maximum(ready[i], E[i - 1][t]) + 2
            else:
                E[i][t] = ready[i] + 1
            t_of[i] += 1
            row_of[i] = None
            return True
        need = [ready[i]]
        if i and stream[i - 1]:                       # input rows from engine i - 1
            step, pad, span, H, R, hp = geo(st)
            n = min(r * step - pad + span, H)
            done = D[i - 1][t]
            if len(done) < n:
                return False
            need.append(done[n - 1] + 1)
        if stream[i]:                                 # ring slots of engine i + 1
            step, pad, span, H, R, hp = geo(stages[i + 1])
            if r < R:
                if t:
                    if E[i + 1][t - 1] is None:
                        return False
                    need.append(E[i + 1][t - 1])
            else:
                n = (r - R + pad) // step + 1
                if n <= hp:
                    done = D[i + 1][t]
                    if len(done) < n:
                        return False
                    need.append(done[n - 1] + 1)
                else:
                    if E[i + 1][t] is None:
                        return False
                    need.append(E[i + 1][t])
        end = mx(need) + per_rows[i][t][1][r]
        D[i][t].append(end)
        ready[i] = end + 1
        row_of[i] = r + 1
        return True

    moved = True
    while moved and min(t_of) < T:
        moved = False
        for i in range(L):
            while t_of[i] < T and advance(i):
                moved = True
    if min(t_of) < T:
        raise RuntimeError("line-buffer schedule deadlocks (an IR check is missing)")
    return E[L - 1][T - 1]


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
    a pooling layer's entry is ignored, its conv engine computes it). Engines linked by a line
    buffer are scheduled row by row: on their mean per-row cycles by default, or, with
    ``durations``, on the sample's cycles split evenly over its rows."""
    stages = hw_stages(ir)
    rows = None
    if durations is None:
        per = [float(stage_cycles(st, np.full(st.layer.n_in, st.layer.p))) for st in stages]
        rows = [[conv_row_cycles(st, np.full(st.layer.n_in, st.layer.p))[1]] * ir.samples
                if st.gated else None for st in stages]
    else:
        per = [durations[st.index] for st in stages]
    return pipeline_end(ir, [[d] * ir.samples for d in per], rows) + argmax_cycles(ir)


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
