"""Folded, event-driven dense-layer engine: ``pe`` neuron lanes, adders and comparators.

Blanked-out inputs cost no cycles: the layer first draws its per-input keep bits and writes the
indices of the kept inputs into a small index memory, then every neuron group walks that list
only. Schedule for one sample (mirrored by :mod:`nsm_export.schedule`, checked in simulation):

``IDLE``    1 cycle, the one in which ``start`` is seen.
``MASK``    ``ceil(n_in / lanes) + 3`` cycles, only when the layer samples (p < 1): ``lanes``
            LFSR draws per cycle (consecutive draws of the one stream, by jump-ahead),
            ``keep_j = low_p_bits(draw_j) < p_num``; kept ``j`` are appended, with their spikes,
            to the index memory, banked ``lanes`` ways so that every bank takes at most one
            entry a cycle (the input spikes hold still while the layer runs); the last three
            cycles flush the draw-lookup-write pipeline.
            Without sampling every input is kept and no index memory exists.
then, for each of the ``ceil(n_out / pe)`` neuron groups, with ``K`` kept inputs:
``ACC``     ``ceil(K / simd)`` cycles, a four-stage pipeline: read the indices (and spikes) of
            ``simd`` consecutive kept inputs (one from each of ``simd`` index banks; the
            missing ones of a partial last beat are masked); register their weight addresses
            (group base + index); read their weight words (``pe`` lanes each, from ``simd``
            copies of the weight memory); add ``+w`` or ``-w`` per lane. With ``simd > 1``
            the ``simd`` signed words of a lane are first summed by an adder tree into a
            register, one more stage.
``DRAIN``   3 cycles (4 with ``simd > 1``): the last beats leave the pipeline.
``WRITE``   1 cycle: hidden layers compare ``acc >= threshold`` and shift ``pe`` spikes into the
            output register; the output layer adds ``acc + bias`` to its class scores.
            ``done`` is high in the last group's ``WRITE``.
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Array, Cat, ClockSignal, Const, Instance, Module, Mux, Signal, signed
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from nsm_export.ir import DenseLayer
from nsm_export.plan import MASK_FLUSH, MEMORY_LINK_PE, SPIKE_WORD, group_overhead
from .lfsr import Lfsr

__all__ = ["DenseEngine", "pack_lanes", "memory_words", "pop_weight_words", "weight_words",
           "weight_width", "load_beats", "n_load_beats",
           "RAM16_MODULE", "RAM16_NAME", "LOAD_BEAT_BITS", "rom_module", "rom_module_name"]

SPIKE_WORD_BITS = SPIKE_WORD.bit_length() - 1
LOAD_BEAT_BITS = 16      # w_axis beat: one 16-bit slice of a weight word (an SPRAM's width)

# The single-port RAM that ``ram`` weight memories are built from: written only while loading,
# read otherwise, no initial contents. Plain Verilog-2005, appended to the generated core.
RAM16_NAME = "nsm_ram16"
RAM16_MODULE = """\
// Single-port 16-bit RAM without initial contents: written or read, never both in one cycle.
// HUGE = 1 (set by `nsm synth` for iCE40) asks yosys for SPRAM even where EBR would be cheaper.
module nsm_ram16 #(parameter DEPTH = 2, parameter ABITS = 1, parameter HUGE = 0) (
  input clk,
  input [ABITS-1:0] addr,
  input we,
  input [15:0] wdata,
  output reg [15:0] rdata
);
  generate
    if (HUGE) begin : huge
      (* ram_style = "huge" *) reg [15:0] mem [0:DEPTH-1];
      always @(posedge clk)
        if (we) mem[addr] <= wdata; else rdata <= mem[addr];
    end else begin : block
      reg [15:0] mem [0:DEPTH-1];
      always @(posedge clk)
        if (we) mem[addr] <= wdata; else rdata <= mem[addr];
    end
  endgenerate
