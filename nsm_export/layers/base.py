"""What every layer kind provides, and what the two weighted kinds (dense, conv) share."""

from __future__ import annotations

import dataclasses

import numpy as np

from .. import lfsr
from ..schema import (MAX_P_BITS, MAX_WEIGHT_BITS, IRError, LfsrSpec, check_bool, check_int,
                      check_width, from_json, int_values, row_l1, signed_bits, to_json)

__all__ = ["Layer", "Weighted", "memory"]


def memory(width: int, depth: int, copies: int = 1) -> dict:
    """A memory's shape as the plan and the report give it."""
    return {"width": width, "depth": depth, "copies": copies, "bits": copies * width * depth}


class Layer:
    """The interface of a layer kind. Each kind is a dataclass whose fields are declared once
    (:func:`nsm_export.schema.spec`) and that implements, for itself:

    * ``kind``, ``n_in``, ``n_out``, ``output``, ``sampling``, ``rng``, ``weight_store``;
    * ``validate(where)`` (beyond the declared ranges), ``meta()`` (its ``ir.json`` record),
      ``arrays(i)`` (its ``weights.npz`` members), ``record(i, m, arrays)`` (the inverse),
      ``array_shapes(i, m)`` (the members a record declares, before they are read);
    * ``execute(z, x)``: the golden model (``z``: input spikes ``(N, T, n_in)`` as bool;
      ``x``: the same as ±1 with blanked inputs 0); returns its output spikes, or, for the
      output layer, the class scores summed over the samples;
    * ``cycles(engine, mask)``: the cycle model of its engine for one sample (and
      ``dense_walk(engine)``: the cycles of a walk that skips nothing, for the report);
    * ``own()``, ``options(target)``, ``free_options(target, fixed)``, ``folded(opt)``: its
      folding ``(pe, lanes, simd, weight_store)`` and the choices the searches may make;
    * ``cost(target, *opt)``: the resource estimate of its engine at a folding;
    * ``memories(engine)``: the memory shapes of its engine; ``report_row(engine)``;
    * ``engine(engine, ir, rom_name)``: the Amaranth engine (:mod:`hw`) that builds it;
    * ``hw_unsupported(i, ir)``: why no engine builds it there, or None;
    * ``synaptic_ops()``: synaptic operations of one sample with every input kept.
    """
    output = False
    sampling = False
    rng = None
    weight_store = "rom"

    def meta(self) -> dict:
        return to_json(self, self.DERIVED)

    def arrays(self, i: int) -> dict:
        return {}

    @classmethod
    def array_shapes(cls, i: int, m: dict) -> dict:
        return {}

    def array_values(self) -> int:
        return 0

    @classmethod
    def record(cls, i: int, m: dict, arrays: dict):
        return from_json(cls, m, f"layers[{i}]")

    def hw_unsupported(self, i: int, ir) -> str | None:
        return None

    def on_pass_samples(self, tp: int) -> "Layer":
        """This layer for the popcount engines at ``T' = tp`` (0: the kept-list engines);
        a kind without an engine of its own is unchanged."""
        return self


