"""NSM networks: an adder-friendly input encoding, NSM hidden layers, an NSM output layer.

``pixels`` (raw unsigned integers, as float) → ±1 input spikes → hidden layers (±1 spikes) →
output layer (one sample of class scores). Inference is Monte Carlo: scores summed over ``T``
samples, class = argmax, ties to the lowest index.

Input encodings (``encoding=``), all comparisons a hardware front end does with adders:

* ``"threshold"``: ``+1 iff pixel >= input_threshold`` (one spike per pixel; the IR's encoding);
* ``"thermometer"``: ``levels`` thresholds ``t_k = round((k+1)(pixel_max+1)/(levels+1))``, one
  spike per pixel and level (``+1 iff pixel >= t_k``), laid out level-major: input
  ``k·n_in + j`` is pixel ``j`` against ``t_k`` (for images: ``levels·C`` channels);
* ``"bernoulli"``: ``+1`` with probability ``pixel / pixel_max``, drawn anew for every sample
  (``+1 iff r < pixel`` for ``r`` uniform on ``0..pixel_max-1``: a comparator and random bits).

Networks: :class:`NSMMLP` (dense), :class:`NSMConvNet` (``32c5-p2-64c5-p2-512`` style) and
:class:`SBSMLP` (stochastic binary synapses). A deterministic baseline is the same network with
``p = 1`` (no noise) and, as is usual for sign-activation networks, a batch norm.
"""

from __future__ import annotations

import re

import numpy as np
import torch
from torch import nn

from .layers import BinaryPool2d, NSMConv2d, NSMLinear, SBSLinear, check_p

__all__ = ["NSMMLP", "NSMConvNet", "SBSMLP", "ARCHS", "ENCODINGS", "as_pixels", "parse_conv_spec",
           "vote_uncertainty", "MAX_NEURONS", "MAX_CHANNELS", "MAX_KERNEL", "MAX_LEVELS",
           "MAX_WEIGHTS"]

ENCODINGS = ("threshold", "thermometer", "bernoulli")

# Sizes a network is checked against before any tensor is allocated (a hostile checkpoint
# config or `--hidden 10000000` ends in one line, not in an allocation). The first four are the
# IR's own limits (nsm_export.layers: a dense layer's n_out, a conv layer's c_out and kernel, a
# pool's size; thermometer levels: one per value of 16-bit pixels); MAX_WEIGHTS is what training
# holds: 2**26 float32 weights with Adam's two moments and the gradient take 1 GiB.
MAX_NEURONS = 1 << 20
MAX_CHANNELS = 1 << 16
MAX_KERNEL = 15
MAX_LEVELS = 1 << 16
MAX_WEIGHTS = 1 << 26


def _check_weights(counts) -> None:
    """Refuse a network whose layers hold more than :data:`MAX_WEIGHTS` weights in all."""
    total = sum(counts)
    if total > MAX_WEIGHTS:
        raise ValueError(f"the network would hold {total:,} weights; at most {MAX_WEIGHTS:,} "
                         f"(2**26) are supported")


def _check_mlp(n_spikes: int, hidden: list, n_classes: int) -> None:
    """Refuse dense layer sizes beyond :data:`MAX_NEURONS` or :data:`MAX_WEIGHTS` in all."""
    if any(not 1 <= n <= MAX_NEURONS for n in hidden + [n_classes]):
        raise ValueError(f"layer sizes must be in 1..{MAX_NEURONS} (2**20), got hidden {hidden} "
                         f"and {n_classes} classes")
    widths = [n_spikes] + hidden + [n_classes]
    _check_weights(a * b for a, b in zip(widths, widths[1:]))


def as_pixels(x) -> torch.Tensor:
    """Pixels (numpy or tensor, any integer/float dtype) as a float32 tensor (batch, n_in)."""
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x.astype(np.float32, copy=False))
    return torch.as_tensor(x).float()


def _per_layer_p(p, n_layers):
    if isinstance(p, (list, tuple)):
        if len(p) != n_layers:
            raise ValueError(f"p has {len(p)} values but the network has {n_layers} layers")
        ps = [check_p(v) for v in p]
        return ps, list(ps)
    ps = [check_p(p)] * n_layers
    return ps, ps[0]


