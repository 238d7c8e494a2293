"""Analytic cycle model of the generated hardware (``hw.dense``, ``hw.conv``, ``hw.top``).

Each layer kind counts its engine's cycles per sample (``cycles`` in :mod:`nsm_export.layers`);
this module schedules the engines of the hardware plan (:func:`nsm_export.plan.plan`) as the
top runs them: a pipeline of samples, row by row where engines share a line buffer. The engines
are event-driven: a neuron group spends one cycle per *kept* input, so the exact count depends
on the blank-out draws, which the golden model knows (``record=True``). Tests assert that
simulated cycle counts equal :func:`latency_cycles` image by image.
"""

from __future__ import annotations

from functools import reduce

import numpy as np

from . import early_exit
from .ir import IR
from .plan import decide_cycles, plan

__all__ = ["pipeline_end", "latency_cycles", "pop_events", "passes_used",
           "cycles_per_inference", "expected_latency_cycles", "expected_cycles_per_inference",
           "dense_bound", "bounds", "argmax_cycles"]


def latency_cycles(ir: IR, masks: list[np.ndarray], samples=None) -> np.ndarray:
    """Per image: clock edges from the last pixel's handshake to ``m_axis_tvalid`` going high.

    ``masks`` are the golden model's per-layer keep bits, ``(N, T, n_in)`` each, ``samples``
    the samples each image used (early exit). The layers overlap (see :mod:`hw.top`):
    :func:`pipeline_end` schedules them.
    """
    stages = plan(ir)
    if stages.popcount:
        ev = pop_events(ir, len(masks[0]), passes=passes_used(ir, samples))
        return ev["valid"] - ev["last_pixel"]
    durations = [st.cycles(masks[st.index]) for st in stages]
    rows = [st.layer.row_cycles(st, masks[st.index])[1] if st.gated else None for st in stages]
    n = durations[0].shape[0]
    return np.array([pipeline_end(ir, [d[k] for d in durations],
                                  [r if r is None else r[k] for r in rows])
                     for k in range(n)], dtype=np.int64) + argmax_cycles(ir)


def pipeline_end(ir: IR, durations, rows=None) -> float:
    """The cycle (counted from the last pixel's handshake) in which the output layer has
    finished its ``T``-th sample, for per-engine (:func:`nsm_export.plan.plan`), per-sample
    ``durations`` (``[engine][t]``).

    Engine ``i`` starts sample ``t`` in the first cycle in which it is idle (its sample
    ``t - 1`` ended), its input is ready (engine 0: the spike memory, or, for the stochastic
    code, the encoder's code for ``t``; engine ``i > 0``: engine ``i - 1`` ended sample ``t``)
    and its previous output has been taken (engine ``i + 1`` started sample ``t - 1`` at least
    a cycle earlier; a conv engine writes into one half of engine ``i + 1``'s double-buffered
    map, which has then moved on to the other). The stochastic encoder runs ``size + 3`` cycles
    per sample and waits for engine 0 to end the previous sample (they share the spike memory).
    Durations may be numpy arrays (one schedule per element, as the folding search uses).

    Conv engines linked by a line buffer are scheduled row by row (:func:`_row_pipeline_end`);
    ``rows[engine][t]`` then gives a gated engine's per-row cycles (``ConvLayer.row_cycles``),
    or, left out, the sample's cycles are split evenly over its rows (an estimate, as the
    folding search uses)."""
    stages = plan(ir)
    if stages.gated:
        return _row_pipeline_end(ir, stages, durations, rows)
    T, L = ir.samples, len(stages)
    start = [[0.0] * T for _ in range(L)]
    end = [[0.0] * T for _ in range(L)]
    enc = ir.input.cycles()
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


def _row_pipeline_end(ir: IR, stages, durations, rows) -> float:
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
    stream = [i + 1 < L and stages[i].streams for i in range(L)]
    S = [[None] * T for _ in range(L)]
    E = [[None] * T for _ in range(L)]
    D = [[[] for _ in range(T)] for _ in range(L)]
    enc = ir.input.cycles()
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
        pre = st.layer.pre_cycles()
        if rows is not None and rows[i] is not None:
            per_rows.append([(pre, [rows[i][t][r] for r in range(hp)]) for t in range(T)])
        else:
            rest = pre + hp + 1 + st.layer.tail_cycles()
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


def argmax_cycles(ir: IR) -> int:
    """The top's two-stage scan of the class scores."""
    return ir.n_classes + 1


def cycles_per_inference(ir: IR, masks: list[np.ndarray], samples=None) -> np.ndarray:
    """Per image, back to back (input always valid, output always ready): load, compute, hand
    over the result. The popcount core overlaps images: there, image 0's entry counts from its
    first pixel to its result's handshake, and image ``n``'s from image ``n - 1``'s handshake
    to its own."""
    if plan(ir).popcount:
        ev = pop_events(ir, len(masks[0]), passes=passes_used(ir, samples))
        return np.diff(np.concatenate([[ev["first_pixel"][0] - 1], ev["handshake"]]))
    return ir.input.size + latency_cycles(ir, masks) + 1


