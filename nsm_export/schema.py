"""The IR's field declarations: each field once, with its range, and the checks built from them.

A layer kind (:mod:`nsm_export.layers`) is a dataclass whose fields carry a :func:`spec` in their
metadata: the range or the choices a value must fall in, and how the field is written to
``ir.json``. Serialization (:func:`to_json`, :func:`from_json`) and the range checks
(:func:`check_fields`) are derived from those declarations; a kind's own ``validate`` adds only
the checks that relate fields to each other (a worst-case register width, say).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from math import gcd

import numpy as np

from . import lfsr

__all__ = ["IRError", "spec", "beat_bits", "check_int", "check_array", "check_fields", "to_json",
           "from_json", "signed_bits", "unsigned_bits", "LfsrSpec", "MAX_WEIGHT_BITS",
           "MAX_P_BITS", "MAX_KERNEL", "LANES", "SIMD", "POP_SIMD", "WEIGHT_STORES"]

MAX_WEIGHT_BITS = 8
MAX_P_BITS = 16
MAX_KERNEL = 15
LANES = (1, 2, 4, 8, 16)
SIMD = (1, 2, 4)
#: Inputs a beat of the sample-parallel (popcount) engine reads: powers of two.
POP_SIMD = (1, 2, 4, 8, 16, 32, 64)
WEIGHT_STORES = ("rom", "ram")


class IRError(ValueError):
    """An IR that is malformed or inconsistent; the message names the field."""


def signed_bits(lo: int, hi: int) -> int:
    """Smallest two's-complement width holding every integer in ``[lo, hi]``."""
    n = 1
    while not (-(1 << (n - 1)) <= lo and hi <= (1 << (n - 1)) - 1):
        n += 1
    return n


def beat_bits(simd: int, weight_bits: int) -> int:
    """Signed width that holds any one popcount beat's sum of ``simd`` gated ``±w`` synapses:
    ``|sum| <= simd * 2**(weight_bits - 1)``."""
    return (simd << (weight_bits - 1)).bit_length() + 1


def unsigned_bits(hi: int) -> int:
    return max(1, int(hi).bit_length())


def spec(lo=None, hi=None, *, choices=None, default=dataclasses.MISSING, write: str = "always",
         parse=None):
    """A field declaration.

    ``lo``/``hi``: the integer range (``hi`` may be a function of the layer: ``pe <= n_out``);
    ``choices``: the values allowed instead; ``write``: ``always``, ``if-set`` (only when true
    and not the default, so that files from before the field keep loading unchanged) or ``npz``
    (an array, stored in ``weights.npz``, not in ``ir.json``); ``parse``: turns the JSON value
    into the field's type. A field with a ``default`` may be missing from a file.
    """
    meta = {"lo": lo, "hi": hi, "choices": choices, "write": write, "parse": parse}
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def check_int(where: str, value, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise IRError(f"{where} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise IRError(f"{where} = {value} is outside [{lo}, {hi}]")


def check_array(where: str, arr, shape: tuple) -> None:
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "iu":
        raise IRError(f"{where} must be an integer array")
    if arr.shape != shape:
        raise IRError(f"{where} has shape {arr.shape}, expected {shape}")


def _declared(obj):
    return [f for f in dataclasses.fields(obj) if f.metadata.get("write") is not None]


def check_fields(obj, where: str, names=None) -> None:
    """The declared range or choices of each field (of ``names``, in that order; default: all
    declared integer and choice fields, in declaration order)."""
    fields = {f.name: f for f in _declared(obj)}
    for name in names if names is not None else fields:
        md = fields[name].metadata
        value = getattr(obj, name)
        if md["choices"] is not None:
            if value not in md["choices"] or isinstance(value, bool):
                raise IRError(f"{where}.{name} {value!r} must be one of "
                              f"{', '.join(map(str, md['choices']))}")
        elif md["lo"] is not None:
            hi = md["hi"](obj) if callable(md["hi"]) else md["hi"]
            lo = md["lo"](obj) if callable(md["lo"]) else md["lo"]
            check_int(f"{where}.{name}", value, lo, hi)


def to_json(obj, derived: tuple = ()) -> dict:
    """``kind``, then the declared fields written to ``ir.json`` and the ``derived`` properties
    (informational: a reader need not recompute them), in the class's ``JSON_ORDER`` where it
    has one."""
    out = {"kind": obj.kind} if hasattr(obj, "kind") else {}
    for f in _declared(obj):
        value = getattr(obj, f.name)
        if f.metadata["write"] == "npz" or (f.metadata["write"] == "if-set"
                                            and (not value or value == f.default)):
            continue
        out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    for name in derived:
        out[name] = getattr(obj, name)
    order = getattr(obj, "JSON_ORDER", None)
    if order:
        out = {k: out[k] for k in order if k in out} | out
    return out


def from_json(cls, m: dict, arrays: dict | None = None):
    """An instance of ``cls`` from its ``ir.json`` record ``m`` (npz fields from ``arrays``,
    already looked up by the caller); missing fields take their declared defaults."""
    kw = {}
    for f in dataclasses.fields(cls):
        md = f.metadata
        if md.get("write") is None:
            continue
        if md["write"] == "npz":
            kw[f.name] = arrays[f.name]
            continue
        if f.name not in m:
            if f.default is dataclasses.MISSING:
                raise KeyError(f.name)
            continue
        value = m[f.name]
        kw[f.name] = md["parse"](value) if md["parse"] and value is not None else value
    return cls(**kw)


@dataclass(frozen=True)
class LfsrSpec:
    """Galois LFSR: ``width`` bits, feedback ``mask``, reset ``seed``, ``leap`` steps per draw."""
    width: int
    mask: int
    seed: int
    leap: int

    @classmethod
    def parse(cls, m) -> "LfsrSpec":
        return cls(**m)

    def validate(self, where: str, p_bits: int) -> None:
        check_int(f"{where}.width", self.width, lfsr.MIN_WIDTH, lfsr.MAX_WIDTH)
        if self.mask != lfsr.galois_mask(self.width):
            raise IRError(f"{where}.mask {self.mask:#x} is not the maximal-length mask for "
                          f"{self.width} bits ({lfsr.galois_mask(self.width):#x})")
        if not isinstance(self.seed, int) or self.seed == 0:
            raise IRError(f"{where}.seed must be a non-zero integer "
                          f"(zero is the LFSR lock-up state)")
        check_int(f"{where}.seed", self.seed, 1, (1 << self.width) - 1)
        if self.width < p_bits:
            raise IRError(f"{where}.width {self.width} is narrower than p_bits {p_bits}")
        check_int(f"{where}.leap", self.leap, p_bits, 4 * self.width)
        if gcd(self.leap, lfsr.period(self.width)) != 1:
            raise IRError(f"{where}.leap {self.leap} shares a factor with the period "
                          f"{lfsr.period(self.width)}, so the stream would skip states")

    def reseeded(self, seed: int) -> int:
        """The state a run seed loads: ``(seed XOR reset seed)`` on ``width`` bits, or the reset
        seed where that would be the lock-up state 0. The hardware computes exactly this."""
        s = (int(seed) ^ self.seed) & ((1 << self.width) - 1)
        return s if s else self.seed
