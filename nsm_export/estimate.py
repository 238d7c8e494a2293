"""Resource estimate of a core, without running a tool: what the folding search and the fit
check use before synthesis.

Each layer kind estimates what its engine costs at a folding (``cost`` in
:mod:`nsm_export.layers`); :func:`estimate` adds what no folding changes (:func:`fixed_cost`).
The calibration below is shared by the kinds: per neuron lane, an adder and accumulator of
``acc_bits`` and a weight pipeline; per blank-out draw per clock, ``lfsr_width`` jump-ahead XORs,
a comparator and the index-bank write logic. Fitted with yosys 0.70 on iCE40 to the
Fashion-MNIST MLP 784-128-10 (binary weights, acc 11 bits) at pe 64/32 and lanes 4/1 (a lane:
1.12 LUT4s and 0.96 FFs per accumulator bit; a draw: 2.7 LUT4s and 1.4 FFs per LFSR bit) and to
a 64-256-10 network with 4-bit weights at pe 4/16 (1.8 LUT4s and 1.4 FFs per accumulator bit,
both families): wider weights cost more per lane, 0.4 per weight bit past the first (with 0.25
the digits core at pe 64 on iCE40 is estimated 8 % short of its 99.9 % of the logic cells).
"""

from __future__ import annotations

import numpy as np

from . import early_exit
from .devices import LANE_LUT_SCALE, SPRAM_SHAPE, banked_blocks, blocks
from .plan import plan, store_wbits

__all__ = ["estimate", "fixed_cost", "layer_cost", "read_store_blocks", "KEYS", "need",
           "need_caps", "fits", "LC_PER_FF", "LC_PER_FF_POP", "FILL"]

LUTS_PER_ACC_BIT = 1.1           # plus LUTS_PER_ACC_BIT_WB per weight bit past the first
LUTS_PER_ACC_BIT_WB = 0.4
FFS_PER_ACC_BIT = 0.9            # plus one FF per weight bit (the weight pipeline)
LUTS_PER_DRAW_BIT = 2.7
FFS_PER_DRAW_BIT = 1.4
LUTS_PER_TREE_BIT = 1.0          # simd: per lane and extra input, per bit of the tree's sum
LOAD_LUTS = 16                   # a ram weight store's load counters
# What no folding changes (an absolute estimate, for the folding search before any synthesis):
# the top, each engine's counters and state machine, the threshold ROMs and the argmax (a base
# per family), and the class scores' adders (per score bit, times the family's adder scale).
# Fitted to the NSM rows of benchmarks/results/hardware.json (digits 64-256-10 and FMNIST
# 784-128-10 on both families) and five simd builds (FMNIST at pe 32/simd 2, 16/4, 32/2,2 on
# iCE40 and 64/2 on ECP5; digits at pe 64/simd 1,2 on iCE40): within 4 % of yosys's LUTs on
# iCE40, and up to 9 % over on ECP5; EBR and SPRAM exact. On iCE40 the binding count is logic
# cells, about LUTs + 0.6 FFs (a LUT and an FF share a cell only where they connect).
BASE_LUTS = {"ice40": 1020, "ecp5": 1020}
SCORE_LUTS = 2.0
BASE_FFS = {"ice40": 470, "ecp5": 270}
LC_PER_FF = {"ice40": 0.6, "ecp5": 0.0}
# The popcount core packs most of its flip-flops (the gate registers) with their LUTs: 0.29 to
# 0.33 logic cells per FF past the LUTs in its four UP5K builds.
LC_PER_FF_POP = {"ice40": 0.33, "ecp5": 0.0}
# The popcount engine (hw.pdense): per synapse-sample and weight bit a beat adds (its gate,
# registered, and its share of a popcount tree), per accumulator bit, and per engine (counters,
# state machine, spike-store glue). Fitted by least squares to the yosys/nextpnr builds of
# benchmarks/pop_calibration.py (results/pop-calibration.json: the FMNIST MLP at four foldings
# and the digits MLP on iCE40 UP5K, the FMNIST MLP at two on ECP5-25F; LUTs within 6 %); the
# flip-flops are one per gate, accumulator and count bit (exact on ECP5, within 6 % on iCE40).
POP_LUTS_PER_SYNAPSE = 1.3
POP_LUTS_PER_ACC_BIT = 1.2
POP_ENGINE_LUTS = 400
POP_ENGINE_FFS = 0
FILL = 0.95     # a suggestion leaves 5 % of the logic free for packing and routing
KEYS = ("luts", "ffs", "bram", "spram")


def lane_cost(layer, target, pe: int) -> dict:
    """The ``pe`` adder lanes of a dense or conv engine: accumulators and weight pipelines."""
    wb, acc = layer.weight_bits, layer.acc_bits
    scale = LANE_LUT_SCALE[target.family]
    return {"luts": scale * pe * acc * (LUTS_PER_ACC_BIT + LUTS_PER_ACC_BIT_WB * (wb - 1)),
            "ffs": pe * (FFS_PER_ACC_BIT * acc + wb), "bram": 0, "spram": 0}


