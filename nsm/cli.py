"""``nsm``: Neural Sampling Machines from PyTorch to bit-exact Verilog.

Each subcommand is one stage; ``nsm demo`` runs them all on the embedded digits data. Errors in
the user's input end with one line on stderr and exit status 1; nothing half-written is left.
A stage whose extra is not installed (``nsm train`` without ``[train]``, say) says which one in
one line. Nothing here imports more than the command that runs needs.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import math
import os
import signal
import sys
import tempfile
from pathlib import Path

import click

from nsm_train.presets import PRESETS

EXIT_USER_ERROR = 1

#: The toolchain's input errors, by module and class. They are looked up only in modules already
#: imported (one that was never imported raised nothing), so that catching them imports nothing:
#: ``nsm_train.train`` would need torch.
USER_ERRORS = (("nsm_export.compiler", "CompileError"), ("nsm_export.ir", "IRError"),
               ("nsm_train.data", "DatasetError"), ("nsm_train.train", "CheckpointError"),
               ("nsm_train.train", "DeviceError"), ("sim.runner", "SimError"),
               ("hw.synth", "SynthError"), ("nsm_export.devices", "SynthError"),
               ("nsm_export.onnx_export", "ExportError"),
               ("hw.top", "HardwareError"), ("nsm.report", "ReportError"),
               ("hw.board", "BoardError"), ("nsm.cli", "OutputError"))

#: The extra of pyproject.toml that installs each optional top-level module.
EXTRAS = {"torch": "train", "brevitas": "train", "qonnx": "qonnx", "onnxoptimizer": "qonnx",
          "matplotlib": "report", "onnxruntime": "report"}


def _is_user_error(e: BaseException) -> bool:
    return any(isinstance(e, getattr(sys.modules[module], name))
               for module, name in USER_ERRORS if module in sys.modules)


def _missing_extra(e: ModuleNotFoundError, command: str) -> None:
    """Exit with one line naming the extra that installs ``e``'s module; re-raise if none."""
    extra = EXTRAS.get((e.name or "").partition(".")[0])
    if extra is None:
        raise e
    click.echo(f"nsm {command}: error: needs the [{extra}] extra ({e.name} is not installed): "
               f"pip install 'nsm-fpga[{extra}]'", err=True)
    sys.exit(EXIT_USER_ERROR)


