"""Training of Neural Sampling Machines (NSMs) in PyTorch.

The first stage of the toolchain: :mod:`nsm_train.data` loads a dataset as raw integer pixels,
:mod:`nsm_train.layers` holds the stochastic binary layer with integer-exact quantized weights,
:mod:`nsm_train.model` stacks it into an MLP and :mod:`nsm_train.train` fits it and writes a
checkpoint that :mod:`nsm_export.onnx_export` turns into ONNX.

The training entry points live in :mod:`nsm_train.train` (``from nsm_train.train import train,
TrainConfig``); the command line is ``nsm train``. Only the datasets are imported here: they need
no torch (the co-simulation reads its test images through them), the other modules do (the
``[train]`` extra).
"""

from .data import DATASETS, DIGITS, DatasetError, dataset_info, load_dataset, load_digits_split

__all__ = ["DATASETS", "DIGITS", "DatasetError", "dataset_info", "load_dataset",
           "load_digits_split"]
