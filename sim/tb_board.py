"""cocotb bench for the board top (``hw.board.IcebreakerTop``): what a host does on the serial port.

The job directory (``NSM_JOB``) holds ``job.json``: ``divisor`` (clock cycles per UART bit),
``bytes`` (everything the host sends: the weight image where there is one, then the pixels) and
``replies`` (class bytes to wait for). The bench waits out the power-on reset, sends the bytes
back to back on ``rx`` with the frame model of :mod:`hw.uart`, decodes ``tx`` the same way and
writes ``replies.json``: the class bytes and the LEDs at the end.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, with_timeout

from hw.board import POR_BITS
from hw.uart import frame_bits


@cocotb.test()
async def board_over_uart(dut):
    job = Path(os.environ["NSM_JOB"])
    spec = json.loads((job / "job.json").read_text())
    div, data, want = spec["divisor"], bytes(spec["bytes"]), spec["replies"]
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rx.value = 1
    dut.btn_n.value = 1
    await ClockCycles(dut.clk, (1 << POR_BITS) + 8)
    replies = []

    async def listen():
        while len(replies) < want:
            await FallingEdge(dut.tx)                         # the start bit
            await ClockCycles(dut.clk, div // 2)
            bits = []
            for _ in range(9):
                await ClockCycles(dut.clk, div)
                bits.append(int(dut.tx.value))
            assert bits[8] == 1, f"reply {len(replies)}: stop bit low"
            replies.append(sum(b << k for k, b in enumerate(bits[:8])))

    listener = cocotb.start_soon(listen())
    for byte in data:
        for b in frame_bits(byte):
            dut.rx.value = b
            await ClockCycles(dut.clk, div)
    await with_timeout(listener, spec.get("timeout_us", 20_000), "us")
    (job / "replies.json").write_text(json.dumps({
        "replies": replies, "ledr_n": int(dut.ledr_n.value), "led": int(dut.led.value)}))
