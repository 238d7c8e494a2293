"""Trained presets, one per FPGA part: the network each small part holds at a useful rate, and
the recipe that trains it on Fashion-MNIST.

Each preset is a conv net chosen with the folding search (``nsm compile --target PART``, no tool
runs) to the part's block memory and logic and to the popcount datapath's strengths: a few
small zero-padded ("same") 5x5 or 3x3 convolutions with OR pooling feed one narrow dense layer,
so the weights fit on chip (the UP5K's 1 Mbit of SPRAM, the ECP5-25F's 56 EBR) and each layer
re-uses its weights across T' samples a pass. The recipe is the one that worked on the large
presets (docs/training.md): an 8-level thermometer input code (16 levels on the ECP5-85F),
L1 batch norm (folded into integer thresholds), keep probability 0.875 in the convs and 0.75
in the dense layers, float pre-training then quantization-aware fine-tuning of the float
weights at the preset's width (``mse`` quantizer) with a smaller learning rate.

``nsm train --preset PART`` runs both stages; ``benchmarks/edge.py`` takes the trained
checkpoint through ONNX, the IR, Verilog, nextpnr and a Verilator co-simulation, and records
what the RTL measured in ``benchmarks/results/edge.json``. Pure Python (no torch import), so
the command line's help and the benchmarks read it cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Preset", "PRESETS", "stage_configs", "float_path", "tune_path"]


@dataclass(frozen=True)
class Preset:
    """One part's network and recipe.

    ``train``: :class:`nsm_train.train.TrainConfig` fields every stage shares. Stage 1 trains
    float weights (``float_epochs`` at ``float_lr``); ``float_restarts``, ``(epochs, lr)``
    pairs, are further float stages, each a new cosine schedule from the float model before it
    (warm restarts); the last stage starts from the last float model (``init``) and trains
    ``weight_bits``-bit weights (``output_weight_bits`` in the output layer,
    ``conv_weight_bits`` in the conv layers where it is not None) for ``tune_epochs`` at
    ``tune_lr``; ``tune_restarts``, ``(epochs, lr)`` pairs, are further fine-tuning stages at
    the same widths, each a new cosine schedule from the fine-tuned model before it, the last
    writing the preset's model. ``samples`` is the T the hardware runs and evaluation
    uses. ``compile_options``: what ``nsm compile --target PART`` gets besides (a
    ``--throughput`` goal makes the folding search take the smallest design that meets it
    rather than the fastest, where the fastest does not place). ``goal``: the accuracy
    (fraction) and rate (inferences/s, None for none) the part should reach, alternatives in a
    list; the benchmark reports whether it is met.
    """
    name: str
    summary: str
    train: dict
    weight_bits: int
    output_weight_bits: int
    float_epochs: int
    tune_epochs: int
    float_lr: float = 0.002
    tune_lr: float = 0.0005
    samples: int = 16
    conv_weight_bits: int | None = None
    float_restarts: tuple = ()
    tune_restarts: tuple = ()
    compile_options: tuple = ()
    goal: list = field(default_factory=list)

    @property
    def network(self) -> str:
        """The layers after the input, with the output layer: ``8c5s-p2-256-10``."""
        return f"{self.train['conv']}-10"


_COMMON = dict(dataset="fashion-mnist", model="nsm-conv", encoding="thermometer",
               p=[0.875, 0.75], norm="l1", quantizer="mse", batch_size=100, noise="input")

PRESETS = {p.name: p for p in [
    Preset("ice40-up5k",
           "iCE40 UP5K (iCEBreaker): 8-level input, one 8-filter 5x5 conv, OR pool, 256 "
           "neurons, ternary weights; 0.8 Mbit in SPRAM",
           # 8 input levels: +1.3 points over 4 (89.74 against 88.47 % after 30 + 6 epochs) for
           # 207 inferences/s by the estimate (4 levels: 350/s); 16 levels fit at no rate.
           dict(_COMMON, conv="8c5s-p2-256", levels=8), weight_bits=2, output_weight_bits=8,
           float_epochs=30, tune_epochs=6,
           # The fastest folding (3,325 LUTs by the estimate) places: 4,497 logic cells of
           # 5,280, 38.5 MHz.
           compile_options=(),
           goal=[{"accuracy": 0.90, "inferences_per_s": 200},
                 {"accuracy": 0.88, "inferences_per_s": 2000}]),
    Preset("ecp5-25k",
           "ECP5-25F (ULX3S 25F): 16-level input, 32 and 48 3x3 filters (3-bit weights), 128 "
           "ternary neurons; 0.7 Mbit in EBR",
           # The 85F's recipe less its float warm restart, on a narrower net: 22 float epochs
           # 91.24 %, 4 fine-tuning epochs 90.98 %, 4 more at lr 0.0002 91.13 % (PyTorch, all
           # 10,000 test images, T = 16). The previous preset, 16c5s-p2-32c5s-p2-128 on 8
           # levels with ternary convs (30 + 6 epochs), reached 90.04 % through the RTL.
           dict(_COMMON, conv="32c3s-p2-48c3s-p2-128", levels=16), weight_bits=2,
           conv_weight_bits=3, output_weight_bits=8, float_epochs=22, tune_epochs=4,
           tune_restarts=((4, 0.0002),),
           # No rate goal: the folding search's choice within the part's 56 EBR.
           compile_options=(),
           goal=[{"accuracy": 0.91, "inferences_per_s": None}]),
    Preset("ecp5-85k",
           "ECP5-85F (ULX3S 85F): 16-level input, 32 and 64 3x3 filters (3-bit weights), 256 "
           "ternary neurons; 1.7 Mbit in EBR",
           # 16 levels, 22 float epochs: 91.77 and 92.12 % in two runs; a warm restart of 12
           # more float epochs at lr 0.001 from the second: 92.51 %. 4 fine-tuning epochs from
           # it: ternary 91.53 %, 3-bit convs with ternary dense layers 91.92 %, 4-bit convs
           # 92.14 % (from the 22-epoch model: 91.32 and 91.87 %; ternary for 10 epochs:
           # 91.27 %); 4 more at lr 0.0002 from the 3-bit one (its checkpoint's ran with
           # --seed 1): 92.25 %. The golden model on all 10,000 test images: 92.08 % after the
           # fine-tuning restart, 91.99 % before it; 4-bit convs 92.09 % of the first 9,500,
           # whose core (61.6 k LUT4s in yosys) does not route at this rate (router2 diverged).
           # 4 levels, 12 + 3 epochs: 89.62 and 88.77 %. The first layer's 16 input channels
           # cost LUTs, not EBR.
           dict(_COMMON, conv="32c3s-p2-64c3s-p2-256", levels=16), weight_bits=2,
           conv_weight_bits=3, output_weight_bits=8, float_epochs=22,
           float_restarts=((12, 0.001),), tune_epochs=4, tune_restarts=((4, 0.0002),),
           # Not the fastest by the estimate (most of the 83.6 k LUTs): the smallest that meets
           # 1,500/s at the calibrated 66 MHz (37,636 cycles), with the popcount engines' input
           # stage, which takes the weight memory's read out of the gates' clock cycle: 58.4 k
           # LUTs, routed at 52.5 MHz with the preset's weights (58.5 with the first
           # fine-tuning stage's, 36.3 without the stage), 1,394/s.
           compile_options=("--throughput", "1500", "--input-stage"),
           goal=[{"accuracy": 0.92, "inferences_per_s": 1000}]),
]}


def float_path(path: str | Path, stage: int | None = None) -> Path:
    """Where a float stage writes beside the fine-tuning stage's ``path``: the last float model
    ``run.pt`` -> ``run-float.pt``; float stage ``k`` before it (a preset with
    ``float_restarts``) ``run-floatK.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}-float{stage or ''}{path.suffix}")


