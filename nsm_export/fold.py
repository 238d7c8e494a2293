"""Exact arithmetic behind the folding of real-valued layers into integer thresholds: the one
implementation the compiler (ONNX → IR) and the exporter (a trained batch norm → ONNX) share.

A layer's pre-activation, per output neuron (or conv filter) ``i``, is an affine function of its
integer accumulator: ``u_i = A_i * acc_i + C_i``. The scales and biases of the ONNX graph (weight
scales, bias, per-channel ``Mul``/``Add``/``Sub``/``Div``, ``BatchNormalization``) only change
``A`` and ``C``. They are kept exact: floats enter as :class:`fractions.Fraction` (every float is
a rational), and a batch norm's ``1/sqrt(var + eps)`` as an element of ``Q(sqrt(d))``
(:class:`Surd`), so no rounding ever decides a threshold:

* hidden neuron, step ``u >= 0``: ``A > 0``: fire iff ``acc >= ceil(-C/A)``; ``A < 0``: negate
  the weight row and fire iff ``-acc >= ceil(C/A)``; ``A = 0``: a constant neuron (zero row,
  threshold 0 or 1). Thresholds beyond the accumulator's range ``±L1`` are clipped (losslessly).
* output layer: the argmax needs one common positive scale: every ``A_c`` must be an integer
  multiple of the smallest (those multiples are folded into the weights) and every ``C_c`` an
  integer multiple of it too.

These are the real-number semantics of the graph. Where a float runtime rounds (a scale that is
not a power of two, a batch norm), it can decide a neuron differently from its own real-number
meaning when ``u`` lands within rounding distance of 0; the compiled IR follows the real numbers.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from .schema import MAX_WEIGHT_BITS

__all__ = ["FoldError", "Surd", "fold_hidden", "fold_output", "fold_norm", "weight_bits",
           "quant_ints", "bipolar_ints", "pow2_ints", "MAX_WEIGHT_BITS"]


class FoldError(ValueError):
    """A value cannot be folded exactly; the message is one line (the caller adds where)."""


def _is_square(q: Fraction) -> Fraction | None:
    """``sqrt(q)`` if it is rational, else None (``q >= 0``)."""
    n, d = q.numerator, q.denominator
    rn, rd = math.isqrt(n), math.isqrt(d)
    return Fraction(rn, rd) if rn * rn == n and rd * rd == d else None


class Surd:
    """``a + b*sqrt(d)`` with rational ``a``, ``b`` and a positive non-square rational ``d``
    (``d`` is None for a plain rational). Exact field arithmetic and sign."""

    __slots__ = ("a", "b", "d")

    def __init__(self, a, b=0, d: Fraction | None = None):
        self.a = Fraction(a)
        self.b = Fraction(b) if d is not None else Fraction(0)
        self.d = d if d is not None and self.b != 0 else None

    @classmethod
    def inv_sqrt(cls, q: Fraction) -> "Surd":
        """``1/sqrt(q)`` for rational ``q > 0``."""
        if q <= 0:
            raise FoldError(f"square root of {float(q)} (a batch norm's var + epsilon must be "
                            f"positive)")
        r = _is_square(q)
        return cls(1 / r) if r is not None else cls(0, 1 / q, q)

    @classmethod
    def of(cls, x) -> "Surd":
        return x if isinstance(x, Surd) else cls(x)

    def _d(self, other: "Surd") -> Fraction | None:
        if self.d is not None and other.d is not None and self.d != other.d:
            raise FoldError("two different square roots (batch norms) meet in one neuron; "
                            "fold one of them before export")
        return self.d if self.d is not None else other.d

    def __add__(self, other):
        o = Surd.of(other)
        return Surd(self.a + o.a, self.b + o.b, self._d(o))

    __radd__ = __add__

    def __neg__(self):
        return Surd(-self.a, -self.b, self.d)

    def __sub__(self, other):
        return self + (-Surd.of(other))

    def __rsub__(self, other):
        return Surd.of(other) - self

    def __mul__(self, other):
        o = Surd.of(other)
        d = self._d(o)
        dd = d if d is not None else 0
        return Surd(self.a * o.a + self.b * o.b * dd, self.a * o.b + self.b * o.a, d)

    __rmul__ = __mul__

    def __truediv__(self, other):
        o = Surd.of(other)
        if o.sign() == 0:
            raise FoldError("division by zero")
        if o.d is None:
            return Surd(self.a / o.a, self.b / o.a, self.d)
        den = o.a * o.a - o.b * o.b * o.d              # non-zero: d is not a square
        return self * Surd(o.a / den, -o.b / den, o.d)

    def sign(self) -> int:
        sa = (self.a > 0) - (self.a < 0)
        sb = (self.b > 0) - (self.b < 0)
        if sb == 0:
            return sa
        if sa == 0 or sa == sb:
            return sb
        # opposite signs: compare a^2 with b^2 d
        diff = self.a * self.a - self.b * self.b * self.d
        return sa if diff > 0 else sb

    def ceil_within(self, lo: int, hi: int) -> int:
        """``ceil(self)`` clipped to ``[lo, hi]``, exactly."""
        if self.b == 0:
            return max(lo, min(hi, math.ceil(self.a)))
        if (Surd(lo) - self).sign() >= 0:
            return lo
        if (Surd(hi) - self).sign() < 0:
            return hi
        while hi - lo > 1:                             # invariant: lo < self <= hi
            mid = (lo + hi) // 2
            if (Surd(mid) - self).sign() >= 0:
                hi = mid
            else:
                lo = mid
        return hi

    def __float__(self) -> float:
        return float(self.a) + (float(self.b) * math.sqrt(self.d) if self.d is not None else 0.0)

    def __repr__(self) -> str:
        return f"{float(self):g}"


def fold_hidden(w: np.ndarray, A: list, C: list,
                limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``w`` (n_out, ...) with ``u_i = A_i acc_i + C_i`` and step ``u >= 0`` → integer rows
    (signs folded in) and thresholds: fire iff ``acc'_i >= theta_i``. Thresholds are clipped to
    ``±limit`` (default: each row's own L1 norm + 1), which decides nothing differently."""
    w = np.array(w, dtype=np.int64, copy=True)
    theta = np.zeros(w.shape[0], dtype=np.int64)
    l1 = np.abs(w.reshape(w.shape[0], -1)).sum(axis=1)
    for i, (a, c) in enumerate(zip(A, C)):
        a, c = Surd.of(a), Surd.of(c)
        lim = int(l1[i]) + 1 if limit is None else limit
        s = a.sign()
        if s == 0:                                     # constant neuron
            w[i] = 0
            theta[i] = 0 if c.sign() >= 0 else 1
        elif s > 0:                                    # acc >= -C/A
            theta[i] = (-c / a).ceil_within(-lim, lim)
        else:                                          # acc <= -C/A  <=>  -acc >= C/A
            w[i] = -w[i]
            theta[i] = (c / a).ceil_within(-lim, lim)
    return w, theta


