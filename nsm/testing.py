"""Fuzz cases for the ``nsm`` command line, shared by ``tests/test_cli_fuzz.py`` (a fixed-seed
subset) and ``benchmarks/cli_fuzz.py`` (hundreds of cases, counts in
``benchmarks/results/cli-fuzz.json``); nothing in the flow itself uses them.

A case is drawn from its seed alone (:func:`draw_case`): one subcommand, one mutation of its
input (``ir.json``, ``weights.npz``, a ``model.pt`` checkpoint, an ONNX file), a bad option value
or an output path that collides with an input. :func:`run_case` copies the base artefacts
(:func:`make_base`: a digits MLP and a small conv net trained for one epoch, their ONNX files and
build directories) into a fresh directory, applies the mutation, hashes every file, runs the
command in-process (click's ``CliRunner``, the directory as working directory) and checks:

* exit status 1 (the toolchain's one-line refusal) or 2 (a click usage error), and stderr is one
  error line: for status 1 exactly one non-empty line, ``nsm COMMAND: error: ...`` (the CLI's
  form; click's bare ``Aborted!``, which it prints for an EOFError, does not count); for status 2
  click's usage block (the ``Usage:`` line and the ``Try '... -h' for help.`` line) and exactly
  one ``Error:`` line;
* no exception escapes the command and no ``Traceback`` is printed;
* every file that existed before is unchanged unless it matches one of the case's outputs, and
  an output that changed is complete (:func:`complete`); no other file appears;
* long work never starts for a case meant to be refused: training (its optimizer),
  evaluation at T > 256, the simulator, synthesis and the board's serial port are replaced by
  guards (:func:`guards`) that raise :class:`LongWork`; a per-case timer raises
  :class:`CaseTimeout`.

``expect`` says what a pass is. ``refuse``: the input is invalid by construction (a type
change, an out-of-range value, a truncation, a wrong member, a colliding output), so only a
refusal as above passes. ``either``: the mutation may leave a valid input (a byte flipped
inside a file, an unknown key, a weight or seed changed within its range); besides a refusal,
exit 0 with every changed output complete passes, as does reaching a guard (the input was
accepted and the long work would have started).
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import hashlib
import io
import json
import os
import shutil
import signal
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from nsm.report import OUTPUTS

__all__ = ["Case", "LongWork", "CaseTimeout", "make_base", "draw_case", "run_case", "guards",
           "complete", "consistent_build", "stderr_verdict",
           "FAMILIES"]

#: Base artefacts, relative to the base directory: checkpoints, ONNX files, build directories.
MODELS = {"mlp": ("mlp.pt", "mlp.onnx", "bm"), "conv": ("conv.pt", "conv.onnx", "bc")}
#: Evaluation beyond this many samples counts as long work (the guard refuses to run it).
MAX_EVAL_T = 256


class LongWork(BaseException):
    """Raised by a guard: the command started work that a refused case must never reach. A
    BaseException, so that neither the CLI's error handler nor CliRunner swallows it."""


class CaseTimeout(BaseException):
    """Raised by the per-case timer."""


@dataclass
class Case:
    seed: int
    command: str
    mutation: str                       # class, "input/kind": "ir.json/type", "option/--pe"
    detail: str                         # the exact change, for the reproducer
    args: list[str]
    expect: str = "refuse"              # "refuse" or "either" (see the module docstring)
    outputs: list[str] = field(default_factory=list)   # glob patterns, relative
    mutate: Callable[[Path], None] | None = field(default=None, repr=False)

    def reproducer(self) -> dict:
        return {"seed": self.seed, "argv": ["nsm", *self.args], "mutation": self.mutation,
                "detail": self.detail, "expect": self.expect}


# ---------------------------------------------------------------------------------------------
# Base artefacts


def make_base(base: Path) -> Path:
    """Train, export and compile the two tiny networks into ``base`` (about 6 s); reused if
    ``base/done`` exists."""
    from click.testing import CliRunner

    from nsm.cli import main

    base = Path(base)
    if (base / "done").is_file():
        return base
    base.mkdir(parents=True, exist_ok=True)
    steps = [["train", "--hidden", "8", "--epochs", "1", "-T", "2", "--no-progress",
              "-o", "mlp.pt"],
             ["train", "--model", "nsm-conv", "--conv", "2c3-p2-10", "--epochs", "1", "-T", "2",
              "--no-progress", "-o", "conv.pt"],
             ["export", "mlp.pt", "-o", "mlp.onnx", "-T", "2"],
             ["export", "conv.pt", "-o", "conv.onnx", "-T", "2"],
             ["compile", "mlp.onnx", "-o", "bm", "--pe", "2"],
             ["compile", "conv.onnx", "-o", "bc"]]
    with contextlib.chdir(base):
        for argv in steps:
            res = CliRunner().invoke(main, argv)
            if res.exit_code != 0:
                raise RuntimeError(f"nsm {' '.join(argv)}: {res.output}{res.exception!r}")
    (base / "done").write_text("ok\n")
    return base


# ---------------------------------------------------------------------------------------------
# Mutations of files (each returns a function that applies it in a case directory)


def _bytes_edit(rel: str, how: str, rng: np.random.Generator):
    """truncate, empty, byteflip or garbage (text that is no such file)."""
    pos = float(rng.random())
    bit = int(rng.integers(0, 8))

    def apply(d: Path):
        p = d / rel
        data = p.read_bytes()
        if how == "truncate":
            data = data[: int(pos * (len(data) - 1))]
        elif how == "empty":
            data = b""
        elif how == "byteflip":
            i = int(pos * len(data))
            data = data[:i] + bytes([data[i] ^ (1 << bit)]) + data[i + 1:]
        else:
            data = b"\x00\xffnot this kind of file\n" * 3
        p.write_bytes(data)
    return apply


