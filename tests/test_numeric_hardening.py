"""Diverged numbers and out-of-range sizes end in one line, never in garbage or an allocation:
non-finite weights refused at training, export and compile; option values with finite ranges;
network sizes bounded before any tensor exists; malformed dataset files one DatasetError."""

from __future__ import annotations

import copy
import gzip
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from onnx import numpy_helper

import nsm_train.train as train_mod
from nsm.cli import main
from nsm_export.compiler import CompileError, compile_model
from nsm_export.onnx_export import ExportError, build_onnx, export_onnx
from nsm_train.data import DatasetError, load_dataset, read_idx, read_nmnist_events, write_idx
from nsm_train.model import NSMMLP, NSMConvNet, SBSMLP, parse_conv_spec
from nsm_train.train import (CheckpointError, DivergenceError, TrainConfig, load_checkpoint,
                             save_checkpoint, train)


def _one_line(res, code: int) -> str:
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    return lines[-1] if code == 2 else (lines[0] if len(lines) == 1 else res.stderr)


# --- compile: initializers ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def proto():
    torch.manual_seed(0)
    return build_onnx(NSMMLP(64, [16], 10, p=0.75, weight_bits=4))


def _with(proto, name, change):
    p = copy.deepcopy(proto)
    for t in p.graph.initializer:
        if t.name == name:
            a = numpy_helper.to_array(t).copy()
            t.CopyFrom(numpy_helper.from_array(change(a), name))
    return p


def _set_first(v, dtype=None):
    def change(a):
        a = a.astype(dtype) if dtype else a
        a.flat[0] = v
        return a
    return change


