"""The board examples (iCEBreaker, ULX3S): UART against its frame model, the UART-fed core and the
whole board tops against the golden model (class indices equal, image by image), the pin files
against the tops' ports."""

import re
from dataclasses import replace

import numpy as np
import pytest
from amaranth.sim import Simulator
from click.testing import CliRunner

from hw.board import (BOARDS, ICEBREAKER, POR_BITS, ULX3S_25F, ULX3S_85F, UartClassifier,
                      board_top, board_verilog, port_bits)
from hw.uart import UartRx, UartTx, divisor_for, frame_bits
from nsm.cli import main
from nsm_export import golden, schedule
from nsm_export import ir as irmod
from nsm_export.testing import random_ir, random_pixels


def test_divisor_for_the_board_clock():
    assert divisor_for(12e6, 115200) == 104              # 115,385 baud, 0.16 % fast
    assert divisor_for(12e6, 9600) == 1250
    with pytest.raises(ValueError, match="cannot be made"):
        divisor_for(12e6, 5_000_000)                       # 2.4 cycles per bit: 20 % off
    with pytest.raises(ValueError, match="outside"):
        frame_bits(256)


async def _send(ctx, line, data: bytes, divisor: int, domain="sync"):
    for byte in data:
        for b in frame_bits(byte):
            ctx.set(line, b)
            await ctx.tick(domain).repeat(divisor)


@pytest.mark.parametrize("divisor", [4, 7])
def test_uart_loopback_every_byte(divisor):
    """All 256 bytes, TX into RX back to back; TX's line holds each bit exactly ``divisor``
    cycles and matches the frame model."""
    tx, rx = UartTx(divisor), UartRx(divisor)
    from amaranth.hdl import Module
    m = Module()
    m.submodules.tx, m.submodules.rx = tx, rx
    m.d.comb += rx.rx.eq(tx.tx)
    got, line = [], []

    async def sender(ctx):
        for byte in range(256):
            ctx.set(tx.data, byte)
            ctx.set(tx.valid, 1)
            await ctx.tick().until(tx.ready)
            ctx.set(tx.valid, 0)
        await ctx.tick().repeat(12 * divisor)

    async def watcher(ctx):
        async for clk_edge, rst, valid, data, level in ctx.tick().sample(rx.valid, rx.data,
                                                                          tx.tx):
            line.append(level)
            if valid:
                got.append(data)

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(sender)
    sim.add_process(watcher)
    sim.run()
    assert got == list(range(256))
    # The line, from the first start bit, is the frames of the model, each bit divisor cycles.
    start = line.index(0)
    expected = [b for byte in range(256) for b in frame_bits(byte) for _ in range(divisor)]
    assert line[start:start + len(expected)] == expected


def test_uart_rx_flags_a_bad_stop_bit_and_recovers():
    divisor = 5
    rx = UartRx(divisor)
    seen = []

    async def bench(ctx):
        ctx.set(rx.rx, 1)
        await ctx.tick().repeat(3)
        for bits in (frame_bits(0xA5)[:-1] + [0], [1, 1], frame_bits(0x3C)):
            for b in bits:
                ctx.set(rx.rx, b)
                for _ in range(divisor):
                    await ctx.tick()
                    if ctx.get(rx.valid):
                        seen.append(("byte", ctx.get(rx.data)))
                    if ctx.get(rx.error):
                        seen.append(("error", None))
        for _ in range(3 * divisor):
            await ctx.tick()
            if ctx.get(rx.valid):
                seen.append(("byte", ctx.get(rx.data)))

    sim = Simulator(rx)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert seen == [("error", None), ("byte", 0x3C)]


# What a board top's LEDs show: (class index, error, result) from its output ports.
_LEDS = {
    "icebreaker": lambda ctx, t: (ctx.get(t.led), 1 - ctx.get(t.ledr_n), 1 - ctx.get(t.ledg_n)),
    "ulx3s": lambda ctx, t: (ctx.get(t.led) & 0x3F, ctx.get(t.led) >> 7, ctx.get(t.led) >> 6 & 1),
}


