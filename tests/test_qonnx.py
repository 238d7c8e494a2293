"""The QONNX-flavoured export (brevitas ``export_qonnx``): qonnx executes it exactly like PyTorch
on the noise-free path, and the compiler reads it into the same decisions as the canonical form."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from nsm_export import golden
from nsm_export.compiler import CompileError, compile_model
from nsm_export.onnx_export import ExportError, build_onnx
from nsm_export.qonnx_export import build_qonnx, execute_qonnx
from nsm_train.model import NSMConvNet, NSMMLP

SEED = 77


def _pixels(n_in, count=150, hi=17, seed=0):
    return np.random.default_rng(seed).integers(0, hi, size=(count, n_in))


NETS = {
    "mlp-3bit-l1": lambda: NSMMLP(64, [20, 12], 10, p=[0.5, 0.75, 0.5], weight_bits=3,
                                  quantizer="brevitas", norm="l1", input_threshold=8),
    "mlp-binary": lambda: NSMMLP(64, [24], 10, p=0.5, weight_bits=1, quantizer="brevitas",
                                 input_threshold=8),
    "mlp-8bit-l2": lambda: NSMMLP(64, [16], 10, p=0.5, weight_bits=8, quantizer="brevitas",
                                  norm="l2", input_threshold=8),
    "conv-linf-majority": lambda: NSMConvNet([1, 8, 8], "4c3-m2-5c2-7", 10, p=[0.5, 0.75],
                                             weight_bits=2, norm="linf", quantizer="brevitas",
                                             pixel_max=16, input_threshold=8),
    "conv-or": lambda: NSMConvNet([1, 8, 8], "3c3-p2-9", 10, p=0.5, weight_bits=4,
                                  quantizer="brevitas", pixel_max=16, input_threshold=8),
}


def _trained_ish(name):
    """A network with spread-out row scales, biases and batch-norm statistics (negative gains
    included), as training leaves them."""
    torch.manual_seed(SEED)
    net = NETS[name]()
    with torch.no_grad():
        for m in net.modules():
            if hasattr(m, "norm_weight"):
                m.norm_weight.normal_(0.0, 1.0)           # about half the gains negative
                m.norm_bias.normal_(0.0, 0.5)
                m.running_mean.normal_(0.0, 0.3)
                m.running_scale.uniform_(0.2, 2.0)
            if hasattr(m, "bias") and isinstance(m.bias, torch.nn.Parameter):
                m.bias.normal_(0.0, 0.3)
    return net.eval()


@pytest.mark.parametrize("name", list(NETS))
def test_qonnx_runs_in_qonnx_like_pytorch_and_compiles_to_the_same_decisions(name):
    net = _trained_ish(name)
    x = _pixels(net.n_in)
    proto = build_qonnx(net, samples=1, batch=len(x))
    onnx.checker.check_model(proto)
    ops = {n.op_type for n in proto.graph.node}
    assert "BipolarQuant" in ops and ({"Quant", "BipolarQuant"} & ops)
    assert {p.key: p.value for p in proto.metadata_props}["nsm.format"] == "qonnx"
    net.sampling = False
    with torch.no_grad():
        want = net(torch.from_numpy(x).float()).numpy()
    got = execute_qonnx(proto, x)
    assert got.dtype == np.float32 and np.array_equal(got, want)       # bit for bit
    ir = compile_model(proto, samples=1, pe=4)
    res = golden.run(ir, x)
    assert np.array_equal(res.classes, np.argmax(want, axis=1))
    canonical = golden.run(compile_model(build_onnx(net, samples=1, sampling=False), samples=1,
                                         pe=4), x)
    assert np.array_equal(res.scores, canonical.scores)


def test_qonnx_masks_compile_to_the_layers_p():
    net = _trained_ish("conv-linf-majority")
    ir = compile_model(build_qonnx(net, samples=8, sampling=True))
    assert ir.samples == 8
    assert [(layer.kind, layer.p) for layer in ir.layers if layer.kind != "pool"] == \
        [("conv2d", 0.5), ("conv2d", 0.5), ("dense", 0.75), ("dense", 0.75)]


def test_gaussian_noise_model_is_refused_by_name():
    torch.manual_seed(SEED)
    net = NSMMLP(64, [16], 10, p=1.0, weight_bits=4, quantizer="brevitas", noise="gaussian",
                 sigma=0.5, input_threshold=8)
    with pytest.raises(ExportError, match="gaussian"):
        build_onnx(net)                                   # the canonical form has no noise op
    proto = build_qonnx(net, sampling=True)
    assert "RandomNormalLike" in {n.op_type for n in proto.graph.node}
    with pytest.raises(CompileError) as e:
        compile_model(proto)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("node '") and \
        "Gaussian noise (RandomNormalLike) cannot be sent to hardware" in msg


def test_qonnx_export_refusals_are_one_line(tmp_path):
    from nsm_export.qonnx_export import export_qonnx_file
    native = NSMMLP(64, [8], 10, weight_bits=4, input_threshold=8)
    path = tmp_path / "m.onnx"
    for bad, match in [(native, "brevitas"),
                       (NSMMLP(64, [8], 10, quantizer="brevitas", encoding="thermometer"),
                        "threshold"),
                       (NSMMLP(64, [8], 10, quantizer="brevitas", noise="synapse"), "synapse")]:
        with pytest.raises(ExportError, match=match) as e:
            export_qonnx_file(bad, path, sampling=True)
        assert "\n" not in str(e.value)
    assert not path.exists()


def test_cli_exports_qonnx_and_compiles_it(tmp_path):
    from click.testing import CliRunner

    from nsm.cli import main
    from nsm_train.train import save_checkpoint

    net = _trained_ish("mlp-binary")
    save_checkpoint(net, tmp_path / "m.pt")
    r = CliRunner().invoke(main, ["export", str(tmp_path / "m.pt"), "-o",
                                  str(tmp_path / "m.onnx"), "--format", "qonnx", "-T", "4"])
    assert r.exit_code == 0, r.output
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert "BipolarQuant" in {n.op_type for n in proto.graph.node}
    r = CliRunner().invoke(main, ["compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "b"),
                                  "--pe", "4"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "b" / "nsm.v").is_file()
