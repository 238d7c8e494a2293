"""The IR's field declarations: each field once, with its range, and the checks built from them.

A layer kind (:mod:`nsm_export.layers`) is a dataclass whose fields carry a :func:`spec` in their
metadata: the range or the choices a value must fall in, and how the field is written to
``ir.json``. Serialization (:func:`to_json`, :func:`from_json`) and the range checks
(:func:`check_fields`) are derived from those declarations; a kind's own ``validate`` adds only
the checks that relate fields to each other (a worst-case register width, say).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass

import numpy as np

from . import lfsr

__all__ = ["IRError", "spec", "beat_bits", "check_int", "check_bool", "check_width", "check_array",
           "check_fields", "check_identifier", "check_record", "shown", "to_json", "from_json",
           "int_values", "row_l1", "signed_bits", "unsigned_bits", "LfsrSpec", "MAX_WEIGHT_BITS",
           "MAX_P_BITS", "MAX_KERNEL", "MAX_NAME", "VERILOG_KEYWORDS", "LANES", "SIMD",
           "POP_SIMD", "WEIGHT_STORES"]

MAX_WEIGHT_BITS = 8
MAX_P_BITS = 16
MAX_KERNEL = 15
LANES = (1, 2, 4, 8, 16)
SIMD = (1, 2, 4)
#: Inputs a beat of the sample-parallel (popcount) engine reads: powers of two.
POP_SIMD = (1, 2, 4, 8, 16, 32, 64)
WEIGHT_STORES = ("rom", "ram")
#: The longest IR ``name`` (the Verilog top module's; the ROM modules append ``_wrom{i}``).
MAX_NAME = 64
#: Reserved words of Verilog-2005 (IEEE 1364-2005 Annex B) and SystemVerilog-2017 (IEEE
#: 1800-2017 Annex B, which holds all of the former): none may name a module.
VERILOG_KEYWORDS = frozenset("""
accept_on alias always always_comb always_ff always_latch and assert assign assume automatic
before begin bind bins binsof bit break buf bufif0 bufif1 byte case casex casez cell chandle
checker class clocking cmos config const constraint context continue cover covergroup coverpoint
cross deassign default defparam design disable dist do edge else end endcase endchecker endclass
endclocking endconfig endfunction endgenerate endgroup endinterface endmodule endpackage
endprimitive endprogram endproperty endspecify endsequence endtable endtask enum event eventually
expect export extends extern final first_match for force foreach forever fork forkjoin function
generate genvar global highz0 highz1 if iff ifnone ignore_bins illegal_bins implements implies
import incdir include initial inout input inside instance int integer interconnect interface
intersect join join_any join_none large let liblist library local localparam logic longint
macromodule matches medium modport module nand negedge nettype new nexttime nmos nor
noshowcancelled not notif0 notif1 null or output package packed parameter pmos posedge primitive
priority program property protected pull0 pull1 pulldown pullup pulsestyle_ondetect
pulsestyle_onevent pure rand randc randcase randsequence rcmos real realtime ref reg reject_on
release repeat restrict return rnmos rpmos rtran rtranif0 rtranif1 s_always s_eventually
s_nexttime s_until s_until_with scalared sequence shortint shortreal showcancelled signed small
soft solve specify specparam static string strong strong0 strong1 struct super supply0 supply1
sync_accept_on sync_reject_on table tagged task this throughout time timeprecision timeunit tran
tranif0 tranif1 tri tri0 tri1 triand trior trireg type typedef union unique unique0 unsigned
until until_with untyped use uwire var vectored virtual void wait wait_order wand weak weak0
weak1 while wildcard wire with within wor xnor xor
""".split())
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


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


def shown(value) -> str:
    """``repr(value)``, cut to 60 characters: an error line stays one short line whatever a
    file holds."""
    text = repr(value)
    return text if len(text) <= 60 else text[:56] + " ..."


def _is_int(value) -> bool:
    """An integer, and not a bool (which Python counts as one)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_int(where: str, value, lo: int, hi: int) -> None:
    if not _is_int(value):
        raise IRError(f"{where} must be an integer, got {shown(value)}")
    if not lo <= value <= hi:
        raise IRError(f"{where} = {shown(value)} is outside [{lo}, {hi}]")


def check_width(where: str, value, need: int, hi: int, holds: str) -> None:
    """A register width: an integer in ``[1, hi]`` and at least the ``need`` bits that what
    it ``holds`` takes."""
    check_int(where, value, 1, hi)
    if value < need:
        raise IRError(f"{where} {value} cannot hold {holds} (needs {need})")


def check_bool(where: str, value) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise IRError(f"{where} must be true or false, got {shown(value)}")


def check_identifier(where: str, name) -> None:
    """``name`` can name a Verilog module as it is: ASCII ``[A-Za-z_][A-Za-z0-9_]*``, at most
    :data:`MAX_NAME` characters, not a Verilog or SystemVerilog keyword."""
    if isinstance(name, str) and len(name) > MAX_NAME:
        raise IRError(f"{where} {shown(name)} has {len(name)} characters (at most {MAX_NAME})")
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise IRError(f"{where} {shown(name)} is not a Verilog identifier (ASCII letters, digits "
                      f"and _, not starting with a digit)")
    if name in VERILOG_KEYWORDS:
        raise IRError(f"{where} {name!r} is a Verilog/SystemVerilog keyword")


def check_array(where: str, arr, shape: tuple) -> None:
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "iu":
        raise IRError(f"{where} must be an integer array")
    if arr.shape != shape:
        raise IRError(f"{where} has shape {arr.shape}, expected {shape}")


