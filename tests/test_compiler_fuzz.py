"""The compiler on hostile input: mutated and random ONNX graphs give a clean CompileError or a
valid IR, never a traceback."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from nsm_export.compiler import CompileError, compile_model, load_onnx
from nsm_export.ir import IR
from nsm_export.onnx_export import build_onnx
from nsm_export.qonnx_export import build_qonnx
from nsm_train.model import NSMConvNet, NSMMLP

OPS = ["Relu", "Add", "Mul", "MatMul", "Sub", "Cast", "GreaterOrEqual", "Bernoulli", "Shape",
       "RandomNormalLike", "Conv", "Less", "DequantizeLinear", "Identity", "Gemm", "MaxPool",
       "AveragePool", "Reshape", "Flatten", "BatchNormalization", "Div", "Quant", "BipolarQuant"]
#: Base graphs: canonical MLPs (both mask forms), canonical conv nets, QONNX MLP and conv nets.
KINDS = ["bernoulli", "uniform", "conv", "qonnx-mlp", "qonnx-conv"]
_CACHE: dict = {}


def _base(seed: int, kind: str) -> onnx.ModelProto:
    key = (seed % 4, kind)                     # a few models per kind; mutations do the rest
    if key not in _CACHE:
        torch.manual_seed(seed % 4)
        if kind in ("bernoulli", "uniform"):
            model = NSMMLP(12, [7, 5], 3, p=[0.75, 0.5, 1.0], weight_bits=3)
            proto = build_onnx(model, samples=4, mask_op=kind)
        elif kind == "conv":
            model = NSMConvNet([1, 6, 6], "3c3-m2-5", 3, p=[0.5, 0.75], weight_bits=2,
                               pixel_max=16, input_threshold=8, norm="l1")
            proto = build_onnx(model.eval(), samples=4)
        elif kind == "qonnx-mlp":
            model = NSMMLP(12, [7], 3, p=0.5, weight_bits=[1, 3][seed % 2], quantizer="brevitas",
                           norm="linf")
            proto = build_qonnx(model.eval(), samples=4, sampling=bool(seed % 2))
        else:
            model = NSMConvNet([1, 6, 6], "2c3-p2-5", 3, p=0.5, weight_bits=2, pixel_max=16,
                               input_threshold=8, quantizer="brevitas", norm="l2")
            proto = build_qonnx(model.eval(), samples=4, sampling=True)
        _CACHE[key] = proto
    return copy.deepcopy(_CACHE[key])


def _mutate(model: onnx.ModelProto, rng: np.random.Generator) -> onnx.ModelProto:
    m = copy.deepcopy(model)
    g = m.graph
    kind = rng.integers(0, 13)
    nodes = list(g.node)
    if kind == 0 and nodes:                                   # drop a node
        del g.node[int(rng.integers(len(nodes)))]
    elif kind == 1 and nodes:                                 # change an op type
        g.node[int(rng.integers(len(nodes)))].op_type = str(rng.choice(OPS))
    elif kind == 2 and nodes:                                 # rewire an input
        n = g.node[int(rng.integers(len(nodes)))]
        names = [o for x in nodes for o in x.output] + [i.name for i in g.initializer]
        if n.input:
            n.input[int(rng.integers(len(n.input)))] = str(rng.choice(names))
    elif kind == 3 and g.initializer:                         # garbage values
        i = int(rng.integers(len(g.initializer)))
        arr = numpy_helper.to_array(g.initializer[i]).copy()
        if arr.dtype.kind == "f":
            arr.flat[int(rng.integers(arr.size))] = rng.choice([np.nan, np.inf, -3.0, 7.5, 0.0])
        else:
            arr.flat[int(rng.integers(arr.size))] = rng.choice([0, -128, 127])
        g.initializer[i].CopyFrom(numpy_helper.from_array(arr, g.initializer[i].name))
    elif kind == 4 and g.initializer:                         # wrong shape
        i = int(rng.integers(len(g.initializer)))
        arr = numpy_helper.to_array(g.initializer[i])
        g.initializer[i].CopyFrom(numpy_helper.from_array(
            np.resize(arr, max(1, arr.size - 1)), g.initializer[i].name))
    elif kind == 5:                                           # dynamic or odd input shape
        d = g.input[0].type.tensor_type.shape.dim
        d[1].Clear()
        if rng.random() < 0.5:
            d[1].dim_param = "n"
    elif kind == 6 and nodes:                                 # attribute change
        n = g.node[int(rng.integers(len(nodes)))]
        n.attribute.append(helper.make_attribute("to", int(rng.integers(1, 12))))
    elif kind == 7:                                           # p outside (0, 1]
        for init in g.initializer:
            if init.name.endswith("_p"):
                init.CopyFrom(numpy_helper.from_array(
                    np.array(rng.choice([0.0, 1.5, -0.2, np.nan]), np.float32), init.name))
                break
    elif kind == 8:                                           # metadata garbage
        for p in m.metadata_props:
            if rng.random() < 0.5:
                p.value = str(rng.choice(["", "x", "-4", "1e9", "0"]))
    elif kind == 9 and g.initializer:                         # integer dtype swap
        i = int(rng.integers(len(g.initializer)))
        arr = numpy_helper.to_array(g.initializer[i])
        g.initializer[i].CopyFrom(numpy_helper.from_array(
            arr.astype(rng.choice([np.float32, np.int64, np.int16, np.uint8])),
            g.initializer[i].name))
    elif kind == 11 and nodes:                                # layer attributes
        cands = [n for n in nodes if n.op_type in ("Conv", "MaxPool", "AveragePool", "Gemm",
                                                   "Quant", "BatchNormalization", "Flatten")]
        n = cands[int(rng.integers(len(cands)))] if cands else nodes[0]
        name = str(rng.choice(["kernel_shape", "strides", "pads", "transB", "alpha", "narrow",
                               "rounding_mode", "epsilon", "axis", "group", "ceil_mode"]))
        del_ = [a for a in n.attribute if a.name == name]
        for a in del_:
            n.attribute.remove(a)
        value = {"kernel_shape": [int(rng.integers(1, 4))] * 2, "strides": [2, 1],
                 "pads": [int(rng.integers(0, 3))] * 4, "transB": int(rng.integers(0, 2)),
                 "alpha": float(rng.choice([0.5, -1.0, np.nan])), "narrow": 1,
                 "rounding_mode": str(rng.choice(["FLOOR", "BOGUS"])),
                 "epsilon": float(rng.choice([0.0, -1.0, 1e-3])), "axis": int(rng.integers(-1, 3)),
                 "group": 2, "ceil_mode": 1}[name]
        n.attribute.append(helper.make_attribute(name, value))
    elif kind == 12 and nodes:                                # domain change
        n = g.node[int(rng.integers(len(nodes)))]
        n.domain = str(rng.choice(["", "qonnx.custom_op.general", "com.example"]))
    else:                                                     # extra output
        g.output.append(helper.make_tensor_value_info(str(rng.choice(
            [o for x in nodes for o in x.output] or ["z"])), TensorProto.FLOAT, None))
    return m


def _random_graph(rng: np.random.Generator) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("pixels", TensorProto.FLOAT,
                                      ["batch", int(rng.integers(1, 9))])
    names, nodes = ["pixels"], []
    for k in range(int(rng.integers(1, 7))):
        op = str(rng.choice(["Relu", "Add", "Mul", "Sub", "GreaterOrEqual", "Cast", "MatMul"]))
        ins = [str(rng.choice(names)) for _ in range(1 if op in ("Relu", "Cast") else 2)]
        attrs = {"to": TensorProto.FLOAT} if op == "Cast" else {}
        nodes.append(helper.make_node(op, ins, [f"t{k}"], name=f"n{k}", **attrs))
        names.append(f"t{k}")
    y = helper.make_tensor_value_info(names[-1], TensorProto.FLOAT, None)
    return helper.make_model(helper.make_graph(nodes, "random", [x], [y]),
                             opset_imports=[helper.make_opsetid("", 17)])


def _check(model: onnx.ModelProto) -> str:
    try:
        ir = compile_model(model, pe=3)
    except CompileError as e:
        msg = str(e)
        assert msg and "\n" not in msg and "Traceback" not in msg
        return "error"
    assert isinstance(ir, IR)
    ir.validate()
    return "ir"


@pytest.mark.parametrize("chunk", range(6))
def test_mutated_and_random_graphs(chunk):
    rng = np.random.default_rng(100 + chunk)
    outcomes = []
    for k in range(50):                                     # 6 x 50 = 300 graphs
        if k % 6 == 5:
            model = _random_graph(rng)
        else:
            model = _mutate(_base(chunk * 50 + k, KINDS[(chunk + k) % len(KINDS)]), rng)
            if rng.random() < 0.3:
                model = _mutate(model, rng)
        outcomes.append(_check(model))
    assert "error" in outcomes


def test_unmutated_models_compile():
    for kind in KINDS:
        for seed in range(2):
            assert _check(_base(seed, kind)) == "ir"


def test_truncated_and_empty_files(tmp_path):
    good = _base(2, "qonnx-conv").SerializeToString()
    for name, data in [("empty.onnx", b""), ("half.onnx", good[: len(good) // 2]),
                       ("text.onnx", b"hello world\n")]:
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(CompileError, match=name):
            load_onnx(p)
