"""An NSM multilayer perceptron: threshold input encoding, NSM hidden layers, NSM output layer.

``pixels`` (raw unsigned integers, as float) → ``z0 = +1 if pixel >= input_threshold else -1`` →
:class:`~nsm_train.layers.NSMLinear` hidden layers (±1 spikes) → output :class:`NSMLinear` (one
sample of class scores). Inference is Monte Carlo: scores summed over ``T`` samples, class =
argmax, ties to the lowest index.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .layers import NSMLinear, check_p

__all__ = ["NSMMLP", "as_pixels"]


def as_pixels(x) -> torch.Tensor:
    """Pixels (numpy or tensor, any integer/float dtype) as a float32 tensor (batch, n_in)."""
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x.astype(np.float32, copy=False))
    return torch.as_tensor(x).float()


class NSMMLP(nn.Module):
    """Stack of NSM layers on threshold-encoded pixels.

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
        first for the layer fed by the pixels).
    weight_bits : int
        Weight width of the hidden layers.
    input_threshold : int
        Pixel value at and above which an input spike is +1.
    output_weight_bits : int or None
        Weight width of the output layer (default: ``weight_bits``).
    """

    def __init__(self, n_in: int, hidden, n_classes: int, p=0.5, weight_bits: int = 4,
                 input_threshold: int = 8, output_weight_bits: int | None = None):
        super().__init__()
        hidden = [int(h) for h in hidden]
        if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
            raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}")
        if isinstance(input_threshold, bool) or not isinstance(input_threshold, int) \
                or input_threshold < 0:
            raise ValueError(f"input_threshold must be a non-negative integer, "
                             f"got {input_threshold!r}")
        n_layers = len(hidden) + 1
        if isinstance(p, (list, tuple)):
            if len(p) != n_layers:
                raise ValueError(f"p has {len(p)} values but the network has {n_layers} layers")
            ps = [check_p(v) for v in p]
            p_cfg = list(ps)
        else:
            ps = [check_p(p)] * n_layers
            p_cfg = ps[0]
        if output_weight_bits is None:
            output_weight_bits = weight_bits
        self.n_in = int(n_in)
        self.hidden = hidden
        self.n_classes = n_classes
        self.input_threshold = input_threshold
        self._config = dict(n_in=self.n_in, hidden=list(hidden), n_classes=n_classes, p=p_cfg,
                            weight_bits=int(weight_bits), input_threshold=input_threshold,
                            output_weight_bits=int(output_weight_bits))
        sizes = [self.n_in] + hidden
        layers = [NSMLinear(sizes[i], sizes[i + 1], p=ps[i], weight_bits=weight_bits)
                  for i in range(len(hidden))]
        layers.append(NSMLinear(sizes[-1], n_classes, p=ps[-1], weight_bits=output_weight_bits,
                                output=True))
        self.layers = nn.ModuleList(layers)

    @property
    def config(self) -> dict:
        """Plain-typed constructor arguments: ``NSMMLP(**model.config)`` rebuilds the model."""
        cfg = dict(self._config)
        cfg["hidden"] = list(cfg["hidden"])
        if isinstance(cfg["p"], list):
            cfg["p"] = list(cfg["p"])
        return cfg

    @property
    def sampling(self) -> bool:
        """True when the layers draw their blank-out masks; setting it sets every layer."""
        return all(layer.sampling for layer in self.layers)

    @sampling.setter
    def sampling(self, on: bool) -> None:
        for layer in self.layers:
            layer.sampling = bool(on)

    def encode(self, pixels) -> torch.Tensor:
        """Threshold encoding: ``+1.0 if pixel >= input_threshold else -1.0``."""
        x = as_pixels(pixels)
        if x.dim() != 2 or x.shape[1] != self.n_in:
            raise ValueError(f"expected pixels of shape (batch, {self.n_in}), got {tuple(x.shape)}")
        return torch.where(x >= float(self.input_threshold), 1.0, -1.0)

    def forward(self, pixels) -> torch.Tensor:
        """One Monte Carlo sample of the class scores, (batch, n_classes)."""
        z = self.encode(pixels)
        for layer in self.layers:
            z = layer(z)
        return z

    def mc_scores(self, pixels, samples: int) -> torch.Tensor:
        """Scores summed over ``samples`` independent samples, (batch, n_classes)."""
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"samples must be a positive integer, got {samples!r}")
        x = as_pixels(pixels)
        batch = x.shape[0]
        out = self.forward(x.repeat(samples, 1))        # each row draws its own masks
        return out.reshape(samples, batch, -1).sum(dim=0)

    @torch.no_grad()
    def predict(self, pixels, samples: int) -> torch.Tensor:
        """Monte Carlo class (int64, (batch,)): argmax of :meth:`mc_scores`, ties to the lowest."""
        return torch.argmax(self.mc_scores(pixels, samples), dim=1)