@pytest.mark.parametrize("name", ["enc_threshold", "layer0_p", "layer0_weight_scale",
                                  "const_zero", "layer1_weight_scale"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_compile_refuses_a_non_finite_initializer_by_name(proto, name, value):
    with pytest.raises(CompileError) as e:
        compile_model(_with(proto, name, _set_first(value)))
    assert str(e.value) == f"initializer {name!r} holds NaN or infinity (a diverged model?)"


@pytest.mark.parametrize("value", [2**62, 2**63 - 1, -2**63])
def test_compile_refuses_integers_that_int64_arithmetic_would_wrap(proto, value):
    with pytest.raises(CompileError) as e:
        compile_model(_with(proto, "layer1_weight_int", _set_first(value, np.int64)))
    assert str(e.value) == ("node 'layer1_weight_dq': the weights of 'layer1_matmul': integers "
                            "beyond 62 bits (int64 arithmetic on them would wrap)")


def test_compile_refuses_a_zero_point_that_wraps_a_bias(proto):
    p = _with(proto, "layer1_bias_int", _set_first(2**62 - 1, np.int64))
    p.graph.initializer.append(numpy_helper.from_array(np.full(10, -2, np.int64), "zp"))
    next(n for n in p.graph.node if n.name == "layer1_bias_dq").input.append("zp")
    with pytest.raises(CompileError) as e:
        compile_model(p)
    assert str(e.value) == ("node 'layer1_bias_dq': input 'layer1_bias': integers beyond 62 bits "
                            "(int64 arithmetic on them would wrap)")


@pytest.mark.parametrize("ratio", [2.0**62, 1e30])
def test_compile_refuses_output_scales_whose_ratio_overflows(proto, ratio):
    p = _with(proto, "layer1_weight_scale", lambda a: np.where(np.arange(a.size) == 0,
                                                              a * np.float32(ratio), a))
    with pytest.raises(CompileError) as e:
        compile_model(p)
    assert str(e.value) == ("layer 1 (node 'layer1_matmul'): output scales differ by so large a "
                            "ratio that the folded weights do not fit 62 bits")


# --- export ---------------------------------------------------------------------------------------

def _diverged_mlp(norm=None, quantizer="native"):
    torch.manual_seed(1)
    m = NSMMLP(64, [8], 10, p=0.75, norm=norm, quantizer=quantizer)
    with torch.no_grad():
        m.layers[0].weight[2, :5] = math.nan
        if norm:
            m.layers[0].running_scale[0] = math.inf
    return m


def test_export_refuses_nan_weights_and_writes_nothing(tmp_path):
    with pytest.raises(ExportError) as e:
        export_onnx(_diverged_mlp(), tmp_path / "m.onnx")
    assert str(e.value) == ("layers.0.weight holds NaN or infinity (5 of 512 values): the model "
                            "diverged; retrain it (a lower --lr, say)")
    assert list(tmp_path.iterdir()) == []


def test_export_names_a_diverged_batch_norm_buffer():
    m = _diverged_mlp(norm="l1")
    with torch.no_grad():
        m.layers[0].weight.zero_()
    with pytest.raises(ExportError) as e:
        build_onnx(m)
    assert str(e.value).startswith("layers.0.running_scale holds NaN or infinity (1 of 8 values)")


def test_qonnx_export_refuses_nan_weights():
    from nsm_export.qonnx_export import build_qonnx
    with pytest.raises(ExportError) as e:
        build_qonnx(_diverged_mlp(quantizer="brevitas"))
    assert str(e.value).startswith("layers.0.weight holds NaN or infinity (5 of 512 values)")


def test_cli_export_of_a_nan_checkpoint_is_one_line(tmp_path):
    ck = save_checkpoint(_diverged_mlp(), tmp_path / "nan.pt")
    res = CliRunner().invoke(main, ["export", str(ck), "-o", str(tmp_path / "m.onnx")])
    assert _one_line(res, 1) == ("nsm export: error: layers.0.weight holds NaN or infinity (5 of "
                                 "512 values): the model diverged; retrain it (a lower --lr, say)")
    assert not (tmp_path / "m.onnx").exists()


# --- training -------------------------------------------------------------------------------------

SMALL = dict(hidden=[8], train_limit=64, samples=2)      # two steps an epoch


def test_training_stops_at_the_first_non_finite_loss():
    with pytest.raises(DivergenceError) as e:
        train(TrainConfig(**SMALL, epochs=1, lr=math.inf), progress=False)
    assert str(e.value) == ("training diverged in epoch 1, step 2 of 2: the loss is nan (try a "
                            "lower --lr); nothing was written")


def test_divergence_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    ck = tmp_path / "ck.pt"
    base = dict(SMALL, epochs=3, checkpoint=str(ck))
    train(TrainConfig(**base, stop_after=1), progress=False)
    good = ck.read_bytes()
    calls = []
    real = train_mod._loss

    def loss_nan_in_epoch_3(*args, **kw):
        loss, scores = real(*args, **kw)
        calls.append(1)
        return (loss * math.nan if len(calls) == 4 else loss), scores
    monkeypatch.setattr(train_mod, "_loss", loss_nan_in_epoch_3)
    with pytest.raises(DivergenceError) as e:
        train(TrainConfig(**base, resume=True), progress=False)
    assert str(e.value) == ("training diverged in epoch 3, step 2 of 2: the loss is nan (try a "
                            "lower --lr); " f"{ck} keeps epoch 2")
    assert load_checkpoint(ck)[1]["resume"]["epoch"] == 2
    assert ck.read_bytes() != good          # epoch 2 was finite and saved; epoch 3 was not


def test_a_non_finite_buffer_stops_training_at_the_epoch_end(tmp_path):
    cfg = TrainConfig(**SMALL, epochs=1, norm="l1")
    m = train_mod.build_model(cfg, {"n_in": 64, "n_classes": 10, "pixel_max": 16,
                                    "default_threshold": 8, "shape": [1, 8, 8]})
    with torch.no_grad():
        m.layers[0].running_mean[0] = math.inf     # the loss stays finite (batch statistics)
    init = save_checkpoint(m, tmp_path / "init.pt")
    with pytest.raises(DivergenceError) as e:
        train(TrainConfig(**SMALL, epochs=1, norm="l1", init=str(init)), progress=False)
    assert str(e.value) == ("training diverged in epoch 1: layers.0.running_mean holds NaN or "
                            "infinity (try a lower --lr); nothing was written")


def test_brevitas_refusing_inf_weights_is_divergence_too():
    with pytest.raises(DivergenceError) as e:
        train(TrainConfig(**SMALL, epochs=1, lr=math.inf, quantizer="brevitas"), progress=False)
    assert str(e.value) == ("training diverged in epoch 1, step 2 of 2: layers.0.weight holds NaN "
                            "or infinity (try a lower --lr); nothing was written")


def test_cli_train_from_a_nan_model_writes_no_output(tmp_path):
    m = NSMMLP(64, [8], 10, p=0.75)
    with torch.no_grad():
        m.layers[1].bias[3] = math.nan
    init = save_checkpoint(m, tmp_path / "init.pt")
    out = tmp_path / "model.pt"
    res = CliRunner().invoke(main, ["train", "--hidden", "8", "--epochs", "1", "--no-progress",
                                    "--init", str(init), "-o", str(out)])
    assert _one_line(res, 1) == ("nsm train: error: training diverged in epoch 1, step 1 of 45: "
                                 "the loss is nan (try a lower --lr); nothing was written")
    assert not out.exists()


# --- sizes ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("make,message", [
    (lambda: NSMMLP(64, [2**20 + 1], 10),
     "layer sizes must be in 1..1048576 (2**20), got hidden [1048577] and 10 classes"),
    (lambda: NSMMLP(784, [65536, 65536], 10),
     "the network would hold 4,347,002,880 weights; at most 67,108,864 (2**26) are supported"),
    (lambda: SBSMLP(10**12, [4], 10),
     "the network would hold 4,000,000,000,040 weights; at most 67,108,864 (2**26) are "
     "supported"),
    (lambda: NSMMLP(64, [8], 10, encoding="thermometer", levels=10**9),
     "levels must be an integer in 1..65536, got 1000000000"),
    (lambda: NSMConvNet([1, 28, 28], "60000c3-60000c3-10", 10),
     "the network would hold 32,746,140,100 weights; at most 67,108,864 (2**26) are "
     "supported"),
])
def test_huge_networks_are_refused_before_allocating(make, message):
    with pytest.raises(ValueError) as e:
        make()
    assert str(e.value) == message


