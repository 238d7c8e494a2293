"""The folding search: per layer ``(pe, lanes, simd, weight_store)`` for a target, from the
layer kinds' resource estimates (``cost``) and the cycle model, without running a tool.

:func:`choose_folding` picks the folding ``nsm compile --target`` builds; :func:`suggest_folding`
says what to compile instead when a synthesized design does not fit (``nsm synth``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from . import schedule
from .devices import SPRAM_SHAPE, TARGETS, FitError, SynthError, Target, has_conv
from .estimate import (FILL, KEYS, LC_PER_FF, LC_PER_FF_POP, fits, fixed_cost, layer_cost,
                       need, need_caps)
from .ir import IR
from .plan import plan, pop_unsupported, unsupported

__all__ = ["choose_folding", "suggest_folding", "Folding", "command"]

_MAX_CANDIDATES = 200_000
NAMES = {"luts": "LUT4s", "ffs": "flip-flops", "bram": "EBR blocks", "spram": "SPRAM blocks",
         "dsps": "DSP blocks", "io": "IO pins"}


def _search(ir: IR, target: Target, options: list[list[tuple]], start: dict,
            anchor: list[dict] | None = None):
    """Every combination of the layers' ``options``: estimated resources (``start`` plus each
    layer's cost, less ``anchor``'s where the estimate is anchored at a measured design), cycles
    per inference by the cycle model (the layers' mean durations through
    :func:`nsm_export.schedule.pipeline_end`) and changes from the IR's folding.

    Resources add up over layers and the cycle model never falls when a layer gets slower, so
    each layer keeps only the options no other of its options beats; deep networks keep a
    spread of those. Returns ``(folding(n), est, cycles, changes)``."""
    engines = {st.index: st for st in plan(ir)}
    tables = []
    for i, layer in enumerate(ir.layers):
        ref = anchor[i] if anchor else dict.fromkeys(KEYS, 0)
        rows = []
        for opt in options[i]:
            cost = layer_cost(ir, i, target, opt)
            dur = layer.mean_cycles(engines.get(i), opt)
            changes = sum(a != b for a, b in zip(opt, layer.own())) if anchor else 0
            rows.append((opt, [cost[k] - ref[k] for k in KEYS] + [dur, changes]))
        vec = np.array([r[1] for r in rows], dtype=float)
        keep = [i for i in range(len(rows))
                if not any((vec[j] <= vec[i]).all() and (vec[j] < vec[i]).any()
                           for j in range(len(rows)))]
        # fastest first, so that a spread (below) always holds each layer's fastest option
        keep.sort(key=lambda n: (vec[n, len(KEYS)], vec[n, 0]))
        tables.append(([rows[i][0] for i in keep], vec[keep]))
    total = int(np.prod([len(t[0]) for t in tables]))
    if total > _MAX_CANDIDATES:          # deep networks: a spread of each layer's options
        # (layers with one option, such as pooling, take no share of the budget)
        n = max(2, int(_MAX_CANDIDATES ** (1 / sum(len(t[0]) > 1 for t in tables))))
        picks = [np.unique(np.linspace(0, len(o) - 1, n).round().astype(int)) for o, _ in tables]
        tables = [([o[i] for i in pick], v[pick]) for (o, v), pick in zip(tables, picks)]
    idx = np.indices([len(t[0]) for t in tables]).reshape(len(tables), -1)
    cols = [vec[ix] for (_, vec), ix in zip(tables, idx)]
    est = {k: start.get(k, 0) + sum(c[:, j] for c in cols) for j, k in enumerate(KEYS)}
    est["bram"] = np.maximum(est["bram"], 0)
    est["spram"] = np.maximum(est["spram"], 0)
    cycles = schedule.expected_cycles_per_inference(ir, [c[:, len(KEYS)] for c in cols])
    changes = sum(c[:, len(KEYS) + 1] for c in cols)

    def folding(n: int) -> list[tuple]:
        return [tables[a][0][ix[n]] for a, ix in enumerate(idx)]
    return folding, est, cycles, changes


def _fits_somehow(ir: IR, tg: Target) -> bool:
    """Whether some folding of ``ir`` fits ``tg`` by the estimate."""
    options = [ly.free_options(tg, {}) for ly in ir.layers]
    _, est, _, _ = _search(ir, tg, options, fixed_cost(ir, tg))
    return bool(fits(est, tg.capacity, LC_PER_FF[tg.family]).any())


def command(options: list[tuple], every: bool = False, pass_samples: int = 0,
            input_stage: bool = False) -> str:
    """The ``nsm compile`` flags of a folding: ``--pe`` always, the others where they differ
    from the defaults (all of them with ``every``); ``--pass-samples`` for the popcount
    engine, and ``--input-stage`` where it has one."""
    pes, draws, simds, stores = zip(*options)
    cmd = f"nsm compile --pe {','.join(map(str, pes))}"
    if every or any(d != 1 for d in draws):
        cmd += f" --lanes {','.join(map(str, draws))}"
    if every or any(s != 1 for s in simds):
        cmd += f" --simd {','.join(map(str, simds))}"
    if every or "ram" in stores:
        cmd += f" --weight-store {','.join(stores)}"
    if pass_samples:
        cmd += f" --pass-samples {pass_samples}" + (" --input-stage" if input_stage else "")
    return cmd


def _resources(est: dict, n: int, target: Target) -> str:
    spram = f", {est['spram'][n]:.0f} SPRAM" if target.capacity["spram"] else ""
    return (f"{est['luts'][n]:,.0f} LUTs, {est['ffs'][n]:,.0f} FFs, {est['bram'][n]:.0f} "
            f"EBR{spram}")


def suggest_folding(ir: IR, target: Target, used: dict) -> str:
    """What to compile instead so that the design fits ``target``: the folding (``--pe``),
    draws per clock (``--lanes``), inputs per clock (``--simd``) and weight stores
    (``--weight-store``) estimated to fit with 5 % of the logic to spare and the fewest cycles
    per inference (then the fewest changes), or why none does.

    The estimate is anchored at ``used``, measured at the IR's own settings; see
    each layer kind's ``cost`` for what changes with each setting.
    """
    anchor = [layer_cost(ir, i, target, ly.own()) for i, ly in enumerate(ir.layers)]
    folding, est, cycles, changes = _search(ir, target, [ly.options(target) for ly in ir.layers],
                                            used, anchor)
    ok = fits(est, target.capacity)
    if ok.any():
        cap = target.capacity
        room = np.max([est[k] / (cap[k] * (FILL if k in ("luts", "ffs") else 1) or 1)
                       for k in KEYS], axis=0)
        n = min(np.flatnonzero(ok), key=lambda i: (cycles[i], changes[i], room[i]))
        return (f"try `{command(folding(n))}` (estimated {_resources(est, n, target)}; about "
                f"{cycles[n]:,.0f} cycles per inference)")
    # Nothing fits: name the resource that no choice brings under the limit.
    short = []
    for k in KEYS:
        cap = target.capacity[k] * (FILL if k in ("luts", "ffs") else 1)
        if est[k].min() > cap:
            short.append(f"{est[k].min():,.0f} {NAMES[k]}")
    ram = est["bram"] + est["spram"]
    n = int(np.argmin(ram)) if not short else int(np.argmin(est["luts"]))
    bigger = [t.name for t in TARGETS.values()
              if t.family != "ice40" and t.capacity["luts"] > target.capacity["luts"]
              and all(used.get(k, 0) <= t.capacity[k] for k in ("luts", "ffs", "bram"))]
    where = f"a larger target ({bigger[0]})" if bigger else "a larger device"
    if short:
        why = (f"at any --pe, --lanes, --simd and --weight-store it needs at least "
               f"{' and '.join(short)}")
    else:
        why = (f"no single choice of --pe, --lanes, --simd and --weight-store meets every limit "
               f"at once (e.g. `{command(folding(n))}` needs {est['luts'][n]:,.0f} LUTs, "
               f"{est['bram'][n]:.0f} EBR, {est['spram'][n]:.0f} SPRAM)")
    return f"no folding fits: {why}; use a smaller network, fewer weight bits or {where}"


@dataclass(frozen=True)
class Folding:
    """What :func:`choose_folding` chose: per layer ``(pe, lanes, simd, weight_store)``, the
    engine (``pass_samples``: T' of the popcount engine, 0: the kept-list engines), the
    estimate and the cycle model's figures, and the one-line summary."""
    layers: list
    estimate: dict
    cycles_per_inference: float
    inferences_per_s: float
    clock_mhz: float
    summary: str
    pass_samples: int = 0

    def apply(self, ir: IR) -> IR:
        """``ir`` with this folding and engine."""
        layers = ir.layers
        if self.pass_samples or any(getattr(la, "pass_samples", 0) for la in layers):
            layers = [la.on_pass_samples(self.pass_samples) for la in layers]
        layers = [layer.folded(choice) for layer, choice in zip(layers, self.layers)]
        return _on_engine(ir, layers, self.pass_samples)


def _on_engine(ir: IR, layers: list, tp: int) -> IR:
    """``ir`` with ``layers`` on the engine of ``T' = tp`` (0: the kept-list engines, which
    have no input stage: the IR's ``input_stage`` is kept only with the popcount engine)."""
    return replace(ir, layers=layers, input_stage=ir.input_stage and tp > 0)


def pass_choices(samples: int) -> list[int]:
    """The T' the search tries: T, and T halved (rounded up) down to about T/8."""
    return sorted({max(1, -(-samples // d)) for d in (1, 2, 4, 8)}, reverse=True)


def _variants(ir: IR, pass_samples: int | None) -> dict[int, IR]:
    """The engines the search compares, as ``{T': IR}``: the kept-list engines (T' 0) where
    they build the network, and the popcount engine at each of :func:`pass_choices` where its
    core builds it at some folding (:func:`nsm_export.plan.pop_unsupported` with
    ``folding=False``); ``pass_samples`` (given by the user) keeps one. With an early-exit
    rule, only the T' of four passes or more: the rule acts at pass ends, and fewer boundaries
    leave it little to save (``benchmarks/results/early-exit.json``: at T' = T/2 the UP5K MLP
    runs more cycles with a rule than without)."""
    want = [0] + pass_choices(ir.samples) if pass_samples is None else [pass_samples]
    if ir.early_exit.active and pass_samples is None:
        want = [tp for tp in want if 0 < tp <= max(1, ir.samples // 4)]
    out = {}
    for tp in want:
        v = _on_engine(ir, [la.on_pass_samples(tp) for la in ir.layers], tp)
        if not (pop_unsupported(v, folding=False) if tp else unsupported(v)):
            out[tp] = v
    return out


def choose_folding(ir: IR, target: str, throughput: float | None = None,
                   clock_mhz: float | None = None, fixed: list[dict] | None = None,
                   pass_samples: int | None = None) -> Folding:
    """The per-layer ``pe``, ``lanes``, ``simd`` and weight store for ``target``: the smallest
    estimated design (LUTs, then bits of block memory taken) whose cycle model meets ``throughput``
    (inferences per second at ``clock_mhz``, default the target's calibrated Fmax estimate);
    without a goal, the fastest that fits. ``fixed``: per layer, settings the user gave
    (``{"pe": 16}``), kept as they are. The engine is chosen too: the kept-list engines, or
    the popcount engine at some T' (:func:`pass_choices`), unless ``pass_samples`` (0: the
    kept-list engines) is given. Raises :class:`FitError` (one line: the best throughput
    that fits, and its folding) when nothing fits and meets the goal. No tool runs: resources
    are :func:`estimate`'s."""
    if target not in TARGETS:
        raise SynthError(f"unknown target {target!r} (choose from {', '.join(TARGETS)})")
    tg = TARGETS[target]
    variants = _variants(ir, pass_samples)
    if not variants:
        raise SynthError(f"no folding search: {unsupported(ir)}")
    if throughput is not None and not throughput > 0:
        raise SynthError(f"--throughput {throughput:g} must be positive (inferences per second)")
    clock = float(clock_mhz) if clock_mhz else tg.fmax_for(ir)
    where = (f"{clock:g} MHz" if clock_mhz else
             f"{clock:g} MHz, {tg.name}'s calibrated Fmax estimate"
             + (" for conv nets" if has_conv(ir) else ""))
    fixed = fixed or [{} for _ in ir.layers]
    parts = []
    for tp, v in variants.items():
        options = [ly.free_options(tg, fx) for ly, fx in zip(v.layers, fixed)]
        if tp and v.layers[0].kind == "dense":     # its words hold whole pixels
            options[0] = [o for o in options[0] if o[2] % v.input.levels == 0]
        elif tp:                                   # a beat reads one whole pixel
            options[0] = [o for o in options[0] if o[2] == v.layers[0].c_in]
        if all(options):
            parts.append((tp, _search(v, tg, options, fixed_cost(v, tg))))
    if not parts:
        raise SynthError(f"no folding search: no engine builds this network on {tg.name}")
    sizes = [len(p[1][2]) for p in parts]
    ends = np.cumsum(sizes)

    def locate(n: int):
        k = int(np.searchsorted(ends, n, side="right"))
        return parts[k][0], parts[k][1][0](n - (ends[k] - sizes[k]))

    def cmd(n: int, every: bool = True) -> str:
        tp, f = locate(n)
        return command(f, every=every, pass_samples=tp, input_stage=ir.input_stage)

    est = {k: np.concatenate([np.broadcast_to(p[1][1][k], (m,)) for p, m in zip(parts, sizes)])
           for k in KEYS}
    cycles = np.concatenate([np.broadcast_to(p[1][2], (m,)) for p, m in zip(parts, sizes)]
                            ).astype(float)
    exact = {}

    def settle(n: int) -> float:
        """The cycle model's own figure for candidate ``n``: the popcount core's search
        estimate (its slowest stage) replaced by :func:`schedule.pop_events`' steady state."""
        if n not in exact:
            tp, f = locate(n)
            if tp:
                v = Folding(f, {}, 0, 0, 0, "", tp).apply(variants[tp])
                cycles[n] = schedule.expected_cycles_per_inference(v)
            exact[n] = cycles[n]
        return exact[n]
    ips = clock * 1e6 / cycles
    lc_per_ff = np.concatenate([np.full(m, (LC_PER_FF_POP if p[0] else LC_PER_FF)[tg.family])
                                for p, m in zip(parts, sizes)])
    ok = fits(est, tg.capacity, lc_per_ff)
    ebr_bits = max(w * d for w, d in tg.bram_shapes)
    memory = est["bram"] * ebr_bits + est["spram"] * SPRAM_SHAPE[0] * SPRAM_SHAPE[1]
    if not ok.any():
        used, share = need(est, tg.capacity, lc_per_ff)
        n = int(np.lexsort((est["luts"], share.max(axis=0)))[0])
        names = dict(NAMES, luts="logic cells" if LC_PER_FF[tg.family] else "LUT4s")
        over = "; ".join(f"{u[n]:,.0f} {names[k]} of {cap:,.0f}"
                         for k, u, cap, r in zip(KEYS, used, need_caps(tg.capacity),
                                                 share[:, n]) if r > 1)
        larger = [name for name, other in TARGETS.items()
                  if name != target and _fits_somehow(ir, other)]
        raise FitError(f"no folding fits {tg.name} ({tg.device}): the nearest, "
                       f"`{cmd(n)}`, needs about "
                       f"{_resources(est, n, tg)} ({over}); use a smaller network or "
                       + (f"a larger target ({', '.join(larger)} fits it by the estimate)"
                          if larger else "a larger target"))
    order = np.lexsort((memory, est["luts"], -np.where(ok, ips, -1)))
    # the fastest that fits, then smallest, by the exact figure of the leading candidates
    lead = [int(i) for i in order[:64] if ok[i]]
    for i in lead:
        settle(i)
    ips = clock * 1e6 / cycles
    best = max(lead, key=lambda i: (ips[i], -est["luts"][i], -memory[i]))
    meet = ok & (ips >= throughput) if throughput is not None else ok
    no_goal = FitError(f"no folding of this network meets {throughput or 0:,.0f} inferences/s "
                       f"on {tg.name} at {where}: the best that fits is {ips[best]:,.0f} "
                       f"inferences/s with `{cmd(best)}` (about "
                       f"{_resources(est, best, tg)}; {cycles[best]:,.0f} cycles per inference "
                       f"at T = {ir.samples})")
    if not meet.any():
        raise no_goal
    if throughput is None:
        n, why = best, "the fastest estimated design that fits"
    else:
        cand = np.flatnonzero(meet)
        for i in cand[np.lexsort((memory[cand], est["luts"][cand]))][:256]:
            n = int(i)
            if clock * 1e6 / settle(n) >= throughput:
                break
        else:
            raise no_goal
        ips = clock * 1e6 / cycles
        why = (f"the smallest estimated design (LUTs, then block-memory bits) that meets "
               f"{throughput:,.0f} inferences/s")
    tp, chosen = locate(n)
    summary = (f"folding for {tg.name}: `{cmd(n)[len('nsm compile '):]}`, "
               f"{why} at {where}: {ips[n]:,.0f} inferences/s ({cycles[n]:,.0f} cycles per "
               f"inference at T = {ir.samples}), about {_resources(est, n, tg)}")
    return Folding(chosen, {k: float(est[k][n]) for k in KEYS}, float(cycles[n]),
                   float(ips[n]), clock, summary, tp)


