"""Training, Monte Carlo evaluation and checkpoints of NSMs and their deterministic baselines.

Loss: cross-entropy on the class scores of one sampled forward pass (the noise is part of the
model, as in training an NSM; stochastic binary synapses use their mean-field logits instead);
optimizer Adam with a cosine schedule. Loss-only options (the trained network, its export and
its argmax are unchanged): ``score_scale`` learns one temperature ``s = exp(log_s)`` and takes
the cross-entropy of ``s · scores`` (summed ±w scores are not scaled for a softmax);
``loss_samples`` takes it on the mean scores of that many samples (the Monte Carlo decision
rule); ``label_smoothing``; ``shift`` moves each training image by up to that many pixels
(zero fill) as data augmentation. ``init`` starts from the weights of a checkpoint of the same
layers, typically a float model fine-tuned with quantized weights (quantization-aware
fine-tuning: the per-neuron scales are chosen afresh from the float weights). Evaluation:
scores summed over ``samples`` (T) passes, argmax. Models (``TrainConfig.model``):

* ``nsm-mlp``, ``nsm-conv``: NSMs (:class:`~nsm_train.model.NSMMLP`, ``NSMConvNet``);
* ``det-mlp``, ``det-conv``: the same architecture, encoding and quantization with no noise
  (``p = 1``) and a batch norm (``norm``, default ``l1``): the deterministic baseline;
* ``sbs-mlp``: stochastic binary synapses (:class:`~nsm_train.model.SBSMLP`).

Checkpoints are plain ``torch.save`` dicts that load with ``torch.load(path, weights_only=True)``::

    {"format": "nsm-checkpoint", "version": 1, "arch": "mlp", "config": model.config,
     "state_dict": model.state_dict(), **extra}

A training checkpoint (``TrainConfig.checkpoint``) also holds ``train_config`` and ``resume``
(epoch, optimizer, scheduler and RNG states, history): ``resume=True`` continues it exactly.
It is written only after an epoch is known to be finite: a non-finite loss (checked every step)
or parameter or buffer (checked at every epoch end) stops training with one
:class:`DivergenceError` line naming the epoch, the step and the value, and leaves the last good
checkpoint as it was.
Run under ``torchrun`` (``WORLD_SIZE > 1``) training is data parallel: each rank takes its
share of every batch, gradients are averaged with ``all_reduce`` (gloo on CPU, NCCL on CUDA),
rank 0 writes the checkpoints.

Example (about 10 s on 2 CPU cores)::

    nsm train --dataset digits -o digits.pt
"""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nsm_common.atomic import atomic_write

from .data import dataset_info, load_dataset
from .layers import SBSLinear
from .model import ARCHS, NSMMLP, NSMConvNet, SBSMLP, as_pixels, vote_uncertainty

__all__ = ["DeviceError", "resolve_device", "TrainConfig", "train", "evaluate", "evaluate_many",
           "build_model", "init_weights", "save_checkpoint", "load_checkpoint", "CheckpointError",
           "DivergenceError",
           "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION",
           "MODELS", "shift_images"]

CHECKPOINT_FORMAT = "nsm-checkpoint"
CHECKPOINT_VERSION = 1
#: The model names :class:`TrainConfig` accepts.
MODELS = ("nsm-mlp", "nsm-conv", "det-mlp", "det-conv", "sbs-mlp")