@pytest.mark.parametrize("spec,message", [
    ("70000c3-10", "conv token '70000c3' in '70000c3-10': 1..65536 filters of 1..15 pixels"),
    ("8c16-10", "conv token '8c16' in '8c16-10': 1..65536 filters of 1..15 pixels"),
    ("8c3-p0-10", "pool token 'p0' in '8c3-p0-10': a window of 1..15"),
    ("8c3-0", "dense token '0' in '8c3-0': 1..1048576 neurons"),
])
def test_conv_spec_sizes_are_bounded(spec, message):
    with pytest.raises(ValueError) as e:
        parse_conv_spec(spec)
    assert str(e.value) == message


def test_a_hostile_checkpoint_config_is_refused_before_allocating(tmp_path):
    ck = save_checkpoint(NSMMLP(64, [8], 10), tmp_path / "m.pt")
    raw = torch.load(ck, weights_only=True)
    raw["config"]["hidden"] = [10**6, 10**6]
    torch.save(raw, ck)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(ck)
    assert str(e.value) == (f"{ck}: config or weights do not form a model (ValueError: the "
                            f"network would hold 1,000,074,000,000 weights; at most 67,108,864 "
                            f"(2**26) are supported)")


def test_a_training_step_too_large_is_refused():
    with pytest.raises(ValueError) as e:
        train(TrainConfig(hidden=[256], batch_size=1024, loss_samples=4096), progress=False)
    assert str(e.value) == ("a training step would hold 4,194,304 rows (batch_size x "
                            "loss_samples) of 256 values; at most 268,435,456 (2**28) in all: "
                            "lower batch_size or loss_samples")


