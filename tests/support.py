"""What several test files share that is not a fixture (fixtures live in ``conftest.py``)."""

from __future__ import annotations

import pytest

# One parameter per simulator, each carrying the marker that skips it where the tool is missing.
SIMULATORS = [pytest.param("icarus", marks=pytest.mark.icarus),
              pytest.param("verilator", marks=pytest.mark.verilator)]