class DeviceError(ValueError):
    """A ``--device`` that torch does not know or this machine does not have (one line)."""


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable or not an NSM checkpoint (one line)."""


class DivergenceError(CheckpointError):
    """Training turned non-finite (the loss or a weight); nothing more is written and the last
    good checkpoint is kept (one line naming the epoch, the step and the value)."""


@dataclass
class TrainConfig:
    """Everything that defines a training run; the defaults are the digits demo."""
    dataset: str = "digits"
    hidden: list = field(default_factory=lambda: [256])
    p: float | list = 0.75
    weight_bits: int = 4
    output_weight_bits: int | None = None
    conv_weight_bits: int | None = None  # conv models' conv layers (None: weight_bits)
    epochs: int = 40
    batch_size: int = 32
    lr: float = 0.01
    seed: int = 0
    samples: int = 16
    input_threshold: int | None = None   # None: the dataset's default_threshold
    model: str = "nsm-mlp"
    conv: str = "32c5-p2-64c5-p2-512"    # conv models: layers after the input
    encoding: str = "threshold"
    levels: int = 4                      # thermometer levels
    noise: str = "input"
    sigma: float = 0.5
    gain: bool = False
    norm: str | None = None              # None: none for NSMs, "l1" for det-* baselines
    quantizer: str = "native"
    data_dir: str | None = None
    train_limit: int | None = None       # use only the first N training images
    device: str = "cpu"
    checkpoint: str | None = None        # written after every epoch (rank 0)
    resume: bool = False                 # continue from ``checkpoint`` if it exists
    stop_after: int | None = None        # leave after this many epochs of this call
    time_limit: float | None = None      # seconds: stop at the first epoch end past it
    score_scale: bool = False            # learn a softmax temperature for the loss only
    loss_samples: int = 1                # loss on the mean scores of this many samples
    label_smoothing: float = 0.0
    shift: int = 0                       # random image shifts of up to this many pixels
    flip: bool = False                   # mirror each training image left-right, p = 1/2
    expected_output: bool = False        # loss on the output layer's expected scores
    init: str | None = None              # start from this checkpoint's weights (same layers)


def _set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def build_model(cfg: TrainConfig, info: dict):
    """The untrained network ``cfg`` describes, for a dataset with constants ``info``."""
    if cfg.model not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {cfg.model!r}")
    thr = info["default_threshold"] if cfg.input_threshold is None else cfg.input_threshold
    det = cfg.model.startswith("det-")
    p = 1.0 if det else cfg.p
    norm = (cfg.norm or "l1") if det else cfg.norm
    common = dict(p=p, input_threshold=int(thr), encoding=cfg.encoding, levels=int(cfg.levels),
                  pixel_max=int(info["pixel_max"]))
    if cfg.model == "sbs-mlp":
        return SBSMLP(info["n_in"], list(cfg.hidden), info["n_classes"], **common)
    layer = dict(weight_bits=cfg.weight_bits, output_weight_bits=cfg.output_weight_bits,
                 noise=cfg.noise, sigma=cfg.sigma, gain=cfg.gain, norm=norm,
                 quantizer=cfg.quantizer)
    if cfg.model.endswith("-conv"):
        return NSMConvNet(info["shape"], cfg.conv, info["n_classes"], **common, **layer,
                          conv_weight_bits=cfg.conv_weight_bits)
    if cfg.conv_weight_bits is not None:
        raise ValueError("conv_weight_bits is for conv models (--model nsm-conv or det-conv)")
    return NSMMLP(info["n_in"], list(cfg.hidden), info["n_classes"], **common, **layer)


def _dist():
    """(rank, world) under torchrun, initializing the process group once; (0, 1) otherwise."""
    import torch.distributed as dist
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() and
                                os.environ.get("NSM_DIST_BACKEND") != "gloo" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _loss(model, xb, yb, loss_fn, log_scale=None, samples=1):
    if isinstance(model, SBSMLP):
        logits = model.mean_field_logits(xb)
        return loss_fn(logits, yb), logits
    if samples > 1:
        scores = model(xb.repeat(samples, 1)).reshape(samples, xb.shape[0], -1).mean(dim=0)
    else:
        scores = model(xb)
    logits = scores if log_scale is None else scores * torch.exp(log_scale)
    return loss_fn(logits, yb), scores


def shift_images(x, shape, k: int, generator=None):
    """Each image of ``x`` (batch, C·H·W) moved by its own random ``(dy, dx)`` in
    ``-k..k`` pixels, zero fill (``k = 0``: ``x`` itself)."""
    if k == 0:
        return x
    c, h, w = shape
    b = x.shape[0]
    img = torch.nn.functional.pad(x.reshape(b, c, h, w), (k, k, k, k))
    d = torch.randint(0, 2 * k + 1, (2, b), generator=generator).to(x.device)
    out = torch.empty_like(x).reshape(b, c, h, w)
    for dy in range(2 * k + 1):
        for dx in range(2 * k + 1):
            sel = torch.nonzero((d[0] == dy) & (d[1] == dx)).flatten()
            if len(sel):
                out[sel] = img[sel, :, 2 * k - dy:2 * k - dy + h, 2 * k - dx:2 * k - dx + w]
    return out.reshape(b, -1)


def flip_images(x, shape, generator=None):
    """Each image of ``x`` (batch, C·H·W) mirrored left-right with probability 1/2."""
    c, h, w = shape
    b = x.shape[0]
    img = x.reshape(b, c, h, w)
    sel = (torch.rand(b, generator=generator) < 0.5).to(x.device).reshape(b, 1, 1, 1)
    return torch.where(sel, img.flip(3), img).reshape(b, -1)


def _check_loss_options(cfg: TrainConfig) -> None:
    if isinstance(cfg.loss_samples, bool) or not isinstance(cfg.loss_samples, int) \
            or cfg.loss_samples < 1:
        raise ValueError(f"loss_samples must be a positive integer, got {cfg.loss_samples!r}")
    if isinstance(cfg.shift, bool) or not isinstance(cfg.shift, int) or not 0 <= cfg.shift <= 8:
        raise ValueError(f"shift must be an integer in 0..8 pixels, got {cfg.shift!r}")
    if not 0.0 <= float(cfg.label_smoothing) < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {cfg.label_smoothing!r}")


#: Values one training step's widest activation may hold (1 GiB of float32): rows (batch times
#: loss samples) times the widest layer; checked before the first step allocates it.
_STEP_VALUES = 1 << 28


def _check_step_size(cfg: TrainConfig, model, n: int) -> None:
    rows = min(cfg.batch_size, n) * cfg.loss_samples
    if rows * model.activation_width > _STEP_VALUES:
        raise ValueError(f"a training step would hold {rows:,} rows (batch_size x loss_samples) "
                         f"of {model.activation_width:,} values; at most {_STEP_VALUES:,} (2**28) "
                         f"in all: lower batch_size or loss_samples")


def train(cfg: TrainConfig, progress: bool = True, on_epoch=None):
    """Train the network ``cfg`` describes; returns ``(model, history)``.

    ``progress``: a tqdm bar over the epochs (rank 0). ``on_epoch(epoch, history)``, if given, is
    called on rank 0 after every epoch (``epoch`` counts from 1), e.g. to log parallel runs
    that cannot share a terminal bar.

    ``history`` holds per-epoch lists ``loss`` and ``train_acc`` (single-sample accuracy on the
    training batches), ``test_acc`` (Monte Carlo accuracy at ``cfg.samples`` on the test split
    after the last epoch), ``samples``, ``seconds`` (wall time of the training loop) and
    ``world_size``. Deterministic for a given ``cfg.seed`` (and thread count), also across a
    checkpoint and ``resume`` in a single process (under torchrun only rank 0's random state is
    saved, so the other ranks' noise after a resume differs from an uninterrupted run).
    """
    with _no_denormals():
        return _train(cfg, progress, on_epoch)


@contextmanager
def _no_denormals():
    """Flush denormal floats to zero on the CPU for the block, then back to torch's default.
    Tiny gradients and Adam's second moments decay into denormals, which x86 CPUs handle in
    microcode: the float Fashion-MNIST conv preset trained at 13 min an epoch on one thread, 3.3
    min with them flushed (per step: benchmarks/train_speed.py). Values below 1.2e-38 are far
    below any step that moves a weight; the run's path may differ in the last bits."""
    flushed = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if flushed:
            torch.set_flush_denormal(False)


def _train(cfg: TrainConfig, progress: bool, on_epoch):
    from tqdm.auto import tqdm

    _check_loss_options(cfg)
    rank, world = _dist()
    info = dataset_info(cfg.dataset)
    x_tr, y_tr, x_te, y_te = load_dataset(cfg.dataset, seed=cfg.seed, data_dir=cfg.data_dir)
    if cfg.train_limit is not None:
        x_tr, y_tr = x_tr[:cfg.train_limit], y_tr[:cfg.train_limit]
    dev = resolve_device(cfg.device)
    _set_seed(cfg.seed)
    model = build_model(cfg, info)
    _check_step_size(cfg, model, len(x_tr))
    model = model.to(dev)
    resuming = bool(cfg.resume and cfg.checkpoint and Path(cfg.checkpoint).is_file())
    if cfg.init and not resuming:           # a resumed run's weights come from its checkpoint
        init_weights(model, cfg.init)
    for m in model.modules():
        if getattr(m, "output", False) and hasattr(m, "expected_output"):
            m.expected_output = bool(cfg.expected_output)
    log_scale = nn.Parameter(torch.zeros((), device=dev)) if cfg.score_scale else None
    opt = torch.optim.Adam(list(model.parameters()) + ([log_scale] if cfg.score_scale else []),
                           lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=float(cfg.label_smoothing))
    x = as_pixels(x_tr).to(dev)
    y = torch.from_numpy(y_tr).to(dev)
    gen = torch.Generator().manual_seed(cfg.seed)
    if world > 1:
        torch.manual_seed(cfg.seed + 1000003 * rank)     # each rank draws its own noise
    n = x.shape[0]
    history = {"loss": [], "train_acc": []}
    start = 0
    if resuming:
        start, history = _restore(cfg.checkpoint, model, opt, sched, gen, rank, log_scale)
    t0 = time.perf_counter()
    stop = cfg.epochs if cfg.stop_after is None else min(cfg.epochs, start + cfg.stop_after)
    bar = tqdm(range(start, stop), desc=f"train {cfg.model} {cfg.dataset}", unit="epoch",
               disable=not progress or rank != 0, initial=start, total=cfg.epochs)
    per_rank = math.ceil(cfg.batch_size / world)
    steps = math.ceil(n / cfg.batch_size)
    saved = start if resuming else None           # the epoch the checkpoint file holds

    def diverged(where: str, what: str) -> DivergenceError:
        kept = f"{cfg.checkpoint} keeps epoch {saved}" if saved else "nothing was written"
        return DivergenceError(f"training diverged {where}: {what} (try a lower --lr); {kept}")

    for epoch in bar:
        model.train()
        perm = torch.randperm(n, generator=gen).to(dev)
        tot_loss = torch.zeros((), device=dev)
        correct = torch.zeros((), device=dev, dtype=torch.int64)
        for i in range(0, n, cfg.batch_size):
            idx = perm[i:i + cfg.batch_size][rank * per_rank:(rank + 1) * per_rank]
            if len(idx) == 0:
                idx = perm[i:i + 1]            # keep the collective calls in step
            xb = shift_images(x[idx], info["shape"], cfg.shift)
            if cfg.flip:
                xb = flip_images(xb, info["shape"])
            try:
                loss, scores = _loss(model, xb, y[idx], loss_fn, log_scale, cfg.loss_samples)
            except RuntimeError:                   # brevitas refuses to quantize inf weights
                if (name := _first_non_finite(model, log_scale)) is None:
                    raise
                raise diverged(f"in epoch {epoch + 1}, step {i // cfg.batch_size + 1} of {steps}",
                               f"{name} holds NaN or infinity") from None
            opt.zero_grad(set_to_none=True)
            loss.backward()
            bad = ~torch.isfinite(loss.detach())
            if world > 1:
                bad = _average_gradients(model, world, bad)
            if bool(bad):                          # one cheap check a step; no weight scans
                v = float(loss.detach())
                raise diverged(f"in epoch {epoch + 1}, step {i // cfg.batch_size + 1} of {steps}",
                               f"the loss is {v}" if not math.isfinite(v) else
                               "another rank's loss is not finite")
            opt.step()
            tot_loss += loss.detach() * len(idx)
            correct += (scores.argmax(dim=1) == y[idx]).sum()
        sched.step()
        seen = n / world
        history["loss"].append(float(tot_loss) / seen)
        history["train_acc"].append(float(correct) / seen)
        if world > 1:
            _sync_buffers(model)
        if (name := _first_non_finite(model, log_scale)) is not None:
            raise diverged(f"in epoch {epoch + 1}", f"{name} holds NaN or infinity")
        if not math.isfinite(history["loss"][-1]):
            raise diverged(f"in epoch {epoch + 1}", f"the mean loss is {history['loss'][-1]}")
        bar.set_postfix(loss=f"{history['loss'][-1]:.3f}", acc=f"{history['train_acc'][-1]:.3f}")
        if on_epoch is not None and rank == 0:
            on_epoch(epoch + 1, history)
        out_of_time = cfg.time_limit is not None and time.perf_counter() - t0 > cfg.time_limit
        if cfg.checkpoint and rank == 0:
            save_checkpoint(model, cfg.checkpoint, extra={
                "train_config": asdict(cfg),
                "resume": {"epoch": epoch + 1, "optimizer": opt.state_dict(),
                           "log_scale": (log_scale.detach().cpu().clone() if cfg.score_scale
                                         else None),
                           "scheduler": sched.state_dict(), "generator": gen.get_state(),
                           "torch_rng": torch.get_rng_state(),
                           "cuda_rng": (torch.cuda.get_rng_state(dev) if dev.type == "cuda"
                                        else torch.zeros(0, dtype=torch.uint8)),
                           "history": {k: list(v) for k, v in history.items()}}})
            saved = epoch + 1
        if out_of_time:
            stop = epoch + 1
            break
    history["seconds"] = time.perf_counter() - t0
    history["samples"] = cfg.samples
    history["world_size"] = world
    history["epochs_done"] = stop
    if cfg.score_scale:
        history["score_scale"] = float(torch.exp(log_scale.detach()))
    history["test_acc"] = evaluate(model, x_te, y_te, cfg.samples)
    return model, history


def init_weights(model, path) -> None:
    """Load the weights, biases and batch-norm state of the checkpoint at ``path`` into
    ``model``, which must have the same layers (names and shapes); the weight width, noise and
    quantizer may differ. Raises :class:`CheckpointError` with one line naming the file and the
    first difference."""
    _, ckpt = load_checkpoint(path)
    src, dst = ckpt["state_dict"], model.state_dict()
    missing = [k for k in dst if k not in src]
    extra = [k for k in src if k not in dst]
    shapes = [k for k in dst if k in src and tuple(src[k].shape) != tuple(dst[k].shape)]
    if missing or extra or shapes:
        what = (f"{shapes[0]} is {tuple(src[shapes[0]].shape)} there and "
                f"{tuple(dst[shapes[0]].shape)} here" if shapes else
                f"it lacks {missing[0]}" if missing else
                f"it has {extra[0]}, which this network lacks")
        raise CheckpointError(f"{path}: --init needs a network with the same layers ({what})")
    model.load_state_dict(src)


def _average_gradients(model, world, bad):
    """Average the gradients over the ranks; returns True on every rank when ``bad`` (this
    rank's non-finite loss) is True on any (it rides along in the same ``all_reduce``, so that
    all ranks stop together)."""
    import torch.distributed as dist
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads] + [bad.reshape(1).to(grads[0].dtype)])
    dist.all_reduce(flat)
    flat /= world
    off = 0
    for g in grads:
        g.copy_(flat[off:off + g.numel()].reshape(g.shape))
        off += g.numel()
    return flat[-1] > 0


