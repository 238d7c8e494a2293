"""Training of Neural Sampling Machines (NSMs) in PyTorch.

The first stage of the toolchain: ``data`` loads a dataset as raw integer pixels, ``layers`` holds
the stochastic binary layer with integer-exact quantized weights, ``model`` stacks it into an MLP
and ``train`` fits it and saves a checkpoint that :mod:`nsm_export.onnx_export` turns into ONNX.
"""

from .data import DIGITS, DatasetError, load_dataset, load_digits_split
from .layers import NSMLinear
from .model import NSMMLP
from .train import CheckpointError, TrainConfig, evaluate, load_checkpoint, save_checkpoint, train

__all__ = [
    "DIGITS", "DatasetError", "load_dataset", "load_digits_split", "NSMLinear", "NSMMLP",
    "CheckpointError", "TrainConfig", "evaluate", "load_checkpoint", "save_checkpoint", "train",
]