def _uart_classify(ir, pixels, divisor, wait_for_reply=False, board=None, press_after=None):
    """Stream ``pixels`` (one byte each) into the UART classifier, images back to back or
    (``wait_for_reply``) each after the previous reply, as ``nsm board`` does; decode the bytes
    it sends back. Returns the replies (fewer if some never came) and the error flag at the
    end. ``board``: the whole board top instead (:func:`hw.board.board_top`, clocked from its
    clock port, sent its bytes after the power-on reset, its reset button pressed after
    ``press_after`` images); the error flag is then the LEDs, ``(class index, error,
    result)``."""
    from amaranth.hdl import ClockDomain, ClockSignal, Module
    from nsm_export import schedule
    if board is None:
        dut = top = UartClassifier(ir, divisor, rom_modules=False)     # Amaranth's simulator
        rx, tx, por, dom = dut.rx, dut.tx, 0, "sync"
    else:
        top = board_top(ir, board, round(board.clock_mhz * 1e6 / divisor), rom_modules=False)
        assert top._classifier._divisor == divisor
        # The top's own domains are local and named sync and por: the bench's is "host".
        dut, dom = Module(), "host"
        dut.domains.host = ClockDomain()
        dut.submodules.top = top
        dut.d.comb += getattr(top, top.PORTS["clk"]).eq(ClockSignal(dom))
        rx, tx, por = (getattr(top, top.PORTS["rx"]), getattr(top, top.PORTS["tx"]),
                       (1 << POR_BITS) + 8)
    replies, error = [], []
    # Enough cycles for one image on the wire and its compute with every input kept.
    max_wait = (ir.input.size * 10 * divisor + 4 * int(schedule.expected_cycles_per_inference(ir))
                + 1_000)

    async def host(ctx):
        if por:
            await ctx.tick(dom).repeat(por)
        for k, img in enumerate(pixels):
            await _send(ctx, rx, bytes(int(p) for p in img), divisor, dom)
            if wait_for_reply:
                for _ in range(max_wait):
                    if len(replies) > k:
                        break
                    await ctx.tick(dom)
            if k + 1 == press_after:
                button = getattr(top, top.PORTS["btn_n"])
                ctx.set(button, 0)
                await ctx.tick(dom).repeat(4)
                ctx.set(button, 1)
                await ctx.tick(dom).repeat(4)

    async def listener(ctx):
        # Decode the tx line with the frame model: wait for a start bit, sample mid-bit.
        for _ in range(len(pixels)):
            for _ in range(por + max_wait):
                if not ctx.get(tx):
                    break
                await ctx.tick(dom)
            else:
                break                                  # no reply: the caller sees fewer
            await ctx.tick(dom).repeat(divisor // 2)
            bits = []
            for _ in range(9):
                await ctx.tick(dom).repeat(divisor)
                bits.append(ctx.get(tx))
            assert bits[8] == 1, "stop bit"
            replies.append(sum(b << k for k, b in enumerate(bits[:8])))
        error.append(ctx.get(dut.error) if board is None else _LEDS[board.name](ctx, top))

    sim = Simulator(dut)
    sim.add_clock(1e-6, domain=dom)
    sim.add_testbench(host)
    sim.add_testbench(listener)
    sim.run()
    return replies, error[0]


@pytest.mark.parametrize("seed,sizes,pe,p,T", [
    (21, [12, 8, 4], [4, 2], [0.5, 0.75], 3),
    (22, [9, 6, 3], [6, 3], [0.25, 1.0], 5),
])
def test_uart_classifier_equals_the_golden_model(seed, sizes, pe, p, T):
    """Images sent back to back over the UART: the class bytes that come back are the golden
    model's classes for a freshly reset core, image by image (the LFSRs run on across images)."""
    rng = np.random.default_rng(seed)
    ir = random_ir(rng, sizes=sizes, pe=pe, p=p, samples=T, seed=seed, lfsr_width=16)
    px = random_pixels(rng, ir, 6)
    # Back to back is safe while an image computes faster than the next one arrives (the FIFO
    # holds one image); at 115,200 baud that is 1,042 cycles per pixel.
    from nsm_export import schedule
    assert schedule.expected_cycles_per_inference(ir) < ir.input.size * 10 * 4
    replies, error = _uart_classify(ir, px, divisor=4)
    expected = golden.run(ir, px).classes
    assert replies == [int(c) for c in expected]
    assert not error
    assert len(set(replies)) > 1 or len(set(expected)) == 1


@pytest.mark.parametrize("board", [ICEBREAKER, ULX3S_25F], ids=lambda b: b.name)
def test_board_top_ports_are_the_pin_file(board):
    ir = random_ir(np.random.default_rng(1), sizes=[8, 5, 3])
    top = board_top(ir, board)
    pins = board.pins()
    assert sorted(port_bits(top)) == sorted(pins)
    assert set(top.PORTS.values()) <= set(pins)
    if board is ICEBREAKER:
        # The iCEBreaker pinout: 12 MHz clock, FTDI UART, user button, LEDs.
        assert pins["clk"] == 35 and pins["rx"] == 6 and pins["tx"] == 9 and pins["btn_n"] == 10
        assert (pins["ledr_n"], pins["ledg_n"]) == (11, 37)
        assert [pins[f"led[{k}]"] for k in range(5)] == [27, 25, 21, 23, 26]
    else:
        # ulx3s_v20.lpf (emard/ulx3s): 25 MHz clock, FT231X UART (named from the FTDI's side),
        # the power button BTN_PWRn, eight LEDs.
        assert (pins["clk_25mhz"], pins["ftdi_txd"], pins["ftdi_rxd"]) == ("G2", "M1", "L4")
        assert pins["btn_pwr_n"] == "D6"
        assert [pins[f"led[{k}]"] for k in range(8)] == "B2 C2 C1 D2 D1 E2 E1 H3".split()
        assert top.PORTS == {"clk": "clk_25mhz", "btn_n": "btn_pwr_n", "rx": "ftdi_txd",
                             "tx": "ftdi_rxd"}
        # Every port 3.3 V CMOS, the clock's frequency given.
        text = board.constraints.read_text()
        for name in pins:
            assert re.search(rf'^IOBUF +PORT "{re.escape(name)}" .*IO_TYPE=LVCMOS33\b', text,
                             re.M), name
        assert re.search(r'^FREQUENCY PORT "clk_25mhz" 25 MHZ;', text, re.M)
        assert board.clock_mhz == 25
    wide = replace(ir, input=irmod.InputSpec(size=8, threshold=3, pixel_bits=9))
    with pytest.raises(ValueError, match="one byte per pixel"):
        UartClassifier(wide, 4)


def test_every_target_has_a_board_and_each_board_its_device():
    from hw.synth import TARGETS
    assert set(BOARDS) == set(TARGETS)
    assert {t: b.name for t, b in BOARDS.items()} == {
        "ice40-up5k": "icebreaker", "ecp5-25k": "ulx3s", "ecp5-85k": "ulx3s"}
    assert ULX3S_85F.target == "ecp5-85k" and ULX3S_25F.target == "ecp5-25k"
    for target, board in BOARDS.items():
        assert board.target == target
        assert board.bitstream == board.top + (".bit" if "ecp5" in target else ".bin")
        assert board.constraints.suffix == (".lpf" if "ecp5" in target else ".pcf")
    assert divisor_for(25e6, 115200) == 217              # 115,207 baud, 0.006 % slow


def test_the_image_fifo_takes_lut_ram_on_the_ulx3s():
    """The ECP5 presets' cores take every EBR block: the ULX3S top's image FIFO asks yosys for
    LUT RAM; the iCEBreaker's (LUTs scarce, EBR left) stays yosys's choice."""
    ir = random_ir(np.random.default_rng(3), sizes=[20, 8, 4])
    styles = {b.name: re.findall(r'ram_style = "(\w+)"', board_verilog(ir, b))
              for b in (ICEBREAKER, ULX3S_25F, ULX3S_85F)}
    assert styles == {"icebreaker": [], "ulx3s": ["distributed"]}


@pytest.mark.parametrize("board", [ICEBREAKER, ULX3S_25F], ids=lambda b: b.name)
def test_board_top_classifies_like_the_golden_model(board):
    """The whole board top in Amaranth's simulator (clock, power-on reset, FIFO, UART, core,
    LEDs), clocked from its clock port and fed on its serial port: the class bytes are the
    golden model's; after the reset button the same images give the same classes again (the
    LFSRs restart from their seeds); the LEDs show the last class and a result, no error."""
    rng = np.random.default_rng(24)
    ir = random_ir(rng, sizes=[10, 6, 4], pe=[3, 2], p=[0.5, 0.75], samples=3, seed=24,
                   lfsr_width=16)
    px = random_pixels(rng, ir, 3)
    expected = [int(c) for c in golden.run(ir, px).classes]
    replies, (led, error, result) = _uart_classify(ir, np.concatenate([px, px]), divisor=4,
                                                   wait_for_reply=True, board=board,
                                                   press_after=len(px))
    assert replies == expected + expected
    assert led == expected[-1] and not error and result


def test_bitstream_for_a_target_without_a_board_is_one_line(tmp_path, monkeypatch):
    import hw.board
    ir = random_ir(np.random.default_rng(2), sizes=[8, 5, 3])
    irmod.save(ir, tmp_path)
    (tmp_path / "nsm.v").write_text("module nsm; endmodule\n")
    monkeypatch.delitem(hw.board.BOARDS, "ecp5-25k")
    res = CliRunner().invoke(main, ["synth", str(tmp_path), "--target", "ecp5-25k",
                                    "--bitstream"])
    assert res.exit_code == 1
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--bitstream" in lines[0] and "ice40-up5k (iCEBreaker)" in lines[0]
    assert "ecp5-85k (ULX3S 85F)" in lines[0]
    res = CliRunner().invoke(main, ["synth", str(tmp_path), "--target", "ice40-up5k",
                                    "--bitstream", "--baud", "5000000"])
    assert res.exit_code == 1 and "5000000 baud cannot be made" in res.stderr


def _fake_board(master: int, ir, wrong_at=None, silent=False):
    """The board's side of the protocol on a pseudo-terminal: read ``n_in`` bytes per image,
    answer with the golden model's class (LFSRs running on across images, as on the board)."""
    import os

    from hw.board import weight_bytes
    model = golden.GoldenModel(ir)
    k = 0
    image = b""
    while len(image) < len(weight_bytes(ir)):          # a RAM core takes its weights first
        image += os.read(master, len(weight_bytes(ir)) - len(image))
    assert image == weight_bytes(ir)
    while True:
        buf = b""
        while len(buf) < ir.input.size:
            try:
                chunk = os.read(master, ir.input.size - len(buf))
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
        if silent:
            continue
        c = int(model.run(np.frombuffer(buf, dtype=np.uint8)[None, :].astype(np.int64))
                .classes[0])
        if k == wrong_at:
            c = (c + 1) % ir.n_classes
        os.write(master, bytes([c]))
        k += 1


@pytest.mark.parametrize("wrong_at,store", [(None, "rom"), (3, "rom"), (None, "ram")])
def test_nsm_board_compares_the_returned_classes_with_golden(tmp_path, wrong_at, store):
    """`nsm board` against a board emulated on a pseudo-terminal: the host side frames the
    images, reads one class byte each and counts every class that differs from the golden
    model (exit status 2 when one does)."""
    import json
    import os
    import threading
    from nsm_export.build import IntLayer, build_ir

    rng = np.random.default_rng(5)
    layers = [IntLayer(rng.integers(-3, 4, (12, 64)), rng.integers(-5, 6, 12), 0.75, 3),
              IntLayer(rng.integers(-3, 4, (10, 12)), rng.integers(-2, 3, 10), 0.5, 3)]
    ir = build_ir(layers, input_size=64, input_threshold=8, samples=4, pe=4, seed=9,
                  weight_store=store)
    irmod.save(ir, tmp_path)
    (tmp_path / "nsm.v").write_text("module nsm; endmodule\n")
    master, slave = os.openpty()
    board = threading.Thread(target=_fake_board, args=(master, ir, wrong_at), daemon=True)
    board.start()
    try:
        res = CliRunner().invoke(main, ["board", str(tmp_path), "--port", os.ttyname(slave),
                                        "--count", "6", "--json"])
    finally:
        os.close(slave)
    s = json.loads(res.stdout)
    assert s["images"] == 6 and (s["weight_bytes_sent"] > 0) == (store == "ram")
    if wrong_at is None:
        assert res.exit_code == 0 and s["mismatches"] == 0
    else:
        assert res.exit_code == 2 and s["mismatches"] == 1
        assert s["first_mismatch"]["image"] == wrong_at and "press its button" in res.stderr


def test_nsm_board_errors_are_one_line(tmp_path):
    import os
    import threading
    ir = random_ir(np.random.default_rng(6), sizes=[64, 6, 3], samples=2)
    irmod.save(ir, tmp_path)
    (tmp_path / "nsm.v").write_text("module nsm; endmodule\n")
    r = CliRunner()
    res = r.invoke(main, ["board", str(tmp_path), "--port", str(tmp_path / "ttyNOPE")])
    assert res.exit_code == 1 and "cannot open the serial port" in res.stderr
    res = r.invoke(main, ["board", str(tmp_path), "--port", str(tmp_path / "ir.json")])
    assert res.exit_code == 1 and "not a serial port" in res.stderr
    master, slave = os.openpty()
    threading.Thread(target=_fake_board, args=(master, ir, None, True), daemon=True).start()
    try:
        res = r.invoke(main, ["board", str(tmp_path), "--port", os.ttyname(slave), "--count",
                              "2"])
    finally:
        os.close(slave)
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("nsm board")]
    assert res.exit_code == 1 and len(lines) == 1 and "no reply from the board" in lines[0]


