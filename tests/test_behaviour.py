"""The behaviour fingerprint of the random designs equals the reference
(``benchmarks/behaviour.py``, first recorded before the layer-kind classes and the hardware
plan, recorded again with the popcount core, whose report rows name the adder and
weight-bandwidth bounds and whose folding search may choose it): the same Verilog, golden
outputs, exact and mean cycle counts, resource estimates and report rows, design by design."""

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "benchmarks" / "results" / "behaviour-baseline.json"


@pytest.fixture(scope="module")
def behaviour():
    import importlib.util
    spec = importlib.util.spec_from_file_location("behaviour_bench",
                                                  ROOT / "benchmarks" / "behaviour.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reference():
    return json.loads(REFERENCE.read_text())


@pytest.fixture(scope="module")
def designs(behaviour):
    return behaviour.random_irs(quick=True)


def _names():
    return [n for n in json.loads(REFERENCE.read_text())["irs"] if "@" not in n]


@pytest.mark.slow
@pytest.mark.parametrize("name", _names())
def test_design_unchanged(name, behaviour, reference, designs):
    now = behaviour.fingerprint(designs[name], behaviour._api(), quick=True)
    ref = reference["irs"][name]
    assert {k: now[k] for k in ref} == ref


def test_compare_names_each_difference(behaviour):
    ref = {"irs": {"a": {"verilog": "1", "golden": "2"}}, "mac": {}}
    now = {"irs": {"a": {"verilog": "1", "golden": "3"}, "b": {}}, "mac": {}}
    assert behaviour.compare(ref, now) == ["irs/a: golden differs",
                                           "irs/b: not in the reference"]