def fold_output(w: np.ndarray, A: list, C: list) -> tuple[np.ndarray, np.ndarray]:
    """Output rows with scores ``A_c acc_c + C_c`` → integer rows and biases in units of the
    smallest ``A`` (raises :class:`FoldError` when there is no exact common scale)."""
    A = [Surd.of(a) for a in A]
    C = [Surd.of(c) for c in C]
    if any(x.d is not None for x in A + C):
        raise FoldError("the output scores pass through a batch norm; its square root has no "
                        "exact integer form")
    a = [x.a for x in A]
    if any(x <= 0 for x in a):
        raise FoldError("output weight scales must be positive")
    base = min(a)
    mult = []
    for x in a:
        r = x / base
        if r.denominator != 1:
            raise FoldError(f"output scales {float(x)} and {float(base)} differ by a non-integer "
                            f"ratio; the argmax needs one common scale")
        mult.append(r.numerator)
    w = np.asarray(w, dtype=np.int64)
    peak = [int(np.abs(row).max(initial=0)) * m for row, m in zip(w, mult)]
    if any(v >= 1 << 62 for v in peak):
        raise FoldError("output scales differ by so large a ratio that the folded weights do "
                        "not fit 62 bits")
    w = w * np.asarray(mult, dtype=np.int64).reshape((-1,) + (1,) * (np.ndim(w) - 1))
    off = []
    for k, c in enumerate(C):
        q = c.a / base
        if q.denominator != 1:
            raise FoldError(f"bias of class {k} ({float(c.a)}) is not an integer multiple of the "
                            f"weight scale {float(base)}")
        off.append(q.numerator)
    if any(abs(v) >= 1 << 62 for v in off):
        raise FoldError("an output bias does not fit 62 bits")
    return w, np.asarray(off, dtype=np.int64)