class Weighted(Layer):
    """Dense and conv layers: integer weights, thresholds or biases, a Bernoulli blank-out."""

    @property
    def p(self) -> float:
        return self.p_num / (1 << self.p_bits)

    @property
    def sampling(self) -> bool:
        return self.p_num < (1 << self.p_bits)

    @property
    def keep_count(self) -> int | None:
        """Inputs kept over one period of the layer's LFSR (:func:`lfsr.keep_count`); None
        where it draws nothing."""
        return lfsr.keep_count(self.rng.width, self.p_bits, self.p_num) \
            if self.sampling and self.rng is not None else None

    @property
    def p_realized(self) -> list[int] | None:
        """The keep probability the LFSR realizes, exactly: ``[keeps, draws]`` over one period
        (``p_num * 2**(width - p_bits) - 1`` of ``2**width - 1``; no LFSR reaches
        ``p_num / 2**p_bits`` itself, its period being odd). None where nothing is drawn."""
        k = self.keep_count
        return None if k is None else [k, lfsr.period(self.rng.width)]

    def arrays(self, i: int) -> dict:
        return {f"layer{i}_weights": self.weights.astype(np.int64),
                f"layer{i}_{'bias' if self.output else 'threshold'}":
                    self.offsets.astype(np.int64)}

    @staticmethod
    def _offsets_key(i: int, m: dict) -> str:
        return f"layer{i}_{'bias' if m.get('output') is True else 'threshold'}"

    @classmethod
    def array_shapes(cls, i: int, m: dict) -> dict:
        """``layer{i}_weights`` (``WEIGHT_DIMS``) and its thresholds or biases (one per row),
        from the record's size fields, checked against their declared ranges first."""
        check_bool(f"layers[{i}].output", m.get("output", False))
        fields = {f.name: f.metadata for f in dataclasses.fields(cls)}
        dims = []
        for name in cls.WEIGHT_DIMS:
            if name not in m:
                raise IRError(f"layers[{i}].{name} is missing")
            check_int(f"layers[{i}].{name}", m[name], fields[name]["lo"], fields[name]["hi"])
            dims.append(m[name])
        return {f"layer{i}_weights": tuple(dims), cls._offsets_key(i, m): tuple(dims[:1])}

    @classmethod
    def record(cls, i: int, m: dict, arrays: dict):
        key = cls._offsets_key(i, m)
        for k in (f"layer{i}_weights", key):
            if k not in arrays:
                raise IRError(f"weights.npz: array {k} is missing")
        return from_json(cls, m, f"layers[{i}]", {"weights": arrays[f"layer{i}_weights"],
                                                  "offsets": arrays[key]})

    def array_values(self) -> int:
        """Integers this layer keeps in ``weights.npz``."""
        return self.weights.size + self.offsets.size

    def check_weighted(self, where: str) -> None:
        """Weight range, blank-out spec, register widths."""
        check_int(f"{where}.weight_bits", self.weight_bits, 1, MAX_WEIGHT_BITS)
        check_int(f"{where}.p_bits", self.p_bits, 1, MAX_P_BITS)
        check_int(f"{where}.p_num", self.p_num, 1, 1 << self.p_bits)
        wmax = (1 << (self.weight_bits - 1)) - 1 if self.weight_bits > 1 else 1
        if self.weights.size and (int(self.weights.min()) < -wmax
                                  or int(self.weights.max()) > wmax):
            raise IRError(f"{where}.weights hold values outside [{-wmax}, {wmax}] for "
                          f"weight_bits {self.weight_bits}")
        if self.weight_bits == 1 and np.any(self.weights == 0):
            raise IRError(f"{where}.weights: 1-bit weights must be -1 or +1")
        if self.sampling:
            if self.rng is None:
                raise IRError(f"{where}.rng is missing but p = {self.p} < 1 needs an LFSR")
            if not isinstance(self.rng, LfsrSpec):
                raise IRError(f"{where}.rng must be an LFSR spec")
            self.rng.validate(f"{where}.rng", self.p_bits)
        elif self.rng is not None:
            raise IRError(f"{where}.rng is given but p = 1 draws no random bits")
        check_width(f"{where}.acc_bits", self.acc_bits, self.required_acc_bits(), 64,
                    "the worst case of its weights")
        offsets = int_values(self.offsets)
        check_width(f"{where}.offset_bits", self.offset_bits,
                    signed_bits(min(offsets), max(offsets)), self.acc_bits, "its offsets")

    def acc_range(self) -> tuple[int, int]:
        """The least and the greatest value the accumulator must hold, exactly (Python ints):
        ``acc_i + bias_i`` (output layer), or ``acc_i`` and ``threshold_i`` (hidden)."""
        l1, offsets = row_l1(self.weights), int_values(self.offsets)
        if self.output:
            return (min(o - n for n, o in zip(l1, offsets)),
                    max(o + n for n, o in zip(l1, offsets)))
        return min(-max(l1), min(offsets)), max(max(l1), max(offsets))

    def required_acc_bits(self) -> int:
        return signed_bits(*self.acc_range())

    def signed_acc_bits(self) -> int:
        """Width of an accumulator that starts at ``-threshold_i`` (the popcount engines':
        a spike is its sign bit), exactly."""
        l1, offsets = row_l1(self.weights), int_values(self.offsets)
        return signed_bits(min(-n - o for n, o in zip(l1, offsets)),
                           max(n - o for n, o in zip(l1, offsets)))

    def pass_counts(self, samples: int) -> list[int]:
        """Popcount engine: the samples of each pass of one image, ``T'`` each but the last,
        which holds the rest (``T mod T'`` where ``T'`` does not divide ``T``)."""
        tp = min(self.pass_samples, samples)
        return [tp] * (samples // tp) + ([samples % tp] if samples % tp else [])

    def keep_in_order(self, keep: np.ndarray) -> np.ndarray:
        """Keep bits ``(N, T, n_in)`` in draw order → in input order (the same for a dense
        layer)."""
        return keep

    def report_common(self) -> dict:
        weights = int(self.weights.size)
        return {
            "weight_bits": self.weight_bits, "weights": weights,
            "weight_bits_total": weights * self.weight_bits,
            "p": self.p, "p_num": self.p_num, "p_bits": self.p_bits,
            "pe": self.pe, "groups": self.groups, "weight_store": self.weight_store,
            "acc_bits": self.acc_bits, "offset_bits": self.offset_bits,
            "lane_acc_bits": self.pe * self.acc_bits,
            "lfsr_width": self.rng.width if self.rng else None,
        }

    def own(self) -> tuple:
        """The layer's own folding ``(pe, lanes, simd, weight_store)``."""
        return (self.pe, self.lanes, getattr(self, "simd", 1), self.weight_store)
