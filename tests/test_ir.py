"""IR round trip, validation on load, and the overflow guarantee of the register widths."""

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from nsm_export import ir as irmod
from nsm_export.build import IntLayer, build_ir
from nsm_export.testing import random_ir


def test_round_trip(tmp_path, rng):
    ir = random_ir(rng, sizes=[9, 8, 3], p=[0.5, 1.0])
    irmod.save(ir, tmp_path)
    back = irmod.load(tmp_path)
    assert back.to_json() == ir.to_json()
    for a, b in zip(ir.layers, back.layers):
        assert np.array_equal(a.weights, b.weights) and np.array_equal(a.offsets, b.offsets)
    meta = json.loads((tmp_path / "ir.json").read_text())
    assert meta["format"] == "nsm-ir" and meta["version"] == irmod.IR_VERSION


@pytest.mark.parametrize("edit,match", [
    (lambda m: m.update(version=99), "version 99"),
    (lambda m: m["layers"][0].update(acc_bits=2), "acc_bits"),
    (lambda m: m["layers"][0]["rng"].update(seed=0), "lock-up"),
    (lambda m: m["layers"][0]["rng"].update(mask=3), "maximal-length"),
    (lambda m: m["layers"][0].update(p_num=0), "p_num"),
    (lambda m: m["layers"][1].update(n_in=5),
     r"layer1_weights.npy: shape \(3, 8\), the IR declares \(3, 5\)$"),
    (lambda m: m.update(score_bits=2), "score_bits"),
    (lambda m: m["layers"][0].update(weight_bits=0), "weight_bits"),
    (lambda m: m["input"].update(encoding="gray"), "encoding"),
    (lambda m: m["layers"][0].pop("pe"), r"^layers\[0\]\.pe is missing$"),
    (lambda m: m["layers"][0].update(lanes=3), "lanes 3 must be one of"),
    (lambda m: m["layers"][1].update(lanes=2), "lanes 2 needs sampling"),
    (lambda m: m["layers"][0].update(simd=3),
     r"^layers\[0\]\.simd 3 must be one of 1, 2, 4, 8, 16, 32, 64$"),
    (lambda m: m["layers"][0].update(simd=8),
     r"^layers\[0\]\.simd 8 must be one of 1, 2, 4 for the kept-list engine"),
    (lambda m: m["layers"][0].update(lanes=1, simd=2), r"^layers\[0\]\.simd 2 exceeds lanes 1"),
])
def test_load_rejects_bad_fields(tmp_path, rng, edit, match):
    ir = random_ir(rng, sizes=[9, 8, 3], p=[0.5, 1.0], weight_bits=4)
    irmod.save(ir, tmp_path)
    meta = json.loads((tmp_path / "ir.json").read_text())
    edit(meta)
    (tmp_path / "ir.json").write_text(json.dumps(meta))
    with pytest.raises(irmod.IRError, match=match):
        irmod.load(tmp_path)


def test_load_checks_the_layer_chain(tmp_path, rng):
    """A layer whose n_in (and weights) do not follow the layer before: the npz matches the
    file, the chain check refuses it."""
    ir = random_ir(rng, sizes=[9, 8, 3], p=[0.5, 1.0], weight_bits=4)
    irmod.save(ir, tmp_path)
    meta = json.loads((tmp_path / "ir.json").read_text())
    meta["layers"][1]["n_in"] = 5
    (tmp_path / "ir.json").write_text(json.dumps(meta))
    with np.load(tmp_path / "weights.npz") as z:
        arrays = dict(z)
    arrays["layer1_weights"] = arrays["layer1_weights"][:, :5]
    np.savez(tmp_path / "weights.npz", **arrays)
    with pytest.raises(irmod.IRError,
                       match=r"^layers\[1\]\.n_in 5 does not match the 8 outputs before it$"):
        irmod.load(tmp_path)


def test_simd_defaults_to_one_and_changes_no_semantics(tmp_path, rng):
    """IR files written before simd existed load with simd 1; p = 1 layers take any simd (they
    have no kept list), and build_ir raises a sampling layer's lanes to its simd."""
    ir = random_ir(rng, sizes=[9, 8, 3], p=[0.5, 1.0], lanes=[1, 1], simd=[4, 2])
    assert [(layer.lanes, layer.simd) for layer in ir.layers] == [(4, 4), (1, 2)]
    irmod.save(ir, tmp_path)
    meta = json.loads((tmp_path / "ir.json").read_text())
    for m in meta["layers"]:
        del m["simd"]
    (tmp_path / "ir.json").write_text(json.dumps(meta))
    assert [layer.simd for layer in irmod.load(tmp_path).layers] == [1, 1]


