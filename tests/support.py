"""What several test files share that is not a fixture (fixtures live in ``conftest.py``):
the simulator parameters, readers of generated Verilog's module names and ports, and the check
of a command's one-line error."""

from __future__ import annotations

import re

import pytest

# One parameter per simulator, each carrying the marker that skips it where the tool is missing.
# A Verilator run compiles the core to C++ first (20 s and more), so it is slow whatever the core.
SIMULATORS = [pytest.param("icarus", marks=pytest.mark.icarus),
              pytest.param("verilator", marks=[pytest.mark.verilator, pytest.mark.slow])]

_MODULE = re.compile(r"^module\s+(\S+?)\s*[(#]", re.M)
_DECLARATION = re.compile(r"^\s*(input|output|inout)\s+(?:\[(\d+):(\d+)\]\s*)?(\S+)\s*;", re.M)


def verilog_modules(verilog: str) -> list[str]:
    """The name of every module ``verilog`` defines, in order (escaped names keep their ``\\``)."""
    return _MODULE.findall(verilog)


def verilog_ports(verilog: str, module: str) -> dict[str, tuple[str, int]]:
    """``{name: (direction, width)}`` for every port of ``module`` in ``verilog``, read from its
    ``input``/``output`` declarations, so that a check on a port is by its exact name. The
    module must be Verilog-2001 non-ANSI, as yosys writes Amaranth's output: the names in its
    header must be the names declared."""
    start = re.search(rf"^module\s+{re.escape(module)}\s*\(", verilog, flags=re.M)
    if start is None:
        raise AssertionError(f"no module {module!r} (without parameters) in the Verilog")
    header_end = verilog.index(");", start.end())
    header = {name.strip() for name in verilog[start.end():header_end].split(",")} - {""}
    body = verilog[header_end:verilog.index("endmodule", header_end)]
    ports = {name: (direction, abs(int(msb) - int(lsb)) + 1 if msb else 1)
             for direction, msb, lsb, name in _DECLARATION.findall(body)}
    if set(ports) != header:
        raise AssertionError(f"module {module}: header ports {sorted(header)} but declarations "
                             f"of {sorted(ports)}")
    return ports


def one_error_line(res, *needles) -> str:
    """``res`` (a click ``CliRunner`` result) ended with exit status 1 and exactly one line on
    stderr, holding every one of ``needles`` and no traceback; returns that line."""
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    assert "Traceback" not in res.output
    return lines[0]