def _first_non_finite(model, log_scale=None) -> str | None:
    """The name of the first floating-point parameter or buffer of ``model`` (or ``log_scale``)
    holding NaN or infinity, else None; one device sync for all of them."""
    named = [(k, v) for k, v in model.state_dict().items() if v.is_floating_point()]
    if log_scale is not None:
        named.append(("log_scale", log_scale.detach()))
    finite = torch.stack([v.isfinite().all() for _, v in named])
    if bool(finite.all()):
        return None
    return named[int(torch.nonzero(~finite)[0, 0])][0]


def _sync_buffers(model):
    import torch.distributed as dist
    for b in model.buffers():
        dist.broadcast(b, 0)


def resolve_device(name: str) -> torch.device:
    """``torch.device(name)``, or a one-line :class:`ValueError` naming what is wrong."""
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise DeviceError(f"--device {name!r} is not a torch device (try cpu or cuda)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"--device {name!r}: this torch build or machine has no CUDA device")
    if dev.type not in ("cpu", "cuda", "mps", "xpu"):
        raise DeviceError(f"--device {name!r}: a {dev.type} device computes no numbers "
                          f"(use cpu or cuda)")
    if dev.type in ("mps", "xpu") and not getattr(torch, dev.type).is_available():
        raise DeviceError(f"--device {name!r}: this torch build or machine has no "
                          f"{dev.type} device")
    return dev


def _restore(path, model, opt, sched, gen, rank, log_scale=None):
    _, ckpt = load_checkpoint(path)
    state = ckpt.get("resume")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds no training state to resume from")
    dev = next(model.parameters()).device
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError:
        raise CheckpointError(f"{path}: was written by a different network "
                              f"({ckpt.get('config')}); resume with the same options or start "
                              f"a new checkpoint") from None
    if log_scale is not None:
        if state.get("log_scale") is None:
            raise CheckpointError(f"{path}: was trained without score_scale; resume with the "
                                  f"same options")
        with torch.no_grad():
            log_scale.copy_(state["log_scale"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    gen.set_state(state["generator"])
    if rank == 0:
        torch.set_rng_state(state["torch_rng"])
        if dev.type == "cuda" and state["cuda_rng"].numel():
            torch.cuda.set_rng_state(state["cuda_rng"], dev)
    return int(state["epoch"]), {k: list(v) for k, v in state["history"].items()}


#: Values one evaluation tensor may hold (64 MiB of float32): rows (images x samples) times the
#: widest layer. Batches sized by the pixel count page-faulted on conv maps: 1,000 images of the
#: Fashion-MNIST conv net at T <= 64 on 2 CPU threads took 48 s at that rule's 341 images a
#: batch, 30 s so (benchmarks/eval_speed.py).
_EVAL_VALUES = 1 << 24


def _eval_batch(samples: int, model) -> int:
    return max(1, min(512, _EVAL_VALUES // max(1, samples * model.activation_width)))


@torch.no_grad()
def evaluate(model, x, y, samples: int, batch_size: int | None = None) -> float:
    """Monte Carlo accuracy: scores summed over ``samples`` passes, argmax, ties to the lowest."""
    model.eval()
    x = as_pixels(x)
    dev = next(model.parameters()).device
    y = torch.as_tensor(y).to(dev)
    bs = batch_size or _eval_batch(samples, model)
    correct = 0
    for i in range(0, x.shape[0], bs):
        pred = model.predict(x[i:i + bs], samples)
        correct += int((pred == y[i:i + bs]).sum())
    return correct / max(1, x.shape[0])


@torch.no_grad()
def evaluate_many(model, x, y, samples_list, batch_size: int | None = None,
                  on_scores=None) -> list[dict]:
    """Accuracy and per-image uncertainty at every ``T`` in ``samples_list``.

    Draws ``max(T)`` samples per image once; the estimate at ``T`` uses the first ``T`` of them.
    Returns one dict per T: ``samples``, ``accuracy``, ``mean_margin`` and ``mean_entropy``
    (of the per-sample votes, see :func:`~nsm_train.model.vote_uncertainty`), and
    ``uncertain_fraction`` (images whose vote margin is below 0.5). ``on_scores``, if given,
    is called with each batch's per-sample scores ``(max(T), batch, n_classes)``, in order.
    """
    ts = sorted({int(t) for t in samples_list})
    if not ts or ts[0] < 1:
        raise ValueError(f"samples must be positive integers, got {samples_list!r}")
    model.eval()
    x = as_pixels(x)
    dev = next(model.parameters()).device
    y = torch.as_tensor(y).to(dev)
    bs = batch_size or _eval_batch(ts[-1], model)
    acc = {t: 0 for t in ts}
    margin = {t: 0.0 for t in ts}
    entropy = {t: 0.0 for t in ts}
    unsure = {t: 0 for t in ts}
    for i in range(0, x.shape[0], bs):
        s = model.mc_sample_scores(x[i:i + bs], ts[-1])
        yb = y[i:i + bs]
        if on_scores is not None:
            on_scores(s)
        for t in ts:
            pred = s[:t].sum(dim=0).argmax(dim=1)
            acc[t] += int((pred == yb).sum())
            u = vote_uncertainty(s[:t])
            margin[t] += float(u["margin"].sum())
            entropy[t] += float(u["entropy"].sum())
            unsure[t] += int((u["margin"] < 0.5).sum())
    n = max(1, x.shape[0])
    return [dict(samples=t, accuracy=acc[t] / n, mean_margin=margin[t] / n,
                 mean_entropy=entropy[t] / n, uncertain_fraction=unsure[t] / n) for t in ts]


def output_swing(model) -> tuple[np.ndarray, np.ndarray]:
    """``(D, b)`` of a float model's output layer, for early exit on its Monte Carlo scores
    (:func:`nsm_export.early_exit.float_need`): ``D[a][c]`` the most one sample can move
    ``score_a - score_c`` (float64, ``(C, C)``; ``inf`` under Gaussian noise, which is
    unbounded) and ``b`` the bias every sample adds (the part of a score a remaining sample
    does not change, as the integer core counts it: ``T * b`` from the start).

    The layer computes ``((ξ + g) * w) · z + b`` with inputs ``z = ±1``, blank-out ``ξ`` in
    {0, 1} (one per input; per synapse, so independent for ``a`` and ``c``, under synapse
    noise; 1 without noise) and the trainable gain ``g`` (0 without): ``D[a][c] = Σ_j
    max_ξ |(ξ_a + g_a) w_aj - (ξ_c + g_c) w_cj|``, the IR's ``pair_swing`` where ``g = 0``."""
    layer = model.layers[-1]
    with torch.no_grad():
        if isinstance(layer, SBSLinear):
            w, b = layer._integer()
        else:
            w, b = layer.quantized()
        w = w.detach().double().cpu().numpy().reshape(len(b), -1)
        b = b.detach().double().cpu().numpy()
        g = (layer.gain.detach().double().cpu().numpy() if getattr(layer, "gain", None)
             is not None else np.zeros(len(b)))
    if layer.noise == "gaussian" and layer.samples_noise:
        return np.where(np.eye(len(b), dtype=bool), 0.0, np.inf), b
    noisy = layer.samples_noise
    combos = ([(0, 0), (1, 1), (0, 1), (1, 0)] if noisy and layer.noise == "synapse"
              else [(0, 0), (1, 1)] if noisy else [(1, 1)])
    worst = np.zeros((len(b), len(b), w.shape[1]))          # per input j, the worst ξ
    for xa, xc in combos:
        ra = (xa + g)[:, None] * w
        rc = (xc + g)[:, None] * w
        worst = np.maximum(worst, np.abs(ra[:, None, :] - rc[None, :, :]))
    return worst.sum(axis=2), b


def save_checkpoint(model, path, extra: dict | None = None) -> Path:
    """Write ``model`` (and plain-typed ``extra`` entries) to ``path`` atomically."""
    path = Path(path)
    extra = dict(extra or {})
    for key in ("format", "version", "config", "state_dict", "arch"):
        if key in extra:
            raise ValueError(f"extra may not override the checkpoint key {key!r}")
    ckpt = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "arch": model.ARCH,
            "config": model.config,
            "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            **extra}
    try:
        with atomic_write(path) as f:
            torch.save(ckpt, f)
    except RuntimeError as e:          # torch's writer reports a full disk this way
        raise CheckpointError(f"{path}: cannot be written ({_first_line(e)})") from None
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
    if type(ckpt.get("version")) is not int or ckpt.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ckpt.get('version')!r} is not "
                              f"supported (this toolchain reads version {CHECKPOINT_VERSION})")
    arch = ckpt.get("arch", "mlp")
    if arch not in ARCHS:
        raise CheckpointError(f"{path}: unknown network arch {arch!r}")
    try:
        model = ARCHS[arch](**ckpt["config"])
        model.load_state_dict(ckpt["state_dict"])
    except Exception as e:
        raise CheckpointError(f"{path}: config or weights do not form a model "
                              f"({_first_line(e)})") from None
    # The config must be exactly what the model makes of it: no value the constructor coerced
    # ('64' for 64, 1 for True), so that export and report read what training wrote.
    for key, value in ckpt["config"].items():
        if not _same_plain(value, model.config.get(key)):
            raise CheckpointError(f"{path}: config[{key!r}] = {str(value)[:60]!r} is not a "
                                  f"value of its type (the model reads it as "
                                  f"{str(model.config.get(key))[:60]!r})")
    _check_train_config(path, ckpt.get("train_config"))
    model.eval()
    return model, ckpt


#: ``train_config`` entries that other commands read (``nsm eval``: the dataset and its split),
#: and the types they must have.
_TRAIN_CONFIG_TYPES = {"dataset": (str,), "seed": (int,), "data_dir": (str, type(None))}


def _check_train_config(path, tc) -> None:
    if tc is None:
        return
    if not isinstance(tc, dict):
        raise CheckpointError(f"{path}: train_config is not a dictionary")
    for key, types in _TRAIN_CONFIG_TYPES.items():
        v = tc.get(key)
        if key in tc and (isinstance(v, bool) or not isinstance(v, types)):
            raise CheckpointError(f"{path}: train_config[{key!r}] = {str(v)[:60]!r} is not "
                                  f"{' or '.join(t.__name__ for t in types)}")
    if "seed" in tc and not 0 <= tc["seed"] < 1 << 32:
        raise CheckpointError(f"{path}: train_config['seed'] = {tc['seed']} is outside "
                              f"[0, 2**32)")


def _same_plain(a, b) -> bool:
    """Equal values of the same types, element by element (``1 == True == 1.0`` is not)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_plain(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_plain(x, y) for x, y in zip(a, b))
    return a == b
