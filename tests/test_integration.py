"""The FuseSoC core file and the instantiation template match the generated core."""

import subprocess

import pytest

from hw.integration import fusesoc_core, instantiation_template, ports
from hw.top import generate_verilog
from nsm_export.testing import random_ir
from tests.support import verilog_ports


def test_ports_match_the_verilog_module(rng):
    ir = random_ir(rng, sizes=[9, 5, 3])
    assert verilog_ports(generate_verilog(ir), ir.name) == {
        name: (direction, width) for name, direction, width in ports(ir)}


def test_core_file_names_the_verilog(rng):
    ir = random_ir(rng, sizes=[9, 5, 3], name="digits_core")
    text = fusesoc_core(ir)
    assert (text.startswith("CAPI=2:") and "digits_core.v" in text
            and "toplevel: digits_core" in text)


@pytest.mark.icarus
def test_template_elaborates_with_the_core(tmp_path, rng):
    ir = random_ir(rng, sizes=[12, 7, 4])
    (tmp_path / "nsm.v").write_text(generate_verilog(ir))
    (tmp_path / "nsm_inst.v").write_text(instantiation_template(ir))
    res = subprocess.run(["iverilog", "-g2005", "-Wall", "-s", "nsm_example", "-o",
                          str(tmp_path / "a.out"), str(tmp_path / "nsm.v"),
                          str(tmp_path / "nsm_inst.v")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "port" not in res.stderr.lower() or "width" not in res.stderr.lower(), res.stderr
