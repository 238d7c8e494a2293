"""Training, Monte Carlo evaluation and checkpoints of NSM MLPs.

Loss: cross-entropy on the class scores of one sampled forward pass (the noise is part of the
model, as in training an NSM); optimizer Adam. Evaluation: scores summed over ``samples`` (T)
passes, argmax. Checkpoints are plain ``torch.save`` dicts that load with
``torch.load(path, weights_only=True)``::

    {"format": "nsm-checkpoint", "version": 1, "config": model.config,
     "state_dict": model.state_dict(), **extra}

Example (about 10 s on 2 CPU cores)::

    nsm train --dataset digits -o digits.pt
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nsm_export.atomic import atomic_write

from .data import dataset_info, load_dataset
from .model import NSMMLP, as_pixels

__all__ = ["TrainConfig", "train", "evaluate", "save_checkpoint", "load_checkpoint",
           "CheckpointError", "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION"]

CHECKPOINT_FORMAT = "nsm-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable or not an NSM checkpoint (one line)."""


@dataclass
class TrainConfig:
    """Everything that defines a training run; the defaults are the digits demo."""
    dataset: str = "digits"
    hidden: list = field(default_factory=lambda: [256])
    p: float | list = 0.75
    weight_bits: int = 4
    output_weight_bits: int | None = None
    epochs: int = 40
    batch_size: int = 32
    lr: float = 0.01
    seed: int = 0
    samples: int = 16
    input_threshold: int | None = None   # None: the dataset's default_threshold


def _set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def train(cfg: TrainConfig, progress: bool = True):
    """Train an :class:`NSMMLP` as ``cfg`` says; returns ``(model, history)``.

    ``history`` holds per-epoch lists ``loss`` and ``train_acc`` (single-sample accuracy on the
    training batches), ``test_acc`` (Monte Carlo accuracy at ``cfg.samples`` on the test split
    after the last epoch), ``samples`` and ``seconds`` (wall time of the training loop).
    Deterministic for a given ``cfg.seed`` (and thread count).
    """
    from tqdm.auto import tqdm

    info = dataset_info(cfg.dataset)
    x_tr, y_tr, x_te, y_te = load_dataset(cfg.dataset, seed=cfg.seed)
    thr = info["default_threshold"] if cfg.input_threshold is None else cfg.input_threshold
    _set_seed(cfg.seed)
    model = NSMMLP(info["n_in"], list(cfg.hidden), info["n_classes"], p=cfg.p,
                   weight_bits=cfg.weight_bits, input_threshold=int(thr),
                   output_weight_bits=cfg.output_weight_bits)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs))
    loss_fn = nn.CrossEntropyLoss()
    x = as_pixels(x_tr)
    y = torch.from_numpy(y_tr)
    gen = torch.Generator().manual_seed(cfg.seed)
    n = x.shape[0]
    history = {"loss": [], "train_acc": []}
    t0 = time.perf_counter()
    bar = tqdm(range(cfg.epochs), desc=f"train {cfg.dataset}", unit="epoch", disable=not progress)
    for _ in bar:
        model.train()
        perm = torch.randperm(n, generator=gen)
        tot_loss = 0.0
        correct = 0
        for i in range(0, n, cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            scores = model(x[idx])
            loss = loss_fn(scores, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot_loss += loss.item() * len(idx)
            correct += int((scores.argmax(dim=1) == y[idx]).sum())
        sched.step()
        history["loss"].append(tot_loss / n)
        history["train_acc"].append(correct / n)
        bar.set_postfix(loss=f"{tot_loss / n:.3f}", acc=f"{correct / n:.3f}")
    history["seconds"] = time.perf_counter() - t0
    history["samples"] = cfg.samples
    history["test_acc"] = evaluate(model, x_te, y_te, cfg.samples)
    return model, history


@torch.no_grad()
def evaluate(model: NSMMLP, x, y, samples: int, batch_size: int = 512) -> float:
    """Monte Carlo accuracy: scores summed over ``samples`` passes, argmax, ties to the lowest."""
    model.eval()
    x = as_pixels(x)
    y = torch.as_tensor(y)
    correct = 0
    for i in range(0, x.shape[0], batch_size):
        pred = model.predict(x[i:i + batch_size], samples)
        correct += int((pred == y[i:i + batch_size]).sum())
    return correct / max(1, x.shape[0])


def save_checkpoint(model: NSMMLP, path, extra: dict | None = None) -> Path:
    """Write ``model`` (and plain-typed ``extra`` entries) to ``path`` atomically."""
    path = Path(path)
    extra = dict(extra or {})
    for key in ("format", "version", "config", "state_dict"):
        if key in extra:
            raise ValueError(f"extra may not override the checkpoint key {key!r}")
    ckpt = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": model.config,
            "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            **extra}
    with atomic_write(path) as f:
        torch.save(ckpt, f)
    return path


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:160]}" if text else type(e).__name__


def load_checkpoint(path):
    """Load a checkpoint written by :func:`save_checkpoint`; returns ``(model, ckpt)``.

    Uses ``torch.load(..., weights_only=True)``. Raises :class:`CheckpointError` with one line
    naming the file if it is missing, unreadable, or not an NSM checkpoint of this version.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:      # torch raises many types for garbled files
        raise CheckpointError(f"{path}: not a readable checkpoint ({_first_line(e)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an NSM checkpoint (format is not "
                              f"{CHECKPOINT_FORMAT!r})")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ckpt.get('version')!r} is not "
                              f"supported (this toolchain reads version {CHECKPOINT_VERSION})")
    try:
        model = NSMMLP(**ckpt["config"])
        model.load_state_dict(ckpt["state_dict"])
    except Exception as e:
        raise CheckpointError(f"{path}: config or weights do not form a model "
                              f"({_first_line(e)})") from None
    model.eval()
    return model, ckpt
