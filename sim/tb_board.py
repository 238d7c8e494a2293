"""cocotb bench for a board top (``hw.board.BoardTop``: the iCEBreaker's or the ULX3S's): what a
host does on the serial port.

The job directory (``NSM_JOB``) holds ``job.json``: ``divisor`` (clock cycles per UART bit),
``bytes`` (everything the host sends: the weight image where there is one, then the pixels),
``replies`` (class bytes to wait for), ``ports`` (the top's ``PORTS``: which port is the clock,
the reset button, ``rx`` and ``tx``) and ``leds`` (the output ports to read at the end). The
bench waits out the power-on reset, sends the bytes back to back on ``rx`` with the frame model
of :mod:`hw.uart`, decodes ``tx`` the same way and writes ``replies.json``: the class bytes and
the LED ports' values at the end.
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
    clk, btn_n, rx, tx = (getattr(dut, spec["ports"][k]) for k in ("clk", "btn_n", "rx", "tx"))
    cocotb.start_soon(Clock(clk, 10, unit="ns").start())
    rx.value = 1
    btn_n.value = 1
    await ClockCycles(clk, (1 << POR_BITS) + 8)
    replies = []

    async def listen():
        while len(replies) < want:
            await FallingEdge(tx)                             # the start bit
            await ClockCycles(clk, div // 2)
            bits = []
            for _ in range(9):
                await ClockCycles(clk, div)
                bits.append(int(tx.value))
            assert bits[8] == 1, f"reply {len(replies)}: stop bit low"
            replies.append(sum(b << k for k, b in enumerate(bits[:8])))

    listener = cocotb.start_soon(listen())
    for byte in data:
        for b in frame_bits(byte):
            rx.value = b
            await ClockCycles(clk, div)
    await with_timeout(listener, spec.get("timeout_us", 20_000), "us")
    (job / "replies.json").write_text(json.dumps({
        "replies": replies, **{name: int(getattr(dut, name).value) for name in spec["leds"]}}))
