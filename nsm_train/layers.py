"""The NSM layer: Bernoulli blank-out on the inputs, binary threshold units, integer weights.

:class:`NSMLinear` maps ±1 spikes ``z`` (batch, n_in) to

``u = (z * xi) @ Wq.T + bq``,  ``xi_j ~ Bernoulli(p)``

with one blank-out bit per *input* and batch element, shared by every output neuron (the
per-input noise mode of design.md §2, which the hardware implements). Sampling is the model, so it
stays on in ``eval()`` too; ``layer.sampling = False`` (or ``p == 1``) sets ``xi = 1``.

* Hidden layer: the value is ``+1 if u >= 0 else -1``. The gradient is that of the expected spike
  ``m = E[z_out] = erf(mu / (sqrt(2) * sigma))`` with ``mu = p * (z @ Wq.T) + bq`` and
  ``sigma² = p (1 - p) * (z² @ Wq².T) + eps`` (the central-limit form of the firing probability).
  Without sampling the surrogate uses ``mu = z @ Wq.T + bq`` and
  ``sigma² = ¼ z² @ Wq².T + eps`` (the p = ½ noise scale).
  Implemented as ``s = s_sample.detach() + (m - m.detach())``: the value is the exact sample.
* Output layer: the value is ``u`` itself (class scores of one sample).

Quantization is exact, not simulated: ``Wq = w_int * 2**e`` with small integers ``w_int`` and
power-of-two scales, one exponent ``e`` per output row for hidden layers (a step is invariant to a
positive per-row scale) and one for the whole output layer (the argmax over classes needs a
common scale). Biases are ``b_int * 2**e`` with the same exponent. Every product and partial sum of
the forward pass is then an integer times ``2**e`` well inside float32's 24-bit mantissa, so
PyTorch, onnxruntime and the integer golden model take the same decisions bit for bit.

Weight quantizer for ``k = weight_bits``:

* ``k >= 2``: ``qmax = 2**(k-1) - 1``, ``e = ceil(log2(max|w| / qmax))``,
  ``w_int = clamp(round(w / 2**e), -qmax, qmax)``;
* ``k == 1``: ``w_int = +1 if w >= 0 else -1``, ``e = round(log2(mean|w|))``;

where max/mean run over a row (hidden) or the whole tensor (output); an all-zero row gets ``e = 0``
and exponents are clamped to ``[-MAX_EXP, MAX_EXP]``. ``b_int = clamp(round(b / 2**e), ±2**20)``.
Both use a straight-through gradient.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

__all__ = ["NSMLinear", "quantize_weight", "quantize_bias", "check_p", "BIAS_LIMIT", "MAX_EXP",
           "P_BITS"]

#: Integer biases are clamped to ``[-BIAS_LIMIT, BIAS_LIMIT]`` (2**20 keeps sums inside 24 bits).
BIAS_LIMIT = 1 << 20
#: Scale exponents are clamped to ``[-MAX_EXP, MAX_EXP]`` (float32 stays exact and normal).
MAX_EXP = 60
#: A keep probability ``p`` must be a multiple of ``2**-P_BITS`` (the IR allows up to 16 bits;
#: the default hardware uses 8, so prefer multiples of 1/256).
P_BITS = 16
_EPS = 1e-12


def check_p(p) -> float:
    """Validate a keep probability: ``0 < p <= 1`` and a multiple of ``2**-P_BITS``."""
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"p must be a number, got {p!r}")
    p = float(p)
    if not 0.0 < p <= 1.0:
        raise ValueError(f"p = {p!r} is not a keep probability in (0, 1]")
    if p * (1 << P_BITS) != round(p * (1 << P_BITS)):
        raise ValueError(f"p = {p!r} is not a multiple of 2**-{P_BITS}, so the hardware cannot "
                         f"represent it exactly (use e.g. a multiple of 1/256)")
    return p


def _pow2(exp: torch.Tensor) -> torch.Tensor:
    """Exact ``2.0**exp`` in float32 for an integer-valued tensor."""
    return torch.ldexp(torch.ones_like(exp, dtype=torch.float64), exp.to(torch.int64)).float()


def quantize_weight(w: torch.Tensor, bits: int, per_row: bool):
    """Integer weights and scale exponents of ``w`` (n_out, n_in); see the module docstring.

    Returns ``(w_int, exp)``: ``w_int`` float32 holding integers (same shape as ``w``), ``exp``
    float32 holding integers of shape (n_out, 1), equal in every row when ``per_row`` is False.
    No gradient flows through either.
    """
    w = w.detach().float()
    a = w.abs()
    if bits >= 2:
        qmax = float((1 << (bits - 1)) - 1)
        r = a.amax(dim=1, keepdim=True) if per_row else a.amax().reshape(1, 1)
        mant, e = torch.frexp(r / qmax)           # r/qmax = mant * 2**e, mant in [0.5, 1)
        exp = torch.where(mant == 0.5, e - 1, e).float()    # ceil(log2(r / qmax)), exactly
    else:
        qmax = 1.0
        r = a.mean(dim=1, keepdim=True) if per_row else a.mean().reshape(1, 1)
        exp = torch.round(torch.log2(r.clamp_min(torch.finfo(torch.float32).tiny)))
    exp = torch.where(r > 0, exp, torch.zeros_like(exp)).clamp(-MAX_EXP, MAX_EXP)
    exp = exp.expand(w.shape[0], 1).contiguous()
    if bits >= 2:
        w_int = torch.clamp(torch.round(w / _pow2(exp)), -qmax, qmax)
    else:
        w_int = torch.where(w >= 0, 1.0, -1.0)
    return w_int, exp


def quantize_bias(b: torch.Tensor, exp: torch.Tensor) -> torch.Tensor:
    """Integer biases (float32 holding integers) for scale exponents ``exp`` (n_out, 1)."""
    return torch.clamp(torch.round(b.detach().float() / _pow2(exp[:, 0])),
                       -float(BIAS_LIMIT), float(BIAS_LIMIT))


class NSMLinear(nn.Module):
    """Fully connected NSM layer (see the module docstring).

    Parameters
    ----------
    n_in, n_out : int
        Input and output sizes.
    p : float
        Keep probability of the per-input Bernoulli blank-out, a multiple of ``2**-16`` in
        (0, 1]; 1 means no noise.
    weight_bits : int
        1 (binary ±1) to 8 (signed, symmetric ``±(2**(k-1)-1)``).
    output : bool
        True for the last layer: returns the sampled scores ``u`` instead of spikes, with one
        common weight scale.

    Members
    -------
    weight : Parameter (n_out, n_in)
        Latent float weights; the forward pass uses their quantized value ``Wq``.
    bias : Parameter (n_out,)
        Latent float biases.
    sampling : bool
        Draw the blank-out mask (default True, also in ``eval()``); False means ``xi = 1``.
    """

    def __init__(self, n_in: int, n_out: int, p: float = 0.5, weight_bits: int = 4,
                 output: bool = False):
        super().__init__()
        for name, v in (("n_in", n_in), ("n_out", n_out)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if isinstance(weight_bits, bool) or not isinstance(weight_bits, int) \
                or not 1 <= weight_bits <= 8:
            raise ValueError(f"weight_bits must be an integer in 1..8, got {weight_bits!r}")
        self.n_in = n_in
        self.n_out = n_out
        self.p = check_p(p)
        self.weight_bits = weight_bits
        self.output = bool(output)
        self.sampling = True
        bound = 1.0 / math.sqrt(n_in)
        self.weight = nn.Parameter(torch.empty(n_out, n_in).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def extra_repr(self) -> str:
        return (f"n_in={self.n_in}, n_out={self.n_out}, p={self.p}, "
                f"weight_bits={self.weight_bits}, output={self.output}")

    @property
    def samples_noise(self) -> bool:
        """True when the forward pass draws a mask (``sampling`` on and ``p < 1``)."""
        return self.sampling and self.p < 1.0

    def _integer(self):
        w_int, exp = quantize_weight(self.weight, self.weight_bits, per_row=not self.output)
        b_int = quantize_bias(self.bias, exp)
        return w_int, b_int, exp

    def quantized(self):
        """``(Wq, bq)``: exact quantized weights and biases with straight-through gradients."""
        w_int, b_int, exp = self._integer()
        scale = _pow2(exp)                               # (n_out, 1)
        wq = (w_int * scale) + (self.weight - self.weight.detach())
        bq = (b_int * scale[:, 0]) + (self.bias - self.bias.detach())
        return wq, bq

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.n_in:
            raise ValueError(f"NSMLinear expects input (batch, {self.n_in}), got {tuple(z.shape)}")
        wq, bq = self.quantized()
        if self.samples_noise:
            xi = torch.bernoulli(torch.full_like(z, self.p))
            u = (z * xi) @ wq.t() + bq
        else:
            u = z @ wq.t() + bq
        if self.output:
            return u
        s = torch.where(u.detach() >= 0, 1.0, -1.0)
        if not torch.is_grad_enabled():
            return s
        lin = z @ wq.t()
        sq = (z * z) @ (wq * wq).t()
        if self.samples_noise:
            mu = self.p * lin + bq
            var = (self.p * (1.0 - self.p)) * sq
        else:
            mu = lin + bq
            var = 0.25 * sq
        m = torch.erf(mu / torch.sqrt(2.0 * (var + _EPS)))
        return s + (m - m.detach())

    def integer_params(self) -> dict:
        """The layer as integers.

        ``Wq = weights * 2**scale_exp[:, None]`` and ``bq = bias * 2**scale_exp`` exactly; keys
        ``weights`` (int64, (n_out, n_in)), ``bias`` (int64, (n_out,)), ``scale_exp`` (int64,
        (n_out,), all equal for the output layer), ``p``, ``weight_bits``, ``output``.
        """
        with torch.no_grad():
            w_int, b_int, exp = self._integer()
        return dict(
            weights=w_int.cpu().numpy().astype(np.int64),
            bias=b_int.cpu().numpy().astype(np.int64),
            scale_exp=exp[:, 0].cpu().numpy().astype(np.int64),
            p=self.p, weight_bits=self.weight_bits, output=self.output,
        )