def weight_store_cost(cost: dict, target, width: int, depth: int, store: str,
                      copies: int = 1) -> None:
    """Add ``copies`` weight memories of ``width`` x ``depth`` to ``cost``: block RAM for
    ``rom``; for ``ram`` an address multiplexer per copy, the load counters and SPRAM where the
    target has it (16-bit-wide block RAM otherwise)."""
    if store == "rom":
        cost["bram"] += copies * blocks(width, depth, target)
        return
    cost["luts"] += copies * max(1, (depth - 1).bit_length()) + LOAD_LUTS
    if target.capacity["spram"]:
        sw, sd = SPRAM_SHAPE
        cost["spram"] += copies * -(-width // sw) * -(-depth // sd)
    else:
        cost["bram"] += copies * -(-width // 16) * blocks(16, depth, target)


def estimate(ir, target, folding: list[tuple] | None = None) -> dict:
    """Estimated LUTs, FFs, block RAMs and SPRAMs of the whole core at ``folding`` (per layer
    ``(pe, lanes, simd, weight_store)``; default: the IR's own), without running a tool: each
    layer kind's ``cost`` plus what no folding changes (:func:`fixed_cost`)."""
    folding = folding or [ly.own() for ly in ir.layers]
    est = fixed_cost(ir, target)
    for i, (layer, opt) in enumerate(zip(ir.layers, folding)):
        for k, v in layer_cost(ir, i, target, opt).items():
            est[k] += v
    return est


def read_store_blocks(ir, i: int, target, simd: int) -> int:
    """Block RAMs of the spike store that popcount engine ``i`` (not the first: the top's
    spike memory is in :func:`fixed_cost`) reads at ``simd`` inputs a beat, built as
    ``hw.pdense.spike_store`` builds it: ``simd`` banks of ``T'`` bits, each with its own write
    enable, two halves of its beats (:func:`nsm_export.plan.store_wbits`)."""
    layer = ir.layers[i]
    if i == 0 or layer.kind not in ("dense", "conv2d") or not layer.popcount:
        return 0
    tp = min(layer.pass_samples, ir.samples)
    words = layer.h_in * layer.w_in * -(-layer.c_in // simd) if layer.kind == "conv2d" \
        else -(-layer.n_in // simd)
    return banked_blocks(simd, tp, (1 << store_wbits(words)) + words, target)


def layer_cost(ir, i: int, target, opt: tuple) -> dict:
    """What layer ``i`` costs at folding ``opt`` (``pe, lanes, simd, weight_store``): its
    kind's ``cost`` and, on the popcount datapath, the spike store it reads
    (:func:`read_store_blocks`), which depends on its own ``simd``."""
    cost = dict(ir.layers[i].cost(target, *opt))
    cost["bram"] += read_store_blocks(ir, i, target, opt[2])
    return cost


def fixed_cost(ir, target) -> dict:
    """What the core costs whatever the folding: the top's state, the input encoder
    (:meth:`InputSpec.cost`) and argmax, each engine's counters and state, the class scores, the
    latched input spikes of every dense layer but the first, and the first engine's spike
    memory."""
    C, sb = ir.n_classes, ir.score_bits
    spikes = ir.input.n_spikes
    est = {"luts": BASE_LUTS[target.family]
           + LANE_LUT_SCALE[target.family] * SCORE_LUTS * C * sb,
           "ffs": BASE_FFS[target.family] + C * sb
           + sum(ly.n_in for ly in ir.layers[1:] if ly.kind == "dense"),
           "bram": blocks(16, -(-spikes // 16), target), "spram": 0}
    for k, v in ir.input.cost(target).items():
        est[k] += v
    if ir.early_exit.active:
        # hw.exitrule: two score multiplexers, the lead's subtractor and compare, the need
        # table in block RAM; each drawer's image-start state and its jump's XOR network
        # (about w * w / 2 taps, three to a LUT4).
        B = len(early_exit.boundaries(ir)) - 1
        est["luts"] += LANE_LUT_SCALE[target.family] * 2 * SCORE_LUTS * C * sb + 3 * sb + 40
        est["ffs"] += 3 * sb + 2 * C.bit_length() + 16
        est["bram"] += blocks(sb + 1, max(1, B * C * C), target)
        for st in plan(ir):
            if st.layer.sampling and st.layer.rng is not None:
                w = st.layer.rng.width
                est["luts"] += w * w // 6
                est["ffs"] += w
    return est


def need_caps(cap: dict) -> tuple:
    """What a design may use of each of ``KEYS``: the device, 5 % of the logic to spare."""
    return (FILL * cap["luts"], FILL * cap["ffs"], cap["bram"], cap["spram"])


def need(est: dict, cap: dict, lc_per_ff: float = 0.0):
    """Per resource of ``KEYS`` (rows) and candidate (columns of the estimate's arrays), what
    the candidate uses and the share of :func:`need_caps` that this is: a candidate fits where
    no share is above 1. ``lc_per_ff``: the first row counts logic cells (LUTs + ``lc_per_ff``
    x FFs), where a synthesized design's counts are not at hand. A resource the device lacks
    has a share of 0 where none is used, else infinite."""
    used = np.array([est["luts"] + lc_per_ff * est["ffs"], est["ffs"], est["bram"],
                     est["spram"]], dtype=float)
    caps = np.array(need_caps(cap), dtype=float)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(caps > 0, used / np.where(caps > 0, caps, 1.0),
                         np.where(used > 0, np.inf, 0.0))
    return used, share


def fits(est: dict, cap: dict, lc_per_ff: float = 0.0):
    """Per candidate, whether it fits: no share of :func:`need` above 1 (a correctly rounded
    ``used / cap`` is at most 1 exactly where ``used <= cap``)."""
    return (need(est, cap, lc_per_ff)[1] <= 1).all(axis=0)
