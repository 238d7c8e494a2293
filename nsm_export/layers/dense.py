"""The dense layer kind: a fully connected NSM layer and its event-driven engine (``hw.dense``)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .. import estimate as E
from ..devices import banked_blocks, blocks
from ..plan import MASK_FLUSH, group_overhead
from ..schema import LANES, POP_SIMD, SIMD, WEIGHT_STORES, IRError, LfsrSpec, beat_bits, \
    check_array, check_bool, check_fields, row_l1, signed_bits, spec
from .base import Weighted, memory

__all__ = ["DenseLayer"]

# The most draws per clock the folding search picks by itself: the Fmax estimates hold up to 4
# (FMNIST on iCE40 at lanes 4: 44 to 48 MHz); at 8 the kept-list write logic of a 784-input
# layer falls to 29 MHz. --lanes given explicitly is kept whatever it is.
SEARCH_MAX_LANES = 4
# The popcount engine's drawer writes whole store words: up to 8 draws a clock in the search.
SEARCH_MAX_POP_LANES = 8


@dataclass
class DenseLayer(Weighted):
    """One fully connected NSM layer (semantics in :mod:`nsm_export.ir`)."""
    n_in: int = spec(1, 1 << 20)
    n_out: int = spec(1, 1 << 20)
    weights: np.ndarray = spec(write="npz")      # int64, (n_out, n_in)
    offsets: np.ndarray = spec(write="npz")      # int64, (n_out,): thresholds or biases
    output: bool = spec()                        # the last layer: integer scores, no step
    weight_bits: int = spec()
    p_num: int = spec()                          # keep probability is p_num / 2**p_bits
    p_bits: int = spec()
    rng: LfsrSpec | None = spec(parse=LfsrSpec.parse)   # None exactly when p = 1
    pe: int = spec(1, lambda s: s.n_out)         # neuron lanes working in parallel
    acc_bits: int = spec()                       # signed accumulator width
    offset_bits: int = spec()                    # signed width of thresholds/biases
    lanes: int = spec(choices=LANES, default=1)  # blank-out draws per clock (schedule only)
    weight_store: str = spec(choices=WEIGHT_STORES, default="rom")
    simd: int = spec(choices=POP_SIMD, default=1)  # inputs added per clock (schedule only)
    # T': samples the popcount engine (hw.pdense) runs at once; 0: the kept-list engine
    pass_samples: int = spec(0, 1 << 16, default=0, write="if-set")
    kind = "dense"
    DERIVED = ("p", "p_realized")
    WEIGHT_DIMS = ("n_out", "n_in")
    JSON_ORDER = ("kind", "n_in", "n_out", "output", "weight_bits", "p_num", "p_bits", "p",
                  "p_realized", "rng", "pe", "acc_bits", "offset_bits", "lanes", "weight_store",
                  "simd", "pass_samples")

    @property
    def groups(self) -> int:
        return -(-self.n_out // self.pe)

    @property
    def popcount(self) -> bool:
        """Built by the sample-parallel popcount engine (``pass_samples`` > 0)."""
        return self.pass_samples > 0

    @property
    def words(self) -> int:
        """Popcount engine: beats per neuron group, ``ceil(n_in / simd)``."""
        return -(-self.n_in // self.simd)

    def write_cycles(self, next_simd: int) -> int:
        """Popcount engine: cycles a neuron group hands its result on: the output layer adds
        its ``pe`` sums to the class scores in one; a hidden layer writes ``next_simd`` neurons
        a cycle into the next engine's spike store (one bank each)."""
        return 1 if self.output else max(1, self.pe // next_simd)

    def beat_weights(self) -> np.ndarray:
        """The weights as the popcount engine reads them, ``(n_out, n_in)``."""
        return self.weights

    def pass_cycles(self, engine) -> int:
        """Popcount engine: cycles of one pass, whatever its sample count and draws: the go
        cycle, then per neuron group its beats, the drain and the hand-over."""
        return 1 + self.groups * (self.words + engine.pop_drain
                                  + self.write_cycles(engine.next_simd))

    def on_pass_samples(self, tp: int) -> "DenseLayer":
        """This layer on the popcount engine at ``T' = tp`` (0: the kept-list engine)."""
        return replace(self, pass_samples=tp)

    def pop_acc_bits(self, samples: int) -> int:
        """Popcount engine: accumulator width. A hidden accumulator starts at ``-threshold``
        (a spike is its sign bit); the output layer's adds the samples of a pass together."""
        if self.output:
            tp, l1 = min(self.pass_samples, samples), max(row_l1(self.weights))
            need = signed_bits(-l1 * tp, l1 * tp)
            return max(need, beat_bits(self.simd * tp, self.weight_bits))
        return max(self.signed_acc_bits(), beat_bits(self.simd, self.weight_bits))

    def validate(self, where: str) -> None:
        check_fields(self, where, ("n_in", "n_out", "pe"))
        check_bool(f"{where}.output", self.output)
        check_array(f"{where}.weights", self.weights, (self.n_out, self.n_in))
        check_array(f"{where}.{'bias' if self.output else 'threshold'}", self.offsets,
                    (self.n_out,))
        self.check_weighted(where)
        check_fields(self, where, ("weight_store", "lanes"))
        if not self.sampling and self.lanes != 1:
            raise IRError(f"{where}.lanes {self.lanes} needs sampling: p = 1 draws no random bits")
        check_fields(self, where, ("simd", "pass_samples"))
        if self.popcount:
            if self.sampling and self.lanes > self.simd:
                raise IRError(f"{where}.lanes {self.lanes} exceeds simd {self.simd}: the popcount "
                              f"engine's mask drawer fills one word of simd inputs at a time")
            return
        if self.simd not in SIMD:
            raise IRError(f"{where}.simd {self.simd} must be one of {', '.join(map(str, SIMD))} "
                          f"for the kept-list engine (pass_samples 0)")
        if self.sampling and self.simd > self.lanes:
            raise IRError(f"{where}.simd {self.simd} exceeds lanes {self.lanes}: the kept list "
                          f"gives one entry per bank and clock (raise lanes to {self.simd})")

    # --- golden model ----------------------------------------------------------------------
    def execute(self, z: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``acc_i = sum_j xi_j z_j w_ij``; hidden: ``acc >= threshold``; output: the scores
        ``acc + bias`` summed over the samples ``(N, n_out)``."""
        acc = self.sample_sums(z, mask)                                 # (N, T, n_out)
        if self.output:
            return (acc + self.offsets[None, None, :]).sum(axis=1)
        return acc >= self.offsets[None, None, :]

    def sample_sums(self, z: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Each sample's ``sum_j xi_j z_j w_ij`` ``(N, T, n_out)``, without threshold or bias
        (an output layer's scores start at ``T x bias``: the early-exit rules sum these)."""
        x = np.where(mask, np.where(z, 1, -1), 0).astype(np.int64)
        return x @ self.weights.T.astype(np.int64)

    def synaptic_ops(self) -> int:
        return self.n_in * self.n_out

    # --- cycle model -----------------------------------------------------------------------
    def sample_cycles(self, kept):
        """Cycles for one sample with ``kept`` inputs kept (array-friendly): IDLE + MASK
        (sampling layers: ``lanes`` draws per cycle, then the flush) + per group
        (``ceil(kept / simd)`` beats of ``simd`` kept inputs + drain + write)."""
        mask = -(-self.n_in // self.lanes) + MASK_FLUSH if self.sampling else 0
        return 1 + mask + self.groups * (-(-kept // self.simd) + group_overhead(self.simd))

    def cycles(self, engine, mask):
        """Cycles per sample for the keep bits ``mask`` (``(..., n_in)``); the popcount engine
        spends the same on every sample whatever is kept: its image's cycles over ``T``."""
        if self.popcount:
            return np.full(np.shape(mask)[:-1], engine.image_cycles() / engine.samples)
        return self.sample_cycles(np.asarray(mask).sum(axis=-1))

    def dense_walk(self, engine) -> int:
        """Cycles of a walk over every input with nothing skipped: groups × inputs."""
        return self.groups * self.n_in

    def mean_cycles(self, engine, opt: tuple) -> float:
        """Mean cycles of one sample at folding ``opt``; popcount engine: its busy cycles per
        image (:meth:`nsm_export.plan.Engine.image_cycles`)."""
        if self.popcount:
            return replace(engine, layer=self.folded(opt)).image_cycles()
        return self.folded(opt).sample_cycles(self.p * self.n_in)

    # --- folding and resources -------------------------------------------------------------
    def folded(self, opt: tuple) -> "DenseLayer":
        pe, lanes, simd, store = opt
        return replace(self, pe=pe, lanes=lanes, simd=simd, weight_store=store)

    def options(self, target) -> list[tuple]:
        """The IR's values and their halvings, weights in RAM where the target has SPRAM
        (popcount engine: ROM; ``lanes`` up to ``simd``)."""
        if self.popcount:
            halve = [max(1, self.simd >> k) for k in range(self.simd.bit_length())]
            stores = ["rom", "ram"] if target.capacity["spram"] or self.weight_store == "ram" \
                else ["rom"]
            return [(p, d, s, st) for p in _halvings(self.pe, self.output)
                    for s in sorted(set(halve), reverse=True)
                    for d in ([x for x in LANES if x <= min(s, self.lanes)] or [1])
                    for st in stores]
        pes = sorted({max(1, self.pe >> k) for k in range(self.pe.bit_length())}, reverse=True)
        draws = [d for d in LANES[::-1] if d <= self.lanes] if self.sampling else [1]
        simds = [s for s in SIMD[::-1] if s <= self.simd]
        stores = ["rom", "ram"] if target.capacity["spram"] or self.weight_store == "ram" \
            else ["rom"]
        return [(p, d, s, st) for p in pes for d in draws for s in simds for st in stores
                if not self.sampling or s <= d]

    def free_options(self, target, fixed: dict) -> list[tuple]:
        """``pe`` for 1 to 8, then 2^k and 3 * 2^k neuron groups (the fewest lanes for each),
        ``lanes`` up to :data:`SEARCH_MAX_LANES`, every ``simd``, both stores where the target
        has SPRAM; a value in ``fixed`` (given by the user) is kept."""
        if self.popcount:
            simds = [x for x in POP_SIMD if x <= max(1, 2 * self.n_in)]
            pick = dict(pe=_pop_pe_choices(self.n_out, self.output), lanes=list(LANES),
                        simd=simds,
                        weight_store=["rom", "ram"] if target.capacity["spram"] else ["rom"])
            return [o for o in _combine(pick, fixed)
                    if (o[1] <= min(o[2], SEARCH_MAX_POP_LANES) if self.sampling
                        else o[1] == 1)]
        pick = dict(pe=_pe_choices(self.n_out),
                    lanes=[d for d in LANES if d <= SEARCH_MAX_LANES] if self.sampling else [1],
                    simd=list(SIMD),
                    weight_store=["rom", "ram"] if target.capacity["spram"] else ["rom"])
        return [o for o in _combine(pick, fixed) if not self.sampling or o[2] <= o[1]]

    def cost(self, target, pe: int, lanes: int, simd: int, store: str) -> dict:
        """What the engine costs at this folding (the parts that change with it, and the
        layer's output register; its threshold ROM is small and lands in logic)."""
        if self.popcount:
            return self._pop_cost(target, pe, lanes, simd, store)
        groups = -(-self.n_out // pe)
        width, depth = pe * self.weight_bits, groups * self.n_in
        wb = self.weight_bits
        scale = E.LANE_LUT_SCALE[target.family]
        cost = E.lane_cost(self, target, pe)
        if simd > 1:
            # Per lane an adder tree over simd signed words and its register; per extra input
            # a weight-address adder and its pipeline registers.
            wmax = 1 if wb == 1 else (1 << (wb - 1)) - 1
            tree = (simd * wmax).bit_length() + 1
            abits = max(1, (depth - 1).bit_length())
            cost["luts"] += scale * pe * (simd - 1) * tree * E.LUTS_PER_TREE_BIT \
                + (simd - 1) * abits
            cost["ffs"] += pe * tree + (simd - 1) * (abits + 3)
        E.weight_store_cost(cost, target, width, depth, store, copies=simd)
        if not self.output:
            cost["ffs"] += groups * pe                      # the output spike register
        if self.sampling:
            bits = lanes * self.rng.width
            cost["luts"] += E.LUTS_PER_DRAW_BIT * bits
            cost["ffs"] += E.FFS_PER_DRAW_BIT * bits
            ibits = (max(2, self.n_in) - 1).bit_length() + 1
            cost["bram"] += lanes * blocks(ibits, -(-self.n_in // lanes), target)
        return cost

    def _pop_cost(self, target, pe: int, lanes: int, simd: int, store: str) -> dict:
        """The popcount engine at this folding (:func:`pop_cost`); the spike store it reads is
        :func:`nsm_export.estimate.read_store_blocks`'s."""
        return pop_cost(self, target, pe, lanes, simd, store, beats=-(-self.n_in // simd))

    # --- hardware and report ---------------------------------------------------------------
    def memories(self, engine) -> dict:
        """Weights (one ``pe``-lane word per neuron group and input, ``simd`` copies: one read
        port each) and thresholds or biases (one word per group); the small kept-input index
        and spike buffers are not counted. Popcount engine: one ``pe x simd``-lane word per
        group and beat, the thresholds, the mask drawer's two halves of ``T' x simd``-bit words,
        and the spike store this engine reads (two halves: the first layer's ``simd`` spikes a
        word; else ``simd`` banks of ``T'`` bits side by side)."""
        if self.popcount:
            tp, W = min(self.pass_samples, engine.samples), self.words
            mems = {"weights": memory(self.pe * self.simd * self.weight_bits,
                                      max(2, self.groups * W)),
                    "thresholds": memory(self.pe * self.offset_bits, max(2, self.groups))}
            if self.sampling:
                mems["keep bits"] = memory(tp * self.simd, 2 * W)
            mems["spikes in"] = memory(self.simd * (1 if engine.index == 0 else tp), 2 * W)
            return mems
        return {"weights": memory(self.pe * self.weight_bits, max(2, self.groups * self.n_in),
                                  self.simd),
                "thresholds": memory(self.pe * self.offset_bits, max(2, self.groups))}

    def report_row(self, i: int, engine) -> dict:
        mems = self.memories(engine)
        return {"layer": i, "n_in": self.n_in, "n_out": self.n_out,
                "kind": "output" if self.output else "hidden", "draw_lanes": self.lanes,
                "simd": self.simd, "pass_samples": self.pass_samples, **self.report_common(),
                "memories": mems,
                "memory_bits": sum(m["bits"] for m in mems.values())}

    def engine(self, engine, ir, rom_name: str | None):
        if self.popcount:
            from hw.pdense import PopcountDenseEngine
            return PopcountDenseEngine(self, ir, engine, rom_name=rom_name)
        from hw.dense import DenseEngine
        return DenseEngine(self, ir.score_bits, spike_memory=engine.spike_memory,
                           double=engine.fed, out_memory=engine.out_memory, rom_name=rom_name)


def _pe_choices(n: int) -> list[int]:
    """``pe`` for 1 to 8 groups, then 2^k and 3 * 2^k groups of ``n`` neurons or filters."""
    counts = sorted({g for g in range(1, 9)} | {1 << k for k in range(n.bit_length())}
                    | {3 << k for k in range(n.bit_length())} | {n})
    return sorted({-(-n // g) for g in counts if g <= n}, reverse=True)


def _pop_pe_choices(n: int, output: bool) -> list[int]:
    """Popcount engine: a hidden layer's ``pe`` is a power of two (so that it and the next
    layer's ``simd`` divide one another); the output layer's as the kept-list engine's."""
    if output:
        return _pe_choices(n)
    return [1 << k for k in range(n.bit_length()) if 1 << k <= n][::-1]


def _halvings(pe: int, output: bool) -> list[int]:
    pes = sorted({max(1, pe >> k) for k in range(pe.bit_length())}, reverse=True)
    return pes if output else [p for p in pes if p & (p - 1) == 0 or p == pe]


def _combine(pick: dict, fixed: dict) -> list[tuple]:
    """Every ``(pe, lanes, simd, weight_store)`` of the choices in ``pick``, where a value in
    ``fixed`` replaces its key's choices."""
    pick = {**pick, **{k: [v] for k, v in fixed.items()}}
    return [(p, d, s, st) for p in pick["pe"] for d in pick["lanes"] for s in pick["simd"]
            for st in pick["weight_store"]]


def pop_cost(layer, target, pe: int, lanes: int, simd: int, store: str, beats: int,
             synapse_scale: float = 1.0, engine_luts: float | None = None) -> dict:
    """A popcount engine (dense or conv) at this folding (:mod:`nsm_export.estimate`'s
    ``POP_*``): per synapse-sample and weight bit its gate and share of a popcount tree; per
    accumulator bit an adder and a register; the stage-1 count registers; the mask drawer (LFSR
    lanes, double-buffered keep store of ``ceil(n_in / simd)`` words, ``T'`` banks of
    ``simd`` bits: :func:`nsm_export.devices.banked_blocks`) and its weights, ``beats`` words
    per neuron group (per position for a conv layer; the thresholds land in logic); the spike
    store it reads is :func:`nsm_export.estimate.read_store_blocks`'s. ``synapse_scale`` and
    ``engine_luts`` replace the dense engine's fit (1 and ``POP_ENGINE_LUTS``) for another
    kind's."""
    tp, wb = layer.pass_samples, layer.weight_bits
    scale = E.LANE_LUT_SCALE[target.family]
    G = -(-layer.weights.shape[0] // pe)
    l1 = int(np.abs(layer.weights.reshape(layer.weights.shape[0], -1)).sum(axis=1).max()) \
        if layer.weights.size else 1
    if layer.output:
        accs, per_acc = pe, simd * tp
        ab = signed_bits(-l1 * tp, l1 * tp)
    else:
        accs, per_acc = pe * tp, simd
        ab = signed_bits(-l1 - int(layer.offsets.max()), l1 - int(layer.offsets.min()))
    synapses = accs * per_acc * wb + (0 if layer.output else tp * simd)
    count_bits = accs * wb * per_acc.bit_length()
    cost = {"luts": scale * synapse_scale * (E.POP_LUTS_PER_SYNAPSE * synapses
                                             + E.POP_LUTS_PER_ACC_BIT * accs * ab)
            + (E.POP_ENGINE_LUTS if engine_luts is None else engine_luts),
            "ffs": synapses + accs * ab + count_bits + E.POP_ENGINE_FFS, "bram": 0,
            "spram": 0}
    E.weight_store_cost(cost, target, pe * simd * wb, G * beats, store)
    if layer.sampling:
        bits = lanes * layer.rng.width
        cost["luts"] += E.LUTS_PER_DRAW_BIT * bits + tp * simd
        cost["ffs"] += E.FFS_PER_DRAW_BIT * bits + simd
        # hw.maskdraw's store: T' banks of simd keep bits, each its own write enable
        words = -(-layer.n_in // simd)
        cost["bram"] += banked_blocks(tp, simd, (1 << (words - 1).bit_length()) + words, target)
    return cost
