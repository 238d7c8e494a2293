"""Mask drawer of the sample-parallel datapath: a layer's keep bits drawn ahead, a batch of
samples at a time, into a double-buffered store.

The datapath processes ``samples`` (T') samples of one image at once: each clock it reads, for
``simd`` consecutive inputs ``j .. j+simd-1``, the keep bits of all T' samples. This block draws
them while the datapath reads the previous batch: it fills the back bank, the datapath reads the
front bank, and ``swap`` exchanges the two.

Draw order (the golden model's, :meth:`nsm_export.golden.GoldenModel._masks`): one layer's LFSR
stream is consumed sample-major, one draw per input ``j = 0 .. n_in-1`` of sample ``t``, then
sample ``t + 1``, image after image; a batch is ``count`` consecutive samples (T' for all but the
last batch of an image, which holds ``T mod T'`` where T' does not divide T). Input ``j`` is kept
when the low ``p_bits`` bits of the draw are below ``p_num``. Nothing about batching changes the
stream: :func:`keep_batches` (the model) cuts the golden stream into batches, nothing else.

Store layout: word ``w`` (read address ``raddr = w``, ``words = ceil(n_in / simd)`` of them)
holds inputs ``j = w*simd .. w*simd+simd-1`` of every sample, sample ``t`` input ``w*simd + s`` at
bit ``t*simd + s``; inputs past ``n_in`` and samples past the bank's ``count`` read as 0
(blanked). :func:`store_words` packs a batch this way.

Drawing: the LFSR (:class:`hw.lfsr.Lfsr`) makes ``lanes`` consecutive draws a clock. ``lanes``
and ``simd`` are powers of two with ``lanes <= simd``, so that a clock's draws, inputs
``c*lanes .. c*lanes+lanes-1`` of one sample, are one aligned group of one word (a sample's first
draw starts a word). The ``simd / lanes`` groups of a sample's word are assembled in a register
and the word is written whole, a clock after its last group: the store has one write port whose
enable has one bit per sample (granularity ``simd``), which keeps the soft logic yosys adds
beside a block RAM for read-during-write small. A sample takes ``chunks = ceil(n_in / lanes)``
clocks, its last clock drawing only ``n_in - (chunks-1)*lanes`` (the LFSR's ``en_tail``). (For
the datapath's rate: a batch takes ``count * chunks`` clocks to draw; the datapath reads each of
the ``words`` words once per neuron group, so with ``lanes == simd`` the drawer keeps up
whenever the layer has at least ``count`` neuron groups.)

Timing (:func:`batch_cycles`): ``start`` high in cycle 0 (while ``busy`` is low) draws in cycles
``1 .. count*chunks`` (``busy`` high); a word is registered after its last group's clock and
written in the next, so ``done`` is high in cycle ``1 + count*chunks``, the cycle the last write
lands. That is the first cycle a ``swap`` shows the batch and the first cycle a next ``start``
is taken: batches back to back start every ``batch_cycles`` clocks. ``count = 0`` draws nothing
(``done`` in cycle 1). Reads have one cycle of latency: ``rdata`` in cycle ``x + 1`` is word
``raddr`` of the front bank as of cycle ``x``; the read and write ports never touch the same
bank in one cycle.
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from nsm_export import lfsr as lfsr_model
from nsm_export.schema import LfsrSpec

from .lfsr import Lfsr

__all__ = ["MaskDrawer", "sample_cycles", "batch_cycles", "store_depth", "keep_batches",
           "store_words", "draw_batches_model"]


# ---- model ------------------------------------------------------------------------------------

def sample_cycles(n_in: int, lanes: int) -> int:
    """Draw clocks for one sample: ``ceil(n_in / lanes)``."""
    return -(-n_in // lanes)


def batch_cycles(n_in: int, lanes: int, count: int) -> int:
    """Clocks from ``start`` (cycle 0) to ``done`` for a batch of ``count`` samples: the start
    cycle plus ``count * ceil(n_in / lanes)`` draw clocks; also the period of back-to-back
    batches."""
    return 1 + count * sample_cycles(n_in, lanes)


def store_depth(n_in: int, simd: int) -> int:
    """Words per bank: ``ceil(n_in / simd)``."""
    return -(-n_in // simd)


def keep_batches(spec: LfsrSpec, p_num: int, p_bits: int, n_in: int, counts, state: int
                 ) -> tuple[list[np.ndarray], int]:
    """The keep bits of successive batches of ``counts[b]`` samples each, drawn from ``state``
    in the golden order: one ``(count, n_in)`` bool array per batch, and the final state."""
    counts = [int(c) for c in counts]
    if any(c < 0 for c in counts):
        raise ValueError(f"batch counts {counts} must not be negative")
    u, state = lfsr_model.draws(spec.width, spec.mask, spec.leap, state, sum(counts) * n_in,
                                p_bits)
    keep = (u < p_num).reshape(-1, n_in)
    ends = np.cumsum(counts)
    return [keep[e - c:e] for c, e in zip(counts, ends)], state


def store_words(keep: np.ndarray, samples: int, simd: int) -> list[int]:
    """What a bank holding ``keep`` (``(count, n_in)`` bool, ``count <= samples``) reads at
    ``raddr = 0 .. words-1``: sample ``t`` input ``w*simd + s`` at bit ``t*simd + s`` of word
    ``w``; samples past ``count`` and inputs past ``n_in`` are 0."""
    count, n_in = keep.shape
    if count > samples:
        raise ValueError(f"a batch of {count} samples does not fit a store of {samples}")
    words = store_depth(n_in, simd)
    full = np.zeros((samples, words * simd), dtype=bool)
    full[:count, :n_in] = keep
    bits = full.reshape(samples, words, simd).transpose(1, 0, 2).reshape(words, samples * simd)
    weights = [1 << b for b in range(samples * simd)]
    return [sum(w for w, bit in zip(weights, row) if bit) for row in bits.tolist()]


def draw_batches_model(spec: LfsrSpec, p_num: int, p_bits: int, n_in: int, samples: int,
                       simd: int, counts, state: int) -> tuple[list[list[int]], int]:
    """The store contents after each batch (:func:`store_words`) and the final LFSR state: what
    :class:`MaskDrawer` holds in its back bank when ``done`` follows each ``start``."""
    batches, state = keep_batches(spec, p_num, p_bits, n_in, counts, state)
    return [store_words(k, samples, simd) for k in batches], state


# ---- hardware ---------------------------------------------------------------------------------

def _power_of_two(name: str, v) -> None:
    if not isinstance(v, int) or v < 1 or v & (v - 1):
        raise ValueError(f"{name} {v!r} must be a power of two")


class MaskDrawer(wiring.Component):
    """Draws a layer's keep bits, ``count <= samples`` samples a batch, into the back bank of a
    double-buffered store that the datapath reads ``simd`` inputs x ``samples`` samples a word.

    Parameters
    ----------
    spec : LfsrSpec
        The layer's LFSR (width, seed, leap; the mask must be the model's for the width).
    p_num, p_bits : int
        Input ``j`` is kept when the low ``p_bits`` bits of its draw are below ``p_num``.
    n_in : int
        Inputs (draws) per sample.
    samples : int
        T': samples a bank holds.
    simd : int
        Inputs a word holds (a power of two).
    lanes : int
        Draws a clock (a power of two, at most ``simd``).

    Members
    -------
    start : In(1)
        Draw a batch of ``count`` samples into the back bank; taken while ``busy`` is low.
    count : In(range(samples + 1))
        Samples in the batch (0 to ``samples``), sampled with ``start``.
    busy : Out(1)
        Drawing (cycles ``1 .. count*ceil(n_in/lanes)`` after ``start``).
    done : Out(1)
        High for one cycle, :func:`batch_cycles` after ``start``: the batch is in the back bank.
    swap : In(1)
        Exchange the banks at the clock edge; taken while ``busy`` is low. With ``start`` in the
        same cycle the batch fills the bank that is back after the swap (the old front).
    bank : Out(1)
        The front bank's index.
    raddr : In(range(max(2, words)))
        Word of the front bank to read (``0 .. words-1``).
    rdata : Out(samples * simd)
        A cycle after ``raddr``: sample ``t`` input ``raddr*simd + s`` at bit ``t*simd + s``;
        samples past the bank's ``count`` and inputs past ``n_in`` read 0.
    reseed : In(1)
        Load the LFSR from ``run_seed`` (:meth:`nsm_export.schema.LfsrSpec.reseeded`); taken
        while ``busy`` is low (also in a ``start`` cycle: the batch then draws from the new seed).
    run_seed : In(32)
        The run seed.
    image : In(1) (with ``jump``)
        With ``start``: the batch is an image's first. The drawer keeps the state each image
        starts from (the seed after reset, the run seed's after ``reseed``); such a batch
        draws from it, and the next image's is ``jump`` applied to it (the state after all
        ``T`` samples of the image: :mod:`nsm_export.early_exit`), however few batches the
        image used.
    abort : In(1) (with ``jump``)
        Drop the batch being drawn: ``busy`` low and no ``done`` from the next cycle (its
        image stopped early); the next ``start`` may follow at once.
    """

    def __init__(self, spec: LfsrSpec, p_num: int, p_bits: int, n_in: int, samples: int,
                 simd: int = 1, lanes: int = 1, jump: list[int] | None = None):
        if not isinstance(spec, LfsrSpec):
            raise TypeError(f"spec {spec!r} must be an LfsrSpec")
        if spec.mask != lfsr_model.galois_mask(spec.width):
            raise ValueError(f"LFSR mask {spec.mask:#x} is not the model's for {spec.width} bits")
        if not isinstance(p_bits, int) or not 1 <= p_bits <= min(spec.width, spec.leap):
            raise ValueError(f"p_bits {p_bits!r} must be in [1, min(width, leap)]")
        if not isinstance(p_num, int) or not 1 <= p_num <= 1 << p_bits:
            raise ValueError(f"p_num {p_num!r} must be in [1, {1 << p_bits}]")
        for name, v in (("n_in", n_in), ("samples", samples)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} {v!r} must be a positive integer")
        _power_of_two("simd", simd)
        _power_of_two("lanes", lanes)
        if lanes > simd:
            raise ValueError(f"lanes {lanes} must not exceed simd {simd} (a clock's draws are "
                             f"one group of one word)")
        self._spec, self._p_num, self._p_bits = spec, p_num, p_bits
        self._n_in, self._samples, self._simd, self._lanes = n_in, samples, simd, lanes
        if jump is not None and (len(jump) != spec.width or any(
                not isinstance(c, int) or not 0 < c < 1 << spec.width for c in jump)):
            raise ValueError(f"jump must be {spec.width} non-zero {spec.width}-bit columns")
        self._jump = jump
        words = store_depth(n_in, simd)
        super().__init__({"start": In(1), "count": In(range(samples + 1)),
                          "busy": Out(1), "done": Out(1), "swap": In(1), "bank": Out(1),
                          "raddr": In(range(max(2, words))), "rdata": Out(samples * simd),
                          "reseed": In(1), "run_seed": In(32),
                          **({"image": In(1), "abort": In(1)} if jump is not None else {})})

    @property
    def spec(self) -> LfsrSpec:
        return self._spec

    @property
    def n_in(self) -> int:
        return self._n_in

    @property
    def samples(self) -> int:
        return self._samples

    @property
    def simd(self) -> int:
        return self._simd

    @property
    def lanes(self) -> int:
        return self._lanes

    @property
    def words(self) -> int:
        return store_depth(self._n_in, self._simd)

    def batch_cycles(self, count: int) -> int:
        return batch_cycles(self._n_in, self._lanes, count)

    def elaborate(self, platform):
        m = Module()
        spec, n_in, lanes, simd = self._spec, self._n_in, self._lanes, self._simd
        chunks = sample_cycles(n_in, lanes)
        tail = n_in - (chunks - 1) * lanes                # draws in a sample's last clock
        per_word = (simd // lanes).bit_length() - 1       # log2(groups of a word)
        wbits = (self.words - 1).bit_length()             # word bits; the bank is the top bit

        m.submodules.rng = rng = Lfsr(spec.width, spec.seed, spec.leap, lanes, tail,
                                      loadable=self._jump is not None)
        # Bank b's word w at address b * 2**wbits + w.
        m.submodules.store = store = memory.Memory(
            shape=self._samples * simd, depth=(1 << wbits) + self.words, init=[])
        wport = store.write_port(granularity=simd)
        rport = store.read_port()

        front = Signal()
        counts = [Signal(range(self._samples + 1), name=f"count{b}") for b in range(2)]
        # Draw position: sample t, clock c of the sample (word c >> per_word, group c % 2**...).
        # (at least one bit each: yosys writes a 0-bit signal as [-1:0])
        t = Signal(range(max(2, self._samples)))
        c = Signal(range(max(2, chunks)))
        last_t = Signal(range(max(2, self._samples)))
        wbank = Signal()
        idle = ~self.busy
        last_c = c == chunks - 1
        if self._jump is not None:
            # Each image starts from ``base``; the next image's is ``jump(base)``, computed in
            # two registered halves (XORs of up to 8 taps, then of those) in the two cycles
            # after an image's first start: nothing else waits on it (the next image's first
            # batch starts after this one is drawn), and no path gets deeper than the LFSR's.
            w = spec.width
            base, mixed = Signal(w, init=spec.seed), Signal(w)
            m.d.comb += mixed.eq(self.run_seed[:w] ^ spec.seed)
            first = idle & self.start & self.image
            half = Signal()
            jump_parts = []
            for i in range(w):
                taps = [b for b in range(w) if (self._jump[b] >> i) & 1]
                parts = []
                for k in range(0, len(taps), 8):
                    group = taps[k:k + 8]
                    init = sum((spec.seed >> b) & 1 for b in group) & 1
                    part = Signal(name=f"jump{i}_{k // 8}", init=init)
                    bit = base[group[0]]
                    for b in group[1:]:
                        bit = bit ^ base[b]
                    m.d.sync += part.eq(bit)
                    parts.append(part)
                jump_parts.append(parts)
            m.d.comb += [rng.load.eq(first), rng.load_state.eq(base)]
            m.d.sync += half.eq(first)
            with m.If(half):
                for i, parts in enumerate(jump_parts):
                    bit = parts[0] if parts else 0
                    for part in parts[1:]:
                        bit = bit ^ part
                    m.d.sync += base[i].eq(bit)
            with m.If(self.reseed & idle):
                m.d.sync += [base.eq(Mux(mixed == 0, spec.seed, mixed)), half.eq(0)]
        m.d.comb += [self.bank.eq(front),
                     rng.reseed.eq(self.reseed & idle), rng.run_seed.eq(self.run_seed),
                     rng.en.eq(self.busy & (~last_c if tail < lanes else 1)),
                     rng.en_tail.eq(self.busy & last_c if tail < lanes else 0)]

        m.d.sync += self.done.eq(0)
        with m.If(idle):
            with m.If(self.swap):
                m.d.sync += front.eq(~front)
            target = ~(front ^ self.swap)                 # the back bank after the swap
            with m.If(self.start):
                m.d.sync += [wbank.eq(target), t.eq(0), c.eq(0), last_t.eq(self.count - 1)]
                for b in range(2):
                    with m.If(target == b):
                        m.d.sync += counts[b].eq(self.count)
                with m.If(self.count == 0):
                    m.d.sync += self.done.eq(1)
                with m.Else():
                    m.d.sync += self.busy.eq(1)
        with m.Else():
            m.d.sync += c.eq(c + 1)
            with m.If(last_c):
                m.d.sync += [c.eq(0), t.eq(t + 1)]
                with m.If(t == last_t):
                    m.d.sync += [self.busy.eq(0), self.done.eq(1)]

        # A word of one sample is assembled in ``stage`` over its simd/lanes clocks (lane k:
        # input c*lanes + k), then registered and written whole (one enable bit per sample).
        keep = []
        for k in range(lanes):
            draw = rng.ahead[k * spec.width:k * spec.width + self._p_bits]
            bit = draw < self._p_num
            if k >= tail:                                 # past n_in in a sample's last clock
                bit = bit & ~last_c
            keep.append(bit)
        keep = Cat(*keep)
        sub = c[:per_word]                                # the clock's group in its word
        stage, word = Signal(simd), Signal(simd)
        for g in range(simd // lanes):
            m.d.comb += word[g * lanes:(g + 1) * lanes].eq(
                Mux(sub == g, keep, stage[g * lanes:(g + 1) * lanes]) if per_word else keep)
        word_end = last_c | (sub == (1 << per_word) - 1) if per_word else 1
        w_en, w_data, w_t = Signal(), Signal(simd), Signal(range(max(2, self._samples)))
        w_addr = Signal(len(wport.addr))
        m.d.sync += [w_en.eq(self.busy & word_end), w_data.eq(word), w_t.eq(t),
                     w_addr.eq((wbank << wbits) | (c >> per_word))]
        with m.If(self.busy):
            m.d.sync += stage.eq(Mux(word_end, 0, word))   # groups not yet drawn stay 0
        if self._jump is not None:
            # (what the word stage holds is drawn over before the next word is written)
            with m.If(self.abort):
                m.d.sync += [self.busy.eq(0), self.done.eq(0)]
        m.d.comb += [wport.addr.eq(w_addr), wport.data.eq(w_data.replicate(self._samples)),
                     wport.en.eq(Cat(*[w_en & (w_t == u) for u in range(self._samples)]))]

        # Read: the front bank's word, its samples past the bank's count blanked.
        read_count = Signal(range(self._samples + 1))
        m.d.comb += rport.addr.eq((front << wbits) | self.raddr[:wbits])
        m.d.sync += read_count.eq(Mux(front, counts[1], counts[0]))
        blank = Cat(*[(read_count > s).replicate(simd) for s in range(self._samples)])
        m.d.comb += self.rdata.eq(rport.data & blank)
        return m
