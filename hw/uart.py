"""An 8N1 UART: one start bit, eight data bits (least significant first), one stop bit, no parity.

Both directions count ``divisor`` clock cycles per bit (``divisor = f_clk / baud``, rounded; 104
for 115,200 baud at 12 MHz, 0.16 % fast). :func:`frame_bits` is the Python model of one frame on
the wire; the tests drive and check the hardware with it.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["UartRx", "UartTx", "frame_bits", "divisor_for"]

#: Largest baud-rate error (relative) that 8N1 framing tolerates with margin: the stop bit is
#: sampled 9.5 bits after the start edge, so both ends together may drift under half a bit.
MAX_BAUD_ERROR = 0.02


def frame_bits(byte: int) -> list[int]:
    """The line levels of one 8N1 frame: start (0), bits 0..7, stop (1)."""
    if not 0 <= byte < 256:
        raise ValueError(f"byte {byte!r} is outside [0, 255]")
    return [0] + [(byte >> k) & 1 for k in range(8)] + [1]


def divisor_for(clock_hz: float, baud: int) -> int:
    """Clock cycles per bit for ``baud`` at ``clock_hz``; ValueError if the rate error would
    exceed :data:`MAX_BAUD_ERROR`."""
    if baud <= 0:
        raise ValueError(f"baud rate {baud!r} must be positive")
    div = round(clock_hz / baud)
    if div < 2 or abs(clock_hz / div - baud) / baud > MAX_BAUD_ERROR:
        raise ValueError(f"{baud} baud cannot be made from a {clock_hz / 1e6:g} MHz clock "
                         f"within {100 * MAX_BAUD_ERROR:g} % (nearest divisor {div})")
    return div


class _Serial(wiring.Component):
    """What both directions share: ``divisor`` clock cycles per bit."""

    def __init__(self, divisor: int, members: dict):
        if isinstance(divisor, bool) or not isinstance(divisor, int) or divisor < 2:
            raise ValueError(f"divisor {divisor!r} must be an integer of at least 2")
        self._divisor = divisor
        super().__init__(members)

    @property
    def divisor(self) -> int:
        return self._divisor


class UartRx(_Serial):
    """8N1 receiver. The line is synchronized through two flip-flops, the start bit is confirmed
    half a bit after its falling edge, and every later bit is sampled in its middle.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit, at least 2.

    Members
    -------
    rx : In(1)
        The serial line, idle high.
    data : Out(8)
        The last byte received; valid while ``valid`` is high.
    valid : Out(1)
        High for one cycle when a byte with a good stop bit has arrived.
    error : Out(1)
        High for one cycle when a frame ended with a low stop bit (framing error, or a break);
        that byte is dropped.
    """

    def __init__(self, divisor: int):
        super().__init__(divisor, {"rx": In(1, init=1), "data": Out(8), "valid": Out(1),
                                   "error": Out(1)})

    def elaborate(self, platform):
        m = Module()
        div = self._divisor
        meta = Signal(init=1)
        line = Signal(init=1)
        m.d.sync += [meta.eq(self.rx), line.eq(meta)]
        count = Signal(range(div))
        bit = Signal(range(8))
        shift = Signal(8)
        m.d.comb += self.data.eq(shift)
        m.d.sync += [self.valid.eq(0), self.error.eq(0)]
        with m.FSM():
            with m.State("IDLE"):
                with m.If(~line):
                    m.d.sync += count.eq(div // 2 - 1 if div > 2 else 0)
                    m.next = "START"
            with m.State("START"):
                with m.If(count != 0):
                    m.d.sync += count.eq(count - 1)
                with m.Elif(line):                    # a glitch, not a start bit
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += [count.eq(div - 1), bit.eq(0)]
                    m.next = "DATA"
            with m.State("DATA"):
                with m.If(count != 0):
                    m.d.sync += count.eq(count - 1)
                with m.Else():
                    m.d.sync += [shift.eq(Cat(shift[1:], line)), count.eq(div - 1),
                                 bit.eq(bit + 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(count != 0):
                    m.d.sync += count.eq(count - 1)
                with m.Else():
                    m.d.sync += [self.valid.eq(line), self.error.eq(~line)]
                    with m.If(line):
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "BREAK"
            with m.State("BREAK"):                    # wait for the line to go idle again
                with m.If(line):
                    m.next = "IDLE"
        return m


class UartTx(_Serial):
    """8N1 transmitter with a valid/ready handshake.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit, at least 2.

    Members
    -------
    tx : Out(1)
        The serial line, idle high.
    data : In(8)
        The byte to send, taken when ``valid`` and ``ready`` are both high.
    valid : In(1)
        A byte is offered.
    ready : Out(1)
        The transmitter takes the offered byte this cycle: it is idle, or in the last cycle of
        a stop bit (frames offered back to back leave no gap).
    """

    def __init__(self, divisor: int):
        super().__init__(divisor, {"tx": Out(1, init=1), "data": In(8), "valid": In(1),
                                   "ready": Out(1)})

    def elaborate(self, platform):
        m = Module()
        div = self._divisor
        frame = Signal(10, init=0x3FF)               # shifted out LSB first; idle = all ones
        left = Signal(range(11))                     # bits still to send
        count = Signal(range(div))
        # Ready when idle, or in the last cycle of a stop bit, so that frames offered back to
        # back follow each other with no idle cycle between them.
        m.d.comb += [self.tx.eq(frame[0]),
                     self.ready.eq((left == 0) | ((left == 1) & (count == 0)))]
        with m.If(self.ready & self.valid):
            m.d.sync += [frame.eq(Cat(Const(0, 1), self.data, Const(1, 1))),
                         left.eq(10), count.eq(div - 1)]
        with m.Elif(left != 0):
            with m.If(count != 0):
                m.d.sync += count.eq(count - 1)
            with m.Else():
                m.d.sync += [frame.eq(Cat(frame[1:], Const(1, 1))), left.eq(left - 1),
                             count.eq(div - 1)]
        return m