# --- option values --------------------------------------------------------------------------------

@pytest.mark.parametrize("args,message", [
    (["compile", "m.onnx", "--lanes", "0"],
     "Invalid value for '--lanes': 0 in '0' is not 1, 2, 4, 8, 16"),
    (["compile", "m.onnx", "--lanes", "1,3"],
     "Invalid value for '--lanes': 3 in '1,3' is not 1, 2, 4, 8, 16"),
    (["compile", "m.onnx", "--simd", "128"],
     "Invalid value for '--simd': 128 in '128' is not 1, 2, 4, 8, 16, 32, 64"),
    (["compile", "m.onnx", "--pe", "0"], "Invalid value for '--pe': 0 in '0' is not 1..1048576"),
    (["compile", "m.onnx", "--clock-mhz", "inf"],
     "Invalid value for '--clock-mhz': inf is not in the range 1.0<=x<=2000.0."),
    (["compile", "m.onnx", "--clock-mhz", "nan"],
     "Invalid value for '--clock-mhz': 'nan' is not a finite number"),
    (["compile", "m.onnx", "--throughput", "nan"],
     "Invalid value for '--throughput': 'nan' is not a finite number"),
    (["compile", "m.onnx", "--target", "ice40-up5k", "--throughput", "-5"],
     "Invalid value for '--throughput': -5.0 is not in the range 0.0<x<=1000000000000.0."),
    (["compile", "m.onnx", "--p-tolerance", "nan"],
     "Invalid value for '--p-tolerance': 'nan' is not a finite number"),
    (["compile", "m.onnx", "--seed", str(2**64)],
     "Invalid value for '--seed': 18446744073709551616 is not in the range "
     "1<=x<=18446744073709551615."),
    (["train", "--lr", "inf"], "Invalid value for '--lr': inf is not in the range 0.0<x<=100.0."),
    (["train", "--lr", "nan"], "Invalid value for '--lr': 'nan' is not a finite number"),
    (["train", "--sigma", "nan"], "Invalid value for '--sigma': 'nan' is not a finite number"),
    (["train", "--label-smoothing", "nan"],
     "Invalid value for '--label-smoothing': 'nan' is not a finite number"),
    (["train", "-T", "65537"],
     "Invalid value for '--samples' / '-T': 65537 is not in the range 1<=x<=65536."),
    (["train", "--hidden", "64,2000000"],
     "Invalid value for '--hidden': 2000000 in '64,2000000' is not 1..1048576"),
    (["train", "--seed", "-1"],
     "Invalid value for '--seed': -1 is not in the range 0<=x<=4294967295."),
    (["export", "m.pt", "-T", "70000"],
     "Invalid value for '--samples' / '-T': 70000 is not in the range 1<=x<=65536."),
    (["eval", "m.pt", "-T", "1,70000"],
     "Invalid value for '--samples' / '-T': 70000 in '1,70000' is not 1..65536"),
    (["eval", "m.pt", "--split-seed", str(2**32)],
     "Invalid value for '--split-seed': 4294967296 is not in the range 0<=x<=4294967295."),
    (["report", "b", "-T", "0"], "Invalid value for '--samples' / '-T': 0 in '0' is not 1..65536"),
    (["sim", "b", "--count", str(2**40)],
     "Invalid value for '--count' / '-n': 1099511627776 is not in the range 1<=x<=16777216."),
    (["synth", "b", "--target", "ice40-up5k", "--baud", "0"],
     "Invalid value for '--baud': 0 is not in the range 1<=x<=12000000."),
])
def test_option_values_out_of_range_are_refused(args, message):
    res = CliRunner().invoke(main, args)
    assert _one_line(res, 2) == f"Error: {message}"


def test_option_bounds_are_the_irs():
    import nsm.cli as cli
    from nsm_export import ir, schema
    from nsm_train import model
    assert (cli._MAX_SAMPLES, cli._LANES, cli._SIMD, cli._MAX_NEURONS) == \
        (ir.MAX_SAMPLES, schema.LANES, schema.POP_SIMD, model.MAX_NEURONS)