def _json_leaves(obj, path=()):
    """(path, value) of every scalar, list of scalars and dict in ``obj``, ``source`` left
    out."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if path == () and k == "source":
                continue
            yield path + (k,), v
            if isinstance(v, (dict, list)):
                yield from _json_leaves(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            if isinstance(v, (dict, list)):
                yield from _json_leaves(v, path + (i,))


def _set(obj, path, value):
    for k in path[:-1]:
        obj = obj[k]
    if value is _DELETE:
        del obj[path[-1]]
    else:
        obj[path[-1]] = value


_DELETE = object()


def _other_type(value, rng):
    if isinstance(value, bool):
        choices = ["true", None, [True]]
    elif isinstance(value, int):
        choices = [str(value), True, value + 0.5, None, [value], {"v": value}]
    elif isinstance(value, float):
        choices = [str(value), True, None, [value]]
    elif isinstance(value, str):
        choices = [5, None, [value], True]
    elif isinstance(value, list):
        choices = ["x", 5, {"0": value}]
    else:
        choices = ["x", 5, [value]]
    return choices[int(rng.integers(len(choices)))]


#: Keys whose loss leaves no IR (every reader needs them); a conv or pool layer's ``n_in`` and
#: ``n_out`` follow from its map shapes, so a reader may do without them.
REQUIRED = {"format", "version", "input", "samples", "score_bits", "layers", "kind", "n_in",
            "n_out", "weight_bits", "p_num", "p_bits", "size", "threshold", "pixel_bits",
            "c_in", "c_out", "kernel", "width", "mask", "seed"}


def _ir_json_edit(build: str, kind: str, rng: np.random.Generator, base: Path):
    """A mutation of ``build/ir.json``; returns (detail, expect, apply)."""
    rel = f"{build}/ir.json"
    meta = json.loads((base / rel).read_text())
    leaves = list(_json_leaves(meta))
    text = None
    expect = "refuse"
    if kind == "type":
        path, value = leaves[int(rng.integers(len(leaves)))]
        new = _other_type(value, rng)
        detail = f"{'.'.join(map(str, path))}: {value!r} -> {new!r}"
    elif kind == "range":
        ints = [(p, v) for p, v in leaves if type(v) is int and p[-1] not in ("leap",)]
        path, value = ints[int(rng.integers(len(ints)))]
        new = [2**63, 10**30, -1, -(2**63) - 1][int(rng.integers(4))]
        if new == -1 and path[-1] == "threshold":
            new = 2**63
        detail = f"{'.'.join(map(str, path))}: {value} -> {new}"
    elif kind == "float":
        fl = [(p, v) for p, v in leaves if type(v) is float]
        path, value = fl[int(rng.integers(len(fl)))]
        new = [1.5, -0.25, float("nan"), float("inf"), 0.0][int(rng.integers(5))]
        detail = f"{'.'.join(map(str, path))}: {value} -> {new}"
    elif kind == "crosscheck":
        n = len(meta["layers"])
        i = int(rng.integers(n))
        layer = meta["layers"][i]
        key = [k for k in ("n_in", "n_out", "acc_bits", "offset_bits", "p", "c_in", "c_out")
               if isinstance(layer.get(k), (int, float)) and not isinstance(layer[k], bool)
               and (k != "p" or layer.get("p_num") is not None)] + ["score_bits", "input.size"]
        key = key[int(rng.integers(len(key)))]
        if key == "score_bits":
            path, value = ("score_bits",), meta["score_bits"]
        elif key == "input.size":
            path, value = ("input", "size"), meta["input"]["size"]
        else:
            path, value = ("layers", i, key), layer[key]
        new = (0.5 if value != 0.5 else 0.25) if isinstance(value, float) else \
            value - 1 if key in ("acc_bits", "offset_bits", "score_bits") or value > 1 \
            else value + 1
        detail = f"{'.'.join(map(str, path))}: {value} -> {new} (disagrees with the rest)"
    elif kind == "delete":
        keys = [(p, v) for p, v in leaves if p[-1] in REQUIRED and v is not None
                and not (p[-1] in ("n_in", "n_out") and meta["layers"][p[1]]["kind"] != "dense")]
        path, value = keys[int(rng.integers(len(keys)))]
        new = _DELETE
        detail = f"delete {'.'.join(map(str, path))}"
    elif kind == "name":
        new = ["module", "always", "logic", "wire", "naïve", "1abc", "a b", "", "nsm\n",
               "endmodule", "reg", "n-s-m"][int(rng.integers(12))]
        path = ("name",)
        detail = f"name -> {new!r}"
    elif kind == "version":
        new = [True, 2.0, "2", 99, 0, None][int(rng.integers(6))]
        path = ("version",)
        detail = f"version -> {new!r}"
    elif kind == "kind":
        i = int(rng.integers(len(meta["layers"])))
        old = meta["layers"][i]["kind"]
        new = [k for k in ("dense", "conv2d", "pool", "bogus", "DENSE") if k != old]
        new = new[int(rng.integers(len(new)))]
        path = ("layers", i, "kind")
        detail = f"layers.{i}.kind: {old!r} -> {new!r}"
    elif kind == "nesting":
        depth = int(rng.choice([1000, 100_000]))
        where = str(rng.choice(["layers", "source", "input"]))
        text = json.dumps({**meta, where: "@@"}).replace(
            '"@@"', "[" * depth + "]" * depth)
        detail = f"{where}: a list nested {depth} deep"
        path = new = None
    elif kind == "truncate":
        full = (base / rel).read_text()
        cut = int(rng.integers(0, len(full) - 2))
        text = full[:cut]
        detail = f"truncated to {cut} of {len(full)} characters"
        path = new = None
    elif kind == "toplevel":
        text = ["", "null", "[]", "1", '"nsm-ir"', "\udcff"][int(rng.integers(6))]
        detail = f"whole file -> {text!r}"
        path = new = None
    elif kind == "unknown-key":
        where = ("layers", int(rng.integers(len(meta["layers"])))) if rng.random() < 0.5 else ()
        path = where + ("bogus",)
        new = 1
        expect = "either"
        detail = f"add {'.'.join(map(str, path))} = 1"
    else:                                    # "valid": a seed, T or pe changed within range
        choices = [(("samples",), int(rng.integers(1, 9)))]
        for i, layer in enumerate(meta["layers"]):
            if isinstance(layer.get("rng"), dict):
                choices.append((("layers", i, "rng", "seed"), int(rng.integers(1, 2**31))))
            if "pe" in layer:
                choices.append((("layers", i, "pe"), 1))
        path, new = choices[int(rng.integers(len(choices)))]
        expect = "either"
        detail = f"{'.'.join(map(str, path))} -> {new} (within range)"

    def apply(d: Path):
        if text is not None:
            (d / rel).write_bytes(text.encode("utf-8", "surrogateescape"))
            return
        m = copy.deepcopy(meta)
        _set(m, path, new)
        (d / rel).write_text(json.dumps(m, indent=1))
    return detail, expect, apply


def _npz_edit(build: str, kind: str, rng: np.random.Generator, base: Path):
    """A mutation of ``build/weights.npz``; returns (detail, expect, apply)."""
    rel = f"{build}/weights.npz"
    with np.load(base / rel) as z:
        arrays = {k: z[k] for k in z.files}
    names = sorted(arrays)
    name = names[int(rng.integers(len(names)))]
    expect = "refuse"
    raw = None
    if kind in ("truncate", "empty", "garbage", "byteflip"):
        expect = "either" if kind == "byteflip" else "refuse"
        return kind, expect, _bytes_edit(rel, kind, rng)
    new = dict(arrays)
    if kind == "drop":
        del new[name]
        detail = f"member {name} removed"
    elif kind == "rename":
        new[name + "_x"] = new.pop(name)
        detail = f"member {name} renamed {name}_x"
    elif kind == "extra":
        new["extra"] = np.zeros(int(rng.integers(1, 5000)), np.int64)
        detail = f"extra member 'extra' ({new['extra'].size} zeros)"
    elif kind == "dtype":
        to = str(rng.choice(["float", "complex", "str", "bool"]))
        a = arrays[name]
        new[name] = {"float": a + 0.5, "complex": a + 1j, "str": a.astype(str),
                     "bool": a != 0}[to]
        detail = f"member {name}: int64 -> {new[name].dtype}"
    elif kind == "shape":
        a = arrays[name]
        how = str(rng.choice(["drop-last", "transpose-or-add-axis", "scalar"]))
        new[name] = {"drop-last": a.reshape(-1)[:-1] if a.size > 1 else np.zeros(2, a.dtype),
                     "transpose-or-add-axis": a.T if a.ndim == 2 and a.shape[0] != a.shape[1]
                     else a[None],
                     "scalar": np.asarray(a.reshape(-1)[0])}[how]
        detail = f"member {name}: shape {a.shape} -> {new[name].shape}"
    elif kind == "range":
        meta = json.loads((base / build / "ir.json").read_text())
        a = arrays[name].copy()
        layer = meta["layers"][int(name[5:].split("_")[0])]
        if name.endswith("_weights"):
            v = 1 << layer["weight_bits"]
        else:
            v = [2**63 - 1, -(2**63), 2**62][int(rng.integers(3))]
        a.flat[int(rng.integers(a.size))] = v
        new[name] = a
        detail = f"member {name}: one entry -> {v}"
    elif kind == "huge-header":
        n = int(rng.choice([2**40, 2**26]))
        hdr = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            hdr, {"descr": "<i8", "fortran_order": False, "shape": (n,)})
        raw = (name if rng.random() < 0.5 else "extra", hdr.getvalue() + b"\0" * 64)
        detail = f"member {raw[0]}: header claims {n} int64, 64 bytes of data"
    else:                                   # "valid": one weight changed within range
        meta = json.loads((base / build / "ir.json").read_text())
        ws = [k for k in names if k.endswith("_weights")]
        name = ws[int(rng.integers(len(ws)))]
        wb = meta["layers"][int(name[5:].split("_")[0])]["weight_bits"]
        a = arrays[name].copy()
        q = max(1, (1 << (wb - 1)) - 1)
        a.flat[int(rng.integers(a.size))] = int(rng.integers(-q, q + 1)) if wb > 1 else \
            int(rng.choice([-1, 1]))
        new[name] = a
        expect = "either"
        detail = f"member {name}: one weight changed within {wb} bits"

    def apply(d: Path):
        if raw is not None:
            with zipfile.ZipFile(d / rel, "w") as z:
                for k, v in arrays.items():
                    if k != raw[0]:
                        buf = io.BytesIO()
                        np.lib.format.write_array(buf, v)
                        z.writestr(k + ".npy", buf.getvalue())
                z.writestr(raw[0] + ".npy", raw[1])
            return
        with open(d / rel, "wb") as f:
            np.savez(f, **new)
    return detail, expect, apply


def _pt_edit(pt: str, kind: str, rng: np.random.Generator, base: Path):
    """A mutation of a ``model.pt`` checkpoint; returns (detail, expect, apply)."""
    if kind in ("truncate", "empty", "garbage", "byteflip"):
        return kind, "either" if kind == "byteflip" else "refuse", _bytes_edit(pt, kind, rng)
    import torch

    ckpt = torch.load(base / pt, map_location="cpu", weights_only=True)
    sd = ckpt["state_dict"]
    key = sorted(sd)[int(rng.integers(len(sd)))]
    new = copy.deepcopy(ckpt)
    top = None
    if kind == "nan":
        v = float(rng.choice([np.nan, np.inf, -np.inf]))
        new["state_dict"][key].view(-1)[int(rng.integers(sd[key].numel()))] = v
        detail = f"state_dict[{key}]: one entry -> {v}"
    elif kind == "missing-key":
        del new["state_dict"][key]
        detail = f"state_dict[{key}] removed"
    elif kind == "extra-key":
        new["state_dict"]["bogus.weight"] = torch.zeros(3)
        detail = "state_dict[bogus.weight] added"
    elif kind == "shape":
        new["state_dict"][key] = sd[key].reshape(-1)[:-1].clone()
        detail = f"state_dict[{key}]: shape {tuple(sd[key].shape)} -> one entry fewer"
    elif kind == "config":
        cfg = new["config"]
        k = sorted(k for k in cfg if k in ("hidden", "p", "weight_bits", "n_in", "n_classes",
                                           "spec", "shape"))
        k = k[int(rng.integers(len(k)))]
        bad = [_other_type(cfg[k], rng), -1, 0][int(rng.integers(3))]
        cfg[k] = bad
        detail = f"config[{k}] -> {bad!r}"
    elif kind == "format":
        which = str(rng.choice(["format", "version", "arch", "toplevel"]))
        if which == "toplevel":
            top = [1, 2, 3]
            detail = "whole checkpoint -> a list"
        else:
            bad = {"format": "nsm-checkpoint-x", "version": [True, 99, "1"][int(rng.integers(3))],
                   "arch": "bogus"}[which]
            new[which] = bad
            detail = f"{which} -> {bad!r}"
    else:                                   # "train-config": what eval reads from it
        tc = new.setdefault("train_config", {})
        k = str(rng.choice(["dataset", "seed", "data_dir"]))
        bad = {"dataset": [5, "bogus", None, ["digits"]][int(rng.integers(4))],
               "seed": ["x", 2.5, [0]][int(rng.integers(3))],
               "data_dir": [5, ["x"]][int(rng.integers(2))]}[k]
        if bad is None:
            bad = 7
        tc[k] = bad
        detail = f"train_config[{k}] -> {bad!r}"

    def apply(d: Path):
        torch.save(top if top is not None else new, d / pt)
    return detail, "refuse", apply


def _onnx_edit(onnx_rel: str, kind: str, rng: np.random.Generator, base: Path):
    """A mutation of an ONNX file; returns (detail, expect, apply)."""
    if kind in ("truncate", "empty", "garbage", "byteflip"):
        return kind, "either" if kind == "byteflip" else "refuse", _bytes_edit(onnx_rel, kind,
                                                                               rng)
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(base / onnx_rel))
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    expect = "refuse"

    def put(name, arr):
        inits[name].CopyFrom(numpy_helper.from_array(arr, name))

    if kind == "nan":
        cands = [n for n in inits if n.endswith("_scale")]
        name = cands[int(rng.integers(len(cands)))]
        arr = numpy_helper.to_array(inits[name]).copy()
        v = float(rng.choice([np.nan, np.inf, -np.inf]))
        arr.flat[int(rng.integers(arr.size))] = v
        put(name, arr)
        detail = f"{name}: one entry -> {v}"
    elif kind == "p":
        cands = [n for n in inits if n.endswith("_p")]
        name = cands[int(rng.integers(len(cands)))]
        v = float(rng.choice([0.0, 1.5, -0.2, np.nan, np.inf]))
        put(name, np.array(v, np.float32))
        detail = f"{name} -> {v}"
    elif kind == "metadata":
        v = str(rng.choice(["", "x", "-4", "1e9", "0", "99999999999999999999", "2.5"]))
        for p in m.metadata_props:
            if p.key == "nsm.samples":
                p.value = v
        detail = f"metadata nsm.samples -> {v!r}"
    elif kind == "op":
        i = int(rng.integers(len(g.node)))
        old = g.node[i].op_type
        g.node[i].op_type = "Bogus"
        detail = f"node {g.node[i].name}: op {old} -> Bogus"
    elif kind == "shape":
        cands = [n for n in inits if n.endswith("_int")]
        name = cands[int(rng.integers(len(cands)))]
        arr = numpy_helper.to_array(inits[name])
        put(name, arr.reshape(-1)[:-1].copy())
        detail = f"{name}: shape {arr.shape} -> one entry fewer"
    elif kind == "weight-range":
        cands = [n for n in inits if n.endswith("weight_int")]
        name = cands[int(rng.integers(len(cands)))]
        arr = numpy_helper.to_array(inits[name]).copy()
        arr.flat[int(rng.integers(arr.size))] = 127
        put(name, arr)
        expect = "either"                   # the compiler takes the weight bits from the values
        detail = f"{name}: one entry -> 127 (8-bit weights from then on)"
    elif kind == "drop-node":
        i = int(rng.integers(len(g.node)))
        detail = f"node {g.node[i].name} ({g.node[i].op_type}) removed"
        del g.node[i]
    else:                                   # "valid": one weight changed within range
        cands = [n for n in inits if n.endswith("weight_int")]
        name = cands[int(rng.integers(len(cands)))]
        arr = numpy_helper.to_array(inits[name]).copy()
        arr.flat[int(rng.integers(arr.size))] = int(rng.integers(-1, 2))
        put(name, arr)
        expect = "either"
        detail = f"{name}: one entry -> a value in range"
    data = m.SerializeToString()

    def apply(d: Path):
        (d / onnx_rel).write_bytes(data)
    return detail, expect, apply


# ---------------------------------------------------------------------------------------------
# Families of cases


#: What `nsm report` writes in the build directory (nsm.report.OUTPUTS), as patterns.
REPORT_OUT = [f"{{b}}/{name}" for name in OUTPUTS]


def _build_command(rng, b: str) -> tuple[str, list[str], list[str]]:
    """A command that reads build directory ``b`` and what it may write."""
    cmd = str(rng.choice(["sim", "synth", "report", "board"]))
    args = {"sim": ["sim", b, "--count", "2", "--json"],
            "synth": ["synth", b, "--target", "ice40-up5k"],
            "report": ["report", b, "-T", "1", "-n", "4", "--no-progress"],
            "board": ["board", b, "--port", "/dev/null", "--count", "2", "--json"]}[cmd]
    outs = {"sim": [f"{b}/sim", f"{b}/sim/*"], "synth": [f"{b}/synth", f"{b}/synth/**"],
            "report": [p.format(b=b) for p in REPORT_OUT], "board": []}[cmd]
    return cmd, args, outs


def _fam_ir_json(seed, rng, base):
    net = str(rng.choice(list(MODELS)))
    b = MODELS[net][2]
    kind = str(rng.choice(["type", "type", "range", "float", "crosscheck", "delete", "name",
                           "version", "kind", "nesting", "truncate", "toplevel", "unknown-key",
                           "valid"]))
    detail, expect, apply = _ir_json_edit(b, kind, rng, base)
    cmd, args, outs = _build_command(rng, b)
    return Case(seed, cmd, f"ir.json/{kind}", f"{net}: {detail}", args, expect, outs, apply)


def _fam_npz(seed, rng, base):
    net = str(rng.choice(list(MODELS)))
    b = MODELS[net][2]
    kind = str(rng.choice(["truncate", "empty", "garbage", "byteflip", "drop", "rename",
                           "extra", "dtype", "shape", "range", "huge-header", "valid"]))
    detail, expect, apply = _npz_edit(b, kind, rng, base)
    cmd, args, outs = _build_command(rng, b)
    return Case(seed, cmd, f"weights.npz/{kind}", f"{net}: {detail}", args, expect, outs, apply)


def _fam_pt(seed, rng, base):
    net = str(rng.choice(list(MODELS)))
    pt, _, b = MODELS[net]
    kind = str(rng.choice(["truncate", "empty", "garbage", "byteflip", "nan", "missing-key",
                           "extra-key", "shape", "config", "format", "train-config"]))
    cmd = "eval" if kind == "train-config" else \
        "export" if kind == "nan" else str(rng.choice(["export", "eval", "report"]))
    detail, expect, apply = _pt_edit(pt, kind, rng, base)
    if kind == "train-config" and "data_dir" in detail:
        expect = "either"                   # digits reads no files: the field is unused
    args, outs = {
        "export": (["export", pt, "-o", "new.onnx", "-T", "2"], ["new.onnx"]),
        "eval": (["eval", pt, "-T", "1", "--plot", "acc.png"], ["acc.png"]),
        "report": (["report", b, "--model", pt, "-T", "1", "-n", "4", "--no-progress"],
                   [p.format(b=b) for p in REPORT_OUT]),
    }[cmd]
    return Case(seed, cmd, f"model.pt/{kind}", f"{net}: {detail}", args, expect, outs, apply)


def _fam_onnx(seed, rng, base):
    net = str(rng.choice(list(MODELS)))
    _, ox, b = MODELS[net]
    kind = str(rng.choice(["truncate", "empty", "garbage", "byteflip", "nan", "p", "metadata",
                           "op", "shape", "weight-range", "drop-node", "valid"]))
    detail, expect, apply = _onnx_edit(ox, kind, rng, base)
    if rng.random() < 0.75:
        out = "nb" if rng.random() < 0.5 else b     # a new build, or over the old one
        cmd, args, outs = "compile", ["compile", ox, "-o", out], [out, f"{out}/*"]
    else:
        cmd, args, outs = "report", ["report", b, "--model", ox, "-T", "1", "-n", "4",
                                     "--no-progress"], [p.format(b=b) for p in REPORT_OUT]
        if kind in ("metadata", "weight-range", "valid", "nan", "p"):
            expect = "either"               # the float model runs whatever ONNX computes
    return Case(seed, cmd, f"onnx/{kind}", f"{net}: {detail}", args, expect, outs, apply)


#: Bad option values by command: (option, values); every value is out of range, of the wrong
#: type or names something that does not exist.
BAD_OPTIONS = {
    "train": [("--epochs", ["0", "-1", "x"]), ("--hidden", ["0", "-3", "x", "8,,x",
                                                             "1000000000000"]),
              ("--p", ["0", "1.5", "nan", "x", "-0.5", "inf"]), ("--lr", ["inf", "nan", "-1"]),
              ("--weight-bits", ["0", "9", "x"]), ("--levels", ["0"]),
              ("--batch-size", ["0", "-5"]), ("--sigma", ["-1", "nan"]),
              ("--label-smoothing", ["1", "-0.1"]), ("--dataset", ["bogus", ""]),
              ("--device", ["foo", "cuda:99"]), ("--resume", [None]),
              ("--init", ["missing.pt", "mlp.onnx"]), ("--shift", ["9", "-1"]),
              ("--samples", ["0"]), ("--seed", ["x"]), ("--loss-samples", ["0"])],
    "eval": [("--samples", ["0", "-1", "x", "", "1,,0", "1000000"]), ("--dataset", ["bogus"]),
             ("--device", ["foo"]), ("--split-seed", ["x"]), ("--seed", ["1.5"])],
    "export": [("--samples", ["0", "-2", "x"]), ("--format", ["bogus"])],
    "compile": [("--samples", ["0", "70000", "x"]), ("--pe", ["0", "-1", "a", "1,2,3,4,5",
                                                              "1" + "0" * 30]),
                ("--lanes", ["0", "3", "32"]), ("--simd", ["0", "3", "128"]),
                ("--pass-samples", ["-1", "99999", "9"]),
                ("--weight-store", ["flash", "rom,rom,rom,rom,rom"]),
                ("--target", ["xc7a35t", ""]), ("--throughput", ["-1", "nan", "inf"]),
                ("--clock-mhz", ["inf", "nan", "0", "-5"]), ("--seed", ["0", "-1", "x"]),
                ("--lfsr-width", ["7", "33"]), ("--p-bits", ["0", "17"]),
                ("--name", ["module", "naïve", "a b", "", "1x", "always"])],
    "sim": [("--count", ["0", "-1", "x"]), ("--offset", ["-1", "1000000"]),
            ("--dataset", ["bogus"]), ("--simulator", ["bogus"]), ("--split-seed", ["x"])],
    "synth": [("--target", ["xc7a35t", ""]), ("--baud", ["0"])],
    "board": [("--count", ["0"]), ("--offset", ["1000000"]), ("--dataset", ["bogus"]),
              ("--baud", ["0", "-1"])],
    "report": [("--samples", ["0", "x", "", "1,,-2"]), ("--count", ["0", "-1"]),
               ("--offset", ["1000000", "-1"]), ("--dataset", ["bogus"]),
               ("--model", ["missing.pt"]), ("--split-seed", ["x"])],
    "demo": [("--epochs", ["0"]), ("--count", ["0"]), ("--samples", ["0"]),
             ("--simulator", ["bogus"]), ("--out", ["mlp.pt"])],
}


def _base_args(cmd: str, net: str) -> tuple[list[str], list[str]]:
    pt, ox, b = MODELS[net]
    return {
        "train": (["train", "--hidden", "4", "--epochs", "1", "--no-progress", "-o", "t.pt"],
                  ["t.pt"]),
        "eval": (["eval", pt, "-T", "1"], []),
        "export": (["export", pt, "-o", "new.onnx"], ["new.onnx"]),
        "compile": (["compile", ox, "-o", "nb"], ["nb", "nb/*"]),
        "sim": (["sim", b, "--count", "2", "--json"], [f"{b}/sim", f"{b}/sim/*"]),
        "synth": (["synth", b, "--target", "ice40-up5k"], [f"{b}/synth", f"{b}/synth/**"]),
        "board": (["board", b, "--port", "/dev/null", "--count", "2"], []),
        "report": (["report", b, "-T", "1", "-n", "4", "--no-progress"],
                   [p.format(b=b) for p in REPORT_OUT]),
        "demo": (["demo", "--out", "demo", "--epochs", "1", "--count", "2"],
                 ["demo", "demo/**"]),
    }[cmd]


def _fam_option(seed, rng, base):
    cmd = str(rng.choice(list(BAD_OPTIONS)))
    net = str(rng.choice(list(MODELS)))
    opt, values = BAD_OPTIONS[cmd][int(rng.integers(len(BAD_OPTIONS[cmd])))]
    value = values[int(rng.integers(len(values)))]
    args, outs = _base_args(cmd, net)
    args = list(args)
    if opt in args:                          # replace the base's own value
        i = args.index(opt)
        del args[i:i + 2]
    if cmd == "eval" and opt == "--samples":
        args = [a for a in args if a not in ("-T", "1")]
    if cmd == "compile" and opt in ("--throughput", "--clock-mhz"):
        args += ["--target", "ice40-up5k"]
    if cmd == "demo" and opt == "--out":
        args = ["demo", "--epochs", "1", "--count", "2"]
        outs = []
    args += [opt] if value is None else [opt, value]
    detail = f"{net}: {opt} {value!r}" if value is not None else f"{net}: {opt} (no --checkpoint)"
    return Case(seed, cmd, f"option/{opt}", detail, args, "refuse", outs)


#: Outputs that collide with an input or cannot be written: (command, what is wrong, argv,
#: what it may write); ``{arch}`` stands for the options that train the base network's layers.
_T = ["train", "--hidden", "4", "--epochs", "1", "--no-progress"]
_R = ["report", "{b}", "-T", "1", "-n", "4", "--no-progress"]
COLLISIONS = [
    ("export", "is-the-input", ["export", "{pt}", "-o", "{pt}"], []),
    ("export", "is-a-directory", ["export", "{pt}", "-o", "{b}"], []),
    ("export", "under-a-file", ["export", "{pt}", "-o", "{pt}/x.onnx"], []),
    ("eval", "is-the-input", ["eval", "{pt}", "-T", "1", "--plot", "{pt}"], []),
    ("eval", "is-a-directory", ["eval", "{pt}", "-T", "1", "--plot", "{b}"], []),
    ("eval", "under-a-file", ["eval", "{pt}", "-T", "1", "--plot", "{ox}/p.png"], []),
    ("compile", "is-the-input", ["compile", "{ox}", "-o", "{ox}"], []),
    ("compile", "is-a-file", ["compile", "{ox}", "-o", "{pt}"], []),
    ("compile", "under-a-file", ["compile", "{ox}", "-o", "{pt}/b"], []),
    ("compile", "input-is-ir.json", ["compile", "{b}/ir.json", "-o", "nb"], ["nb", "nb/*"]),
    ("synth", "is-an-input", ["synth", "{b}", "--target", "ice40-up5k", "-o", "{b}/ir.json"],
     []),
    ("synth", "is-an-input", ["synth", "{b}", "--target", "ice40-up5k", "-o",
                              "{b}/weights.npz"], []),
    ("synth", "is-a-directory", ["synth", "{b}", "--target", "ice40-up5k", "-o", "{b}"], []),
    ("report", "is-a-file", [*_R, "-o", "{pt}"], []),
    ("report", "is-an-input", [*_R, "-o", "{b}/ir.json"], []),
    ("report", "under-a-file", [*_R, "-o", "{pt}/r"], []),
    ("train", "is-a-directory", [*_T, "-o", "{b}"], []),
    ("train", "under-a-file", [*_T, "-o", "{pt}/m.pt"], []),
    ("train", "checkpoint-is-a-directory", [*_T, "--checkpoint", "{b}", "-o", "t.pt"], []),
    ("train", "is-the-input", ["train", "{arch}", "--epochs", "1", "--no-progress", "--init",
                               "{pt}", "-o", "{pt}"], []),
    ("sim", "sim-dir-is-a-file", ["sim", "{b}", "--count", "2", "--json", "--waves"], []),
    ("demo", "is-a-file", ["demo", "--epochs", "1", "--count", "2", "--out", "{b}/ir.json"],
     []),
]


def _fam_collision(seed, rng, base):
    net = str(rng.choice(list(MODELS)))
    pt, ox, b = MODELS[net]
    cmd, what, argv, outs = COLLISIONS[int(rng.integers(len(COLLISIONS)))]
    arch = {"mlp": ["--hidden", "8"], "conv": ["--model", "nsm-conv", "--conv", "2c3-p2-10"]}
    args = [x for a in argv for x in (arch[net] if a == "{arch}" else [a.format(pt=pt, ox=ox,
                                                                                 b=b)])]
    mutate = None
    if cmd == "sim":                         # the waveform's directory is a file
        def mutate(d: Path, b=b):
            (d / b / "sim").write_text("a file where the sim directory goes\n")
    return Case(seed, cmd, f"output/{what}", f"{net}: the output {what.replace('-', ' ')}",
                args, "refuse", [o.format(pt=pt, ox=ox, b=b) for o in outs], mutate)


FAMILIES = {"ir.json": _fam_ir_json, "weights.npz": _fam_npz, "model.pt": _fam_pt,
            "onnx": _fam_onnx, "option": _fam_option, "output": _fam_collision}


def draw_case(seed: int, base: Path) -> Case:
    """The case of ``seed``: a family (ir.json, weights.npz, model.pt, ONNX, an option value or
    a colliding output), then its command and mutation, all from ``seed``."""
    rng = np.random.default_rng(seed)
    fam = list(FAMILIES)[int(rng.integers(len(FAMILIES)))]
    return FAMILIES[fam](seed, rng, Path(base))


# ---------------------------------------------------------------------------------------------
# Running and checking a case


@contextlib.contextmanager
def guards():
    """Replace the entry points of long work with functions that raise :class:`LongWork`:
    the simulator, synthesis, the board's serial port, training (its optimizer, built once the
    model, its data and its --init weights are), and evaluation at T > MAX_EVAL_T."""
    import hw.board
    import hw.synth
    import nsm.flow
    import nsm_train.train as tr

    evaluate_many = tr.evaluate_many

    def stop(what):
        def f(*a, **k):
            raise LongWork(what)
        return f

    def evaluate(model, x, y, ts, *a, **k):
        if max(ts) > MAX_EVAL_T:
            raise LongWork(f"evaluation at T={max(ts)}")
        return evaluate_many(model, x, y, ts, *a, **k)

    saved = [(nsm.flow, "cosim"), (hw.synth, "synthesize"), (hw.board, "open_uart"),
             (tr.torch.optim, "Adam"), (tr, "evaluate_many")]
    old = [getattr(m, n) for m, n in saved]
    for (m, n), f in zip(saved, [stop("simulator"), stop("synthesis"), stop("board"),
                                 stop("training"), evaluate]):
        setattr(m, n, f)
    try:
        yield
    finally:
        for (m, n), f in zip(saved, old):
            setattr(m, n, f)


def _hashes(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def _matches(rel: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(rel, p) for p in patterns)


def consistent_build(d: Path) -> str | None:
    """None if ``d`` holds an IR that loads and, unless the hardware cannot build it, the
    Verilog generated from that IR (not an older core beside a newer IR), else why not."""
    from hw.top import generate_verilog, hardware_unsupported
    from nsm_export import ir as irmod

    ir = irmod.load(d)
    v = d / f"{ir.name}.v"
    if hardware_unsupported(ir):
        return f"{v.name} beside an IR the hardware cannot build" if v.exists() else None
    if not v.is_file() or v.read_text() != generate_verilog(ir):
        return f"{v.name} is not the Verilog of {d.name}/ir.json (a mixed build)"
    return None


def _in_build(path: Path) -> bool:
    """Whether ``path`` is one of the set of files `nsm compile` writes."""
    return (path.name in ("ir.json", "weights.npz") or path.suffix in (".v", ".core")) and \
        (path.parent / "ir.json").is_file()


def complete(path: Path) -> str | None:
    """None if ``path`` is a whole output of its kind, else why not; a file of a build
    directory stands for the whole directory (:func:`consistent_build`)."""
    try:
        if _in_build(path):
            return consistent_build(path.parent)
        elif path.suffix == ".pt":
            from nsm_train.train import load_checkpoint
            load_checkpoint(path)
        elif path.suffix == ".onnx":
            import onnx
            onnx.checker.check_model(onnx.load(str(path)))
        elif path.suffix == ".png":
            data = path.read_bytes()
            if not (data.startswith(b"\x89PNG\r\n\x1a\n") and data[-12:-4] == b"\0\0\0\0IEND"):
                return "not a whole PNG"
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".html":
            if not path.read_text().rstrip().endswith("</html>"):
                return "HTML cut short"
        elif path.suffix == ".v":
            if "endmodule" not in path.read_text()[-200:]:
                return "Verilog cut short"
    except Exception as e:          # any failure to read it back is the finding
        return f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    return None


def _where(exc: BaseException) -> str:
    """The innermost frame of the exception's traceback in this repository's code."""
    import traceback

    root = str(Path(__file__).resolve().parent.parent)
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if f.filename.startswith(root) and "/.venv/" not in f.filename]
    if not frames:
        return "outside the repository"
    f = frames[-1]
    return f"{os.path.relpath(f.filename, root)}:{f.lineno} {f.name}"


def stderr_verdict(command: str, code: int, stderr: str) -> str | None:
    """None if ``stderr`` is one error line for exit status ``code`` (see the module
    docstring), else what is wrong."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    if code == 2:
        lines = [ln for ln in lines if not ln.startswith(("Usage:", "Try '"))]
        if len(lines) != 1 or not lines[0].startswith("Error:"):
            return f"{len(lines)} error lines after the usage block"
        return None
    if len(lines) != 1:
        return f"{len(lines)} lines on stderr"
    if not lines[0].startswith(f"nsm {command}: error: "):
        return f"not in the CLI's form ({lines[0][:100]})"
    return None


