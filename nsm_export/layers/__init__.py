"""The layer kinds of the IR, one class each: fields, validation, serialization, golden
execution, cycle model, resource estimate, folding choices, engine factory and report row
(the interface is :class:`nsm_export.layers.base.Layer`).

To add a kind: a module here with its class, an entry in :data:`KINDS`, its engine in ``hw/``,
and its ONNX pattern in the compiler (``docs/architecture.md``, "Adding a layer kind").
"""

from .base import Layer
from .conv import ConvLayer, conv_out
from .dense import DenseLayer
from .input import InputSpec
from .pool import POOL_MODES, PoolLayer

__all__ = ["KINDS", "Layer", "InputSpec", "DenseLayer", "ConvLayer", "PoolLayer", "POOL_MODES",
           "conv_out"]

#: ``ir.json``'s ``kind`` -> the class that reads it.
KINDS = {cls.kind: cls for cls in (DenseLayer, ConvLayer, PoolLayer)}