class _NSMNet(nn.Module):
    """Encoding, Monte Carlo inference and the sampling switch shared by every network."""

    ARCH = None

    def _init_encoding(self, n_in, input_threshold, encoding, levels, pixel_max):
        if isinstance(input_threshold, bool) or not isinstance(input_threshold, int) \
                or input_threshold < 0:
            raise ValueError(f"input_threshold must be a non-negative integer, "
                             f"got {input_threshold!r}")
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
        if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= MAX_LEVELS:
            raise ValueError(f"levels must be an integer in 1..{MAX_LEVELS}, got {levels!r}")
        if isinstance(pixel_max, bool) or not isinstance(pixel_max, int) or pixel_max < 1:
            raise ValueError(f"pixel_max must be a positive integer, got {pixel_max!r}")
        self.n_in = int(n_in)
        self.input_threshold = input_threshold
        self.encoding = encoding
        self.levels = levels if encoding == "thermometer" else 1
        self.pixel_max = pixel_max
        self.thresholds = ([round((k + 1) * (pixel_max + 1) / (levels + 1)) for k in range(levels)]
                           if encoding == "thermometer" else [input_threshold])

    @property
    def config(self) -> dict:
        """Plain-typed constructor arguments: ``type(model)(**model.config)`` rebuilds it (every
        list or tuple in it a fresh list)."""
        return {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in self._config.items()}

    def forward(self, pixels) -> torch.Tensor:
        """One Monte Carlo sample of the class scores, (batch, n_classes), through the dense
        ``layers`` (networks with other front ends override this)."""
        z = self.encode(pixels)
        for layer in self.layers:
            z = layer(z)
        return z

    @property
    def sampling(self) -> bool:
        """True when the layers draw their noise; setting it sets every layer."""
        return all(m.sampling for m in self.modules() if hasattr(m, "sampling") and m is not self)

    @sampling.setter
    def sampling(self, on: bool) -> None:
        for m in self.modules():
            if m is not self and hasattr(m, "sampling"):
                m.sampling = bool(on)

    @property
    def draws_noise(self) -> bool:
        """True when two forward passes of one image may differ: a stochastic input encoding, or
        a layer that samples (``p < 1`` or Gaussian noise, with ``sampling`` on). A deterministic
        baseline (``p = 1``) or a network with ``sampling`` off draws nothing, so its Monte Carlo
        samples are one pass repeated."""
        return self.encoding == "bernoulli" or any(
            getattr(m, "samples_noise", False) for m in self.modules() if m is not self)

    def encode(self, pixels) -> torch.Tensor:
        """±1 input spikes (batch, n_in·levels) from pixels (batch, n_in); see the module doc."""
        x = as_pixels(pixels)
        dev = next(self.parameters()).device
        x = x.to(dev)
        if x.dim() != 2 or x.shape[1] != self.n_in:
            raise ValueError(f"expected pixels of shape (batch, {self.n_in}), got {tuple(x.shape)}")
        if self.encoding == "bernoulli":
            r = torch.randint(0, self.pixel_max, x.shape, device=dev).float()
            return torch.where(r < x, 1.0, -1.0)
        if self.encoding == "thermometer":
            t = torch.tensor(self.thresholds, dtype=x.dtype, device=dev).reshape(1, -1, 1)
            return torch.where(x.unsqueeze(1) >= t, 1.0, -1.0).reshape(x.shape[0], -1)
        return torch.where(x >= float(self.input_threshold), 1.0, -1.0)

    def ir_unsupported(self) -> str | None:
        """Why the integer IR cannot hold this network yet, or None if it can."""
        if self.ARCH not in ("mlp", "sbs-mlp", "conv"):
            return f"{self.ARCH} networks"
        if self.encoding not in ENCODINGS:
            return f"{self.encoding} input encoding"
        for i, layer in enumerate(list(getattr(self, "features", [])) + list(self.layers)):
            if not hasattr(layer, "weight_bits"):          # binary pooling: always fine
                continue
            if layer.weight_bits == 32:
                return f"layer {i}: float weights"
            if getattr(layer, "noise", "input") != "input" and (layer.p < 1 or
                                                                layer.noise == "gaussian"):
                return f"layer {i}: {layer.noise} noise (the IR has per-input Bernoulli only)"
            if getattr(layer, "gain", None) is not None:
                return f"layer {i}: trainable gain"
        return None

    @property
    def activation_width(self) -> int:
        """The most values one image holds at any layer (input spikes included): what an
        evaluation batch's memory scales with."""
        return max(self._widths)

    def mc_scores(self, pixels, samples: int) -> torch.Tensor:
        """Scores summed over ``samples`` independent samples, (batch, n_classes)."""
        return self.mc_sample_scores(pixels, samples).sum(dim=0)

    def mc_sample_scores(self, pixels, samples: int) -> torch.Tensor:
        """The scores of every sample, (samples, batch, n_classes)."""
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"samples must be a positive integer, got {samples!r}")
        x = as_pixels(pixels)
        batch = x.shape[0]
        if not self.draws_noise:                        # every sample would be this one
            out = self.forward(x)
            return out.unsqueeze(0).repeat(samples, 1, 1)   # a tensor of its own, as below
        out = self.forward(x.repeat(samples, 1))        # each row draws its own noise
        return out.reshape(samples, batch, -1)

    @torch.no_grad()
    def predict(self, pixels, samples: int) -> torch.Tensor:
        """Monte Carlo class (int64, (batch,)): argmax of :meth:`mc_scores`, ties to the lowest."""
        return torch.argmax(self.mc_scores(pixels, samples), dim=1)