def run_case(case: Case, base: Path, work: Path, timeout: float = 30.0) -> dict:
    """Run ``case`` in a fresh copy of ``base`` under ``work``; returns the record:
    ``outcome`` ("refused", "accepted", "guard") and ``failures`` (empty when it passes)."""
    from click.testing import CliRunner

    from nsm.cli import main

    d = Path(work) / f"case{case.seed}"
    if d.exists():
        shutil.rmtree(d)
    shutil.copytree(base, d, ignore=shutil.ignore_patterns("done"))
    if case.mutate is not None:
        case.mutate(d)
    before = _hashes(d)
    failures, outcome, guard, res = [], None, None, None

    def alarm(*_):
        raise CaseTimeout(f"over {timeout} s")

    old_handler = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        with contextlib.chdir(d), guards():
            res = CliRunner().invoke(main, case.args, prog_name="nsm")
    except LongWork as e:
        guard = str(e)
    except CaseTimeout as e:
        failures.append(f"timeout: {e}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
    stderr = res.stderr if res is not None else ""
    if guard is not None:
        outcome = "guard"
        if case.expect == "refuse":
            failures.append(f"long work started ({guard}) before the refusal")
    elif res is not None:
        exc = res.exception
        if exc is not None and not isinstance(exc, SystemExit):
            failures.append(f"traceback: {type(exc).__name__}: "
                            f"{(str(exc).splitlines() or [''])[0][:200]} "
                            f"(at {_where(exc)})")
            outcome = "traceback"
        elif res.exit_code == 0:
            outcome = "accepted"
            if case.expect == "refuse":
                failures.append("exit 0 on an invalid input")
        elif res.exit_code in (1, 2):
            outcome = "refused"
            if (why := stderr_verdict(case.command, res.exit_code, stderr)):
                failures.append(f"not one error line: {why}")
        else:
            outcome = f"exit {res.exit_code}"
            failures.append(f"exit status {res.exit_code}")
        if "Traceback" in res.output:
            failures.append("a traceback printed")
    after = _hashes(d)
    changed = []
    for rel, h in before.items():
        if after.get(rel) != h:
            if not _matches(rel, case.outputs):
                failures.append(f"input changed: {rel}" if rel in after else
                                f"input removed: {rel}")
            else:
                changed.append(rel)
    for rel in after:
        if rel not in before:
            if not _matches(rel, case.outputs):
                failures.append(f"stray file: {rel}")
            else:
                changed.append(rel)
    seen = set()
    for rel in changed:
        key = (d / rel).parent if _in_build(d / rel) else rel
        if rel in after and key not in seen and (why := complete(d / rel)):
            failures.append(f"output not complete: {rel}: {why}")
        seen.add(key)
    shutil.rmtree(d, ignore_errors=True)
    first = [ln for ln in stderr.splitlines() if ln.strip()]
    return {**case.reproducer(), "command": case.command, "outcome": outcome,
            "exit_code": None if res is None or guard else res.exit_code,
            "stderr": first[-1][:300] if first else "", "failures": failures}