@pytest.mark.slow
@pytest.mark.icarus
@pytest.mark.parametrize("board,store", [(ICEBREAKER, "ram"), (ICEBREAKER, "rom"),
                                         (ULX3S_85F, "ram")], ids=["icebreaker-ram",
                                                                   "icebreaker-rom", "ulx3s-ram"])
def test_board_top_in_icarus_loads_weights_and_classifies_like_golden(tmp_path, board, store):
    """The whole board top's Verilog (clock, power-on reset, FIFO, UART, core) in Icarus, fed
    like a host feeds it: a RAM-weight core first takes its weight image over the UART, then
    every returned class byte equals the golden model's."""
    import json
    import os

    from cocotb_tools.runner import get_runner

    from hw.board import board_verilog, weight_bytes
    from nsm_export.build import IntLayer, build_ir
    from sim.runner import REPO

    rng = np.random.default_rng(31)
    layers = [IntLayer(rng.integers(-3, 4, (12, 16)), rng.integers(-6, 7, 12), 0.75, 3),
              IntLayer(rng.integers(-3, 4, (4, 12)), rng.integers(-2, 3, 4), 0.5, 3)]
    ir = build_ir(layers, input_size=16, input_threshold=100, samples=3, pe=[4, 2], seed=4,
                  lfsr_width=16, weight_store=store)
    px = rng.integers(0, 256, (5, 16))
    image = weight_bytes(ir)
    assert (len(image) > 0) == (store == "ram")
    vfile = tmp_path / f"{board.top}.v"
    baud = round(board.clock_mhz * 1e6 / 4)                     # 4 clock cycles per bit
    vfile.write_text(board_verilog(ir, board, baud=baud))
    top = board_top(ir, board)
    leds = sorted({name for name in top.signature.members} - set(top.PORTS.values()))
    job = tmp_path / "job"
    job.mkdir()
    (job / "job.json").write_text(json.dumps({
        "divisor": 4, "replies": len(px), "ports": top.PORTS, "leds": leds,
        "bytes": list(image) + [int(p) for p in px.reshape(-1)]}))
    runner = get_runner("icarus")
    runner.build(sources=[vfile], hdl_toplevel=board.top, build_dir=tmp_path / "b",
                 always=True, timescale=("1ns", "1ps"), build_args=["-g2005"],
                 log_file=tmp_path / "build.log")
    runner.test(test_module="sim.tb_board", hdl_toplevel=board.top,
                build_dir=tmp_path / "b", test_dir=tmp_path / "b", timescale=("1ns", "1ps"),
                extra_env={"NSM_JOB": str(job), "PYTHONPATH": os.pathsep.join(
                    [str(REPO), os.environ.get("PYTHONPATH", "")])},
                log_file=tmp_path / "sim.log")
    got = json.loads((job / "replies.json").read_text())
    expected = [int(c) for c in golden.run(ir, px).classes]
    assert got["replies"] == expected
    if board is ICEBREAKER:
        assert got["led"] == expected[-1] and got["ledr_n"] == 1      # no byte dropped
    else:
        assert got["led"] & 0x3F == expected[-1] and got["led"] >> 7 == 0


