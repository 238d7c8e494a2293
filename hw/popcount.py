"""Popcount accumulator: one beat of the sample-parallel datapath adds ``pe x simd`` synapses
for each of ``samples`` samples, with popcount trees and shifts (no multiplier).

Semantics of a beat (:func:`beat_model`, :func:`accumulate_model`): for every sample ``t`` and
neuron ``n``

    acc[t][n] += sum over inputs s of keep[t][s] * (w[n][s] if spike[t][s] else -w[n][s])

with ``w`` signed ``weight_bits``-bit integers (binary weights: +1 or -1). Blanked inputs
(``keep`` 0) are gated, not skipped: every beat costs one clock whatever it keeps.

How it is computed (by the model as by the hardware; the tests check the model against a plain
dot product). A weight is ``d + sum_i c_i * b_i`` over the bits ``b_i`` of its lane
(:func:`weight_code`): binary (1 is +1, 0 is -1) ``c = [2], d = -1``; two's complement
``c_i = 2**i`` for ``i < k-1``, ``c_{k-1} = -2**(k-1)``, ``d = 0``. With
``agree_i = ~(b_i ^ spike)``, a spike of 1 adds ``w = d + sum_i c_i * agree_i`` and a spike of
0 adds ``-w = sum_i c_i * agree_i - (sum(c) + d)`` (as ``agree_i = 1 - b_i``), so

    sum = sum_i c_i * count(agree_i & keep)
          + d * count(keep & spike) - (sum(c) + d) * count(keep & ~spike)

* binary weights: the ±1 identity, ``sum = 2 * count(agree & keep) - count(keep)``;
* ``k``-bit weights, bit-planes: ``sum = sum_i c_i * count(agree_i & keep)
  + count(keep & ~spike)`` (a negated weight is its one's complement plus one).

Each ``c_i`` is a power of two with a sign, so the hardware shifts the counts and files them on
the plus or the minus side of one subtraction. Per sample and neuron that is one popcount per
weight bit; the ``count(keep ...)`` term is one popcount per sample, shared by the ``pe``
neurons.

Cost (yosys ``synth_ice40`` on the bare component): per synapse-sample and weight bit one LUT4
for ``~(b ^ spike) & keep & valid`` and about two for its share of the adder tree, plus an
``acc_bits``-wide adder per accumulator; ``pe=4, simd=8, samples=3`` takes 675 LUT4s and
255 flip-flops with binary weights (192 LUT4s of it the twelve 16-bit accumulators), 1,015
with 2-bit weights, 1,769 with 4-bit weights and ``acc_bits`` 20. Stage 1 is a tree of
``ceil(log2 simd)`` adder levels behind one LUT: on an UP5K, between registers, about 45 MHz
at ``simd`` 8 and 31 MHz at ``simd`` 32.

Word layouts:

* ``weights``: ``pe * simd`` lanes of ``weight_bits`` bits, neuron ``n`` of input ``s`` in bits
  ``[(s*pe + n)*wb, (s*pe + n + 1)*wb)`` (two's complement; binary: 1 for +1, 0 for -1). Input
  ``s``'s ``pe`` lanes are the ``hw.dense`` weight word of that input, so a beat's word is the
  ``simd`` consecutive inputs' words side by side (:func:`pack_weights`).
* ``spikes``, ``keep``: sample ``t``, input ``s`` in bit ``t*simd + s`` (:func:`pack_bits`).
* ``acc``: sample ``t``, neuron ``n`` in bits ``[(t*pe + n)*acc_bits, (t*pe + n + 1)*acc_bits)``,
  signed (:func:`unpack_acc`).
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from nsm_export.schema import MAX_WEIGHT_BITS, beat_bits
from .dense import pack_lanes

__all__ = ["PopcountAccumulator", "LATENCY", "MAX_ACC_BITS", "weight_code",
           "offset_coefficients", "beat_model", "accumulate_model", "beat_bits", "wrap",
           "pack_weights", "pack_bits", "unpack_acc", "tree_sum", "shift_add"]

#: Clock edges from a beat to the accumulators: a beat (or a ``clear``) presented in cycle ``c``
#: shows in ``acc`` from cycle ``c + LATENCY`` on (stage 1: registered popcounts; stage 2: the
#: accumulators).
LATENCY = 2
MAX_ACC_BITS = 64


# --- the model ----------------------------------------------------------------------------------

def weight_code(weight_bits: int) -> tuple[list[int], int]:
    """``(c, d)``: a ``weight_bits``-bit weight is ``d + sum_i c_i * b_i`` over its bits ``b_i``
    (binary: 1 is +1, 0 is -1; wider: two's complement)."""
    if weight_bits == 1:
        return [2], -1
    return [1 << i for i in range(weight_bits - 1)] + [-(1 << (weight_bits - 1))], 0


def offset_coefficients(weight_bits: int) -> tuple[int, int]:
    """The factors of ``count(keep & spike)`` and ``count(keep & ~spike)`` in a beat's sum."""
    c, d = weight_code(weight_bits)
    return d, -(sum(c) + d)


def beat_model(weights, spikes, keep, weight_bits: int) -> np.ndarray:
    """What one beat adds: a ``(samples, pe)`` integer array, from the counts the hardware
    takes (module docstring).

    ``weights``: ``(pe, simd)`` signed integers (binary: -1 or +1); ``spikes``, ``keep``:
    ``(samples, simd)`` of 0/1."""
    w = np.asarray(weights, dtype=np.int64)
    z = np.asarray(spikes, dtype=bool)
    k = np.asarray(keep, dtype=bool)
    c, _ = weight_code(weight_bits)
    lane = (w > 0).astype(np.int64) if weight_bits == 1 else w      # the bits as stored
    bits = ((lane[..., None] >> np.arange(weight_bits)) & 1).astype(bool)  # (pe, simd, wb)
    agree = ~(bits[None] ^ z[:, None, :, None])                # (samples, pe, simd, wb)
    counts = (agree & k[:, None, :, None]).sum(2)              # (samples, pe, wb)
    k1, k0 = offset_coefficients(weight_bits)
    offset = k1 * (k & z).sum(-1) + k0 * (k & ~z).sum(-1)      # (samples,)
    return counts @ np.array(c, dtype=np.int64) + offset[:, None]


def wrap(values, bits: int) -> np.ndarray:
    """``values`` modulo ``2**bits``, as signed ``bits``-bit integers (what a register keeps)."""
    v = np.asarray(values, dtype=np.int64) & ((1 << bits) - 1)
    return np.where(v >= 1 << (bits - 1), v - (1 << bits), v)


def accumulate_model(acc, weights, spikes, keep, weight_bits: int,
                     acc_bits: int | None = None) -> np.ndarray:
    """``acc`` (``(samples, pe)``) after one beat; wrapped to signed ``acc_bits`` if given."""
    out = np.asarray(acc, dtype=np.int64) + beat_model(weights, spikes, keep, weight_bits)
    return out if acc_bits is None else wrap(out, acc_bits)


def pack_weights(weights, weight_bits: int) -> int:
    """The ``weights`` word of a beat from ``(pe, simd)`` signed weights (binary: -1 or +1):
    neuron ``n`` of input ``s`` in lane ``s*pe + n``."""
    w = np.asarray(weights, dtype=np.int64)
    if weight_bits == 1:
        if not np.isin(w, (-1, 1)).all():
            raise ValueError(f"binary weights {w.tolist()!r} must be -1 or +1")
        w = (w > 0).astype(np.int64)
    else:
        lo, hi = -(1 << (weight_bits - 1)), (1 << (weight_bits - 1)) - 1
        if w.size and (w.min() < lo or w.max() > hi):
            raise ValueError(f"weights {w.tolist()!r} outside [{lo}, {hi}] for "
                             f"weight_bits {weight_bits}")
    return pack_lanes(w.T.reshape(-1), weight_bits)


def pack_bits(bits) -> int:
    """A ``spikes`` or ``keep`` word from ``(samples, simd)`` 0/1: sample ``t``, input ``s`` in
    bit ``t*simd + s``."""
    return pack_lanes(np.asarray(bits, dtype=np.int64).reshape(-1), 1)


def unpack_acc(word: int, samples: int, pe: int, acc_bits: int) -> np.ndarray:
    """The ``acc`` word as a ``(samples, pe)`` array of signed integers."""
    lanes = [(word >> (i * acc_bits)) & ((1 << acc_bits) - 1) for i in range(samples * pe)]
    return wrap(np.array(lanes, dtype=np.int64), acc_bits).reshape(samples, pe)


# --- the hardware -------------------------------------------------------------------------------

def tree_sum(terms: list):
    """The sum of unsigned ``terms`` as a balanced tree of two-input adders: each level adds
    neighbours pairwise (an odd one out goes up unchanged), so ``n`` terms take
    ``ceil(log2 n)`` levels. Amaranth widens each sum by one bit, so no level overflows; on
    single bits it is a popcount, correct for any count."""
    if not terms:
        return 0
    while len(terms) > 1:
        terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i]
                 for i in range(0, len(terms), 2)]
    return terms[0]


