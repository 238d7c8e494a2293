"""Early exit: stop an image's Monte Carlo samples once its vote is decided.

An NSM classifies by the class scores summed over ``T`` noisy samples; most images are decided
long before ``T``. A stopping rule is evaluated at the *boundaries* of an image's samples: the
end of each pass of ``T'`` samples that the popcount datapath runs at once (the layers'
``pass_samples``; every sample where a network has none). At boundary ``b`` (``t_b`` samples
done, ``rem_b = T - t_b`` to go) the core holds the scores ``S_c = T * bias_c + (the output
sums of the t_b samples)``; the leader ``a`` is their first maximum (ties: lowest index). The
image stops there when, for every other class ``c``,

    S_a - S_c  >=  need[b][a][c] + (1 if c < a else 0)

with ``need`` a table of non-negative integers that the rule gives (``NEVER``: not at this
boundary). The result is then ``S`` as it stands (its argmax ``a``) and the samples used
``t_b``; the last boundary (``t = T``) always ends the image.

Rules (``ir.early_exit``):

``none``    never stop early: the default, and what every IR without the field means.
``exact``   ``need = rem_b * D[a][c]``, ``D[a][c] = sum_j |w_aj - w_cj|`` over the output
            layer's weights: no outcome of the remaining samples (any spikes, any blank-out:
            each moves ``S_a - S_c`` by at most ``D[a][c]``) can change the argmax, tie rule
            included, so the class is the full-``T`` class by construction.
``margin``  ``need = ceil(param / 256 * rem_b * D[a][c])``: a fraction ``param / 256`` of
            that worst case (``param = 256`` is ``exact``). A confidence rule: the leader
            must lead each class by a share of what the rest could still move.

``min_samples`` (any rule): no stop before that many samples.

Random bits after an early stop: every LFSR of the core restarts the next image where a run
of all ``T`` samples would have left it (the hardware keeps each drawer's image-start state and
jumps it ``T * n_in`` draws ahead at each image: :func:`jump_columns`). The next image never
depends on where this one stopped, so an early-exit run is the full-``T`` run cut short image
by image: its classes and scores follow from the full run's partial scores alone
(:func:`decide`), which is how :mod:`nsm_export.golden` computes them and how ``nsm eval`` and
``nsm report`` sweep rules without re-running anything.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from . import lfsr
from .schema import IRError, check_fields, from_json, shown, spec

__all__ = ["EarlyExit", "RULES", "PARAM_ONE", "NONE", "boundaries", "pass_boundaries",
           "pair_swing", "need_table",
           "decide", "Decision", "jump_columns", "ir_table", "partial_scores", "float_need",
           "parse_rule", "rule_label", "DEFAULT_SWEEP", "sweep", "ir_sweep", "histogram"]

RULES = ("none", "exact", "margin")
#: ``margin``'s ``param`` is a fraction in 256ths.
PARAM_ONE = 256


@dataclass
class EarlyExit:
    """The stopping rule of an IR (``ir.json``'s ``early_exit``, written only when a rule is
    set: files without it mean ``none``)."""
    rule: str = spec(choices=RULES, default="none")
    param: int = spec(1, PARAM_ONE, default=PARAM_ONE)
    min_samples: int = spec(0, 1 << 20, default=0)

    @property
    def active(self) -> bool:
        return self.rule != "none"

    def validate(self, samples: int) -> None:
        if not isinstance(self.rule, str):
            raise IRError(f"early_exit.rule must be a string, got {shown(self.rule)}")
        check_fields(self, "early_exit")
        if self.rule == "none" and self.min_samples:
            raise IRError(f"early_exit.min_samples {self.min_samples} belongs to a rule "
                          f"(none stops nothing)")
        if self.min_samples > samples:
            raise IRError(f"early_exit.min_samples {self.min_samples} exceeds samples {samples}")
        if self.rule != "margin" and self.param != PARAM_ONE:
            raise IRError(f"early_exit.param {self.param} belongs to the margin rule "
                          f"(rule {self.rule!r} takes none)")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def record(cls, m) -> "EarlyExit":
        """From ``ir.json``'s record (:func:`nsm_export.schema.from_json`; the IR checks it
        with :func:`~nsm_export.schema.check_record` once validated)."""
        return from_json(cls, m, "early_exit")


NONE = EarlyExit()


def rule_label(rule: EarlyExit) -> str:
    """``exact``, ``margin 0.25``, ``margin 0.25, min 4``: as the report and ``nsm eval`` print
    a rule (the inverse of :func:`parse_rule`: three significant digits name the same 256th)."""
    text = rule.rule if rule.rule != "margin" else f"margin {rule.param / PARAM_ONE:.3g}"
    return text + (f", min {rule.min_samples}" if rule.min_samples else "")


def parse_rule(text: str) -> EarlyExit:
    """``none``, ``exact``, ``margin:F`` (``F`` in ``(0, 1]``, rounded to 256ths) or either
    with ``,min=S``: the command line's form of a rule. Raises ValueError in one line."""
    head, *opts = [part.strip() for part in str(text).split(",")]
    name, _, arg = head.partition(":")
    if name not in RULES:
        raise ValueError(f"early-exit rule {text!r}: the rule must be one of {', '.join(RULES)}")
    param = PARAM_ONE
    if name == "margin":
        try:
            frac = float(arg)
        except ValueError:
            raise ValueError(f"early-exit rule {text!r}: margin needs a fraction, as in "
                             f"margin:0.25") from None
        if not 0 < frac <= 1:
            raise ValueError(f"early-exit rule {text!r}: the margin fraction must be in (0, 1]")
        param = max(1, min(PARAM_ONE, round(frac * PARAM_ONE)))
    elif arg:
        raise ValueError(f"early-exit rule {text!r}: {name} takes no parameter")
    min_samples = 0
    for opt in opts:
        key, _, value = opt.partition("=")
        if key != "min" or not value.isdigit():
            raise ValueError(f"early-exit rule {text!r}: {opt!r} is not min=SAMPLES")
        min_samples = int(value)
    if name == "none" and min_samples:
        raise ValueError(f"early-exit rule {text!r}: none takes no min")
    return EarlyExit(name, param, min_samples)


