"""The iCEBreaker example: UART against its frame model, the UART-fed core against the golden model
(class indices equal, image by image), the pin file against the top's ports."""

from dataclasses import replace

import numpy as np
import pytest
from amaranth.sim import Simulator
from click.testing import CliRunner

from hw.board import ICEBREAKER, IcebreakerTop, UartClassifier, pcf_pins, port_bits
from hw.uart import UartRx, UartTx, divisor_for, frame_bits
from nsm.cli import main
from nsm_export import golden
from nsm_export import ir as irmod
from nsm_export.random_ir import random_ir, random_pixels


def test_divisor_for_the_board_clock():
    assert divisor_for(12e6, 115200) == 104              # 115,385 baud, 0.16 % fast
    assert divisor_for(12e6, 9600) == 1250
    with pytest.raises(ValueError, match="cannot be made"):
        divisor_for(12e6, 5_000_000)                       # 2.4 cycles per bit: 20 % off
    with pytest.raises(ValueError, match="outside"):
        frame_bits(256)


async def _send(ctx, line, data: bytes, divisor: int, gap: int = 0):
    for byte in data:
        for b in frame_bits(byte):
            ctx.set(line, b)
            await ctx.tick().repeat(divisor)
        if gap:
            await ctx.tick().repeat(gap)


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


def _uart_classify(ir, pixels, divisor, gap=0):
    """Stream ``pixels`` (one byte each, images back to back) into the UART classifier and
    decode the bytes it sends back."""
    dut = UartClassifier(ir, divisor)
    replies, errors = [], []

    async def host(ctx):
        await _send(ctx, dut.rx, bytes(int(p) for p in pixels.reshape(-1)), divisor, gap)

    async def listener(ctx):
        # Decode the tx line with the frame model: wait for a start bit, sample mid-bit.
        for _ in range(len(pixels)):
            await ctx.tick().until(~dut.tx)
            await ctx.tick().repeat(divisor // 2)
            bits = []
            for _ in range(9):
                await ctx.tick().repeat(divisor)
                bits.append(ctx.get(dut.tx))
            assert bits[8] == 1, "stop bit"
            replies.append(sum(b << k for k, b in enumerate(bits[:8])))
            errors.append(ctx.get(dut.error))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(host)
    sim.add_testbench(listener)
    sim.run()
    return replies, errors


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
    replies, errors = _uart_classify(ir, px, divisor=4)
    expected = golden.run(ir, px).classes
    assert replies == [int(c) for c in expected]
    assert not any(errors)
    assert len(set(replies)) > 1 or len(set(expected)) == 1


def test_board_top_ports_are_the_pin_file():
    ir = random_ir(np.random.default_rng(1), sizes=[8, 5, 3])
    top = IcebreakerTop(ir)
    pins = pcf_pins(ICEBREAKER.constraints)
    assert sorted(port_bits(top)) == sorted(pins)
    # The iCEBreaker pinout: 12 MHz clock, FTDI UART, user button, LEDs.
    assert pins["clk"] == 35 and pins["rx"] == 6 and pins["tx"] == 9 and pins["btn_n"] == 10
    assert (pins["ledr_n"], pins["ledg_n"]) == (11, 37)
    assert [pins[f"led[{k}]"] for k in range(5)] == [27, 25, 21, 23, 26]
    wide = replace(ir, input=irmod.InputSpec(size=8, threshold=3, pixel_bits=9))
    with pytest.raises(ValueError, match="one byte per pixel"):
        UartClassifier(wide, 4)


def test_bitstream_for_another_target_is_one_line(tmp_path):
    ir = random_ir(np.random.default_rng(2), sizes=[8, 5, 3])
    irmod.save(ir, tmp_path)
    (tmp_path / "nsm.v").write_text("module nsm; endmodule\n")
    res = CliRunner().invoke(main, ["synth", str(tmp_path), "--target", "ecp5-25k",
                                    "--bitstream"])
    assert res.exit_code == 1
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--bitstream" in lines[0] and "ice40-up5k" in lines[0]
    res = CliRunner().invoke(main, ["synth", str(tmp_path), "--target", "ice40-up5k",
                                    "--bitstream", "--baud", "5000000"])
    assert res.exit_code == 1 and "5000000 baud cannot be made" in res.stderr