def popcount(m: Module, bits: list, name: str) -> Signal:
    """Stage 1: ``count(bits)`` into a register named ``name``."""
    count = Signal(range(len(bits) + 1), name=name)
    m.d.sync += count.eq(tree_sum(list(bits)))
    return count


def shift_add(terms: list):
    """Stage 2: ``sum(f * count)`` over ``(f, count)`` pairs whose factors ``f`` are powers of
    two with a sign: each count shifted left by ``log2 |f|``, the positive and the negative
    ones summed by two adder trees, then one subtraction."""
    plus, minus = [], []
    for f, count in terms:
        shift = abs(f).bit_length() - 1
        assert abs(f) == 1 << shift, f"factor {f} is not a power of two"
        (plus if f > 0 else minus).append(count << shift)
    return tree_sum(plus) - tree_sum(minus)


class PopcountAccumulator(wiring.Component):
    """``samples x pe`` signed accumulators, each adding ``simd`` gated ``±w`` synapses a beat.

    Two pipeline stages (:data:`LATENCY`): the popcounts of a beat are registered, then shifted
    and added to the accumulators. The module docstring gives the arithmetic and the layouts.

    Parameters
    ----------
    pe : int
        Neurons (lanes of a weight word per input).
    simd : int
        Inputs a beat, any positive number.
    samples : int
        Samples a beat (``T'``), each with its own spikes and keep bits.
    weight_bits : int
        1 (binary, ±1) to 8 (two's complement).
    acc_bits : int
        Accumulator width, from :func:`beat_bits` (one beat's sum) to 64; accumulators wrap
        modulo ``2**acc_bits``.
    shared_spikes : bool
        ``spikes`` is one word that every sample sees (below).
    gate_stage : bool
        Register every gated synapse bit before its popcount (stage 0): one more cycle of
        :attr:`latency`, and the memory reads feeding the block stay out of the popcount
        tree's clock cycle (where a gate and its register share a logic cell).
    input_stage : bool
        Register the beat's words (``weights``, ``spikes``, ``keep``, ``valid``, ``clear``) as
        they come in (stage -1): one more cycle of :attr:`latency`, and the route from the
        memories to the gates, which fan out across the block, is cut in two (on a large ECP5
        core the weight memory's unregistered output to the gate registers is the critical
        path). ``init`` is then read two cycles after ``clear``.

    Members
    -------
    clear : In(1)
        Reset every accumulator to ``init`` before this cycle's beat is added (pipelined with
        the beats: it drops the beats presented before it and keeps this one).
    init : In(pe * acc_bits)
        Neuron ``n``'s start value (every sample) in bits ``[n*acc_bits, (n+1)*acc_bits)``,
        signed, read a cycle after ``clear`` (hold it from ``clear`` to the cycle after); 0
        where unconnected.
    valid : In(1)
        A beat this cycle: ``weights``, ``spikes`` and ``keep`` are added. Without it nothing
        is added (the beat is gated as if every input were blanked).
    weights : In(pe * simd * weight_bits)
        Neuron ``n`` of input ``s`` in bits ``[(s*pe + n)*wb, (s*pe + n + 1)*wb)``.
    spikes : In(samples * simd)
        Sample ``t``, input ``s`` in bit ``t*simd + s`` (1 = +1, 0 = -1); with
        ``shared_spikes``, ``simd`` bits that every sample sees (a code drawn once per image:
        a weight's agreement with its spike is then one gate for all samples).
    keep : In(samples * simd)
        Same layout: 1 where the input is kept, 0 where it is blanked out.
    acc : Out(samples * pe * acc_bits)
        Sample ``t``, neuron ``n`` in bits ``[(t*pe + n)*acc_bits, (t*pe + n + 1)*acc_bits)``,
        signed; includes the beats presented up to ``LATENCY`` cycles ago.
    out_valid : Out(1)
        High in cycle ``c + LATENCY`` for a beat presented in cycle ``c``: ``acc`` has just
        taken it.
    """

    def __init__(self, pe: int, simd: int, samples: int, weight_bits: int, acc_bits: int,
                 shared_spikes: bool = False, gate_stage: bool = False,
                 input_stage: bool = False):
        for name, value in (("pe", pe), ("simd", simd), ("samples", samples)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"popcount accumulator {name} {value!r} must be a positive "
                                 f"integer")
        if not isinstance(weight_bits, int) or not 1 <= weight_bits <= MAX_WEIGHT_BITS:
            raise ValueError(f"popcount accumulator weight_bits {weight_bits!r} must be in "
                             f"[1, {MAX_WEIGHT_BITS}]")
        lo = beat_bits(simd, weight_bits)
        if not isinstance(acc_bits, int) or not lo <= acc_bits <= MAX_ACC_BITS:
            raise ValueError(f"popcount accumulator acc_bits {acc_bits!r} must be in "
                             f"[{lo}, {MAX_ACC_BITS}] (one beat of {simd} inputs with "
                             f"{weight_bits}-bit weights needs {lo})")
        self._pe, self._simd, self._samples = pe, simd, samples
        self._weight_bits, self._acc_bits = weight_bits, acc_bits
        self._shared = bool(shared_spikes)
        self._gate_stage = bool(gate_stage)
        self._input_stage = bool(input_stage)
        super().__init__({"clear": In(1), "valid": In(1), "init": In(pe * acc_bits),
                          "weights": In(pe * simd * weight_bits),
                          "spikes": In(simd if shared_spikes else samples * simd),
                          "keep": In(samples * simd),
                          "acc": Out(samples * pe * acc_bits), "out_valid": Out(1)})

    @property
    def pe(self) -> int:
        return self._pe

    @property
    def simd(self) -> int:
        return self._simd

    @property
    def samples(self) -> int:
        return self._samples

    @property
    def weight_bits(self) -> int:
        return self._weight_bits

    @property
    def acc_bits(self) -> int:
        return self._acc_bits

    @property
    def latency(self) -> int:
        """Clock edges from a beat to ``acc``: :data:`LATENCY`, one more with ``gate_stage``
        and one more with ``input_stage``."""
        return LATENCY + self._gate_stage + self._input_stage

    def _gates(self, m: Module, bits: list, name: str) -> list:
        """The gated synapse bits of a popcount, registered first with ``gate_stage``."""
        if not self._gate_stage:
            return bits
        regs = [Signal(name=f"{name}_g{i}") for i in range(len(bits))]
        m.d.sync += [r.eq(b) for r, b in zip(regs, bits)]
        return regs

    def _plane(self, weights, n: int, i: int) -> list:
        """Bit ``i`` of neuron ``n``'s weights, input by input."""
        wb, pe = self._weight_bits, self._pe
        return [weights[(s * pe + n) * wb + i] for s in range(self._simd)]

    def _offset_counts(self, m: Module, t: int, spikes, keep) -> list:
        """Stage 1, once per sample: ``(factor, count)`` for the ``count(keep & spike)`` and
        ``count(keep & ~spike)`` terms with a factor, as one ``count(keep)`` where the factors
        agree (binary weights)."""
        k1, k0 = offset_coefficients(self._weight_bits)
        if k1 == k0:
            return [(k1, popcount(m, self._gates(m, keep, f"kept{t}"), f"kept{t}"))]
        terms = []
        if k1:
            terms.append((k1, popcount(m, self._gates(m, [k & z for z, k in zip(spikes, keep)],
                                                      f"kept_on{t}"), f"kept_on{t}")))
        if k0:
            terms.append((k0, popcount(m, self._gates(m, [k & ~z for z, k in zip(spikes, keep)],
                                                      f"kept_off{t}"), f"kept_off{t}")))
        return terms

    def _agree_counts(self, m: Module, weights, t: int, n: int, spikes, keep) -> list:
        """Stage 1: ``(c_i, count(agree_i & keep))`` for each bit ``i`` of neuron ``n``'s
        lanes."""
        c, _ = weight_code(self._weight_bits)
        return [(c[i], popcount(m, self._gates(m, [~(b ^ z) & k for b, z, k in
                                                   zip(self._plane(weights, n, i), spikes, keep)],
                                               f"agree{t}_{n}_{i}"), f"agree{t}_{n}_{i}"))
                for i in range(self._weight_bits)]

    def elaborate(self, platform):
        m = Module()
        S, pe, ab = self._simd, self._pe, self._acc_bits
        words = (self.clear, self.valid, self.weights, self.spikes, self.keep)
        if self._input_stage:
            regs = (Signal(name="clear_i"), Signal(name="valid_i"),
                    Signal(len(self.weights), name="weights_i"),
                    Signal(len(self.spikes), name="spikes_i"),
                    Signal(len(self.keep), name="keep_i"))
            m.d.sync += [r.eq(w) for r, w in zip(regs, words)]
            words = regs
        clear_in, valid_in, weights, spikes_in, keep_in = words
        clear1, valid1 = Signal(), Signal()
        clear0, valid0 = clear_in, valid_in
        if self._gate_stage:
            clear0, valid0 = Signal(), Signal()
            m.d.sync += [clear0.eq(clear_in), valid0.eq(valid_in)]
        m.d.sync += [clear1.eq(clear0), valid1.eq(valid0), self.out_valid.eq(valid1)]
        accs = []
        for t in range(self._samples):
            spikes = [spikes_in[(0 if self._shared else t) * S + s] for s in range(S)]
            # Without ``valid`` every input counts as blanked: the counts, and the beat, are 0.
            keep = [keep_in[t * S + s] & valid_in for s in range(S)]
            offset = self._offset_counts(m, t, spikes, keep)
            for n in range(pe):
                beat = Signal(signed(beat_bits(S, self._weight_bits)), name=f"beat{t}_{n}")
                acc = Signal(signed(ab), name=f"acc{t}_{n}")
                m.d.comb += beat.eq(shift_add(self._agree_counts(m, weights, t, n, spikes, keep)
                                              + offset))
                start = self.init[n * ab:(n + 1) * ab].as_signed()
                m.d.sync += acc.eq(Mux(clear1, start, acc) + beat)
                accs.append(acc)
        m.d.comb += self.acc.eq(Cat(*accs))
        return m