class NSMMLP(_NSMNet):
    """Stack of NSM dense layers on encoded pixels.

    Parameters
    ----------
    n_in : int
        Pixels per image.
    hidden : list of int
        Sizes of the hidden layers (may be empty).
    n_classes : int
        Number of output scores.
    p : float or list of float
        Keep probability of every layer, or one per layer (``len(hidden) + 1`` values, the
        first for the layer fed by the pixels). 1 means no Bernoulli noise.
    weight_bits : int
        Weight width of the hidden layers (1 binary, 2 ternary, up to 8).
    input_threshold : int
        Pixel value at and above which an input spike is +1 (threshold encoding).
    output_weight_bits : int or None
        Weight width of the output layer (default: ``weight_bits``).
    encoding, levels, pixel_max
        Input encoding (module docstring), thermometer levels, largest pixel value.
    noise, sigma, gain, norm, quantizer
        Passed to every :class:`~nsm_train.layers.NSMLinear` (``norm`` to hidden layers only).
    """

    ARCH = "mlp"

    def __init__(self, n_in: int, hidden, n_classes: int, p=0.5, weight_bits: int = 4,
                 input_threshold: int = 8, output_weight_bits: int | None = None,
                 encoding: str = "threshold", levels: int = 1, pixel_max: int = 255,
                 noise: str = "input", sigma: float = 0.5, gain: bool = False,
                 norm: str | None = None, quantizer: str = "native"):
        super().__init__()
        hidden = [int(h) for h in hidden]
        if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
            raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}")
        self._init_encoding(n_in, input_threshold, encoding, levels, pixel_max)
        _check_mlp(self.n_in * self.levels, hidden, n_classes)
        ps, p_cfg = _per_layer_p(p, len(hidden) + 1)
        if output_weight_bits is None:
            output_weight_bits = weight_bits
        self.hidden = hidden
        self.n_classes = n_classes
        self._config = dict(n_in=self.n_in, hidden=list(hidden), n_classes=n_classes, p=p_cfg,
                            weight_bits=int(weight_bits), input_threshold=input_threshold,
                            output_weight_bits=int(output_weight_bits), encoding=encoding,
                            levels=levels, pixel_max=pixel_max, noise=noise, sigma=float(sigma),
                            gain=bool(gain), norm=norm, quantizer=quantizer)
        sizes = [self.n_in * self.levels] + hidden
        kw = dict(noise=noise, sigma=sigma, gain=gain, quantizer=quantizer)
        layers = [NSMLinear(sizes[i], sizes[i + 1], p=ps[i], weight_bits=weight_bits, norm=norm,
                            **kw) for i in range(len(hidden))]
        layers.append(NSMLinear(sizes[-1], n_classes, p=ps[-1], weight_bits=output_weight_bits,
                                output=True, **kw))
        self.layers = nn.ModuleList(layers)
        self._widths = sizes + [n_classes]


_CONV_TOKEN = re.compile(r"^(?:(\d+)c(\d+)(s?)|p(\d+)|m(\d+)|(\d+))$")