endmodule
"""


def rom_module_name(core: str, index: int) -> str:
    """The Verilog module that holds the ROM weights of layer ``index`` of the core ``core``."""
    return f"{core}_wrom{index}"


def rom_module(name: str, width: int, words: list[int]) -> str:
    """Plain Verilog for a weight ROM ``name``: ``words`` (at least two, padded with zeros),
    ``width`` bits each, read synchronously (``data`` is ``mem[addr]`` of the last clock edge).

    It is what Amaranth writes for an initialized memory with one synchronous read port, but
    written here in one pass: Amaranth's backend builds its initial value bit by bit, which
    would take most of ``nsm compile``'s time on large MLPs (``benchmarks/compile.py``).
    """
    depth = max(2, len(words))
    digits = -(-width // 4)
    mask = (1 << width) - 1
    init = "".join(f"    mem[{a}] = {width}'h{v & mask:0{digits}x};\n"
                   for a, v in enumerate(list(words) + [0] * (depth - len(words))))
    return (f"// Weight ROM: {depth} words of {width} bits, read one clock after the address.\n"
            f"module {name} #(parameter ABITS = {max(1, (depth - 1).bit_length())}) (\n"
            f"  input clk,\n  input [ABITS-1:0] addr,\n  output reg [{width - 1}:0] data\n);\n"
            f"  reg [{width - 1}:0] mem [{depth - 1}:0];\n  initial begin\n{init}  end\n"
            f"  always @(posedge clk)\n    data <= mem[addr];\nendmodule\n")


def pack_lanes(values, bits: int) -> int:
    """Pack integers (two's complement, ``bits`` wide) into one word, lane 0 lowest."""
    word = 0
    for k, v in enumerate(values):
        word |= (int(v) & ((1 << bits) - 1)) << (k * bits)
    return word


def memory_words(layer) -> tuple[list[int], list[int]]:
    """Weight words (group by group, input by input: ``pe`` lanes each) and threshold/bias
    words (one per group), as the engines' memories hold them. A conv layer's inputs are its
    window's ``q = (c*k + i)*k + j`` (the IR's flattening of a filter, ``hw.conv``).

    Lane ``k`` of a word holds its weight in two's complement in bits ``[k*wb, (k+1)*wb)``
    (binary weights: 1 for +1, 0 for -1), as :func:`pack_lanes` packs them; lanes past the
    last neuron hold 0."""
    w2 = np.asarray(layer.weights, dtype=np.int64).reshape(layer.weights.shape[0], -1)
    n_rows, n_cols = w2.shape
    pe, wb = layer.pe, layer.weight_bits
    G = -(-n_rows // pe)
    w = np.zeros((G * pe, n_cols), dtype=np.int64)
    w[:n_rows] = (w2 > 0) if wb == 1 else w2
    lanes = (w & ((1 << wb) - 1)).astype(np.uint64).reshape(G, pe, n_cols)
    # Pack up to 64 bits of lanes at a time in numpy, then join the 64-bit chunks.
    per = 64 // wb
    chunks = []
    for c0 in range(0, pe, per):
        part = lanes[:, c0:c0 + per, :]
        shifts = (np.arange(part.shape[1], dtype=np.uint64) * np.uint64(wb))[None, :, None]
        chunks.append((c0 * wb,
                       np.bitwise_or.reduce(part << shifts, axis=1).reshape(-1).tolist()))
    weights = chunks[0][1]
    for shift, chunk in chunks[1:]:
        weights = [a | (b << shift) for a, b in zip(weights, chunk)]
    offsets = [pack_lanes([layer.offsets[i] if i < n_rows else 0
                           for i in range(g * pe, (g + 1) * pe)], layer.offset_bits)
               for g in range(G)]
    return weights, offsets


def pop_weight_words(layer) -> list[int]:
    """The popcount engine's weight ROM: word ``g*W + w`` holds neuron ``g*pe + n`` of input
    ``w*simd + s`` (of :meth:`beat_weights`: a conv layer's window inputs in beat order) in lane
    ``s*pe + n`` (``weight_bits`` bits, two's complement; binary: 1 for
    +1, 0 for -1); neurons past ``n_out`` and inputs past ``n_in`` are 0."""
    pe, simd, wb = layer.pe, layer.simd, layer.weight_bits
    G, W = layer.groups, layer.words
    w = np.zeros((G * pe, W * simd), dtype=np.int64)
    src = np.asarray(layer.beat_weights(), dtype=np.int64)
    w[:src.shape[0], :src.shape[1]] = (src > 0) if wb == 1 else src
    lanes = (w & ((1 << wb) - 1)).reshape(G, pe, W, simd).transpose(0, 2, 3, 1)  # G, W, s, n
    bits = (lanes[..., None] >> np.arange(wb)) & 1                              # ..., wb
    rows = np.packbits(bits.reshape(G * W, simd * pe * wb).astype(np.uint8), axis=1,
                       bitorder="little")
    return [int.from_bytes(r.tobytes(), "little") for r in rows]


def weight_width(layer) -> int:
    """Bits of a weight word: ``pe`` lanes, times ``simd`` inputs on the popcount engine."""
    return layer.pe * layer.weight_bits * (layer.simd if getattr(layer, "popcount", False) else 1)


def weight_words(layer) -> list[int]:
    """The weight memory's words in the layout of the layer's engine."""
    if getattr(layer, "popcount", False):
        return pop_weight_words(layer)
    return memory_words(layer)[0]


def word_beats(layer) -> int:
    """16-bit load beats per weight word (dense or conv layer)."""
    return -(-weight_width(layer) // LOAD_BEAT_BITS)


def n_weight_words(layer) -> int:
    """Words in a layer's weight memory: one per (neuron group, input), where a conv layer's
    inputs are its window's ``c_in * k * k``."""
    if layer.popcount:
        return layer.groups * layer.words
    if layer.kind == "conv2d":
        return -(-layer.c_out // layer.pe) * layer.c_in * layer.kernel ** 2
    if layer.popcount:
        return layer.groups * layer.words
    return layer.groups * layer.n_in


def n_load_beats(layer) -> int:
    return n_weight_words(layer) * word_beats(layer)


def load_beats(layer) -> list[int]:
    """The 16-bit beats that fill a ``ram`` weight memory, in the order they are sent: word by
    word, the low 16 bits first."""
    mask, n = (1 << LOAD_BEAT_BITS) - 1, word_beats(layer)
    return [(word >> (LOAD_BEAT_BITS * b)) & mask
            for word in weight_words(layer) for b in range(n)]


def weight_memory(m: Module, layer, w_init: list[int], waddrs: list[Signal],
                  engine, rom_name: str | None = None) -> tuple[list, Signal | None]:
    """A dense or conv layer's weight memory (words ``w_init``, :func:`memory_words`), one
    copy per address in ``waddrs`` (block RAMs have one read port): copy ``k`` is read at
    ``waddrs[k]``. Returns the copies' read data and, for ``weight_store == "ram"``, the load
    address (else ``None``).

    ``rom``: an initialized memory ``wmem`` (``wmem{k}`` with several copies); with
    ``rom_name``, instances of that Verilog module instead (:func:`rom_module`, which the
    caller appends to the Verilog: :func:`hw.top.convert` does).
    ``ram``: one uninitialized single-port RAM per 16-bit slice of the word (RAM16_MODULE),
    written only while ``loading`` and read otherwise: what synth_ice40 -spram maps to
    SB_SPRAM256KA (Amaranth memories always carry an initial value, which SPRAM lacks), fed
    by the ``loading``, ``load_en`` and ``load_data`` members of ``engine``. Every copy takes
    the same beats while loading: beat ``b`` of word ``laddr`` when ``load_en``; the caller
    drives ``waddrs`` from the returned ``laddr`` while ``loading``.
    """
    S = len(waddrs)
    depth = max(2, len(w_init))
    rdatas = []
    if layer.weight_store == "ram":
        loading, load_en, load_data = engine.loading, engine.load_en, engine.load_data
        beats = word_beats(layer)
        beat = Signal(range(max(2, beats)))        # no 0-bit signal: yosys writes [-1:0]
        laddr = Signal(range(depth))
        for k in range(S):
            slices = []
            for b in range(beats):
                name = f"wram{b}" if S == 1 else f"wram{k}_{b}"
                rdata = Signal(LOAD_BEAT_BITS, name=f"{name}_rdata")
                m.submodules[name] = Instance(
                    RAM16_NAME, p_DEPTH=depth, p_ABITS=len(waddrs[k]), i_clk=ClockSignal(),
                    i_addr=waddrs[k],
                    i_we=load_en & loading & (beat == b), i_wdata=load_data, o_rdata=rdata)
                slices.append(rdata)
            rdatas.append(Cat(*slices))
        with m.If(load_en & loading):
            m.d.sync += beat.eq(beat + 1)
            with m.If(beat == beats - 1):
                m.d.sync += [beat.eq(0), laddr.eq(laddr + 1)]
        return rdatas, laddr
    width = weight_width(layer)
    for k in range(S):
        if rom_name is not None:
            rdata = Signal(width, name="wmem_data" if S == 1 else f"wmem{k}_data")
            m.submodules["wmem" if S == 1 else f"wmem{k}"] = Instance(
                rom_name, p_ABITS=len(waddrs[k]), i_clk=ClockSignal(), i_addr=waddrs[k],
                o_data=rdata)
            rdatas.append(rdata)
            continue
        wmem = memory.Memory(shape=width, depth=depth, init=w_init)
        m.submodules["wmem" if S == 1 else f"wmem{k}"] = wmem
        wport = wmem.read_port()
        m.d.comb += wport.addr.eq(waddrs[k])
        rdatas.append(wport.data)
    return rdatas, None


def read_kept_list(m: Module, banks, c: Signal, simd: int = 1) -> list:
    """Stage 1 of the accumulate pipeline: the kept-list entries ``c .. c+simd-1`` (``c`` a
    multiple of ``simd``), entry ``q`` being word ``q >> sh`` of bank ``q % lanes``
    (``lanes = len(banks)``, both powers of two, ``simd <= lanes``): entry ``k`` comes from
    a bank ``b`` with ``b % simd == k``. ``banks`` holds (write port, read port) pairs."""
    sh = len(banks).bit_length() - 1
    ss = simd.bit_length() - 1
    csel = Signal(max(1, sh - ss))
    for _, rp in banks:
        m.d.comb += rp.addr.eq(c >> sh)
    if sh > ss:
        m.d.sync += csel.eq(c[ss:sh])
        return [Array(rp.data for _, rp in banks[k::simd])[csel] for k in range(simd)]
    return [banks[k][1].data for k in range(simd)]


def lane_weight(word, lane: int, weight_bits: int, spike):
    """Stage 2: ``lane``'s signed weight in a weight word (binary weights: bit 1 is +1, bit 0
    is -1), negated where the input's ``spike`` is 0."""
    if weight_bits == 1:
        w = Mux(word[lane], Const(1, signed(2)), Const(-1, signed(2)))
    else:
        w = word[lane * weight_bits:(lane + 1) * weight_bits].as_signed()
    return Mux(spike, w, -w)


def accumulate(m: Module, accs: list[Signal], valid, word, spike, weight_bits: int):
    """Stage 2 with one input a cycle: ``acc += ±w`` per lane while ``valid``."""
    with m.If(valid):
        for lane, acc in enumerate(accs):
            m.d.sync += acc.eq(acc + lane_weight(word, lane, weight_bits, spike))


class DenseEngine(wiring.Component):
    """One dense NSM layer, folded over ``layer.pe`` neuron lanes and ``layer.simd`` inputs.

    Parameters
    ----------
    layer : DenseLayer
        The layer from a validated IR.
    score_bits : int
        Width of the class scores (output layer only).

    Members
    -------
    start : In(1)
        Begin one sample; looked at only while idle.
    done : Out(1)
        High for one cycle, in the last cycle of the sample.
    spikes_in : In(n_in)
        Input spikes, bit ``j`` is input ``j`` (1 = +1, 0 = -1); latched in the cycle ``start``
        is taken, so they may change once the layer has started.
        Absent with ``spike_memory=True``: then the spikes live in a memory of 16-bit words
        (bit ``i`` of word ``w`` is input ``16*w + i``), written through ``spk_we``,
        ``spk_addr``, ``spk_data`` while idle (the first layer: no wide register, no wide
        multiplexer). ``spk_we`` enables each bit of the word on its own (a conv layer
        before writes one spike at a time). With ``double=True`` the memory is double-buffered:
        the writer fills one half (switching when ``in_done`` is high) while the engine reads
        the other (switching after each sample).
    spikes_out : Out(groups * pe)
        Hidden layers: output spikes, bit ``i`` is neuron ``i`` (bits past ``n_out`` are padding).
    out_we, out_addr, out_data, out_mask : Out
        Instead of ``spikes_out`` with ``out_memory=True`` (``pe`` 1, 2, 4, 8 or 16): each group's
        ``pe`` spikes are written, as they are decided, into word ``out_addr`` of the next
        engine's (double-buffered) spike memory, the bits set in ``out_mask`` taking
        ``out_data``: no wide output register and no wide latch behind it.
    reseed : In(1)
        Load the LFSR from ``seed`` (see :meth:`nsm_export.ir.LfsrSpec.reseeded`); only while idle.
    seed : In(32)
        The run seed.
    clear : In(1)
        Output layer: zero the scores.
    scores : Out(n_out * score_bits)
        Output layer: the class scores, class ``c`` in bits ``[c*score_bits, (c+1)*score_bits)``.
    loading : In(1)
        ``weight_store == "ram"`` only: the weight memory takes ``load_data`` beats (and is not
        read); a single-port RAM such as iCE40 SPRAM can hold it.
    load_en : In(1)
        A beat is written this cycle: beat ``b`` of word ``a`` is bits ``[16*b, 16*b+16)`` of
        the word at address ``a`` (:func:`load_beats` lists them in order).
    load_data : In(16)
        The beat.
    """

    def __init__(self, layer: DenseLayer, score_bits: int = 1, spike_memory: bool = False,
                 double: bool = False, out_memory: bool = False, rom_name: str | None = None):
        if not isinstance(layer, DenseLayer):
            raise TypeError(f"layer must be a DenseLayer, not {type(layer).__name__}")
        layer.validate("layer")
        self._layer = layer
        self._rom_name = rom_name
        self._score_bits = score_bits
        self._spike_memory = bool(spike_memory)
        self._double = bool(double) and self._spike_memory
        if out_memory and (layer.output or layer.pe not in MEMORY_LINK_PE):
            raise ValueError(f"out_memory needs a hidden layer with pe in {MEMORY_LINK_PE}")
        self._out_memory = bool(out_memory)
        sig = {"start": In(1), "done": Out(1), "reseed": In(1), "seed": In(32)}
        if spike_memory:
            words = -(-layer.n_in // SPIKE_WORD)
            sig.update(spk_we=In(SPIKE_WORD), spk_addr=In(range(max(2, words))),
                       spk_data=In(SPIKE_WORD), in_done=In(1))
        else:
            sig["spikes_in"] = In(layer.n_in)
        if layer.output:
            sig["clear"] = In(1)
            sig["scores"] = Out(layer.n_out * score_bits)
        else:
            if out_memory:
                words = -(-layer.n_out // SPIKE_WORD)
                sig.update(out_we=Out(1), out_addr=Out(range(max(2, words))),
                           out_data=Out(SPIKE_WORD), out_mask=Out(SPIKE_WORD))
            else:
                sig["spikes_out"] = Out(layer.groups * layer.pe)
        if layer.weight_store == "ram":
            sig.update(loading=In(1), load_en=In(1), load_data=In(LOAD_BEAT_BITS))
        super().__init__(sig)

    @property
    def layer(self) -> DenseLayer:
        return self._layer

    def elaborate(self, platform):
        m = Module()
        L = self._layer
        pe, wb, G, n_in = L.pe, L.weight_bits, L.groups, L.n_in
        w_init, o_init = memory_words(L)

        # Depth at least 2: a one-word memory has a 0-bit address, which yosys writes as [-1:0].
        # ``simd`` kept inputs a cycle: ``simd`` copies of the weight memory (block RAMs have
        # one read port), copy ``k`` read at the address of the beat's ``k``-th entry.
        S = L.simd
        ss = S.bit_length() - 1                            # simd is a power of two
        ram = L.weight_store == "ram"
        depth = max(2, len(w_init))
        waddrs = [Signal(range(depth), name=f"waddr{k}") for k in range(S)]
        # ``ram``: every copy takes the same beats while loading, at ``laddr`` (see below).
        wdatas, laddr = weight_memory(m, L, w_init, waddrs, self, self._rom_name)
        m.submodules.omem = omem = memory.Memory(shape=pe * L.offset_bits, depth=max(2, G),
                                                 init=o_init)
        oport = omem.read_port()

        words = -(-n_in // SPIKE_WORD)
        if self._spike_memory:
            abits = len(self.spk_addr)
            m.submodules.spkmem = spkmem = memory.Memory(
                shape=SPIKE_WORD, depth=(2 << abits) if self._double else max(2, words), init=[])
            spk_wr, spk_rd = spkmem.write_port(granularity=1), spkmem.read_port()
            wsel, rsel = Signal(), Signal()    # the halves written and read (double buffer)
            m.d.comb += [spk_wr.en.eq(self.spk_we), spk_wr.data.eq(self.spk_data),
                         spk_wr.addr.eq(Cat(self.spk_addr, wsel) if self._double
                                        else self.spk_addr)]
            if self._double:
                with m.If(self.in_done):
                    m.d.sync += wsel.eq(~wsel)
                with m.If(self.done):
                    m.d.sync += rsel.eq(~rsel)

            def spk_read(word):
                return spk_rd.addr.eq(Cat(word, rsel) if self._double else word)
        else:
            spkmem = None
            # The input spikes are latched when the sample starts, so that the layer before may
            # go on to its next sample at once (layers overlap, see hw.top).
            spk_in = Signal(n_in)
            padded = Cat(spk_in, Const(0, words * SPIKE_WORD - n_in))

        j = Signal(range(n_in + 16))           # MASK: first input of the batch being drawn
        kept = Signal(range(n_in + 1))         # K: kept inputs this sample
        # K - 1 (modulo), kept as its own register so that the end-of-list test is a plain
        # equality of two registers.
        klast = Signal(len(kept), init=(1 << len(kept)) - 1)
        c = Signal(range(n_in + 1))            # ACC: position in the kept list
        g = Signal(range(G + 1))
        base = Signal(range(G * n_in + 1))     # g * n_in, the group's first weight address
        # Per entry k of a beat: stage 1 (index known) valid; stage 1b (weight address
        # registered) valid and spike; stage 2 (weight word known) valid and spike.
        v1 = Signal(S)
        va, za = Signal(S), Signal(S)
        addrs = [Signal(range(depth), name=f"addr{k}") for k in range(S)]
        v2, z2 = Signal(S), Signal(S)
        accs = [Signal(signed(L.acc_bits), name=f"acc{k}") for k in range(pe)]

        if L.sampling:
            lanes = L.lanes
            sh = lanes.bit_length() - 1                    # lanes is a power of two
            chunks = -(-n_in // lanes)
            tail = n_in - (chunks - 1) * lanes             # draws in the last chunk
            m.submodules.rng = rng = Lfsr(L.rng.width, L.rng.seed, L.rng.leap, lanes, tail)
            # The kept list lives in ``lanes`` banks: entry q is word q >> sh of bank q % lanes,
            # so each bank takes at most one of the (up to ``lanes``) entries a cycle appends.
            # Each entry: the kept input's index and its spike, looked up while drawing (from a
            # counter) so that no wide multiplexer follows the memory's read port.
            ibits = (max(2, n_in) - 1).bit_length()
            depth = max(2, -(-n_in // lanes))
            banks = []
            for b in range(lanes):
                mem = memory.Memory(shape=ibits + 1, depth=depth, init=[])
                m.submodules[f"imem{b}"] = mem
                banks.append((mem.write_port(), mem.read_port()))
            # The draws and the spike lookup are pipelined (A: keep bits and the 16-input word
            # holding inputs j..j+lanes-1; B: their spikes and list positions; C: the bank
            # writes), so that no wide multiplexer sits in one clock cycle.
            vA, jA = Signal(), Signal(range(n_in + lanes))
            keepA = Signal(lanes)
            if spkmem is None:
                wordA = Signal(SPIKE_WORD)
                m.d.sync += wordA.eq(padded.word_select(j >> SPIKE_WORD_BITS, SPIKE_WORD)
                                     if words > 1 else padded)
            else:                                  # the read port's register is stage A
                m.d.comb += spk_read((j >> SPIKE_WORD_BITS)[:len(self.spk_addr)])
                wordA = spk_rd.data
            vB, jB = Signal(), Signal(range(n_in + lanes))
            keepB, sB = Signal(lanes), Signal(lanes)
            keep_now = []
            for k in range(lanes):
                draw = rng.ahead[k * L.rng.width:k * L.rng.width + L.p_bits]
                keep_now.append((draw < L.p_num) & (j + k < n_in))
            m.d.sync += [vA.eq(0), keepA.eq(Cat(*keep_now)), jA.eq(j),
                         vB.eq(vA), keepB.eq(keepA), jB.eq(jA),
                         sB.eq(wordA.word_select(jA[sh:SPIKE_WORD_BITS], lanes)
                               if lanes < SPIKE_WORD else wordA)]
            # Entry for lane k goes to position kept + (kept lanes before k).
            before = [Const(0, range(lanes + 1))]
            for k in range(1, lanes + 1):
                before.append(before[-1] + keepB[k - 1])
            written = Signal(range(lanes + 1))
            m.d.comb += written.eq(Mux(vB, before[lanes], 0))
            m.d.sync += [kept.eq(kept + written), klast.eq(klast + written)]
            for b, (wp, _) in enumerate(banks):
                sel = [vB & keepB[k] & ((kept + before[k])[:sh] == b) if sh else vB & keepB[k]
                       for k in range(lanes)]
                data = 0
                for k in range(lanes):
                    data = data | Mux(sel[k], Cat((jB + k)[:ibits], sB[k]), 0)
                row = kept >> sh
                if b < lanes - 1:                  # (b < kept % lanes is never true for the last)
                    row = row + (Const(b, sh) < kept[:sh])
                # Stage C: the bank writes are registered, then made.
                en_c, data_c = Signal(name=f"wen{b}"), Signal(ibits + 1, name=f"wdata{b}")
                row_c = Signal(len(wp.addr), name=f"wrow{b}")
                m.d.sync += [en_c.eq(Cat(*sel).any()), data_c.eq(data), row_c.eq(row)]
                m.d.comb += [wp.en.eq(en_c), wp.data.eq(data_c), wp.addr.eq(row_c)]
            # A beat's entries c .. c+S-1 (c a multiple of S <= lanes) sit in one row of banks
            # (c % lanes) .. (c % lanes) + S - 1: entry k comes from a bank b with b % S == k.
            entries = read_kept_list(m, banks, c, S)
            m.d.comb += [rng.reseed.eq(self.reseed), rng.run_seed.eq(self.seed)]
            idxs = [e[:ibits] for e in entries]
            z1 = Cat(*[e[ibits] for e in entries])
        else:
            # Every input is kept: entry c + k is input c + k (c a multiple of S, so the low
            # bits are k and no adder is needed).
            cbeat = Signal(range(max(2, -(-n_in // S))))
            m.d.sync += cbeat.eq(c >> ss)
            idxs = [Cat(Const(k, ss), cbeat) if ss else cbeat for k in range(S)]
            z1 = Signal(S)
            if spkmem is None:
                beats_in = -(-n_in // S)
                spk_pad = Cat(spk_in, Const(0, beats_in * S - n_in)) if beats_in * S > n_in \
                    else spk_in
                m.d.sync += z1.eq(spk_pad.word_select(c >> ss, S) if beats_in > 1 else spk_pad)
            else:
                bit = Signal(SPIKE_WORD_BITS)
                m.d.comb += [spk_read((c >> SPIKE_WORD_BITS)[:len(self.spk_addr)]),
                             z1.eq(spk_rd.data.word_select(bit[ss:], S))]
                m.d.sync += bit.eq(c[:SPIKE_WORD_BITS])
            m.d.comb += [kept.eq(n_in), klast.eq(n_in - 1)]

        # Stage 1: the indices are known; register the weight addresses (no adder in front of
        # the memory) and the spikes. Stage 1b: fetch the weight words.
        m.d.sync += [va.eq(v1), za.eq(z1), v2.eq(va), z2.eq(za)]
        for k in range(S):
            m.d.sync += addrs[k].eq(base + idxs[k])
            m.d.comb += waddrs[k].eq(Mux(self.loading, laddr, addrs[k]) if ram else addrs[k])
        m.d.comb += oport.addr.eq(g)

        if S == 1:
            # Stage 2: the weight word is here; add it with the spike's sign.
            accumulate(m, accs, v2[0], wdatas[0], z2[0], wb)
        else:
            # Stage 2: sum the beat's words per lane (masked entries add 0) into a register;
            # stage 3: add the sum.
            wmax = 1 if wb == 1 else (1 << (wb - 1)) - 1
            tree = [Signal(range(-S * wmax, S * wmax + 1), name=f"tree{lane}")
                    for lane in range(pe)]
            v3 = Signal()
            m.d.sync += v3.eq(v2.any())
            for lane in range(pe):
                terms = [Mux(v2[k], lane_weight(wdatas[k], lane, wb, z2[k]), 0)
                         for k in range(S)]
                while len(terms) > 1:
                    terms = [terms[i] + terms[i + 1] for i in range(0, len(terms), 2)]
                m.d.sync += tree[lane].eq(terms[0])
            with m.If(v3):
                for lane in range(pe):
                    m.d.sync += accs[lane].eq(accs[lane] + tree[lane])

        lane_off = [oport.data[k * L.offset_bits:(k + 1) * L.offset_bits].as_signed()
                    for k in range(pe)]
        if L.output:
            scores = [Signal(signed(self._score_bits), name=f"score{c}") for c in range(L.n_out)]
            m.d.comb += self.scores.eq(Cat(*scores))
            with m.If(self.clear):
                m.d.sync += [s.eq(0) for s in scores]
        else:
            if self._out_memory:
                obase = Signal(range(G * pe + 1))        # g * pe
                fired_now = Signal(pe)
                sh_o = obase[:SPIKE_WORD_BITS]
                valid = Signal(pe)
                m.d.comb += [valid.eq(Cat(*[obase + k < L.n_out for k in range(pe)])),
                             self.out_addr.eq(obase >> SPIKE_WORD_BITS),
                             self.out_mask.eq((valid << sh_o)[:SPIKE_WORD]),
                             self.out_data.eq((fired_now << sh_o)[:SPIKE_WORD])]
            else:
                out = Signal(G * pe)
                m.d.comb += self.spikes_out.eq(out)

        m.d.sync += v1.eq(0)
        last = Signal()
        m.d.comb += self.done.eq(last)
        with m.FSM():
            with m.State("IDLE"):
                m.d.sync += [j.eq(0), c.eq(0), g.eq(0), base.eq(0)]
                if spkmem is None:
                    with m.If(self.start):
                        m.d.sync += spk_in.eq(self.spikes_in)
                if L.sampling:
                    m.d.sync += [kept.eq(0), klast.eq(klast.init)]
                with m.If(self.start):
                    m.next = "MASK" if L.sampling else "ACC"
            if L.sampling:
                with m.State("MASK"):
                    m.d.sync += [j.eq(j + lanes), vA.eq(1)]
                    with m.If(j == (chunks - 1) * lanes):
                        m.d.comb += rng.en_tail.eq(1)
                        m.next = "FLUSH1"
                    with m.Else():
                        m.d.comb += rng.en.eq(1)
                for f in range(1, MASK_FLUSH):
                    with m.State(f"FLUSH{f}"):
                        m.next = f"FLUSH{f + 1}"
                with m.State(f"FLUSH{MASK_FLUSH}"):      # the last kept inputs are written now
                    with m.If(kept == 0):
                        m.next = "DRAIN1"
                    with m.Else():
                        m.next = "ACC"
            with m.State("ACC"):
                # The beat holding entry K - 1 is the last; its entries past K - 1 are masked.
                final = c[ss:] == klast[ss:]
                m.d.sync += [v1.eq(Cat(*[~final | (Const(k, ss) <= klast[:ss]) if k else 1
                                         for k in range(S)])),
                             c.eq(c + S)]
                with m.If(final):
                    m.d.sync += c.eq(0)
                    m.next = "DRAIN1"
            drains = group_overhead(S) - 1         # the plan's drain cycles, WRITE after
            for d in range(1, drains):
                with m.State(f"DRAIN{d}"):
                    m.next = f"DRAIN{d + 1}"
            with m.State(f"DRAIN{drains}"):
                # ``done`` is a register (high in the last group's WRITE), so the top's state
                # logic does not wait for this engine's group comparison.
                m.d.sync += last.eq(g == G - 1)
                m.next = "WRITE"
            with m.State("WRITE"):
                m.d.sync += [a.eq(0) for a in accs]
                if L.output:
                    for cls in range(L.n_out):
                        with m.If(g == cls // pe):
                            k = cls % pe
                            m.d.sync += scores[cls].eq(scores[cls] + accs[k] + lane_off[k])
                else:
                    fired = Cat(*[accs[k] >= lane_off[k] for k in range(pe)])
                    if self._out_memory:
                        m.d.comb += [fired_now.eq(fired), self.out_we.eq(1)]
                        m.d.sync += obase.eq(Mux(last, 0, obase + pe))
                    else:
                        m.d.sync += out.eq(Cat(out[pe:], fired) if G > 1 else fired)
                m.d.sync += last.eq(0)
                with m.If(last):
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += [g.eq(g + 1), base.eq(base + n_in)]
                    with m.If(kept == 0):
                        m.next = "DRAIN1"
                    with m.Else():
                        m.next = "ACC"
        return m