def int_values(arr) -> list[int]:
    """The values of an integer array as Python ints: arithmetic on them cannot overflow."""
    return [int(v) for v in np.asarray(arr).reshape(-1).tolist()]


def row_l1(weights) -> list[int]:
    """``sum_j |w_ij|`` of each row (all axes after the first), as exact Python ints whatever
    the weights' dtype and range."""
    w = np.asarray(weights).reshape(len(weights), -1)
    if w.size == 0:
        return [0] * len(w)
    if max(-int(w.min()), int(w.max())) < 1 << 31 and w.shape[1] < 1 << 31:
        return int_values(np.abs(w.astype(np.int64)).sum(axis=1))     # no sum can reach 2**62
    return [sum(abs(v) for v in int_values(row)) for row in w]


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
            typed = _is_int(value) if _is_int(md["choices"][0]) else isinstance(value, str)
            if not typed or value not in md["choices"]:
                raise IRError(f"{where}.{name} {shown(value)} must be one of "
                              f"{', '.join(map(str, md['choices']))}")
        elif md["lo"] is not None:
            hi = md["hi"](obj) if callable(md["hi"]) else md["hi"]
            lo = md["lo"](obj) if callable(md["lo"]) else md["lo"]
            check_int(f"{where}.{name}", value, lo, hi)


def to_json(obj, derived: tuple = (), every: bool = False) -> dict:
    """``kind``, then the declared fields written to ``ir.json`` and the ``derived`` properties
    (informational; :func:`check_record` makes a reader recompute them), in the class's
    ``JSON_ORDER`` where it has one. ``every``: ``if-set`` fields too, whatever their value."""
    out = {"kind": obj.kind} if hasattr(obj, "kind") else {}
    for f in _declared(obj):
        value = getattr(obj, f.name)
        if f.metadata["write"] == "npz" or (f.metadata["write"] == "if-set" and not every
                                            and (not value or value == f.default)):
            continue
        out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    for name in derived:
        out[name] = getattr(obj, name)
    order = getattr(obj, "JSON_ORDER", None)
    if order:
        out = {k: out[k] for k in order if k in out} | out
    return out


def from_json(cls, m: dict, where: str, arrays: dict | None = None):
    """An instance of ``cls`` from its ``ir.json`` record ``m`` (npz fields from ``arrays``,
    already looked up by the caller); missing fields take their declared defaults. The values
    are taken as they are: ``validate`` checks their types and ranges, :func:`check_record`
    that the record holds nothing else."""
    if not isinstance(m, dict):
        raise IRError(f"{where} must be a JSON object, got {type(m).__name__}")
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
                raise IRError(f"{where}.{f.name} is missing")
            continue
        value = m[f.name]
        kw[f.name] = md["parse"](value, f"{where}.{f.name}") if md["parse"] else value
    return cls(**kw)


def parse_list(value, where: str) -> tuple:
    """A JSON list as a tuple (its elements are checked by ``validate``)."""
    if not isinstance(value, list):
        raise IRError(f"{where} must be a list, got {type(value).__name__}")
    return tuple(value)


def _canonical(value) -> str:
    """A JSON value as text with its type: ``1``, ``1.0`` and ``true`` differ."""
    return json.dumps(value, sort_keys=True)


def check_record(obj, m: dict, where: str) -> None:
    """Every key of the ``ir.json`` record ``m`` is a field ``obj`` writes (declared or one of
    its ``DERIVED`` properties, recomputed here), holding the value ``obj`` has."""
    full = to_json(obj, getattr(obj, "DERIVED", ()), every=True)
    for key, value in m.items():
        if key not in full:
            raise IRError(f"{where}: {shown(key)} is an unknown field ({where} has "
                          f"{', '.join(full)})")
        if _canonical(value) != _canonical(full[key]):
            raise IRError(f"{where}.{key} is {shown(value)} but its other fields give "
                          f"{shown(full[key])}")


@dataclass(frozen=True)
class LfsrSpec:
    """Galois LFSR: ``width`` bits, feedback ``mask``, reset ``seed``, ``leap`` steps per draw."""
    width: int
    mask: int
    seed: int
    leap: int

    @classmethod
    def parse(cls, m, where: str = "rng") -> "LfsrSpec | None":
        """The spec from its JSON object; ``null`` (no LFSR) stays None."""
        if m is None:
            return None
        names = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(m, dict) or sorted(m) != sorted(names):
            raise IRError(f"{where} must be a JSON object with exactly the keys "
                          f"{', '.join(names)}, got {m!r:.80}")
        return cls(**m)

    def validate(self, where: str, p_bits: int) -> None:
        check_int(f"{where}.width", self.width, lfsr.MIN_WIDTH, lfsr.MAX_WIDTH)
        check_int(f"{where}.mask", self.mask, 1, (1 << self.width) - 1)
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
        period = lfsr.period(self.width)
        if math.gcd(self.leap, period) != 1:
            raise IRError(f"{where}.leap {self.leap} shares the factor "
                          f"{math.gcd(self.leap, period)} with the period 2**{self.width} - 1: "
                          f"the draws would visit only some of the states")

    def reseeded(self, seed: int) -> int:
        """The state a run seed loads: ``(seed XOR reset seed)`` on ``width`` bits, or the reset
        seed where that would be the lock-up state 0. The hardware computes exactly this."""
        s = (int(seed) ^ self.seed) & ((1 << self.width) - 1)
        return s if s else self.seed