def parse_conv_spec(spec: str):
    """``"32c5-p2-64c5s-p2-512"`` → ``[("conv", 32, 5, 0), ("pool", 2, "or"), ("conv", 64, 5, 2),
    ..., ("dense", 512)]``.

    ``NcK``: N filters of K×K, no padding ("valid"); ``NcKs``: the same with zero padding
    ``K // 2`` ("same" size for odd K; padded taps add 0, as in the IR); ``pK``: OR pooling (max
    on ±1); ``mK``: majority pooling; ``N``: dense layer of N neurons (after every conv and pool
    token). Sizes beyond the IR's (:data:`MAX_CHANNELS` filters, :data:`MAX_KERNEL` kernels and
    pools, :data:`MAX_NEURONS` neurons) raise ValueError.
    """
    out = []
    for tok in str(spec).split("-"):
        m = _CONV_TOKEN.match(tok.strip())
        if not m:
            raise ValueError(f"bad conv spec token {tok!r} in {spec!r} (use e.g. 32c5-p2-512)")
        if m.group(1):
            if out and out[-1][0] == "dense":
                raise ValueError(f"conv after a dense layer in {spec!r}")
            n, k = int(m.group(1)), int(m.group(2))
            if not (1 <= n <= MAX_CHANNELS and 1 <= k <= MAX_KERNEL):
                raise ValueError(f"conv token {tok!r} in {spec!r}: 1..{MAX_CHANNELS} filters of "
                                 f"1..{MAX_KERNEL} pixels")
            out.append(("conv", n, k, k // 2 if m.group(3) else 0))
        elif m.group(4) or m.group(5):
            size = int(m.group(4) or m.group(5))
            if not 1 <= size <= MAX_KERNEL:
                raise ValueError(f"pool token {tok!r} in {spec!r}: a window of 1..{MAX_KERNEL}")
            out.append(("pool", size, "or" if m.group(4) else "majority"))
        else:
            if not 1 <= int(m.group(6)) <= MAX_NEURONS:
                raise ValueError(f"dense token {tok!r} in {spec!r}: 1..{MAX_NEURONS} neurons")
            out.append(("dense", int(m.group(6))))
    return out


class NSMConvNet(_NSMNet):
    """Convolutional NSM: conv/pool stack on encoded images, then dense layers.

    ``shape`` is the image ``[C, H, W]`` (pixels arrive flattened, row-major); ``spec`` as in
    :func:`parse_conv_spec`; ``p`` one value or ``[p_conv, p_dense]`` (the reference code used
    0.25 in convolutions and 0.5 in dense layers); ``conv_weight_bits`` the conv layers' weight
    width (default ``weight_bits``, which the hidden dense layers have: mixed precision). Other
    parameters as :class:`NSMMLP`.
    """

    ARCH = "conv"

    def __init__(self, shape, spec: str, n_classes: int, p=0.5, weight_bits: int = 4,
                 input_threshold: int = 128, output_weight_bits: int | None = None,
                 encoding: str = "threshold", levels: int = 1, pixel_max: int = 255,
                 noise: str = "input", sigma: float = 0.5, gain: bool = False,
                 norm: str | None = None, quantizer: str = "native",
                 conv_weight_bits: int | None = None):
        super().__init__()
        shape = [int(v) for v in shape]
        if len(shape) != 3:
            raise ValueError(f"shape must be [C, H, W], got {shape!r}")
        self._init_encoding(shape[0] * shape[1] * shape[2], input_threshold, encoding, levels,
                            pixel_max)
        if isinstance(p, (list, tuple)):
            if len(p) != 2:
                raise ValueError("p for a conv net is one value or [p_conv, p_dense]")
            p_conv, p_dense = check_p(p[0]), check_p(p[1])
            p_cfg = [p_conv, p_dense]
        else:
            p_conv = p_dense = check_p(p)
            p_cfg = p_conv
        if output_weight_bits is None:
            output_weight_bits = weight_bits
        if conv_weight_bits is None:
            conv_weight_bits = weight_bits
        self.shape, self.spec, self.n_classes = shape, str(spec), n_classes
        self._config = dict(shape=shape, spec=self.spec, n_classes=n_classes, p=p_cfg,
                            weight_bits=int(weight_bits), input_threshold=input_threshold,
                            output_weight_bits=int(output_weight_bits), encoding=encoding,
                            levels=levels, pixel_max=pixel_max, noise=noise, sigma=float(sigma),
                            gain=bool(gain), norm=norm, quantizer=quantizer,
                            conv_weight_bits=int(conv_weight_bits))
        kw = dict(noise=noise, sigma=sigma, gain=gain, quantizer=quantizer)
        c, h, w = shape[0] * self.levels, shape[1], shape[2]
        self._widths = [c * h * w, n_classes]
        plan, n = [], None                  # the layers' arguments, checked before allocating
        for item in parse_conv_spec(spec):
            if item[0] == "conv":
                _, n_out, k, pad = item
                plan.append(("conv", c, n_out, k, pad))
                c, h, w = n_out, h + 2 * pad - k + 1, w + 2 * pad - k + 1
                self._widths.append(c * h * w)
            elif item[0] == "pool":
                if n is not None:
                    raise ValueError(f"pooling after a dense layer in {spec!r}")
                plan.append(item)
                h, w = h // item[1], w // item[1]
            else:
                n = c * h * w if n is None else n
                plan.append(("dense", n, item[1]))
                n = item[1]
                self._widths.append(n)
            if h < 1 or w < 1:
                raise ValueError(f"conv spec {spec!r} shrinks a {shape} image to nothing")
        plan.append(("dense", c * h * w if n is None else n, n_classes))
        _check_weights(x[1] * x[2] * (x[3] ** 2 if x[0] == "conv" else 1)
                       for x in plan if x[0] != "pool")
        feats, dense = [], []
        for i, x in enumerate(plan):
            if x[0] == "conv":
                feats.append(NSMConv2d(*x[1:4], p=p_conv, weight_bits=conv_weight_bits,
                                       padding=x[4], norm=norm, **kw))
            elif x[0] == "pool":
                feats.append(BinaryPool2d(x[1], x[2]))
            elif i < len(plan) - 1:
                dense.append(NSMLinear(x[1], x[2], p=p_dense, weight_bits=weight_bits, norm=norm,
                                       **kw))
            else:
                dense.append(NSMLinear(x[1], x[2], p=p_dense, weight_bits=output_weight_bits,
                                       output=True, **kw))
        self.features = nn.Sequential(*feats)
        self.layers = nn.ModuleList(dense)

    def forward(self, pixels) -> torch.Tensor:
        z = self.encode(pixels)
        c = self.shape[0] * self.levels
        z = self.features(z.reshape(z.shape[0], c, self.shape[1], self.shape[2]))
        z = z.reshape(z.shape[0], -1)
        for layer in self.layers:
            z = layer(z)
        return z


class SBSMLP(_NSMNet):
    """MLP of stochastic binary synapses (:class:`~nsm_train.layers.SBSLinear`).

    Trained on :meth:`mean_field_logits`; :meth:`forward` runs the read-out network (binary
    weights ``sign(h)``, integer biases, per-input blank-out ``p``), which exports like an
    :class:`NSMMLP` with 1-bit weights.
    """

    ARCH = "sbs-mlp"

    def __init__(self, n_in: int, hidden, n_classes: int, p=0.5, input_threshold: int = 8,
                 encoding: str = "threshold", levels: int = 1, pixel_max: int = 255):
        super().__init__()
        hidden = [int(h) for h in hidden]
        self._init_encoding(n_in, input_threshold, encoding, levels, pixel_max)
        _check_mlp(self.n_in * self.levels, hidden, int(n_classes))
        ps, p_cfg = _per_layer_p(p, len(hidden) + 1)
        self.hidden, self.n_classes = hidden, n_classes
        self._config = dict(n_in=self.n_in, hidden=list(hidden), n_classes=n_classes, p=p_cfg,
                            input_threshold=input_threshold, encoding=encoding, levels=levels,
                            pixel_max=pixel_max)
        sizes = [self.n_in * self.levels] + hidden + [n_classes]
        self._widths = sizes
        self.layers = nn.ModuleList(
            SBSLinear(sizes[i], sizes[i + 1], p=ps[i], output=i == len(hidden))
            for i in range(len(hidden) + 1))

    def mean_field_logits(self, pixels) -> torch.Tensor:
        """Training logits ``E[score] / sqrt(Var[score])`` of the mean-field network."""
        a = self.encode(pixels)
        for layer in self.layers:
            mu, var = layer.mean_field(a)
            if layer.output:
                return mu / torch.sqrt(var)
            a = torch.erf(mu / torch.sqrt(2.0 * var))
        raise AssertionError("unreachable")


#: Network classes by the ``arch`` name a checkpoint records.
ARCHS = {"mlp": NSMMLP, "conv": NSMConvNet, "sbs-mlp": SBSMLP}


def vote_uncertainty(sample_scores: torch.Tensor) -> dict:
    """Per-image uncertainty from per-sample scores (T, batch, C).

    Each sample votes for its argmax (ties to the lowest). Returns float tensors (batch,):
    ``margin`` = (votes of the top class − votes of the runner-up) / T, in [0, 1];
    ``entropy`` = entropy of the vote distribution in bits.
    """
    t, _, c = sample_scores.shape
    votes = torch.nn.functional.one_hot(sample_scores.argmax(dim=2), c).sum(dim=0).float()
    top2 = votes.topk(min(2, c), dim=1).values
    margin = (top2[:, 0] - (top2[:, 1] if c > 1 else 0.0)) / t
    q = votes / t
    entropy = -(q * torch.log2(q.clamp_min(1e-12))).sum(dim=1)
    return {"margin": margin, "entropy": entropy}