def tune_path(path: str | Path, stage: int) -> Path:
    """Where fine-tuning stage ``stage`` writes beside the last one's ``path`` (a preset with
    ``tune_restarts``): ``run.pt`` -> ``run-tuneK.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}-tune{stage}{path.suffix}")


def stage_configs(preset: Preset, overrides: dict | None = None,
                  tune: dict | None = None, float_epochs: int | None = None) -> list:
    """The stages as TrainConfig keyword dicts: float pre-training, a float stage per warm
    restart (each to start from the one before: the caller sets ``init``), then fine-tuning
    (from the last float model) and a fine-tuning stage per ``tune_restarts`` entry (each from
    the one before): ``1 + len(preset.float_restarts)`` float stages, the rest fine-tuning.

    ``overrides`` (TrainConfig fields the user set) apply to every stage; ``tune`` (weight
    widths, epochs, learning rate the user set) to the fine-tuning stages, the epochs and
    learning rate to the first of them only; ``float_epochs`` to the first float stage."""
    shared = {**preset.train, "samples": preset.samples, **(overrides or {})}
    floats = {**shared, "weight_bits": 32, "output_weight_bits": None, "conv_weight_bits": None}
    first = {**floats, "epochs": float_epochs or preset.float_epochs, "lr": preset.float_lr}
    restarts = [{**floats, "epochs": int(e), "lr": float(lr)} for e, lr in preset.float_restarts]
    last = {**shared, "weight_bits": preset.weight_bits,
            "output_weight_bits": preset.output_weight_bits,
            "conv_weight_bits": preset.conv_weight_bits,
            "epochs": preset.tune_epochs, "lr": preset.tune_lr, **(tune or {})}
    more = [{**last, "epochs": int(e), "lr": float(lr)} for e, lr in preset.tune_restarts]
    return [first, *restarts, last, *more]