def fold_norm(w: np.ndarray, bias: np.ndarray, scale_exp: np.ndarray, gain: np.ndarray,
              offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A trained hidden layer's batch norm folded into its integers, exactly.

    The layer computes ``u_i = (w_i · z + bias_i) * 2**scale_exp_i`` and fires iff
    ``gain_i * u_i + offset_i >= 0`` (floats, each taken at its exact value). Returns integer
    rows (negated where ``gain_i < 0``) and biases with: fire iff ``w'_i · z + bias'_i >= 0``.
    Biases beyond every row's range are clipped to ``±(largest row L1 norm + 1)``, as the
    canonical ONNX form stores them.

    Exact where a float64 fold is not: with ``t = -offset / (gain * 2**e) - bias``, the float
    form ``ceil(t)`` loses an offset smaller than the rounding step at ``bias`` (say ``t = 5 +
    1e-30``: float64 gives 5, the threshold is 6, and at ``w · z = 5`` the layer's ``u'`` is
    ``offset < 0``: no spike).
    """
    gain, offset = np.asarray(gain, dtype=np.float64), np.asarray(offset, dtype=np.float64)
    if not (np.all(np.isfinite(gain)) and np.all(np.isfinite(offset))):
        raise FoldError("the batch norm holds NaN or infinity")
    w = np.asarray(w, dtype=np.int64)
    A = [Fraction(float(g)) * Fraction(2) ** int(e) for g, e in zip(gain, scale_exp)]
    C = [a * int(b) + Fraction(float(o)) for a, b, o in zip(A, bias, offset)]
    limit = int(np.abs(w.reshape(len(w), -1)).sum(axis=1).max()) + 1 if w.size else 1
    w, theta = fold_hidden(w, A, C, limit)
    return w, -theta


def weight_bits(w: np.ndarray, limit: int = MAX_WEIGHT_BITS) -> int:
    """Narrowest IR weight width for integer weights ``w`` (1 = ±1 only; ``k`` = symmetric)."""
    if w.size and np.all(np.abs(w) == 1):
        return 1
    m = int(np.abs(w).max()) if w.size else 0
    bits = max(2, m.bit_length() + 1)
    if bits > limit:
        raise FoldError(f"integer weights up to {m} need {bits} bits; the hardware takes at most "
                        f"{limit} (symmetric, -{(1 << (limit - 1)) - 1}..{(1 << (limit - 1)) - 1})")
    return bits


# --- weights from quantizer nodes ------------------------------------------------------------

_ROUND = {
    "ROUND": np.round, "HALF_EVEN": np.round, "CEIL": np.ceil, "FLOOR": np.floor,
    "DOWN": np.fix, "UP": lambda x: np.sign(x) * np.ceil(np.abs(x)),
    "HALF_UP": lambda x: np.sign(x) * np.floor(np.abs(x) + 0.5),
    "HALF_DOWN": lambda x: np.sign(x) * np.ceil(np.abs(x) - 0.5),
}


def quant_ints(x: np.ndarray, scale: np.ndarray, zeropt: np.ndarray, bits: float, signed: bool,
               narrow: bool, rounding: str) -> np.ndarray:
    """The integers ``q - zeropt`` a QONNX ``Quant`` node multiplies by ``scale``.

    Follows the QONNX operator definition step by step in the input's float type: ``x / scale +
    zeropt``, clamp to the ``bits``-bit range (narrow: without the most negative value), round,
    subtract the zero point; a 1-bit signed Quant is bipolar (``>= 0`` → +1, else -1).
    """
    if not float(bits).is_integer() or not 1 <= bits <= 32:
        raise FoldError(f"bit width {bits} is not an integer in 1..32")
    bits = int(bits)
    mode = str(rounding).upper()
    if mode not in _ROUND:
        raise FoldError(f"rounding mode {rounding!r} is not known")
    if not np.all(np.isfinite(scale)) or np.any(scale == 0):
        raise FoldError("the scale holds zero, NaN or infinity")
    if not np.all(np.isfinite(zeropt)) or np.any(zeropt != np.round(zeropt)):
        raise FoldError("the zero point must hold integers")
    y = x / scale + zeropt
    if bits == 1 and signed:
        y = np.where(y >= 0, 1.0, -1.0)
    else:
        lo = -(1 << (bits - 1)) + (1 if narrow else 0) if signed else 0
        hi = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1 - (1 if narrow else 0)
        y = _ROUND[mode](np.clip(y, lo, hi))
    q = np.asarray(y - zeropt, dtype=np.float64)
    return q.astype(np.int64)


def bipolar_ints(x: np.ndarray) -> np.ndarray:
    """QONNX ``BipolarQuant``: ``x >= 0`` → +1, else -1."""
    return np.where(x >= 0, 1, -1).astype(np.int64)


def pow2_ints(w: np.ndarray, out_axis: int, limit: int = 127) -> tuple[np.ndarray, np.ndarray]:
    """Plain float weights as integers times one power of two per output channel, exactly.

    Returns ``(ints, exponents)``; raises :class:`FoldError` if a channel's weights, brought to
    their common power of two, exceed ``limit`` (they are then not quantized weights).
    """
    w = np.moveaxis(np.asarray(w, dtype=np.float64), out_axis, 0)
    flat = w.reshape(w.shape[0], -1)
    if not np.all(np.isfinite(flat)):
        raise FoldError("the weights hold NaN or infinity")
    mant, ex = np.frexp(flat)                       # w = mant * 2**ex, 0.5 <= |mant| < 1
    m53 = np.ldexp(mant, 53).astype(np.int64)       # exact 53-bit integer mantissa
    tz = np.zeros_like(m53)
    nz = m53 != 0
    low = m53[nz] & -m53[nz]                        # lowest set bit
    tz[nz] = np.log2(low.astype(np.float64)).astype(np.int64)
    unit = np.where(nz, ex - 53 + tz, np.iinfo(np.int64).max)
    exps = unit.min(axis=1)
    exps = np.where(exps == np.iinfo(np.int64).max, 0, exps)
    ints = np.ldexp(flat, -exps[:, None])
    if np.abs(ints).max(initial=0) > limit:
        raise FoldError(f"float weights are not integers up to {limit} times one power of two "
                        f"per output channel; quantize them (Quant, QuantizeLinear) first")
    ints = ints.astype(np.int64).reshape(w.shape)
    return np.moveaxis(ints, 0, out_axis), exps