def pop_events(ir: IR, images: int, last_pixel=None, handshake=None, passes=None) -> dict:
    """The popcount core's schedule (:mod:`hw.ptop`) for ``images`` images back to back (input
    always valid, output always ready), cycle 0 being the first pixel's handshake. Per image:
    ``first_pixel``, ``last_pixel`` (handshakes), ``valid`` (the cycle ``m_axis_tvalid`` goes
    high) and ``handshake``. Nothing depends on the draws: blanked inputs are gated, not
    skipped; with an early-exit rule, ``passes`` gives the passes each image ran (the golden
    model's samples used, :func:`passes_used`; default: all).

    Per engine ``i`` and pass ``q`` (the passes run, numbered across images): it starts (``go``)
    in ``S = max(E(q-1), input, S_{i+1}(q-1) + 1, drawn, copied, verdict)`` and is idle again
    in ``E = S + pass_cycles``, where input is ``A + 1`` for engine 0 (``A``: the image's last
    pixel) and ``E_{i-1}(q)`` otherwise; drawn is ``D + B + 1``, the drawer having started
    the batch in ``D = max(S(q-1) + 1, A + 2 for an image's first pass)`` and taken
    ``B = 1 + count * ceil(n_in / lanes)`` cycles; copied (the output engine, after an image's
    last pass) is ``X + 1``. The scores are copied in ``X = max(E, H_prev + 1)`` and offered
    in ``V = X + C + 1``, taken (output always ready) in ``H = V + 1``. The loader fills half
    ``n mod 2``: image ``n`` starts in ``max(A_{n-1} + 1, R`` of image ``n - 2``), ``R`` being
    ``E_0`` of its last pass.

    Early exit: after each pass that is not its image's last, the rule's verdict comes in
    ``W = E_{L-1}(q) - 1 + decide_cycles(C)``, and engine 0 starts nothing before ``W + 1``
    (verdict). Where the image stops there, ``R = W + 1``, the scores are copied in
    ``X = max(W + 1, H_prev + 1)``, and each drawer drops the batch it drew ahead (aborting it
    if still drawing) and starts the next image's first in ``max(W + 1, A + 2)``. (After an
    image's last pass nothing waits for a verdict.)

    ``last_pixel`` and ``handshake`` (per image, cycles of a common origin) replace the
    back-to-back pixel and result handshakes by ones observed (input gaps, output stalls): the
    other events then follow from them exactly."""
    stages = plan(ir)
    L = len(stages)
    counts = stages[0].layer.pass_counts(ir.samples)
    P = len(counts)
    n0, C = ir.input.size, ir.n_classes
    dur = [st.pass_cycles() for st in stages]
    chunks = [-(-st.layer.n_in // st.layer.lanes) if st.layer.sampling else 0 for st in stages]
    early = ir.early_exit.active
    first = np.zeros(images, dtype=np.int64)
    last = np.zeros(images, dtype=np.int64)
    valid = np.zeros(images, dtype=np.int64)
    hand = np.zeros(images, dtype=np.int64)
    S = [[] for _ in range(L)]
    E = [[] for _ in range(L)]
    release = []                       # R of each image
    copied = 0                         # the output engine may start: X + 1 of the last image
    verdict = 0                        # engine 0 (and, after a stop, each drawer) may start
    for n in range(images):
        if last_pixel is not None:
            first[n] = last[n] = int(last_pixel[n])
        else:
            start = 0 if n == 0 else last[n - 1] + 1
            if n >= 2:
                start = max(start, release[n - 2])
            first[n], last[n] = start, start + n0 - 1
        A = int(last[n])
        used = P if passes is None or not early else int(passes[n])
        X = None
        for k in range(used):
            count = counts[k]
            for i, st in enumerate(stages):
                s = E[i][-1] if E[i] else 0
                s = max(s, A + 1 if i == 0 else E[i - 1][-1])
                if i < L - 1 and S[i + 1]:
                    s = max(s, S[i + 1][-1] + 1)
                if st.layer.sampling:
                    d = S[i][-1] + 1 if S[i] else 0
                    if k == 0:
                        d = max(d, A + 2, verdict)
                    s = max(s, d + 1 + count * chunks[i] + 1)
                if i == 0:
                    s = max(s, verdict)
                if i == L - 1 and k == 0:
                    s = max(s, copied)
                S[i].append(s)
                E[i].append(s + dur[i])
            if k == P - 1:
                verdict = 0
                release.append(E[0][-1])
                X = E[L - 1][-1]
            elif early:
                verdict = E[L - 1][-1] - 1 + decide_cycles(C) + 1
                if k == used - 1:                           # the rule stops the image here
                    release.append(verdict)
                    X = verdict
        if n:
            X = max(X, hand[n - 1] + 1)
        copied = X + 1
        valid[n] = X + C + 1
        # Output always ready: the result's handshake is the cycle after m_axis_tvalid rises
        # (as the bench counts cycles, and as the kept-list model's ``+ 1`` has it).
        hand[n] = valid[n] + 1 if handshake is None else int(handshake[n])
    return {"first_pixel": first, "last_pixel": last, "valid": valid, "handshake": hand}


def passes_used(ir: IR, samples) -> np.ndarray | None:
    """The passes each image ran, from the samples it used (None without an early-exit
    rule: every image runs them all)."""
    if not ir.early_exit.active or samples is None:
        return None
    bounds = early_exit.boundaries(ir)
    return np.searchsorted(bounds, np.asarray(samples)) + 1


def expected_latency_cycles(ir: IR, durations=None) -> float:
    """Latency with every layer keeping its mean ``p * n_in`` inputs each sample, through the
    same pipeline schedule (an estimate: the mean of a maximum is not the maximum of means).
    ``durations``: per IR layer, the cycles of one such sample (default: the IR's folding;
    a pooling layer's entry is ignored, its conv engine computes it). Engines linked by a line
    buffer are scheduled row by row: on their mean per-row cycles by default, or, with
    ``durations``, on the sample's cycles split evenly over its rows."""
    stages = plan(ir)
    if stages.popcount:
        ev = pop_events(ir, 1)
        return float(ev["valid"][0] - ev["last_pixel"][0])
    rows = None
    if durations is None:
        per = [float(st.cycles(np.full(st.layer.n_in, st.layer.p))) for st in stages]
        rows = [[st.layer.row_cycles(st, np.full(st.layer.n_in, st.layer.p))[1]] * ir.samples
                if st.gated else None for st in stages]
    else:
        per = [durations[st.index] for st in stages]
    return pipeline_end(ir, [[d] * ir.samples for d in per], rows) + argmax_cycles(ir)


def expected_cycles_per_inference(ir: IR, durations=None) -> float:
    """Cycles per image back to back; for the popcount core, which overlaps images, the
    steady state's (image 7 of 8), or with ``durations`` (per IR layer, an engine's busy cycles
    per image, :meth:`nsm_export.plan.Engine.image_cycles`) the slowest stage's."""
    stages = plan(ir)
    if stages.popcount:
        if durations is None:
            return float(np.diff(pop_events(ir, 8)["handshake"])[-1])
        # The slowest stage sets the pace (pixels, an engine, the result's copy and scan):
        # within a few cycles of pop_events' steady state (an estimate for the folding search).
        busy = [np.asarray(durations[st.index], dtype=float) for st in stages]
        return np.maximum.reduce([np.full_like(busy[0], ir.input.size),
                                  np.full_like(busy[0], ir.n_classes + 3), *busy]) + 1
    return ir.input.size + expected_latency_cycles(ir, durations) + 1


def dense_bound(ir: IR) -> float:
    """Cycles a dense schedule needs at best: T x synaptic operations / adder lanes
    (``pe x simd`` per engine)."""
    ops = sum(layer.synaptic_ops() for layer in ir.layers)
    lanes = sum(st.layer.pe * getattr(st.layer, "simd", 1) for st in plan(ir))
    return ir.samples * ops / lanes



def bounds(ir: IR) -> dict:
    """Lower bounds on the cycles per inference of ``ir``'s folding, each the slowest engine's
    (the engines run in parallel, so their lanes cannot help each other):

    * ``adder_bound_cycles``: the synapse additions of an image over the adds a clock
      (``pe x simd``, times ``T'`` on the popcount engine); the kept-list engines add only the
      kept inputs (a fraction ``p``);
    * ``weight_bound_cycles``: the weight words an image reads over one word a clock (a
      popcount engine reads its weights once per pass, a kept-list engine once per sample and
      kept input).

    ``cycles / bound`` says how far a design is from what its folding allows."""
    adder = weight = 0.0
    for st in plan(ir):
        layer = st.layer
        ops = layer.synaptic_ops()
        lanes = layer.pe * getattr(layer, "simd", 1)
        if st.popcount:
            passes = len(layer.pass_counts(ir.samples))
            adder = max(adder, ir.samples * ops / (lanes * min(layer.pass_samples, ir.samples)))
            weight = max(weight, passes * ops / lanes)
        else:
            kept = ir.samples * ops * layer.p / lanes
            adder, weight = max(adder, kept), max(weight, kept)
    return {"adder_bound_cycles": round(adder, 1), "weight_bound_cycles": round(weight, 1)}