def test_load_rejects_out_of_range_weights(tmp_path, rng):
    ir = random_ir(rng, sizes=[9, 8, 3], weight_bits=2)
    irmod.save(ir, tmp_path)
    with np.load(tmp_path / "weights.npz") as z:
        arrays = dict(z)
    arrays["layer0_weights"][0, 0] = 5
    np.savez(tmp_path / "weights.npz", **arrays)
    with pytest.raises(irmod.IRError, match="outside"):
        irmod.load(tmp_path)


def test_load_missing_and_garbage(tmp_path):
    with pytest.raises(irmod.IRError, match="no such"):
        irmod.load(tmp_path / "nope")
    with pytest.raises(irmod.IRError, match="missing"):
        irmod.load(tmp_path)
    (tmp_path / "ir.json").write_text("{not json")
    with pytest.raises(irmod.IRError, match="JSON"):
        irmod.load(tmp_path)


def _wrap(v: int, bits: int) -> int:
    v &= (1 << bits) - 1
    return v - (1 << bits) if v >> (bits - 1) else v


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), wb=st.sampled_from([1, 2, 4, 8]),
       n_in=st.integers(1, 40), T=st.integers(1, 300))
def test_widths_hold_the_worst_case(seed, wb, n_in, T):
    """Worst-case inputs (every kept input aligned with the weight signs) never overflow."""
    rng = np.random.default_rng(seed)
    q = 1 if wb == 1 else (1 << (wb - 1)) - 1
    w0 = rng.choice([-q, q], size=(3, n_in)) if wb > 1 else rng.choice([-1, 1], size=(3, n_in))
    w1 = rng.integers(-q, q + 1, size=(2, 3)) if wb > 1 else rng.choice([-1, 1], size=(2, 3))
    ir = build_ir([IntLayer(w0, rng.integers(-5, 6, 3), 1.0, wb),
                   IntLayer(w1, rng.integers(-9, 10, 2), 1.0, wb)],
                  input_size=n_in, input_threshold=1, samples=T)
    for layer in ir.layers:
        l1 = np.abs(layer.weights).sum(axis=1)
        for worst in (l1, -l1):                      # z_j = ±sign(w_ij) for every j
            u = worst + (layer.offsets if layer.output else 0)
            assert np.array_equal(np.array([_wrap(int(v), layer.acc_bits) for v in u]), u)
    out = ir.layers[-1]
    l1 = np.abs(out.weights).sum(axis=1)
    for s in ((l1 + out.offsets) * T, (-l1 + out.offsets) * T):
        assert np.array_equal(np.array([_wrap(int(v), ir.score_bits) for v in s]), s)


@pytest.mark.parametrize("edit,match", [
    (lambda m: m["input"].update(thresholds=[]), "1 to 64 thresholds"),
    (lambda m: m["input"].update(thresholds=[10, 300]), r"thresholds\[1\] = 300"),
    (lambda m: m["input"].update(layout="diagonal"), "layout 'diagonal'"),
    (lambda m: m["input"].update(encoding="threshold"), "not 'thermometer'"),
    (lambda m: m["layers"][0].update(n_in=9),
     r"layer0_weights.npy: shape \(5, 12\), the IR declares \(5, 9\)$"),
])
def test_thermometer_input_is_validated(tmp_path, rng, edit, match):
    from nsm_export.build import IntLayer, build_ir
    ir = build_ir([IntLayer(rng.integers(-3, 4, (5, 12)), rng.integers(-2, 3, 5), 0.5, 3),
                   IntLayer(rng.integers(-3, 4, (3, 5)), rng.integers(-2, 3, 3), 1.0, 3)],
                  input_size=4, input_threshold=0, samples=2, thresholds=[50, 100, 200])
    irmod.save(ir, tmp_path)
    assert irmod.load(tmp_path).input == ir.input
    meta = json.loads((tmp_path / "ir.json").read_text())
    edit(meta)
    (tmp_path / "ir.json").write_text(json.dumps(meta))
    with pytest.raises(irmod.IRError, match=match):
        irmod.load(tmp_path)


def test_hardware_refuses_thermometer_levels_it_cannot_pack(rng):
    from hw.top import HardwareError, generate_verilog
    from nsm_export.build import IntLayer, build_ir
    ir = build_ir([IntLayer(rng.integers(-3, 4, (5, 12)), rng.integers(-2, 3, 5), 0.5, 3),
                   IntLayer(rng.integers(-3, 4, (3, 5)), rng.integers(-2, 3, 3), 1.0, 3)],
                  input_size=4, input_threshold=0, samples=2, thresholds=[50, 100, 200])
    with pytest.raises(HardwareError, match=r"^input: a thermometer code with 3 levels"):
        generate_verilog(ir)
