# Two entry points for a fresh machine; each does its own set-up.
#   make demo   train → ONNX → IR → Verilog → bit-exact cocotb run on the embedded digits data
#   make test   the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
OUT    ?= out/demo

.PHONY: demo test setup system-deps clean

demo: setup
	$(BIN)/nsm demo --out $(OUT)

test: setup
	$(BIN)/python -m pytest

setup: $(VENV)/.installed system-deps

# Debian packages: Icarus Verilog for co-simulation, Fashion-MNIST for real-data runs.
system-deps:
	@if ! command -v iverilog >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq iverilog dataset-fashion-mnist; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq iverilog dataset-fashion-mnist; fi; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

clean:
	rm -rf $(VENV) out build