# --- dataset files --------------------------------------------------------------------------------

def _idx(tmp_path, name, raw: bytes, gz=False):
    path = tmp_path / (name + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("raw,message", [
    (b"", "not an IDX file (bad magic number)"),
    (b"\x00\x00\x07\x01", "not an IDX file (bad magic number)"),
    (b"\x01\x00\x08\x01", "not an IDX file (bad magic number)"),
    (b"\x00\x00\x08\x03\x00\x00", "truncated IDX header"),
    (b"\x00\x00\x08\x03" + b"\xff\xff\xff\xff" * 3,
     "IDX header says [4294967295, 4294967295, 4294967295] (79228162458924105385300197375 "
     "bytes), more than the 2147483648 this reader takes"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x04" + b"12345",
     "IDX header says [4] (4 bytes) but the file holds more bytes of data"),
    (b"\x00\x00\x0c\x01\x00\x00\x00\x02" + b"1234567",
     "IDX header says [2] (8 bytes) but the file holds 7 bytes of data"),
])
def test_malformed_idx_files_are_one_line_naming_the_file(tmp_path, gz, raw, message):
    path = _idx(tmp_path, "train-images-idx3-ubyte", raw, gz)
    with pytest.raises(DatasetError) as e:
        read_idx(path)
    assert str(e.value) == f"{path}: {message}"


def test_a_truncated_gzip_stream_is_one_line(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x01\x00" + bytes(256))[:-12])
    with pytest.raises(DatasetError) as e:
        read_idx(path)
    assert str(e.value) == (f"{path}: cannot read (EOFError: Compressed file ended before the "
                            f"end-of-stream marker was reached)")


def _mnist_dir(d, n_tr=3, labels=None):
    d.mkdir()
    write_idx(d / "train-images-idx3-ubyte", np.zeros((n_tr, 28, 28), np.uint8))
    write_idx(d / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
    write_idx(d / "t10k-labels-idx1-ubyte", np.zeros(2, np.uint8))
    if labels is None:
        write_idx(d / "train-labels-idx1-ubyte", np.zeros(n_tr, np.uint8))
    else:
        (d / "train-labels-idx1-ubyte").write_bytes(labels)
    return d


def test_float_labels_and_empty_splits_are_refused(tmp_path):
    d = _mnist_dir(tmp_path / "f", labels=b"\x00\x00\x0d\x01\x00\x00\x00\x03" +
                   np.array([0.5, 1, 2], ">f4").tobytes())
    with pytest.raises(DatasetError) as e:
        load_dataset("mnist", data_dir=d)
    assert str(e.value) == f"{d / 'train-labels-idx1-ubyte'}: labels must be integers, not float32"
    d = _mnist_dir(tmp_path / "e", n_tr=0)
    with pytest.raises(DatasetError) as e:
        load_dataset("mnist", data_dir=d)
    assert str(e.value) == f"{d / 'train-images-idx3-ubyte'}: holds no images"


def test_nmnist_unreadable_and_huge_event_files(tmp_path, monkeypatch):
    (tmp_path / "dir.bin").mkdir()
    with pytest.raises(DatasetError) as e:
        read_nmnist_events(tmp_path / "dir.bin")
    assert str(e.value) == (f"{tmp_path / 'dir.bin'}: cannot read (IsADirectoryError: [Errno 21] "
                            f"Is a directory: '{tmp_path / 'dir.bin'}')")
    monkeypatch.setattr("nsm_train.data.MAX_EVENT_BYTES", 10)
    (tmp_path / "big.bin").write_bytes(bytes(15))
    with pytest.raises(DatasetError) as e:
        read_nmnist_events(tmp_path / "big.bin")
    assert str(e.value) == f"{tmp_path / 'big.bin'}: more than 10 bytes; not an N-MNIST recording"
