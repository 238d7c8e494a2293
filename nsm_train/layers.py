"""NSM layers: binary threshold units with always-on multiplicative noise, integer weights.

:class:`NSMLinear` and :class:`NSMConv2d` map ±1 spikes ``z`` to ``u = Σ_j ξ_ij w_ij z_j + b_i``
(a matrix product or a convolution) and, in hidden layers, to spikes ``+1 if u >= 0 else -1``.
The noise ``ξ`` (``noise=``):

* ``"input"``: one Bernoulli(p) blank-out bit per *input* and sample, shared by every output
  neuron (what the hardware implements: the IR's per-input mask);
* ``"synapse"``: one Bernoulli(p) bit per synapse ``(i, j)`` and sample (the paper's model; in a
  convolution one bit per weight and sample, shared across positions);
* ``"gaussian"``: ``ξ_ij ~ N(1, sigma²)`` per synapse, drawn exactly through the sum
  ``u = w·z + sigma·sqrt((w²)·(z²))·ε`` (training only; no hardware form yet).

Sampling is the model, so it stays on in ``eval()``; ``layer.sampling = False`` (or ``p == 1``)
sets ``ξ = 1``. ``gain=True`` adds a trainable factor ``a_i`` per neuron:
``u_i = Σ_j (ξ_ij + a_i) w_ij z_j + b_i`` (β_i = (p + a_i)/sqrt(2p(1−p)) for Bernoulli noise).
``norm`` adds a batch norm of ``u`` (``"l1"``: Hoffer et al.'s ``(u−μ)/(sqrt(π/2)·mean|u−μ|)``,
``"linf"``: ``(u−μ)/(max|u−μ| / sqrt(2 ln n))``, ``"l2"``: the usual one) with affine γ, β and
running statistics; :meth:`NSMLinear.integer_params` gives its eval-mode affine map, which the
exporter folds exactly into a per-neuron integer threshold and a sign flip of the weight row
(:func:`nsm_export.onnx_export.layer_integers`).

Estimator (forward samples, backward uses the erf firing probability): the hidden value is the
exact sample ``s``, its gradient that of ``m = erf(E[u] / sqrt(2 Var[u]))`` with, for ``lin =
z·Wq`` and ``sq = z²·Wq²``: Bernoulli ``E[u] = (p + a) lin + b``, ``Var[u] = p(1−p) sq``;
Gaussian ``E[u] = (1 + a) lin + b``, ``Var[u] = sigma² sq``; no sampling ``E[u] = (1 + a) lin +
b``, ``Var[u] = ¼ sq``. A batch norm ``u' = A u + C`` maps these to ``A E[u] + C`` and
``A² Var[u]``. Implemented as ``s.detach() + (m − m.detach())``. Output layers return ``u``.

Quantization (``quantizer=``) is exact, not simulated: ``Wq = w_int * 2**e`` with small integers
``w_int`` and power-of-two scales, one exponent per output neuron (row or conv filter) in hidden
layers (a step is invariant to a positive per-neuron scale: the inherent normalization) and one
for the whole output layer (the argmax needs a common scale). Every product and partial sum is
then an integer times ``2**e`` inside float32's mantissa, so PyTorch, onnxruntime and the integer
golden model decide identically.

* ``"native"`` (default): ``k >= 2``: ``qmax = 2**(k-1) - 1``, ``e = ceil(log2(max|w| / qmax))``,
  ``w_int = clamp(round(w / 2**e), ±qmax)``; ``k == 1``: ``w_int = sign(w)`` (0 → +1),
  ``e = round(log2(mean|w|))``; max/mean over a row (hidden) or the tensor (output).
* ``"mse"``: as ``"native"``, but for ``k >= 2`` the exponent is the one among
  ``ceil(log2(max|w| / qmax)) - MSE_SEARCH .. ceil(log2(max|w| / qmax))`` with the least
  squared error ``||w_int * 2**e - w||²`` per row (hidden) or tensor (output): the max-based
  scale makes most ternary weights 0, this one keeps roughly the largest half to two thirds.
* ``"brevitas"``: brevitas quantizers (QAT with its straight-through estimators): ``k >= 2``
  narrow-range fixed point (``Int8WeightPerTensorFixedPoint`` with ``bit_width = k``, per output
  channel in hidden layers), ``k == 1`` ``SignedBinaryWeightPerTensorConst`` with the constant
  power-of-two scale ``2**round(log2(1/sqrt(fan_in)))``.

``weight_bits = 32`` (:data:`FLOAT_BITS`) leaves the weights in float (reference runs; no
integer form). ``k = 2`` is ternary (``{-1, 0, 1}``), matching the IR's symmetric ``k``-bit weights.
Biases are ``b_int * 2**e`` with ``b_int = clamp(round(b / 2**e), ±BIAS_LIMIT)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["NSMLinear", "NSMConv2d", "BinaryPool2d", "SBSLinear", "quantize_weight",
           "quantize_bias", "brevitas_weight_quant", "check_p", "BIAS_LIMIT", "MAX_EXP", "P_BITS",
           "NOISE_MODES", "NORMS", "QUANTIZERS", "FLOAT_BITS"]

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


#: How many power-of-two exponents below the max-based one ``scale="mse"`` tries.
MSE_SEARCH = 6


def quantize_weight(w: torch.Tensor, bits: int, per_row: bool, scale: str = "max"):
    """Integer weights and scale exponents of ``w`` (n_out, n_in); see the module docstring.

    ``scale`` (``bits >= 2`` only): ``"max"`` takes the smallest power of two that fits max|w|
    into ``qmax``; ``"mse"`` takes, among that exponent and the :data:`MSE_SEARCH` below it,
    the one whose clamped, rounded weights are nearest to ``w`` in squared error (per row or
    over the tensor; ties to the larger exponent). Both give integers times powers of two.

    Returns ``(w_int, exp)``: ``w_int`` float32 holding integers (same shape as ``w``), ``exp``
    float32 holding integers of shape (n_out, 1), equal in every row when ``per_row`` is False.
    No gradient flows through either.
    """
    if scale not in ("max", "mse"):
        raise ValueError(f"scale must be 'max' or 'mse', got {scale!r}")
    w = w.detach().float()
    a = w.abs()
    if bits >= 2:
        qmax = float((1 << (bits - 1)) - 1)
        r = a.amax(dim=1, keepdim=True) if per_row else a.amax().reshape(1, 1)
        mant, e = torch.frexp(r / qmax)           # r/qmax = mant * 2**e, mant in [0.5, 1)
        exp = torch.where(mant == 0.5, e - 1, e).float()    # ceil(log2(r / qmax)), exactly
        if scale == "mse":
            exp = _mse_exponent(w, exp.clamp(-MAX_EXP, MAX_EXP), qmax, per_row)
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


def _mse_exponent(w, exp_max, qmax, per_row):
    """The exponent in ``exp_max - MSE_SEARCH .. exp_max`` with the least squared error.

    All candidates are evaluated in one batched pass (few kernel launches per training step);
    ties go to the larger exponent (``argmin`` takes the first). Ternary weights take
    :func:`_mse_exponent_ternary` (same choice, about ten times faster on a CPU).
    """
    if qmax == 1.0 and bool((exp_max - MSE_SEARCH >= -MAX_EXP).all()):
        return _mse_exponent_ternary(w, exp_max, per_row)
    return _mse_exponent_search(w, exp_max, qmax, per_row)


def _mse_exponent_search(w, exp_max, qmax, per_row):
    """:func:`_mse_exponent` by quantizing ``w`` at every candidate exponent."""
    steps = torch.arange(MSE_SEARCH + 1, device=w.device, dtype=exp_max.dtype).reshape(-1, 1, 1)
    cand = (exp_max.unsqueeze(0) - steps).clamp(-MAX_EXP, MAX_EXP)     # (K, rows or 1, 1)
    s = torch.ldexp(torch.ones_like(cand), cand.to(torch.int32))
    err = (torch.clamp(torch.round(w.unsqueeze(0) / s), -qmax, qmax) * s - w.unsqueeze(0))
    err = err.square().sum(dim=2)                                     # (K, rows)
    if not per_row:
        err = err.sum(dim=1, keepdim=True)
    k = torch.argmin(err, dim=0)                                      # (rows or 1,)
    return cand[:, :, 0].gather(0, k.unsqueeze(0)).reshape(-1, 1)


def _mse_exponent_ternary(w, exp_max, per_row):
    """:func:`_mse_exponent` for ``qmax = 1`` from per-row histograms of the weights' exponents.

    With scale ``s = 2**e`` a weight of magnitude ``a`` quantizes to ``±1`` (error ``(s − a)²``)
    when ``a >= s/2`` and to 0 (error ``a²``) below (at ``a = s/2`` both errors are ``a²``), so
    ``err(e) = Σa² − 2**(e+1)·S(e) + 4**e·N(e)`` with ``S``, ``N`` the sum and count of the
    weights with ``a >= 2**(e−1)``, i.e. whose ``frexp`` exponent is ``>= e``. One pass over
    ``w`` buckets every weight by the highest candidate it reaches; suffix sums give ``S`` and
    ``N`` for all candidates. Sums in float64.
    """
    k_cand = MSE_SEARCH + 1
    a32 = w.abs().contiguous()
    # frexp exponent from the float32 bits (zero and subnormals: -126, below every candidate)
    k = torch.bitwise_right_shift(a32.view(torch.int32), 23) - 126
    base = (exp_max - MSE_SEARCH).to(torch.int32)                     # (rows or 1, 1)
    idx = (k - base + 1).clamp_(0, k_cand).to(torch.int64)           # 0: reaches no candidate
    a = a32.double()
    base = base.to(torch.int64)
    hist_a = a.new_zeros(a.shape[0], k_cand + 1).scatter_add_(1, idx, a)
    hist_n = a.new_zeros(a.shape[0], k_cand + 1).scatter_add_(1, idx, torch.ones_like(a))
    s1 = hist_a.flip(1).cumsum(1).flip(1)[:, 1:]                      # (rows, K): e = base + c
    n1 = hist_n.flip(1).cumsum(1).flip(1)[:, 1:]
    cand = (base + torch.arange(k_cand, device=w.device)).double()    # (rows or 1, K)
    err = (a * a).sum(dim=1, keepdim=True) - torch.exp2(cand + 1) * s1 + torch.exp2(2 * cand) * n1
    if not per_row:
        err = err.sum(dim=0, keepdim=True)
    k = torch.argmin(err.flip(1), dim=1, keepdim=True)                # first = larger exponent
    return cand.flip(1).gather(1, k).to(exp_max.dtype).expand_as(exp_max).contiguous()


def quantize_bias(b: torch.Tensor, exp: torch.Tensor) -> torch.Tensor:
    """Integer biases (float32 holding integers) for scale exponents ``exp`` (n_out, 1)."""
    return torch.clamp(torch.round(b.detach().float() / _pow2(exp[:, 0])),
                       -float(BIAS_LIMIT), float(BIAS_LIMIT))


#: ``weight_bits`` value meaning float (unquantized) weights, for reference runs only.
FLOAT_BITS = 32
#: Noise modes of :class:`NSMLinear` / :class:`NSMConv2d` (see the module docstring).
NOISE_MODES = ("input", "synapse", "gaussian")
#: Batch norms a hidden layer may carry (None: none).
NORMS = (None, "l1", "linf", "l2")
#: Weight quantizers (see the module docstring).
QUANTIZERS = ("native", "mse", "brevitas")


def _check_int(name, v, lo, hi=None):
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        rng = f"in {lo}..{hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be an integer {rng}, got {v!r}")
    return v


def brevitas_weight_quant(bits: int, per_channel: bool, fan_in: int):
    """A brevitas weight quantizer injector for ``bits`` (see the module docstring); the QONNX
    exporter rebuilds each layer with it."""
    from brevitas.quant import Int8WeightPerTensorFixedPoint, SignedBinaryWeightPerTensorConst
    if bits == 1:
        const = 2.0 ** round(math.log2(1.0 / math.sqrt(fan_in)))
        return SignedBinaryWeightPerTensorConst.let(scaling_const=const)
    return Int8WeightPerTensorFixedPoint.let(bit_width=bits, narrow_range=True,
                                            scaling_per_output_channel=per_channel)


class _NSMLayer(nn.Module):
    """What :class:`NSMLinear` and :class:`NSMConv2d` share; subclasses define ``_lin``."""

    def __init__(self, fan_in: int, n_out: int, weight_shape, p, weight_bits, output, noise,
                 sigma, gain, norm, quantizer):
        super().__init__()
        if weight_bits != FLOAT_BITS:
            _check_int("weight_bits", weight_bits, 1, 8)
        if noise not in NOISE_MODES:
            raise ValueError(f"noise must be one of {', '.join(NOISE_MODES)}, got {noise!r}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {', '.join(QUANTIZERS)}, got {quantizer!r}")
        if not (isinstance(sigma, (int, float)) and not isinstance(sigma, bool) and sigma > 0):
            raise ValueError(f"sigma must be a positive number, got {sigma!r}")
        if output and norm is not None:
            raise ValueError("the output layer takes no batch norm (its scores are summed)")
        self.fan_in = fan_in
        self.n_out = n_out
        self.p = check_p(p)
        self.weight_bits = weight_bits
        self.output = bool(output)
        self.noise = noise
        self.sigma = float(sigma)
        self.norm = norm
        self.quantizer = quantizer
        self.sampling = True
        # output layer, training only: the loss sees E[score] over this layer's own noise (the
        # sum over T samples tends to T·E[score]); a loss option, the network is unchanged
        self.expected_output = False
        bound = 1.0 / math.sqrt(fan_in)
        self.weight = nn.Parameter(torch.empty(*weight_shape).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(n_out))
        self.gain = nn.Parameter(torch.zeros(n_out)) if gain else None
        if norm is not None:
            self.norm_weight = nn.Parameter(torch.ones(n_out))
            self.norm_bias = nn.Parameter(torch.zeros(n_out))
            self.register_buffer("running_mean", torch.zeros(n_out))
            self.register_buffer("running_scale", torch.ones(n_out))
        if quantizer == "brevitas" and weight_bits != FLOAT_BITS:
            self._bq = self._brevitas_holder(brevitas_weight_quant(weight_bits, not output,
                                                                        fan_in))

    # --- subclass hooks --------------------------------------------------------------------------
    def _lin(self, z, w):
        raise NotImplementedError

    def _synapse_sample(self, z, wq):
        raise NotImplementedError

    def _brevitas_holder(self, quant):
        raise NotImplementedError

    def _view(self, v):
        """A per-neuron vector shaped to broadcast against ``u``."""
        raise NotImplementedError

    # --- quantization --------------------------------------------------------------------------
    @property
    def samples_noise(self) -> bool:
        """True when the forward pass draws noise (``sampling`` on and the noise is not off)."""
        return self.sampling and (self.p < 1.0 or self.noise == "gaussian")

    def _integer(self):
        w2 = self.weight.reshape(self.n_out, -1)
        if self.quantizer == "brevitas":
            with torch.no_grad():
                qt = self._bq.weight_quant(self.weight.detach().clone())
            w_int = qt.int().float().reshape(self.n_out, -1)
            scale = qt.scale.detach().float().reshape(-1)
            exp = torch.log2(scale).round()
            if not torch.equal(_pow2(exp), scale):
                raise ValueError(f"brevitas gave non power-of-two scales {scale.tolist()[:4]}")
            exp = exp.reshape(-1, 1).expand(self.n_out, 1).contiguous()
        else:
            w_int, exp = quantize_weight(w2, self.weight_bits, per_row=not self.output,
                                         scale="mse" if self.quantizer == "mse" else "max")
        b_int = quantize_bias(self.bias, exp)
        return w_int, b_int, exp

    def quantized(self):
        """``(Wq, bq)``: exact quantized weights and biases with straight-through gradients."""
        if self.weight_bits == FLOAT_BITS:
            return self.weight, self.bias
        if self.quantizer == "brevitas":
            w_int, b_int, exp = self._integer()
            qt = self._bq.weight_quant(self.weight)
            wq = qt.value
            scale = _pow2(exp)
            bq = (b_int * scale[:, 0]) + (self.bias - self.bias.detach())
            return wq, bq
        w_int, b_int, exp = self._integer()
        scale = _pow2(exp)                               # (n_out, 1)
        wq = (w_int * scale).reshape(self.weight.shape) + (self.weight - self.weight.detach())
        bq = (b_int * scale[:, 0]) + (self.bias - self.bias.detach())
        return wq, bq

    # --- forward -------------------------------------------------------------------------------
    def _sample(self, z, wq):
        if not self.samples_noise:
            return self._lin(z, wq)
        if self.noise == "input":
            return self._lin(z * torch.bernoulli(torch.full_like(z, self.p)), wq)
        if self.noise == "synapse":
            return self._synapse_sample(z, wq)
        lin = self._lin(z, wq)
        sd = torch.sqrt(self._lin(z * z, wq * wq).clamp_min(0.0))
        return lin + self.sigma * sd * torch.randn_like(lin)

    def _moments(self, z, wq, bq):
        """E[u] and Var[u] given ``z`` (before any batch norm)."""
        lin = self._lin(z, wq)
        sq = self._lin(z * z, wq * wq)
        a = 0.0 if self.gain is None else self._view(self.gain)
        b = self._view(bq)
        if self.samples_noise and self.noise == "gaussian":
            return (1.0 + a) * lin + b, (self.sigma ** 2) * sq
        if self.samples_noise:
            return (self.p + a) * lin + b, (self.p * (1.0 - self.p)) * sq
        return (1.0 + a) * lin + b, 0.25 * sq

    def _norm_affine(self, u):
        """Per-neuron ``(A, C)`` with ``u' = A u + C``; updates running stats when training."""
        dims = [d for d in range(u.dim()) if d != 1]
        if self.training:
            ud = u.detach()
            n = max(2, ud.numel() // self.n_out)
            mean = ud.mean(dim=dims)
            dev = (ud - self._view(mean)).abs()
            if self.norm == "l1":
                scale = math.sqrt(math.pi / 2) * dev.mean(dim=dims)
            elif self.norm == "linf":
                scale = dev.amax(dim=dims) / math.sqrt(2 * math.log(n))
            else:
                scale = torch.sqrt((dev * dev).mean(dim=dims))
            with torch.no_grad():
                self.running_mean.lerp_(mean, 0.1)
                self.running_scale.lerp_(scale, 0.1)
        else:
            mean, scale = self.running_mean, self.running_scale
        inv = 1.0 / (scale + 1e-5)
        A = self.norm_weight * inv
        C = self.norm_bias - A * mean
        return A, C

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self._check_input(z)
        wq, bq = self.quantized()
        if self.output and self.expected_output and self.training:
            return self._moments(z, wq, bq)[0]
        u = self._sample(z, wq)
        if self.gain is not None:
            u = u + self._view(self.gain) * self._lin(z, wq)
        u = u + self._view(bq)
        if self.output:
            return u
        if self.norm is not None:
            A, C = self._norm_affine(u)
            if self.training:
                s = torch.where((self._view(A) * u + self._view(C)).detach() >= 0, 1.0, -1.0)
            else:
                s = self._folded_step(u.detach(), A.detach(), C.detach())
        else:
            s = torch.where(u.detach() >= 0, 1.0, -1.0)
        if not torch.is_grad_enabled():
            return s
        mu, var = self._moments(z, wq, bq)
        if self.norm is not None:
            mu, var = self._view(A) * mu + self._view(C), self._view(A * A) * var
        m = torch.erf(mu / torch.sqrt(2.0 * (var + _EPS)))
        return s + (m - m.detach())

    def _folded_step(self, u, A, C):
        """Eval-mode step of ``A u + C`` exactly as the folded integer threshold decides it."""
        t = (-C.double() / A.double().where(A != 0, torch.ones_like(A, dtype=torch.float64)))
        ud = u.double()
        fire = torch.where(self._view(A > 0), ud >= self._view(t),
                           torch.where(self._view(A < 0), ud <= self._view(t),
                                       self._view(C >= 0).expand_as(ud)))
        return torch.where(fire, 1.0, -1.0).to(u.dtype)

    # --- integers ------------------------------------------------------------------------------
    def integer_params(self) -> dict:
        """The layer as integers.

        ``Wq = weights * 2**scale_exp[:, None]`` and ``bq = bias * 2**scale_exp`` exactly; keys
        ``weights`` (int64, (n_out, fan_in); conv filters flattened C·kh·kw), ``bias`` (int64,
        (n_out,), all equal exponent for the output layer), ``scale_exp`` (int64, (n_out,)),
        ``p``, ``weight_bits``, ``output``, ``noise`` and ``norm_affine``: None, or for a hidden
        layer's batch norm (eval statistics) the float64 arrays ``(A, C)``, holding exactly the
        values the layer computes, of ``u' = A u + C`` with ``u = (weights · (ξ z) + bias) *
        2**scale_exp``; the neuron fires iff ``u' >= 0``.
        The exporter folds that exactly into the integers
        (:func:`nsm_export.onnx_export.layer_integers`). A trainable gain has no integer form
        yet (ValueError).
        """
        if self.weight_bits == FLOAT_BITS:
            raise ValueError("a float layer (weight_bits = 32) has no integer form")
        if self.gain is not None:
            raise ValueError("a layer with a trainable gain a_i has no integer form in the IR yet")
        affine = None
        with torch.no_grad():
            w_int, b_int, exp = self._integer()
            if self.norm is not None and not self.output:
                was = self.training
                self.eval()
                A, C = self._norm_affine(torch.zeros(2, self.n_out))
                self.train(was)
                affine = (A.double().cpu().numpy(), C.double().cpu().numpy())
        return dict(weights=w_int.cpu().numpy().astype(np.int64),
                    bias=b_int.cpu().numpy().astype(np.int64),
                    scale_exp=exp[:, 0].cpu().numpy().astype(np.int64), p=self.p,
                    weight_bits=self.weight_bits, output=self.output, noise=self.noise,
                    norm_affine=affine)


class NSMLinear(_NSMLayer):
    """Fully connected NSM layer (see the module docstring).

    Parameters
    ----------
    n_in, n_out : int
        Input and output sizes.
    p : float
        Keep probability of the Bernoulli blank-out, a multiple of ``2**-16`` in (0, 1]; 1 means
        no Bernoulli noise.
    weight_bits : int
        1 (binary ±1) to 8 (signed, symmetric ``±(2**(k-1)-1)``; 2 is ternary).
    output : bool
        True for the last layer: returns the sampled scores ``u`` instead of spikes, with one
        common weight scale.
    noise : {"input", "synapse", "gaussian"}
        Where the noise is drawn (module docstring).
    sigma : float
        Standard deviation of the Gaussian noise.
    gain : bool
        Train the per-neuron factor ``a_i`` (β of the paper).
    norm : {None, "l1", "linf", "l2"}
        Batch norm of the pre-activation (hidden layers only).
    quantizer : {"native", "brevitas"}
        Weight quantizer.

    Members
    -------
    weight : Parameter (n_out, n_in)
        Latent float weights; the forward pass uses their quantized value ``Wq``.
    bias : Parameter (n_out,)
        Latent float biases.
    sampling : bool
        Draw the noise (default True, also in ``eval()``); False means ``ξ = 1``.
    """

    def __init__(self, n_in: int, n_out: int, p: float = 0.5, weight_bits: int = 4,
                 output: bool = False, noise: str = "input", sigma: float = 0.5,
                 gain: bool = False, norm: str | None = None, quantizer: str = "native"):
        _check_int("n_in", n_in, 1)
        _check_int("n_out", n_out, 1)
        self.n_in = n_in
        super().__init__(n_in, n_out, (n_out, n_in), p, weight_bits, output, noise, sigma, gain,
                         norm, quantizer)

    def extra_repr(self) -> str:
        return (f"n_in={self.n_in}, n_out={self.n_out}, p={self.p}, "
                f"weight_bits={self.weight_bits}, output={self.output}, noise={self.noise}, "
                f"norm={self.norm}, quantizer={self.quantizer}")

    def _check_input(self, z):
        if z.dim() != 2 or z.shape[1] != self.n_in:
            raise ValueError(f"NSMLinear expects input (batch, {self.n_in}), got {tuple(z.shape)}")

    def _lin(self, z, w):
        return z @ w.t()

    def _view(self, v):
        return v.reshape(1, -1)

    def _brevitas_holder(self, quant):
        import brevitas.nn as qnn
        return qnn.QuantLinear(1, self.n_out, bias=False, weight_quant=quant)

    def _synapse_sample(self, z, wq):
        # one Bernoulli bit per (sample, output, input), in chunks of <= 2**22 mask elements
        chunk = max(1, (1 << 22) // (self.n_out * self.n_in))
        outs = []
        for i in range(0, z.shape[0], chunk):
            zc = z[i:i + chunk]
            xi = torch.bernoulli(torch.full((zc.shape[0], self.n_out, self.n_in), self.p,
                                            device=z.device, dtype=z.dtype))
            outs.append(torch.einsum("bj,boj,oj->bo", zc, xi, wq))
        return torch.cat(outs) if outs else z.new_zeros(0, self.n_out)


class NSMConv2d(_NSMLayer):
    """2-d convolutional NSM layer (``valid`` convolution by default); same options as
    :class:`NSMLinear`. Input and output are ±1 spike maps (batch, C, H, W). Per-input noise
    blanks an input element for every filter and position that reads it.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, p: float = 0.5, weight_bits: int = 4,
                 stride: int = 1, padding: int = 0, noise: str = "input", sigma: float = 0.5,
                 gain: bool = False, norm: str | None = None, quantizer: str = "native"):
        _check_int("c_in", c_in, 1)
        _check_int("c_out", c_out, 1)
        _check_int("kernel", kernel, 1)
        self.c_in, self.kernel, self.stride, self.padding = c_in, kernel, stride, padding
        super().__init__(c_in * kernel * kernel, c_out, (c_out, c_in, kernel, kernel), p,
                         weight_bits, False, noise, sigma, gain, norm, quantizer)

    def extra_repr(self) -> str:
        return (f"c_in={self.c_in}, c_out={self.n_out}, kernel={self.kernel}, p={self.p}, "
                f"weight_bits={self.weight_bits}, noise={self.noise}, norm={self.norm}")

    def _check_input(self, z):
        if z.dim() != 4 or z.shape[1] != self.c_in:
            raise ValueError(f"NSMConv2d expects input (batch, {self.c_in}, H, W), "
                             f"got {tuple(z.shape)}")

    def _lin(self, z, w):
        return F.conv2d(z, w, stride=self.stride, padding=self.padding)

    def _view(self, v):
        return v.reshape(1, -1, 1, 1)

    def _brevitas_holder(self, quant):
        import brevitas.nn as qnn
        return qnn.QuantConv2d(1, self.n_out, 1, bias=False, weight_quant=quant)

    def _synapse_sample(self, z, wq):
        b = z.shape[0]
        xi = torch.bernoulli(torch.full((b,) + tuple(wq.shape), self.p, device=z.device,
                                        dtype=z.dtype))
        w = (xi * wq.unsqueeze(0)).reshape(b * self.n_out, *wq.shape[1:])
        u = F.conv2d(z.reshape(1, b * self.c_in, *z.shape[2:]), w, stride=self.stride,
                     padding=self.padding, groups=b)
        return u.reshape(b, self.n_out, *u.shape[2:])


class BinaryPool2d(nn.Module):
    """Pooling that hardware does on ±1 spikes: ``"or"`` (+1 if any input is +1: a max pool)
    or ``"majority"`` (+1 iff at least half the window is +1). Non-overlapping windows.

    Gradients: ``or`` passes the gradient to the window's maximum (of the surrogate values),
    ``majority`` to the window mean (straight through).
    """

    MODES = ("or", "majority")

    def __init__(self, size: int = 2, mode: str = "or"):
        super().__init__()
        _check_int("size", size, 1)
        if mode not in self.MODES:
            raise ValueError(f"pool mode must be one of {', '.join(self.MODES)}, got {mode!r}")
        self.size, self.mode = size, mode

    def extra_repr(self) -> str:
        return f"size={self.size}, mode={self.mode}"

    def forward(self, z):
        if self.mode == "or":
            return F.max_pool2d(z, self.size)
        avg = F.avg_pool2d(z, self.size)
        s = torch.where(avg.detach() >= 0, 1.0, -1.0)
        return s + (avg - avg.detach()) if torch.is_grad_enabled() else s


class SBSLinear(nn.Module):
    """Stochastic binary synapses (Baldassi et al., PRL 2018) with NSM blank-out.

    Each weight is a random ±1 with mean ``m = tanh(h)``. Training uses the mean-field
    (central-limit) pass :meth:`mean_field`: for inputs of mean ``a_j`` (±1 spikes: ``a = z``),
    each kept with probability ``p``,
    ``E[u_i] = p Σ_j m_ij a_j + b_i`` and ``Var[u_i] = Σ_j (p − p² m_ij² a_j²)``;
    a hidden unit's output mean is ``erf(E[u] / sqrt(2 Var[u]))``. The network read out for
    inference and hardware has binary weights ``sign(h)`` (0 → +1), integer biases
    ``round(b)`` and the same per-input blank-out: :meth:`forward` runs that network.
    """

    def __init__(self, n_in: int, n_out: int, p: float = 0.5, output: bool = False):
        super().__init__()
        _check_int("n_in", n_in, 1)
        _check_int("n_out", n_out, 1)
        self.n_in, self.n_out = n_in, n_out
        self.p = check_p(p)
        self.output = bool(output)
        self.weight_bits = 1
        self.noise = "input"
        self.sampling = True
        self.h = nn.Parameter(torch.randn(n_out, n_in) * 0.5)
        self.bias = nn.Parameter(torch.zeros(n_out))

    def extra_repr(self) -> str:
        return f"n_in={self.n_in}, n_out={self.n_out}, p={self.p}, output={self.output}"

    def mean_field(self, a):
        """``(E[u], Var[u])`` of the pre-activations for inputs of mean ``a`` (batch, n_in)."""
        m = torch.tanh(self.h)
        mu = self.p * (a @ m.t()) + self.bias
        var = self.p * self.n_in - (self.p ** 2) * ((a * a) @ (m * m).t())
        return mu, var.clamp_min(1e-6)

    def _integer(self):
        w = torch.where(self.h.detach() >= 0, 1.0, -1.0)
        b = torch.clamp(torch.round(self.bias.detach()), -float(BIAS_LIMIT), float(BIAS_LIMIT))
        return w, b

    @property
    def samples_noise(self) -> bool:
        """True when the forward pass draws blank-out noise (``sampling`` on and ``p < 1``)."""
        return self.sampling and self.p < 1.0

    def forward(self, z):
        w, b = self._integer()
        if self.samples_noise:
            z = z * torch.bernoulli(torch.full_like(z, self.p))
        u = z @ w.t() + b
        return u if self.output else torch.where(u >= 0, 1.0, -1.0)

    def integer_params(self) -> dict:
        """Binary weights ``sign(h)`` and integer biases, scale exponent 0 (see NSMLinear)."""
        w, b = self._integer()
        return dict(weights=w.cpu().numpy().astype(np.int64),
                    bias=b.cpu().numpy().astype(np.int64),
                    scale_exp=np.zeros(self.n_out, dtype=np.int64), p=self.p, weight_bits=1,
                    output=self.output, noise="input", norm_affine=None)