def _user_errors(fn):
    """Turn the toolchain's input errors, and a missing extra, into one line and a non-zero
    exit."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        name = click.get_current_context().info_name
        old_term = _catch_sigterm()
        try:
            return fn(*args, **kwargs)
        except ModuleNotFoundError as e:
            _missing_extra(e, name)
        except (KeyboardInterrupt, Terminated) as e:
            # Every output is written atomically: an interrupt leaves the old one or none.
            ctrl_c = isinstance(e, KeyboardInterrupt)
            click.echo(f"nsm {name}: error: {'interrupted' if ctrl_c else 'terminated'} "
                       f"(outputs not written are left as they were)", err=True)
            sys.exit(130 if ctrl_c else 143)
        except Exception as e:
            if isinstance(e, OSError) and e.errno is not None:
                # The machine, not the input: a full disk, a read-only or vanished directory.
                where = f"{e.filename}: " if e.filename else ""
                e = OutputError(f"{where}{e.strerror or type(e).__name__}")
            elif not _is_user_error(e):
                raise
            # One line even where a path or a value in the message holds a line break.
            text = str(e).replace("\r", "\\r").replace("\n", "\\n")
            click.echo(f"nsm {name}: error: {text}", err=True)
            sys.exit(EXIT_USER_ERROR)
        finally:
            if old_term is not None:
                signal.signal(signal.SIGTERM, old_term)
    return wrapper


class Terminated(BaseException):
    """SIGTERM (``timeout``, a CI cancel) as an exception, so that the atomic writers remove
    their temporary files on the way out, as for Ctrl-C."""


def _raise_terminated(signum, frame):
    raise Terminated()


def _catch_sigterm():
    """Turn SIGTERM into :class:`Terminated` while a command runs (main thread only); returns
    the handler to restore, or None."""
    import threading
    if threading.current_thread() is not threading.main_thread():
        return None
    old = signal.getsignal(signal.SIGTERM)
    if old not in (signal.SIG_DFL, None):
        return None                       # someone (a test runner, torchrun) handles it
    signal.signal(signal.SIGTERM, _raise_terminated)
    return old


class _FileOutput(type(Path())):
    """A file output's path (click's ``path_type``), refused where it ends in a slash: pathlib
    would drop the slash and write a file where the user named a directory."""

    def __new__(cls, *args):
        text = os.fsdecode(args[0]) if len(args) == 1 and isinstance(args[0], (str, bytes)) \
            else ""
        if text.endswith(("/", os.sep)):
            raise click.BadParameter(f"{text!r} ends in a slash (a directory); the output is "
                                     f"a file")
        return Path(*args)


class OutputError(ValueError):
    """An output the command could not write, or whose writing would replace one of its
    inputs; found before any long work (:func:`_check_outputs`)."""


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:                                # one of them is missing
        return Path(a).resolve() == Path(b).resolve()


def _check_outputs(outputs, inputs=()) -> None:
    """Refuse, in one line, outputs that cannot be written or would replace an input.

    ``outputs``: ``(what, path, names)`` (``what`` names the option, ``path`` is None when it
    is not given): a file when ``names`` is None, else a directory in which the command writes
    (and may delete) the files matching those glob patterns. ``inputs``: ``(what, path)`` of
    the files the command reads. Each output must be of its kind where it exists (a file
    output a regular file: never a device), and its directory must exist or be creatable and
    writable; no file output may be an input or another output, and no input may lie in a
    directory output under a name it writes.
    """
    outputs = [(what, Path(path), names) for what, path, names in outputs if path is not None]
    inputs = [(what, Path(path)) for what, path in inputs if path is not None]
    for what, path, names in outputs:
        try:
            _check_output(what, path, names)
        except OutputError:
            raise
        except (OSError, ValueError) as e:         # a NUL byte, a name too long, a loop
            raise OutputError(f"{what} {str(path).replace(chr(0), '?')}: cannot be written "
                              f"({getattr(e, 'strerror', None) or e})") from None
    try:
        inputs = [(what, path) for what, path in inputs if path.is_file()]
        files = [(w, p) for w, p, names in outputs if names is None]
        for i, (what, path) in enumerate(files):
            for other, q in [*inputs, *files[:i]]:
                if _same_file(path, q):
                    raise OutputError(f"{what} {path}: is also {other}; writing it would "
                                      f"destroy that (choose another path)")
        for what, path, names in outputs:
            if names is None or not path.is_dir():
                continue
            for other, q in inputs:
                for where in {Path(os.path.realpath(q.parent)) / q.name, q.resolve()}:
                    if where.parent == path.resolve() and any(
                            fnmatch.fnmatchcase(where.name, n) for n in names):
                        raise OutputError(f"{what} {path}: would replace {other} {q}, which it "
                                          f"writes or deletes there (choose another directory)")
    except OutputError:
        raise
    except (OSError, ValueError) as e:
        raise OutputError(f"cannot compare the outputs with the inputs "
                          f"({getattr(e, 'strerror', None) or e})") from None


def _check_output(what: str, path: Path, names) -> None:
    if "\0" in str(path):
        raise ValueError("a NUL byte in the path")
    if names is None and path.is_dir():
        raise OutputError(f"{what} {path}: is a directory; a file is written there")
    if names is None and path.exists() and not path.is_file():
        raise OutputError(f"{what} {path}: exists and is not a regular file")
    if names is not None and path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path}: exists and is not a directory")
    folder = path if names is not None else path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(f"{what} {path}: cannot be made ({folder} is not a directory)")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {path}: cannot be written ({folder} is not writable)")
    # os.access trusts the mode bits (and root passes them): make and remove a file to be sure
    # (/proc, /sys, a read-only mount).
    try:
        fd, probe = tempfile.mkstemp(prefix=".nsm-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"{what} {path}: cannot be written in {folder} "
                          f"({e.strerror or type(e).__name__})") from None
    limit = os.pathconf(folder, "PC_NAME_MAX")
    if any(len(os.fsencode(part)) > limit for part in path.parts):
        raise OutputError(f"{what} {path}: cannot be written (a name longer than {limit} bytes)")


def _build_inputs(build_dir: Path) -> list[tuple[str, Path]]:
    """The files of a build directory that a stage reading it reads."""
    from nsm_export.ir import IR_FILE, WEIGHTS_FILE
    if not build_dir.is_dir():
        return []
    found = [build_dir / IR_FILE, build_dir / WEIGHTS_FILE,
             *sorted(build_dir.glob("*.v")), *sorted(build_dir.glob("*.core"))]
    return [(f"the build's {p.name}", p) for p in found]


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of integers")


# Bounds of the numeric options (every one has a finite range; floats refuse nan and inf). The
# IR's own limits are repeated here so that parsing options imports nothing
# (tests/test_numeric_hardening.py checks they agree): MAX_SAMPLES (nsm_export.ir), LANES and
# POP_SIMD (nsm_export.schema), a dense layer's n_out (nsm_train.model.MAX_NEURONS).
_MAX_SAMPLES = 1 << 16
_LANES = (1, 2, 4, 8, 16)
_SIMD = (1, 2, 4, 8, 16, 32, 64)
_MAX_NEURONS = 1 << 20
#: numpy's and scikit-learn's seeds (torch takes more, but one range for every seed).
_SEED = click.IntRange(0, 2**32 - 1)
#: Test images a command runs (more than any dataset holds), and the first one.
_COUNT = click.IntRange(1, 1 << 24)
_OFFSET = click.IntRange(0, 1 << 24)
#: UART rates (an FTDI FT2232H, the iCEBreaker's, tops out at 12 Mbaud).
_BAUD = click.IntRange(1, 12_000_000)


class _Finite(click.FloatRange):
    """A :class:`click.FloatRange` that also refuses nan (which every comparison lets through)
    and inf."""

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return rv


def _int_list_in(lo: int, hi: int | None = None, choices: tuple | None = None):
    """A callback that checks a comma-separated list of integers (the value stays text): each
    in ``lo..hi`` or one of ``choices``."""
    def check(ctx, param, value):
        if value is None:
            return value
        for v in _int_list(str(value)):
            if (v not in choices) if choices else not lo <= v <= hi:
                allowed = ", ".join(map(str, choices)) if choices else f"{lo}..{hi}"
                raise click.BadParameter(f"{v} in {value!r} is not {allowed}")
        return value
    return check


def _example(command: str) -> str:
    """An epilog that ends ``--help`` with a runnable example (``\\b`` keeps click from
    rewrapping)."""
    return f"\b\nExample:\n  {command}"


@click.group(context_settings={"help_option_names": ["-h", "--help"]},
             epilog=_example("nsm demo --out out/demo"))
@click.version_option(package_name="nsm-fpga")
def main():
    """Neural Sampling Machines: train in PyTorch, export ONNX, compile to an integer IR and
    Verilog, and prove the RTL equals the golden model bit for bit.
    """


_TRAIN_DEFAULTS = None


def _train_defaults():
    """``nsm train``'s defaults, from :class:`nsm_train.train.TrainConfig` (read while click
    parses the options, before the command runs: a missing torch is reported here)."""
    global _TRAIN_DEFAULTS
    if _TRAIN_DEFAULTS is None:
        try:
            from nsm_train.train import TrainConfig
        except ModuleNotFoundError as e:
            _missing_extra(e, "train")
        _TRAIN_DEFAULTS = TrainConfig()
    return _TRAIN_DEFAULTS


def _default(name):
    return lambda: (",".join(map(str, v)) if isinstance(v := getattr(_train_defaults(), name),
                                                          list) else v)


@main.command(epilog=_example("nsm train --dataset digits --hidden 256 --epochs 40 -o model.pt"))
@click.option("--dataset", default="digits", show_default=True,
              help="digits, fashion-mnist, mnist, emnist-<split>, nmnist.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Directory holding the dataset files (fashion-mnist defaults to the Debian "
                   "package's /usr/share/datasets/fashion-mnist).")
@click.option("--model", "model_name", default="nsm-mlp", show_default=True,
              type=click.Choice(["nsm-mlp", "nsm-conv", "det-mlp", "det-conv", "sbs-mlp"]),
              help="NSM, deterministic baseline of the same shape, or stochastic binary synapses.")
@click.option("--hidden", default=_default("hidden"), show_default="256",
              callback=_int_list_in(1, _MAX_NEURONS), help="Hidden layer sizes, comma-separated.")
@click.option("--conv", default=_default("conv"), show_default="32c5-p2-64c5-p2-512",
              help="Conv models: NcK conv (valid), NcKs conv zero-padded by K//2 (same), "
                   "pK OR-pool, mK majority pool, N dense.")
@click.option("--p", "p", default=_default("p"), show_default="0.75",
              help="Keep probability of the Bernoulli blank-out noise; one value, or one per "
                   "layer comma-separated (the hardware quantizes p to 8 bits by default).")
@click.option("--noise", default="input", show_default=True,
              type=click.Choice(["input", "synapse", "gaussian"]),
              help="Bernoulli per input (the hardware's), per synapse, or Gaussian N(1, sigma^2).")
@click.option("--sigma", default=0.5, show_default=True, type=_Finite(0.0, 100.0),
              help="Gaussian noise sd.")
@click.option("--gain/--no-gain", default=False, show_default=True,
              help="Train the per-neuron gain factor a_i (beta).")
@click.option("--norm", default="none", show_default=True,
              type=click.Choice(["none", "l1", "linf", "l2"]),
              help="Batch norm of hidden pre-activations (folds into thresholds at export); "
                   "det-* models default to l1.")
@click.option("--encoding", default="threshold", show_default=True,
              type=click.Choice(["threshold", "thermometer", "bernoulli"]),
              help="Input encoding to +-1 spikes.")
@click.option("--levels", default=4, show_default=True, type=click.IntRange(1, 1 << 16),
              help="Thermometer levels.")
@click.option("--weight-bits", default=_default("weight_bits"), show_default="4",
              type=click.IntRange(1, 32), help="1 binary, 2 ternary, up to 8; 32 = float.")
@click.option("--output-weight-bits", default=None, type=click.IntRange(1, 32),
              help="Weight width of the output layer (1..8 or 32) [default: --weight-bits].")
@click.option("--conv-weight-bits", default=None, type=click.IntRange(1, 32),
              help="Conv models: weight width of the conv layers (1..8 or 32) [default: "
                   "--weight-bits, which the hidden dense layers keep].")
@click.option("--quantizer", default="native", show_default=True,
              type=click.Choice(["native", "mse", "brevitas"]),
              help="Weight quantizer (mse: power-of-two scale of least squared error).")
@click.option("--score-scale/--no-score-scale", default=False, show_default=True,
              help="Learn a softmax temperature for the loss only (the network is unchanged).")
@click.option("--loss-samples", default=1, show_default=True,
              type=click.IntRange(1, _MAX_SAMPLES),
              help="Loss on the mean scores of this many noise samples per image.")
@click.option("--label-smoothing", default=0.0, show_default=True,
              type=_Finite(0.0, 1.0, max_open=True), help="Cross-entropy smoothing.")
@click.option("--shift", default=0, show_default=True, type=click.IntRange(0, 8),
              help="Augmentation: move each training image by up to this many pixels.")
@click.option("--expected-output/--no-expected-output", default=False, show_default=True,
              help="Loss on the output layer's expected scores over its own blank-out (the "
                   "sum of T samples tends to T times it); the network is unchanged.")
@click.option("--flip/--no-flip", default=False, show_default=True,
              help="Augmentation: mirror each training image left-right with probability 1/2.")
@click.option("--epochs", default=_default("epochs"), show_default="40",
              type=click.IntRange(1, 100_000))
@click.option("--lr", default=_default("lr"), show_default="0.01",
              type=_Finite(0.0, 100.0, min_open=True))
@click.option("--batch-size", default=_default("batch_size"), show_default="32",
              type=click.IntRange(1, 1 << 20))
@click.option("--samples", "-T", default=16, show_default=True,
              type=click.IntRange(1, _MAX_SAMPLES), help="Monte Carlo samples for evaluation.")
@click.option("--seed", default=0, show_default=True, type=_SEED)
@click.option("--device", default="cpu", show_default=True, help="torch device (cpu, cuda).")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Training checkpoint written after every epoch (for --resume).")
@click.option("--resume", is_flag=True, help="Continue from --checkpoint if it exists.")
@click.option("--init", type=click.Path(dir_okay=False), default=None,
              help="Start from this checkpoint's weights (same layers; e.g. a float model "
                   "fine-tuned with --weight-bits 2).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--preset", type=click.Choice(list(PRESETS)), default=None,
              help="The network and recipe made for this FPGA part (nsm_train/presets.py): "
                   "float pre-training to OUTPUT-float.pt, then quantization-aware fine-tuning "
                   "to OUTPUT (with the preset's warm restarts between). Options given with "
                   "it override the preset in every stage, except --weight-bits, "
                   "--output-weight-bits, --conv-weight-bits (the fine-tuning stages'), "
                   "--epochs and --lr (the first fine-tuning stage's) and --init (a float "
                   "model to fine-tune: no pre-training).")
@click.option("--float-epochs", type=click.IntRange(1, 100_000), default=None,
              help="With --preset: epochs of float pre-training [default: the preset's].")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=_FileOutput),
              default=Path("model.pt"), show_default=True, help="Checkpoint to write.")
@_user_errors
def train(dataset, data_dir, model_name, hidden, conv, p, noise, sigma, gain, norm, encoding,
          levels, weight_bits, output_weight_bits, conv_weight_bits, quantizer, score_scale,
          loss_samples, label_smoothing, shift, flip, expected_output, epochs, lr, batch_size,
          samples, seed, device, checkpoint, resume, init, no_progress, preset, float_epochs,
          output):
    """Train an NSM (or its deterministic baseline) and write a checkpoint (loadable with
    weights_only=True). Runs data parallel under torchrun (gloo on CPU).
    """
    from nsm_train.train import TrainConfig, save_checkpoint

    if not (1 <= weight_bits <= 8 or weight_bits == 32):
        raise click.BadParameter(f"{weight_bits} is not 1..8 or 32", param_hint="--weight-bits")
    for hint, bits in (("--output-weight-bits", output_weight_bits),
                       ("--conv-weight-bits", conv_weight_bits)):
        if bits is not None and not (1 <= bits <= 8 or bits == 32):
            raise click.BadParameter(f"{bits} is not 1..8 or 32", param_hint=hint)
    try:
        ps = [float(v) for v in str(p).split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{p!r} is not a number or a comma-separated list",
                                 param_hint="--p")
    if resume and not checkpoint:
        raise click.BadParameter("--resume needs --checkpoint", param_hint="--resume")
    if float_epochs is not None and preset is None:
        raise click.BadParameter("needs --preset", param_hint="--float-epochs")
    if preset is not None:
        return _train_preset(PRESETS[preset], ps, float_epochs, no_progress)
    _check_outputs([("--output", output, None), ("--checkpoint", checkpoint, None)],
                   [("the input --init", init)])
    cfg = TrainConfig(dataset=dataset, hidden=_int_list(str(hidden)),
                      p=ps[0] if len(ps) == 1 else ps, weight_bits=weight_bits,
                      output_weight_bits=output_weight_bits,
                      conv_weight_bits=conv_weight_bits, score_scale=score_scale,
                      loss_samples=loss_samples, label_smoothing=label_smoothing, shift=shift,
                      flip=flip, expected_output=expected_output, epochs=epochs, lr=lr,
                      batch_size=batch_size, samples=samples, seed=seed,
                      model=model_name, conv=conv, encoding=encoding, levels=levels, noise=noise,
                      sigma=sigma, gain=gain, norm=None if norm == "none" else norm,
                      quantizer=quantizer, data_dir=data_dir, device=device,
                      checkpoint=checkpoint, resume=resume, init=init)
    model, history = _run_training(cfg, progress=not no_progress)
    if int(__import__("os").environ.get("RANK", "0")) != 0:
        return
    acc = history["test_acc"]
    save_checkpoint(model.cpu(), output, extra={"train_config": _plain(cfg),
                                                "test_accuracy": acc})
    click.echo(f"test accuracy at T={samples}: {acc:.4f}; wrote {output}")


def _run_training(cfg, progress: bool, on_epoch=None):
    """``nsm_train.train.train``, its configuration errors as one-line usage errors (a missing
    dataset or a bad checkpoint keeps its own error)."""
    from nsm_train.train import train as run_train
    try:
        return run_train(cfg, progress=progress, on_epoch=on_epoch)
    except ValueError as e:
        from nsm_train.data import DatasetError
        from nsm_train.train import CheckpointError
        if isinstance(e, (DatasetError, CheckpointError)):
            raise
        raise click.UsageError(str(e).splitlines()[0]) from None


# nsm train's options that are TrainConfig fields (by parameter name, ``model_name`` being
# ``model``); those set on the command line override a preset in every stage, except the
# fine-tuning stages' own (_PRESET_TUNE).
_PRESET_FIELDS = ("dataset", "data_dir", "model_name", "hidden", "conv", "p", "noise", "sigma",
                  "gain", "norm", "encoding", "levels", "quantizer", "score_scale",
                  "loss_samples", "label_smoothing", "shift", "flip", "expected_output",
                  "batch_size", "samples", "seed", "device")
_PRESET_TUNE = ("weight_bits", "output_weight_bits", "conv_weight_bits", "epochs", "lr")


def _train_preset(preset, ps, float_epochs, no_progress) -> None:
    """``nsm train --preset``: float pre-training (and the preset's float warm restarts, each
    from the last float model), then quantization-aware fine-tuning from the last float model
    (and the preset's fine-tuning restarts, each from the model before), each stage resumable
    (``--checkpoint C`` keeps the last float stage's in ``C-float``, the earlier ones' in
    ``C-float1``, ...; the fine-tuning stages before the last theirs in ``C-tune1``, ...);
    with ``--init`` the given float model is fine-tuned and nothing is pre-trained."""
    from click.core import ParameterSource

    from nsm_train.presets import float_path, stage_configs, tune_path
    from nsm_train.train import TrainConfig, save_checkpoint

    ctx = click.get_current_context()
    given = {k for k in ctx.params
             if ctx.get_parameter_source(k) not in (ParameterSource.DEFAULT, None)}
    prm = ctx.params

    def value(k):
        if k == "p":
            return ps[0] if len(ps) == 1 else ps
        if k == "norm":
            return None if prm[k] == "none" else prm[k]
        return prm[k]

    over = {"model" if k == "model_name" else k: value(k) for k in _PRESET_FIELDS if k in given}
    tune = {k: value(k) for k in _PRESET_TUNE if k in given}
    stages = stage_configs(preset, over, tune, float_epochs)
    out, ckpt, init = prm["output"], prm["checkpoint"], prm["init"]
    n_float, total = 1 + len(preset.float_restarts), len(stages)
    # Where each float stage writes (the last: OUTPUT-float.pt) and keeps its checkpoint, then
    # each fine-tuning stage (the last: OUTPUT, the ones before: OUTPUT-tuneK.pt).
    floats = [(float_path(out, None if i == n_float else i),
               ckpt and float_path(ckpt, None if i == n_float else i))
              for i in range(1, n_float + 1)]
    tunes = [(tune_path(out, j), ckpt and tune_path(ckpt, j))
             for j in range(1, total - n_float)] + [(Path(out), ckpt)]
    float_out = Path(init) if init else floats[-1][0]
    outputs = [("--output", out, None), ("--checkpoint", ckpt, None)]
    if not init:
        for i, (model_path, ck_path) in enumerate(floats, 1):
            which = "the float" if i == n_float else f"float stage {i}'s"
            outputs += [(f"{which} model", model_path, None),
                        (f"{which} checkpoint", ck_path, None)]
    for j, (model_path, ck_path) in enumerate(tunes[:-1], 1):
        outputs += [(f"fine-tuning stage {j}'s model", model_path, None),
                    (f"fine-tuning stage {j}'s checkpoint", ck_path, None)]
    _check_outputs(outputs, [("the input --init", init)])
    resume = prm["resume"]
    rank0 = int(os.environ.get("RANK", "0")) == 0

    def echo(text):
        if rank0:
            click.echo(text)

    def epoch_line(stage):
        if not no_progress:
            return None
        return lambda epoch, h: echo(f"{stage} epoch {epoch}: loss {h['loss'][-1]:.4f}, "
                                     f"train accuracy {h['train_acc'][-1]:.4f}")

    results, previous = [], None
    for n, (cfg, (dest, ck)) in enumerate(zip(stages, [*floats, *tunes], strict=True), 1):
        convs = cfg.get("conv_weight_bits")
        name = ("float pre-training" if n == 1 else "float warm restart") if n <= n_float else (
            ("fine-tuning" if n == n_float + 1 else "fine-tuning restart")
            + f" at {cfg['weight_bits']}-bit weights"
            + (f" ({convs}-bit in the convs)" if convs not in (None, cfg["weight_bits"]) else ""))
        if (n <= n_float and init) or (n < total and resume and dest.is_file()):
            echo(f"[{n}/{total}] {preset.name}: {name} skipped, "
                 + (f"fine-tuning --init {init}" if n <= n_float and init
                    else f"the finished {dest}"))
            previous = dest
            continue
        if n > 1:
            cfg = {**cfg, "init": str(float_out if n == n_float + 1 else previous)}
        cfg = TrainConfig(**{**cfg, "checkpoint": ck and str(ck), "resume": resume})
        epochs = f"{cfg.epochs} epoch" + ("s" if cfg.epochs != 1 else "")
        echo(f"[{n}/{total}] {preset.name}: {name}, {epochs} at lr {cfg.lr:g} -> {dest}")
        model, history = _run_training(cfg, not no_progress, epoch_line(f"[{n}/{total}]"))
        previous = dest
        if not rank0:
            continue
        save_checkpoint(model.cpu(), dest, extra={"train_config": _plain(cfg),
                                                  "test_accuracy": history["test_acc"],
                                                  "preset": preset.name})
        results.append((name, history["test_acc"], dest))
    for name, acc, dest in results:
        echo(f"{preset.name} {name}: test accuracy at T={stages[-1]['samples']}: {acc:.4f}; "
             f"wrote {dest}")


def _early_exit_rules(ctx, param, values):
    """``--early-exit``'s texts as :class:`nsm_export.early_exit.EarlyExit` rules in order,
    ``sweep`` standing for the standard list, repeats dropped (a usage error in one line)."""
    from nsm_export.early_exit import DEFAULT_SWEEP, parse_rule
    rules = []
    for text in values:
        try:
            new = list(DEFAULT_SWEEP) if text.strip() == "sweep" else [parse_rule(text)]
        except ValueError as e:
            raise click.BadParameter(str(e)) from None
        rules += [r for r in new if r not in rules]
    return rules


@main.command(name="eval", epilog=_example("nsm eval model.pt --samples 1,4,16,64 --plot acc.png"))
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--samples", "-T", default="16", show_default=True,
              callback=_int_list_in(1, _MAX_SAMPLES),
              help="Monte Carlo samples; comma-separated for several (one pass of max T).")
@click.option("--dataset", default=None, help="[default: the one the model was trained on]")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None)
@click.option("--split-seed", default=None, type=_SEED,
              help="Seed of the digits train/test split [default: the training seed].")
@click.option("--seed", default=0, show_default=True, type=_SEED, help="Seed of the sampling.")
@click.option("--no-sampling", is_flag=True, help="Deterministic pass (noise off).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--plot", type=click.Path(dir_okay=False, path_type=_FileOutput), default=None,
              help="Write an accuracy-vs-T plot (PNG).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list, nothing else.")
@click.option("--early-exit", "early_exit", multiple=True, metavar="RULE",
              callback=_early_exit_rules,
              help="Also apply this stopping rule to the samples of the largest T (repeatable; "
                   "exact, margin:F, either with ,min=S, or sweep: a standard list): its mean "
                   "samples used, accuracy and samples-used distribution; with --plot, also "
                   "FILE-early-exit.png (accuracy against mean samples); with --json, the "
                   "largest T's entry gets an early_exit key.")
@click.option("--pass-samples", default=1, show_default=True, metavar="T'",
              type=click.IntRange(1, _MAX_SAMPLES),
              help="Samples per pass for --early-exit: a rule is checked after every T' "
                   "samples, as the popcount core checks it at its pass ends.")
@_user_errors
def eval_cmd(checkpoint, samples, dataset, data_dir, split_seed, seed, no_sampling, device, plot,
             as_json, early_exit, pass_samples):
    """Monte Carlo test accuracy of a checkpoint at each T, with a per-image uncertainty
    summary (vote margin, vote entropy, fraction of images with margin < 0.5).
    """
    import torch

    from nsm_train.data import DatasetError, load_dataset
    from nsm_train.train import evaluate_many, load_checkpoint, resolve_device

    ts = _int_list(samples)
    if not ts or min(ts) < 1:
        raise click.BadParameter(f"{samples!r} is not a list of positive integers",
                                 param_hint="--samples")
    ee_plot = _early_exit_plot_path(plot) if plot and early_exit else None
    _check_outputs([("--plot", plot, None), ("--plot (early exit)", ee_plot, None)],
                   [("the input CHECKPOINT", checkpoint)])
    model, ckpt = load_checkpoint(checkpoint)
    tc = ckpt.get("train_config") or {}
    dataset = dataset or tc.get("dataset", "digits")
    split_seed = tc.get("seed", 0) if split_seed is None else split_seed
    _, _, x_te, y_te = load_dataset(dataset, seed=split_seed,
                                    data_dir=data_dir or tc.get("data_dir"))
    if x_te.shape[1] != model.n_in:
        raise DatasetError(f"dataset {dataset!r} has {x_te.shape[1]} inputs per image; "
                           f"{checkpoint} expects {model.n_in}")
    model.to(resolve_device(device))
    model.sampling = not no_sampling
    torch.manual_seed(seed)
    sweep = _FloatSweep(model, max(ts), pass_samples) if early_exit else None
    rows = evaluate_many(model, x_te, y_te, ts, on_scores=sweep.add if sweep else None)
    for r in rows:
        r["dataset"] = dataset
    if sweep:
        rows[-1]["early_exit"] = sweep.results(y_te, early_exit)
    if plot:
        _plot_accuracy(rows, plot, title=f"{checkpoint.name} on {dataset}")
    if ee_plot:
        _plot_early_exit(rows[-1]["early_exit"], ee_plot,
                         title=f"{checkpoint.name} on {dataset}: early exit")
    if as_json:
        click.echo(json.dumps(rows))
        return
    click.echo(f"{'T':>5} {'accuracy':>9} {'margin':>7} {'entropy':>8} {'uncertain':>9}")
    for r in rows:
        click.echo(f"{r['samples']:>5} {r['accuracy']:>9.4f} {r['mean_margin']:>7.3f} "
                   f"{r['mean_entropy']:>8.3f} {r['uncertain_fraction']:>9.3f}")
    if sweep:
        _print_early_exit(rows[-1]["early_exit"])
    if plot:
        click.echo(f"wrote {plot}")
    if ee_plot:
        click.echo(f"wrote {ee_plot}")


def _early_exit_plot_path(plot: Path) -> Path:
    return plot.with_name(f"{plot.stem}-early-exit.png")


class _FloatSweep:
    """The scores of a float model's samples at the boundaries of ``T`` in passes of ``T'``,
    gathered batch by batch from :func:`nsm_train.train.evaluate_many`, as the integer core
    holds them (``T * bias`` plus the samples done): the rules are then applied to them by
    :func:`nsm_export.early_exit.sweep` with :func:`~nsm_export.early_exit.float_need`."""

    def __init__(self, model, samples: int, pass_samples: int):
        from nsm_export.early_exit import pass_boundaries
        from nsm_train.train import output_swing
        self.T, self.tp = samples, min(pass_samples, samples)
        self.bounds = pass_boundaries(samples, self.tp)
        self.swing, self.bias = output_swing(model)
        self.parts = []

    def add(self, s) -> None:
        import torch
        cum = torch.cumsum(s.double(), dim=0)[torch.as_tensor(self.bounds) - 1]
        self.parts.append(cum.permute(1, 0, 2).cpu().numpy())

    def results(self, labels, rules) -> dict:
        import numpy as np

        from nsm_export import early_exit as ee
        rest = (self.T - np.asarray(self.bounds, dtype=float))[None, :, None]
        partial = np.concatenate(self.parts) + rest * self.bias[None, None, :]
        return {"samples": self.T, "pass_samples": self.tp,
                "rules": ee.sweep(partial, np.asarray(labels), rules, self.bounds,
                                  lambda r: ee.float_need(r, self.T, self.bounds, self.swing))}


def _print_early_exit(ee: dict) -> None:
    from nsm.report import histogram_text
    click.echo(f"early exit at T={ee['samples']} (checked every {ee['pass_samples']} samples)")
    width = max([len("rule")] + [len(r["rule"]) for r in ee["rules"]])
    click.echo(f"{'rule':<{width}} {'mean T':>7} {'accuracy':>9} {'loss':>7}  samples used")
    for r in ee["rules"]:
        click.echo(f"{r['rule']:<{width}} {r['mean_samples']:>7.2f} {r['accuracy']:>9.4f} "
                   f"{r['loss']:>+7.4f}  {histogram_text(r['samples_histogram'])}")


def _plot_early_exit(ee: dict, path, title=""):
    from nsm.report import early_exit_figure
    from nsm_common.atomic import atomic_write
    png = early_exit_figure(ee["rules"], ee["samples"], title)
    with atomic_write(path) as f:
        f.write(png)


def _plot_accuracy(rows, path, title=""):
    from nsm.report import accuracy_figure
    from nsm_common.atomic import atomic_write
    png = accuracy_figure({"float (PyTorch)": ([r["samples"] for r in rows],
                                               [r["accuracy"] for r in rows])}, title)
    with atomic_write(path) as f:
        f.write(png)


def _plain(cfg) -> dict:
    from dataclasses import asdict
    return {k: v for k, v in asdict(cfg).items()}


@main.command(epilog=_example("nsm export model.pt -o model.onnx --samples 16"))
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=_FileOutput),
              default=Path("model.onnx"), show_default=True)
@click.option("--samples", "-T", default=16, show_default=True,
              type=click.IntRange(1, _MAX_SAMPLES),
              help="Monte Carlo samples recorded in the model's metadata.")
@click.option("--no-sampling", is_flag=True,
              help="Leave the Bernoulli masks out (p = 1): the deterministic network.")
@click.option("--format", "fmt", type=click.Choice(["canonical", "qonnx"]), default="canonical",
              show_default=True,
              help="canonical: integer weights behind DequantizeLinear; qonnx: brevitas' "
                   "export_qonnx of a --quantizer brevitas model (Quant/BipolarQuant nodes, "
                   "batch 1).")
@_user_errors
def export(checkpoint, output, samples, no_sampling, fmt):
    """Export a checkpoint to ONNX (opset 17, standard ops; the blank-out masks are
    RandomUniformLike < p, which means Bernoulli(p) in every runtime). Both formats compile
    with `nsm compile`; see docs/onnx.md.
    """
    from nsm_train.train import load_checkpoint
    from nsm_export.onnx_export import export_onnx

    _check_outputs([("--output", output, None)], [("the input CHECKPOINT", checkpoint)])
    model, _ = load_checkpoint(checkpoint)
    if fmt == "qonnx":
        from nsm_export.qonnx_export import export_qonnx_file
        export_qonnx_file(model, output, samples=samples, sampling=not no_sampling)
    else:
        export_onnx(model, output, samples=samples, sampling=not no_sampling)
    click.echo(f"wrote {output}")


def _early_exit_rule(ctx, param, value):
    """``--early-exit``'s text as an :class:`nsm_export.early_exit.EarlyExit` (a usage error
    in one line otherwise)."""
    from nsm_export.early_exit import parse_rule
    try:
        return parse_rule(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@main.command(name="compile", epilog=_example(
    "nsm compile model.onnx -o build/ --target ice40-up5k --throughput 1000"))
@click.argument("onnx_file", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path),
              default=Path("build"), show_default=True, help="Directory for the IR and Verilog.")
@click.option("--samples", "-T", type=click.IntRange(1, _MAX_SAMPLES), default=None,
              help="Monte Carlo samples per image [default: the model's nsm.samples, else 16].")
@click.option("--pe", default=None, show_default="8", callback=_int_list_in(1, _MAX_NEURONS),
              help="Neuron lanes per layer: one value, or one per layer, comma-separated.")
@click.option("--lanes", default=None, show_default="1", callback=_int_list_in(1, choices=_LANES),
              help="Blank-out draws per clock per layer (1, 2, 4, 8 or 16): one value, or one "
                   "per layer. Changes the schedule, never the random stream.")
@click.option("--simd", default=None, show_default="1", callback=_int_list_in(1, choices=_SIMD),
              help="Inputs each neuron group adds per clock: one value, or one per layer. "
                   "Kept-list engine: 1, 2 or 4, as many weight-memory copies, a sampling "
                   "layer's --lanes raised to it; popcount engine (--pass-samples): 1 to 64, "
                   "powers of two, --lanes lowered to it. Changes the schedule, never a result.")
@click.option("--pass-samples", default=None, type=click.IntRange(0, _MAX_SAMPLES), metavar="T'",
              help="Build every dense layer on the sample-parallel popcount engine, T' "
                   "samples per weight read (at most T; 0: the kept-list engines) "
                   "[default: 0; with --target: chosen].")
@click.option("--weight-store", default=None, show_default="rom",
              help="Where each layer's weights live: rom (in the bitstream) or ram (loaded on "
                   "w_axis at start-up; SPRAM on iCE40). One value, or one per layer.")
@click.option("--target", default=None, metavar="TARGET",
              help="Choose --pe, --lanes, --simd and --weight-store for this device "
                   "(ice40-up5k, ecp5-25k, ecp5-85k) from the fit estimate and the cycle model; "
                   "the ones given explicitly are kept.")
@click.option("--throughput", default=None, type=_Finite(0.0, 1e12, min_open=True),
              metavar="INF_PER_S",
              help="With --target: the smallest design that meets this many inferences/s "
                   "[default: the fastest that fits].")
@click.option("--clock-mhz", default=None, type=_Finite(1.0, 2000.0),
              help="With --target: the clock the throughput is reckoned at [default: the "
                   "target's calibrated Fmax estimate].")
@click.option("--line-buffer", is_flag=True,
              help="A conv layer fed by a conv layer keeps a ring of the fewest input rows it "
                   "needs instead of its whole input map twice; the two engines then stream "
                   "rows of the same sample (less memory, more cycles; docs/architecture.md).")
@click.option("--input-stage", is_flag=True,
              help="Popcount engines register each beat's weight, spike and keep words before "
                   "the gates: one more cycle per neuron group, and the route from the weight "
                   "memory to the gates cut in two (a higher clock on large ECP5 cores).")
@click.option("--seed", default=1, show_default=True, type=click.IntRange(1, 2**64 - 1),
              help="Base seed the per-layer LFSR seeds derive from.")
@click.option("--lfsr-width", default=32, show_default=True, type=click.IntRange(8, 32))
@click.option("--p-bits", default=8, show_default=True, type=click.IntRange(1, 16),
              help="Bits of the quantized keep probability.")
@click.option("--p-tolerance", default=0.01, show_default=True,
              type=_Finite(0.0, 1.0),
              help="How far the keep probability the LFSR realizes may lie from the model's p "
                   "(a rounding beyond it, or to 0 or 1, is refused; 0 refuses every p < 1: no "
                   "LFSR period keeps a multiple of 2^-p_bits exactly).")
@click.option("--early-exit", default="none", show_default=True, metavar="RULE",
              callback=_early_exit_rule,
              help="Stop an image's samples once its vote is decided, at the end of each pass of "
                   "T' samples (popcount core): exact (the class cannot change: always the "
                   "full-T class), margin:F (the leader leads each class by a fraction F in "
                   "(0, 1] of what the remaining samples could still move; 1 is exact), none; "
                   "',min=S': no stop before S samples. Every LFSR starts the next image where "
                   "all T samples would have left it.")
@click.option("--name", default="nsm", show_default=True, help="Verilog top module name.")
@_user_errors
def compile_cmd(onnx_file, output, samples, pe, lanes, simd, pass_samples, weight_store, target,
                throughput, clock_mhz, line_buffer, input_stage, seed, lfsr_width, p_bits,
                p_tolerance, early_exit, name):
    """Compile ONNX into the integer IR (ir.json, weights.npz) and Verilog (NAME.v).
    Reads the canonical and the QONNX form (docs/onnx.md). What the hardware cannot build
    (majority pooling, say) compiles to the IR only (one line on stderr says why; exit 0).
    """
    from nsm.flow import build_files, compile_to_dir

    _check_outputs([("--output", output, build_files(name))], [("the input ONNX_FILE", onnx_file)])

    def one(values):
        return None if values is None else values[0] if len(values) == 1 else values

    stores = None if weight_store is None else \
        [v.strip() for v in weight_store.split(",") if v.strip()]
    ints = {k: None if v is None else _int_list(v)
            for k, v in (("pe", pe), ("lanes", lanes), ("simd", simd))}
    ir = compile_to_dir(onnx_file, output, target=target, throughput=throughput,
                        clock_mhz=clock_mhz, samples=samples, weight_store=one(stores),
                        line_buffer=line_buffer, seed=seed, lfsr_width=lfsr_width, p_bits=p_bits,
                        p_tolerance=p_tolerance, name=name, pass_samples=pass_samples,
                        early_exit=early_exit, input_stage=input_stage,
                        **{k: one(v) for k, v in ints.items()})
    if "folding" in ir.source:
        click.echo(ir.source["folding"]["summary"])
    from nsm_export.build import leap_correlation
    for bits in sorted({la.p_bits for la in ir.layers if la.rng is not None}):
        if (r := leap_correlation(lfsr_width, bits)) > 0.01:
            click.echo(f"nsm compile: warning: a {lfsr_width}-bit LFSR with {bits}-bit p draws "
                       f"keep bits correlated up to {r:.3f} (the bar is 0.01; "
                       f"benchmarks/results/rng-quality.json): use --lfsr-width 24 or more",
                       err=True)
    from hw.top import hardware_unsupported
    from nsm.report import network_shapes
    from nsm_export import schedule
    sizes = network_shapes(ir)                     # maps as CxHxW, vectors as counts
    if ir.layers[0].kind == "dense" and ir.input.encoding == "thermometer":
        sizes[0] = f"{ir.input.size}x{ir.input.levels}"
    if (why := hardware_unsupported(ir)):
        click.echo(f"nsm compile: no Verilog: {why}", err=True)
        click.echo(f"compiled {'-'.join(map(str, sizes))} (T={ir.samples}) into {output}/ "
                   f"(IR only)")
        return
    rule = ir.early_exit
    if rule.active:
        from nsm_export.early_exit import boundaries, rule_label
        if len(boundaries(ir)) == 1:
            click.echo(f"nsm compile: warning: early exit {rule_label(rule)} never stops: one "
                       f"pass holds all T={ir.samples} samples (use --pass-samples below T)",
                       err=True)
    note = ""
    if rule.active:
        import dataclasses

        from nsm_export.early_exit import EarlyExit
        plain = schedule.expected_cycles_per_inference(dataclasses.replace(ir,
                                                                           early_exit=EarlyExit()))
        note = (f" with all T samples, {plain:.0f} without a rule (the first engine waits for "
                f"each pass's verdict); early exit {rule_label(rule)} at every "
                f"{boundaries(ir)[0]} samples: `nsm sim` and `nsm report` measure it")
    click.echo(f"compiled {'-'.join(map(str, sizes))} (T={ir.samples}, "
               f"about {schedule.expected_cycles_per_inference(ir):.0f} cycles/inference"
               f"{note}) into {output}/")


@main.command(epilog=_example("nsm sim build/ --dataset digits --count 100 --json"))
@click.argument("build_dir", type=click.Path(path_type=Path))
@click.option("--dataset", default="digits", show_default=True)
@click.option("--count", "-n", default=100, show_default=True, type=_COUNT,
              help="Held-out test images to run.")
@click.option("--offset", default=0, show_default=True, type=_OFFSET,
              help="First test image.")
@click.option("--split-seed", default=0, show_default=True, type=_SEED,
              help="Seed of the train/test split (as used for training).")
@click.option("--simulator", type=click.Choice(["icarus", "verilator"]), default="icarus",
              show_default=True)
@click.option("--spikes", is_flag=True,
              help="Also compare every hidden spike vector (builds a debug core) and locate the "
                   "first mismatch by image, sample, layer and neuron.")
@click.option("--waves", is_flag=True,
              help="Write a waveform for GTKWave (FST on Icarus, VCD on Verilator).")
@click.option("--bench", type=click.Choice(["auto", "cocotb", "harness"]), default="auto",
              show_default=True,
              help="cocotb: the cocotb bench (AXI-Stream drivers and protocol checks); harness: "
                   "a C++ harness compiled with the core by Verilator, images back to back at "
                   "the model's own speed (over ten times the cocotb bench's on Verilator); "
                   "auto: the harness on Verilator without --spikes or --waves.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory of the dataset's files (mnist, emnist, nmnist; fashion-mnist "
                   "defaults to the Debian package's).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object, nothing else.")
@_user_errors
def sim(build_dir, dataset, count, offset, split_seed, simulator, spikes, waves, bench, data_dir,
        as_json):
    """Run the RTL on test images and compare every score with the golden model.
    """
    from nsm.flow import simulate

    from sim.runner import cocotb_only, pick_bench

    try:
        bench = pick_bench(simulator, bench, cocotb_only(debug=spikes, waves=waves))
    except ValueError as e:
        raise click.UsageError(f"--bench {bench}: {e}") from None
    _check_outputs([("the co-simulation's directory", build_dir / "sim", ("*",))])
    summary = simulate(build_dir, dataset=dataset, count=count, offset=offset,
                       split_seed=split_seed, simulator=simulator, quiet=as_json,
                       debug=spikes, waves=waves, data_dir=data_dir, bench=bench)
    if as_json:
        click.echo(json.dumps(summary))
    else:
        _print_summary(summary)
    if summary["mismatches"]:
        sys.exit(2)


@main.command(epilog=_example("nsm synth build/ --target ice40-up5k -o build/ice40.json"))
@click.argument("build_dir", type=click.Path(path_type=Path))
@click.option("--target", required=True, metavar="TARGET",
              help="ice40-up5k, ecp5-25k or ecp5-85k.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the report as one JSON object on stdout (progress goes to stderr).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=_FileOutput),
              default=None,
              help="Also write the report here [always: BUILD_DIR/synth/TARGET/report.json].")
@click.option("--bitstream", is_flag=True,
              help="Build the example board top (the core behind a UART) and write its "
                   "bitstream: ice40-up5k on the iCEBreaker (pins from hw/icebreaker.pcf) to "
                   "BUILD_DIR/synth/icebreaker/icebreaker_top.bin; ecp5-25k and ecp5-85k on the "
                   "ULX3S 25F and 85F (pins from hw/ulx3s.lpf) to "
                   "BUILD_DIR/synth/ulx3s/ulx3s_top.bit.")
@click.option("--baud", default=115200, show_default=True, type=_BAUD,
              help="UART baud rate of the board top.")
@click.option("--no-route", "no_route", is_flag=True,
              help="Place only (nextpnr --no-route): whether it fits, and nextpnr's Fmax "
                   "estimate after placement, for a design too congested to route in "
                   "reasonable time (the report says routed: false). No --bitstream.")
@_user_errors
def synth(build_dir, target, as_json, output, bitstream, baud, no_route):
    """Synthesize and place-and-route the Verilog with yosys and nextpnr (YoWASP); report LUTs,
    flip-flops, block RAM, DSPs and Fmax, or say which resource overflows and what to fold.
    """
    from hw.synth import format_summary
    from nsm.flow import synthesize
    from nsm_common.atomic import atomic_write

    _check_outputs([("--output", output, None), ("the synthesis directory", build_dir / "synth",
                                                 ("*",))], _build_inputs(build_dir))
    report = synthesize(build_dir, target, log=lambda m: click.echo(m, err=as_json),
                        bitstream=bitstream, baud=baud, route=not no_route)
    if output is not None:
        with atomic_write(output, "w") as f:
            f.write(json.dumps(report, indent=1) + "\n")
    if as_json:
        click.echo(json.dumps(report))
    else:
        click.echo("\n".join(format_summary(report)))


@main.command(epilog=_example("nsm board build/ --port /dev/ttyUSB1 --count 20"))
@click.argument("build_dir", type=click.Path(path_type=Path))
@click.option("--port", required=True, help="The board's serial port (iCEBreaker: the FTDI's "
                                            "second channel, usually /dev/ttyUSB1; ULX3S: its "
                                            "FT231X, usually /dev/ttyUSB0).")
@click.option("--baud", default=115200, show_default=True, type=_BAUD)
@click.option("--dataset", default="digits", show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--count", "-n", default=20, show_default=True, type=_COUNT)
@click.option("--offset", default=0, show_default=True, type=_OFFSET)
@click.option("--split-seed", default=0, show_default=True, type=_SEED)
@click.option("--weights/--no-weights", default=True, show_default=True,
              help="Send the weight image first where the core keeps weights in RAM (once after "
                   "programming the board; the reset button keeps them).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object, nothing else.")
@_user_errors
def board(build_dir, port, baud, dataset, data_dir, count, offset, split_seed, weights,
          as_json):
    """Send test images to the board top (`nsm synth --bitstream`) over its UART and compare
    every class it returns with the golden model. Reset the board (its button) first: the
    comparison assumes LFSRs fresh from their seeds.
    """
    from nsm.flow import run_on_board

    if os.path.isdir(port) or os.path.isfile(port):
        raise OutputError(f"--port {port}: a {'directory' if os.path.isdir(port) else 'file'}, "
                          f"not a serial port")
    s = run_on_board(build_dir, port, dataset=dataset, count=count, offset=offset,
                     split_seed=split_seed, baud=baud, data_dir=data_dir, progress=not as_json,
                     weights=weights)
    if as_json:
        click.echo(json.dumps(s))
    else:
        click.echo("summary")
        for k in ("images", "mismatches", "golden_accuracy", "board_accuracy", "images_per_s"):
            v = s[k]
            click.echo(f"  {k:<18} {v:.4f}" if k.endswith("accuracy") else f"  {k:<18} {v}")
    if s["mismatches"]:
        click.echo(f"nsm board: {s['mismatches']} of {s['images']} classes differ from the golden "
                   f"model (first: {json.dumps(s['first_mismatch'])}); if the board ran images "
                   f"since its last reset, press its button and run again", err=True)
        sys.exit(2)


@main.command(epilog=_example("nsm report build/ --samples 1,4,16,64"))
@click.argument("build_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory for report.html, report.md, report.json and the plots "
                   "[default: BUILD_DIR].")
@click.option("--samples", "-T", default=",".join(map(str, (1, 4, 16, 64))), show_default=True,
              callback=_int_list_in(1, _MAX_SAMPLES),
              help="Monte Carlo samples for the accuracy curve (the IR's own T is added).")
@click.option("--dataset", default=None,
              help="[default: the one the last `nsm sim` used, else digits]")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--split-seed", default=None, type=_SEED,
              help="Seed of the train/test split [default: the last `nsm sim`'s, else 0].")
@click.option("--count", "-n", default=1000, show_default=True, type=_COUNT,
              help="Test images for the golden and float models (fewer if the split is smaller).")
@click.option("--offset", default=0, show_default=True, type=_OFFSET,
              help="First test image.")
@click.option("--model", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Float model, .onnx or .pt [default: the ONNX file the IR was compiled from, "
                   "in BUILD_DIR or its parent, else BUILD_DIR/model.pt].")
@click.option("--seed", default=0, show_default=True, type=_SEED,
              help="Seed of the float model's sampling.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@_user_errors
def report(build_dir, output, samples, dataset, data_dir, split_seed, count, offset, model, seed,
           no_progress):
    """Write report.html (self-contained) and report.md: accuracy against T (float, golden
    model, RTL), resources per layer and after synthesis, cycles against the dense bound, LFSR
    statistics, the verification summary and where the build stands among the trained presets
    per FPGA part (benchmarks/results/edge.json, or the file NSM_EDGE_RESULTS names).
    """
    from nsm.flow import SIM_SUMMARY
    from nsm.report import OUTPUTS, write_report

    ts = _int_list(samples)
    if not ts or min(ts) < 1:
        raise click.BadParameter(f"{samples!r} is not a list of positive integers",
                                 param_hint="--samples")
    reports = [build_dir / SIM_SUMMARY, *sorted(build_dir.glob("synth/*/report.json"))]
    _check_outputs([("--output", output or build_dir, OUTPUTS)],
                   [*_build_inputs(build_dir), ("--model", model),
                    *(("an input of the report", p) for p in reports)])
    import shlex
    command = shlex.join(["nsm", *sys.argv[1:]] if sys.argv[1:2] == ["report"] else
                         ["nsm", "report", str(build_dir)])
    written = write_report(build_dir, output, command=command, samples=ts, dataset=dataset,
                           split_seed=split_seed, count=count, offset=offset,
                           data_dir=data_dir, model=model, seed=seed, progress=not no_progress)
    click.echo(f"wrote {written['report.html']} and {written['report.md']} "
               f"({len(written) - 3} plots)")


@main.command(epilog=_example("nsm demo --out out/demo"))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("out/demo"), show_default=True)
@click.option("--count", "-n", default=100, show_default=True, type=_COUNT,
              help="Test images to co-simulate.")
@click.option("--epochs", default=40, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--samples", "-T", default=16, show_default=True,
              type=click.IntRange(1, _MAX_SAMPLES))
@click.option("--simulator", type=click.Choice(["icarus", "verilator"]), default="icarus",
              show_default=True)
@_user_errors
def demo(out_dir, count, epochs, samples, simulator):
    """The whole flow on scikit-learn's digits: train, export, compile, co-simulate, summarize.
    """
    from nsm.flow import run_demo

    _check_outputs([("--out", out_dir, ("*",))])
    summary = run_demo(out_dir, count=count, epochs=epochs, samples=samples,
                       simulator=simulator)
    _print_summary(summary)
    if summary["mismatches"]:
        sys.exit(2)


def _print_summary(s: dict) -> None:
    keys = ("float_accuracy", "golden_accuracy", "rtl_accuracy", "images", "mismatches",
            "cycles_per_inference", "cycles_per_inference_model", "cycle_model_exact",
            "latency_cycles", "simulator", "bench", "waves")
    click.echo("summary")
    for k in keys:
        if k not in s or s[k] is None:
            continue
        v = s[k]
        if k.endswith("accuracy"):
            text = f"{v:.4f}"
        elif isinstance(v, float):
            text = f"{v:.0f}" if v == int(v) else f"{v:.1f}"
        else:
            text = str(v)
        click.echo(f"  {k:<28} {text}")
    if isinstance(s.get("early_exit"), dict) and s.get("mean_samples") is not None:
        from nsm_export.early_exit import EarlyExit, rule_label
        click.echo(f"  {'early exit':<28} {rule_label(EarlyExit(**s['early_exit']))}: "
                   f"{s['mean_samples']:.2f} of {s['samples']} samples on average, "
                   f"{s.get('cycles_saved', 0):,} cycles saved")
    if s.get("mismatches"):
        click.echo(f"  first mismatch: {json.dumps(s.get('first_mismatch'))}", err=True)


if __name__ == "__main__":
    main()