def boundaries(ir) -> list[int]:
    """Samples done at each boundary of an image, the last being ``T``: the popcount
    datapath's pass ends (``T'``, ``2T'``, ..., ``T``), or every sample where the layers have no
    ``pass_samples``."""
    tp = max([getattr(layer, "pass_samples", 0) for layer in ir.layers] + [0])
    return pass_boundaries(ir.samples, tp or 1)


def pass_boundaries(samples: int, tp: int) -> list[int]:
    """Samples done at the end of each pass of ``tp`` samples (the last pass holds the rest)."""
    tp = min(tp, samples)
    return [min(samples, k * tp) for k in range(1, -(-samples // tp) + 1)]


def pair_swing(weights) -> np.ndarray:
    """``D[a][c] = sum_j |w_aj - w_cj|`` of an output layer's weight rows (exact integers;
    floats for a float model): the most one sample can move ``S_a - S_c``."""
    w = np.asarray(weights)
    if w.dtype.kind in "iu":
        w = w.astype(object) if np.abs(w).max(initial=0) >= 1 << 40 else w.astype(np.int64)
    w = w.reshape(len(w), -1)
    return np.abs(w[:, None, :] - w[None, :, :]).sum(axis=2)


def need_table(rule: EarlyExit, samples: int, bounds: list[int], swing: np.ndarray,
               never: int) -> np.ndarray:
    """``need[b][a][c]`` for the boundaries before the last (``(len(bounds) - 1, C, C)``,
    int64; the diagonal 0), every value at most ``never`` (a lead no score range reaches)."""
    C = swing.shape[0]
    out = np.full((max(0, len(bounds) - 1), C, C), never, dtype=np.int64)
    if not rule.active:
        return out
    for b, t in enumerate(bounds[:-1]):
        if t < rule.min_samples:
            continue
        rem = samples - t
        for a in range(C):
            for c in range(C):
                worst = rem * int(swing[a][c])
                need = worst if rule.rule == "exact" else \
                    -(-(rule.param * worst) // PARAM_ONE)
                out[b, a, c] = 0 if a == c else min(never, need)
    return out


def float_need(rule: EarlyExit, samples: int, bounds: list[int], swing: np.ndarray
               ) -> np.ndarray:
    """:func:`need_table` for a float model's scores (``nsm eval`` on a checkpoint): the same
    rule without rounding, ``inf`` for never."""
    C = swing.shape[0]
    out = np.full((max(0, len(bounds) - 1), C, C), np.inf)
    if not rule.active:
        return out
    frac = 1.0 if rule.rule == "exact" else rule.param / PARAM_ONE
    for b, t in enumerate(bounds[:-1]):
        if t >= rule.min_samples:
            out[b] = frac * (samples - t) * np.asarray(swing, dtype=float)
            np.fill_diagonal(out[b], 0.0)
    return out


@dataclass
class Decision:
    stop: np.ndarray       # (N,) the boundary each image stopped at (len(bounds) - 1: the end)
    samples: np.ndarray    # (N,) samples used
    scores: np.ndarray     # (N, C) the scores at the stop
    classes: np.ndarray    # (N,) their first maximum


def decide(partial: np.ndarray, need: np.ndarray, bounds: list[int]) -> Decision:
    """Apply a rule's table to the scores at each boundary, ``partial`` ``(N, B, C)`` (``B =
    len(bounds)``; integers, or floats with :func:`float_need`): the first boundary whose
    leader leads every class by its ``need`` (plus one for a class of lower index) ends the
    image, the last one always does."""
    N, B, C = partial.shape
    lead_idx = np.argmax(partial, axis=2)                                   # (N, B)
    lead = np.take_along_axis(partial, lead_idx[..., None], axis=2)         # (N, B, 1)
    gap = lead - partial                                                    # (N, B, C)
    tie = (np.arange(C)[None, None, :] < lead_idx[..., None]).astype(partial.dtype)
    req = need[np.arange(B - 1)[None, :, None], lead_idx[:, :B - 1, None],
               np.arange(C)[None, None, :]] if B > 1 else np.zeros((N, 0, C))
    ok = np.ones((N, B), dtype=bool)
    if B > 1:
        ok[:, :B - 1] = (gap[:, :B - 1] >= req + tie[:, :B - 1]).all(axis=2)
    stop = np.argmax(ok, axis=1)
    rows = np.arange(N)
    return Decision(stop=stop, samples=np.asarray(bounds, dtype=np.int64)[stop],
                    scores=partial[rows, stop], classes=lead_idx[rows, stop])


def ir_table(ir) -> tuple[list[int], np.ndarray]:
    """The boundaries of ``ir`` and its rule's ``need`` table (``never = 2**score_bits``: more
    than any lead of ``score_bits``-bit scores)."""
    bounds = boundaries(ir)
    return bounds, need_table(ir.early_exit, ir.samples, bounds,
                              pair_swing(ir.layers[-1].weights), 1 << ir.score_bits)


def partial_scores(ir, sums: np.ndarray, bounds: list[int]) -> np.ndarray:
    """The scores the core holds at each boundary, ``(N, B, C)``: ``T * bias`` plus the output
    sums ``sums`` ``(N, T, C)`` of the samples done."""
    cum = np.cumsum(sums, axis=1)[:, np.asarray(bounds) - 1]
    return cum + ir.samples * ir.layers[-1].offsets.astype(np.int64)[None, None, :]


def jump_columns(width: int, mask: int, leap: int, draws: int) -> list[int]:
    """Columns of the map that advances an LFSR ``draws`` draws of ``leap`` steps: a layer's
    ``T * n_in`` draws per image, where each drawer's image-start state goes next."""
    return lfsr.matrix_power(lfsr.leap_matrix(width, mask, leap), draws)


#: The rules ``nsm eval --early-exit sweep`` and ``nsm report`` try: ``exact``, then ``margin``
#: from cautious to eager, halving the fraction (exact in 256ths: a curve of accuracy against
#: mean samples), two of them also with a floor of 8 samples.
DEFAULT_SWEEP = tuple(parse_rule(text) for text in (
    "exact", "margin:0.75", "margin:0.5", "margin:0.25", "margin:0.125", "margin:0.0625",
    "margin:0.03125", "margin:0.015625", "margin:0.0625,min=8", "margin:0.015625,min=8"))


def histogram(samples) -> dict[str, int]:
    """Images by samples used, ``{"T": count}`` in increasing samples (string keys: as JSON
    holds them)."""
    values, counts = np.unique(np.asarray(samples, dtype=np.int64), return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(values, counts)}


def sweep(partial: np.ndarray, labels, rules, bounds: list[int], need_fn) -> list[dict]:
    """Each rule of ``rules`` applied to one full run's scores at the boundaries, ``partial``
    ``(N, B, C)`` (:func:`partial_scores`, or a float model's), against the labels. ``need_fn``
    gives a rule's table (:func:`need_table` or :func:`float_need` with the run's swing).

    One dict per rule: ``rule`` (:func:`rule_label`), ``early_exit`` (its JSON), ``mean_samples``,
    ``accuracy``, ``full_accuracy`` (all ``T = bounds[-1]`` samples), ``loss`` (full minus this)
    and ``samples_histogram`` (:func:`histogram`)."""
    labels = np.asarray(labels)
    partial = np.asarray(partial)
    n = max(1, len(labels))
    full = float((np.argmax(partial[:, -1], axis=1) == labels).sum() / n)
    out = []
    for rule in rules:
        cut = decide(partial, need_fn(rule), bounds)
        acc = float((cut.classes == labels).sum() / n)
        out.append({"rule": rule_label(rule), "early_exit": rule.to_json(),
                    "mean_samples": float(cut.samples.mean()) if len(labels) else 0.0,
                    "accuracy": acc, "full_accuracy": full, "loss": full - acc,
                    "samples_histogram": histogram(cut.samples)})
    return out


def ir_sweep(ir, partial: np.ndarray, labels, rules=DEFAULT_SWEEP) -> list[dict]:
    """:func:`sweep` of an IR's golden run (``golden.run(ir, x, record=True).partial``) with the
    IR's own tables (its output weights' swing, ``never = 2**score_bits``); ``min_samples``
    above ``T`` is taken as ``T``."""
    bounds = boundaries(ir)
    swing = pair_swing(ir.layers[-1].weights)

    def need(rule):
        rule = EarlyExit(rule.rule, rule.param, min(rule.min_samples, ir.samples))
        return need_table(rule, ir.samples, bounds, swing, 1 << ir.score_bits)
    return sweep(partial, labels, rules, bounds, need)