@pytest.mark.parametrize("code", ["thermometer", "bernoulli"])
def test_uart_classifier_with_the_other_input_codes(code):
    """The UART carries pixels whatever the input code: the thermometer and stochastic encoders
    inside the core turn them into spikes, and the classes still equal the golden model's."""
    from nsm_export.build import IntLayer, bernoulli_probs, build_ir

    rng = np.random.default_rng(41)
    size, levels = 8, 4 if code == "thermometer" else 1
    layers = [IntLayer(rng.integers(-3, 4, (6, size * levels)), rng.integers(-4, 5, 6), 0.75, 3),
              IntLayer(rng.integers(-3, 4, (3, 6)), rng.integers(-2, 3, 3), 0.5, 3)]
    extra = ({"thresholds": [40, 90, 150, 210]} if code == "thermometer"
             else {"probs": bernoulli_probs(255, 8, 8)})
    ir = build_ir(layers, input_size=size, input_threshold=128, samples=3, pe=[3, 3], seed=7,
                  lfsr_width=16, **extra)
    assert ir.input.encoding == code
    px = random_pixels(rng, ir, 5)
    replies, error = _uart_classify(ir, px, divisor=4, wait_for_reply=True)
    assert replies == [int(c) for c in golden.run(ir, px).classes] and not error
    if code == "thermometer":
        # Sent back to back at 4 cycles a bit, the images (320 cycles each on the wire) arrive
        # faster than this core classifies them at T = 12 (over 1,000 cycles): the one-image
        # FIFO overflows, bytes are lost and the error flag (the red LED) says so.
        slow = build_ir(layers, input_size=size, input_threshold=128, samples=12, pe=[3, 3],
                        seed=7, lfsr_width=16, **extra)
        assert schedule.expected_latency_cycles(slow) > 3 * size * 10 * 4
        replies, error = _uart_classify(slow, px, divisor=4)
        assert error and replies != [int(c) for c in golden.run(slow, px).classes]


@pytest.mark.parametrize("rule", [None, "margin:0.3"])
def test_uart_classifier_on_the_popcount_core(rule):
    """The board wraps whichever core the IR builds: the popcount core's classes over the
    UART equal the golden model's, with a stopping rule too."""
    from nsm_export.early_exit import parse_rule
    from nsm_export.testing import random_pop_ir
    rng = np.random.default_rng(23)
    ir = random_pop_ir(rng, sizes=[10, 8, 4], samples=4, pass_samples=2, levels=1)
    if rule:
        ir.early_exit = parse_rule(rule)
        ir.validate()
    px = random_pixels(rng, ir, 4)
    replies, error = _uart_classify(ir, px, divisor=4)
    assert replies == [int(c) for c in golden.run(ir, px).classes]
    assert not error
