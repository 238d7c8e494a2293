"""Loading an IR without trusting it: weights.npz read with limits (members listed, headers checked
before any data is read, damaged files refused in one line), ir.json validated with strict types
and exact integers, names that are legal Verilog, and every written field cross-checked."""

import io
import json
import os
import tracemalloc
import zipfile

import numpy as np
import pytest

from nsm_export import ir as irmod
from nsm_export.schema import VERILOG_KEYWORDS, LfsrSpec, check_identifier
from nsm_export.testing import random_conv_ir, random_ir


@pytest.fixture
def saved(tmp_path, rng):
    """A saved two-layer IR (a sampling hidden layer, then the output layer) and its arrays."""
    ir = random_ir(rng, sizes=[9, 8, 3], p=[0.5, 1.0], weight_bits=4, lfsr_width=16)
    irmod.save(ir, tmp_path)
    with np.load(tmp_path / "weights.npz") as z:
        return tmp_path, {k: z[k] for k in z.files}


def _edit_json(d, edit):
    meta = json.loads((d / "ir.json").read_text())
    edit(meta)
    (d / "ir.json").write_text(json.dumps(meta))


def _refused(d, match):
    with pytest.raises(irmod.IRError, match=match) as e:
        irmod.load(d)
    assert "\n" not in str(e.value)


# --- weights.npz ------------------------------------------------------------------------------

def _npy(arr) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(arr))
    return buf.getvalue()


def _write_zip(path, members, method=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def test_extra_member_is_refused_by_name(saved):
    d, arrays = saved
    _write_zip(d / "weights.npz", {**{f"{k}.npy": _npy(v) for k, v in arrays.items()},
                                   "payload.npy": _npy(np.zeros(3, np.int64))})
    _refused(d, r"weights.npz: member 'payload.npy' is not an array the IR declares "
                r"\(layer0_weights, layer0_threshold, layer1_weights, layer1_bias\)$")


def test_missing_and_duplicate_members(saved):
    d, arrays = saved
    members = {f"{k}.npy": _npy(v) for k, v in arrays.items()}
    _write_zip(d / "weights.npz", {k: v for k, v in members.items() if k != "layer1_bias.npy"})
    _refused(d, r"weights.npz: array layer1_bias is missing$")
    _write_zip(d / "weights.npz", members)
    with zipfile.ZipFile(d / "weights.npz", "a") as zf, pytest.warns(UserWarning):
        zf.writestr("layer1_bias.npy", _npy(arrays["layer1_bias"]))
    _refused(d, r"weights.npz: member 'layer1_bias.npy' appears twice$")


def test_inflating_member_is_refused_before_it_is_inflated(saved):
    """A deflated member whose zip directory says 64 MiB (a 64 KiB file) is refused from the
    directory, a header claiming a huge shape from the header: neither is inflated."""
    d, arrays = saved
    good = {f"{k}.npy": _npy(v) for k, v in arrays.items()}
    big = _npy(arrays["layer0_weights"]) + bytes(64 << 20)
    _write_zip(d / "weights.npz", {**good, "layer0_weights.npy": big}, zipfile.ZIP_DEFLATED)
    assert (d / "weights.npz").stat().st_size < 1 << 20
    tracemalloc.start()
    with pytest.raises(irmod.IRError, match=r"member layer0_weights.npy: 67,109,\d+ bytes "
                                            r"uncompressed, more than a \(8, 9\) integer array"):
        irmod.load(d)
    assert tracemalloc.get_traced_memory()[1] < 16 << 20
    tracemalloc.stop()
    claim = np.lib.format.header_data_from_array_1_0(np.zeros((1 << 14, 1 << 14), np.int8))
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, claim)
    _write_zip(d / "weights.npz", {**good, "layer0_weights.npy": buf.getvalue() + bytes(500)})
    _refused(d, r"member layer0_weights.npy: shape \(16384, 16384\), the IR declares \(8, 9\)$")


@pytest.mark.parametrize("arr,match", [
    (np.zeros((8, 9), np.float64), r"dtype float64 is not an integer type$"),
    (np.zeros((8, 9), dtype=object), r"dtype object is not an integer type$"),
    (np.zeros((9, 8), np.int64), r"shape \(9, 8\), the IR declares \(8, 9\)$"),
    (np.full((8, 9), 2**63, np.uint64), r"values outside the 64-bit signed range$"),
])
def test_member_headers_are_checked(saved, arr, match):
    d, arrays = saved
    members = {f"{k}.npy": _npy(v) for k, v in arrays.items()}
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=True)
    members["layer0_weights.npy"] = buf.getvalue()
    _write_zip(d / "weights.npz", members)
    _refused(d, r"weights.npz: member layer0_weights.npy: " + match)


def test_any_integer_dtype_and_order_loads_as_int64(saved):
    d, arrays = saved
    w = arrays["layer0_weights"]
    _write_zip(d / "weights.npz", {**{f"{k}.npy": _npy(v) for k, v in arrays.items()},
                                   "layer0_weights.npy": _npy(np.asfortranarray(w.astype(">i2")))})
    back = irmod.load(d).layers[0].weights
    assert back.dtype == np.int64 and np.array_equal(back, w)


@pytest.mark.parametrize("compressed", [False, True])
def test_damaged_weights_are_one_irerror_or_load_the_same(saved, compressed):
    """Truncations at many offsets and random byte flips of a real weights.npz: each load is
    one IRError line naming weights.npz, or the very arrays saved."""
    d, arrays = saved
    (np.savez_compressed if compressed else np.savez)(d / "weights.npz", **arrays)
    raw = (d / "weights.npz").read_bytes()
    rng = np.random.default_rng(19)
    cases = [raw[:n] for n in range(0, len(raw), 3)]
    for _ in range(400):
        b = bytearray(raw)
        for pos in rng.integers(0, len(raw), int(rng.integers(1, 4))):
            b[pos] ^= 1 << int(rng.integers(0, 8))
        cases.append(bytes(b))
    outcomes = {"refused": 0, "same": 0}
    for data in cases:
        (d / "weights.npz").write_bytes(data)
        try:
            back = irmod.load(d)
        except irmod.IRError as e:
            assert "weights.npz" in str(e) and "\n" not in str(e)
            outcomes["refused"] += 1
            continue
        for i, layer in enumerate(back.layers):
            assert np.array_equal(layer.weights, arrays[f"layer{i}_weights"])
        outcomes["same"] += 1
    assert outcomes["refused"] > len(cases) // 2 and outcomes["same"] > 0


def test_unreadable_paths_are_one_line(saved):
    d, _ = saved
    (d / "weights.npz").unlink()
    (d / "weights.npz").mkdir()
    _refused(d, r"weights.npz: not a regular file")
    (d / "weights.npz").rmdir()
    os.mkfifo(d / "weights.npz")                 # opening it would block forever
    _refused(d, r"weights.npz: not a regular file")
    (d / "weights.npz").unlink()
    _refused(d, r"weights.npz: missing$")
    (d / "ir.json").unlink()
    (d / "ir.json").mkdir()
    _refused(d, r"ir.json: not a regular file")


# --- exact integers ---------------------------------------------------------------------------

def test_output_bias_near_2_63_cannot_overflow_the_width_checks(saved):
    """With int64 arithmetic l1 + bias wraps negative and 64-bit registers look wide enough;
    in exact integers the bias needs 65 bits."""
    d, arrays = saved
    arrays["layer1_bias"][:] = 2**63 - 3
    np.savez(d / "weights.npz", **arrays)

    def wide(m):
        m["layers"][1].update(acc_bits=64, offset_bits=64)
        m["score_bits"] = 64
    _edit_json(d, wide)
    _refused(d, r"^layers\[1\]\.acc_bits 64 cannot hold the worst case of its weights "
                r"\(needs 65\)$")


def test_register_widths_are_exact(rng):
    ir = random_ir(rng, sizes=[4, 3, 2], p=[1.0, 1.0], weight_bits=2, samples=4)
    out = ir.layers[-1]
    out.weights = np.ones((2, 3), np.int64)
    out.offsets = np.array([2**63 - 2, -(2**63) + 2])
    assert out.acc_range() == (-(2**63) - 1, 2**63 + 1)
    assert (out.required_acc_bits(), ir.required_score_bits()) == (65, 67)


# --- strict types, unknown and derived fields -------------------------------------------------

def _set(path, value):
    def edit(m):
        *head, last = path
        for k in head:
            m = m[k]
        m[last] = value
    return edit


@pytest.mark.parametrize("edit,match", [
    (_set(["version"], True), r"^ir.json: IR version True is not supported"),
    (_set(["version"], 2.0), r"^ir.json: IR version 2.0 is not supported"),
    (_set(["samples"], 4.0), r"^samples must be an integer, got 4.0$"),
    (_set(["samples"], True), r"^samples must be an integer, got True$"),
    (_set(["score_bits"], "20"), r"^score_bits must be an integer, got '20'$"),
    (_set(["samples"], "9" * 9999), r"^samples must be an integer, got '9{55} \.\.\.$"),
    (_set(["layers", 0, "lanes"], 1.0), r"^layers\[0\]\.lanes 1.0 must be one of 1, 2, 4"),
    (_set(["layers", 0, "simd"], True), r"^layers\[0\]\.simd True must be one of"),
    (_set(["layers", 0, "weight_store"], 0), r"^layers\[0\]\.weight_store 0 must be one of"),
    (_set(["layers", 1, "output"], 1), r"^layers\[1\]\.output must be true or false, got 1$"),
    (_set(["layers", 0, "pe"], True), r"^layers\[0\]\.pe must be an integer, got True$"),
    (_set(["layers", 0, "n_in"], 9.0), r"^layers\[0\]\.n_in must be an integer, got 9.0$"),
    (_set(["layers", 0, "rng", "seed"], True), r"^layers\[0\]\.rng\.seed must be an integer"),
    (_set(["layers", 0, "rng", "mask"], float(0xB400)), r"^layers\[0\]\.rng\.mask must be an "),
    (_set(["layers", 0, "rng"], [16, 1, 1, 8]), r"^layers\[0\]\.rng must be a JSON object with "
                                                r"exactly the keys width, mask, seed, leap"),
    (_set(["layers", 0, "rng", "tap"], 1), r"^layers\[0\]\.rng must be a JSON object"),
    (_set(["input", "size"], 9.0), r"^input\.size must be an integer, got 9.0$"),
    (_set(["input", "thresholds"], "ab"), r"^input\.thresholds must be a list, got str$"),
    (_set(["input", "prob_bits"], False), r"^input\.prob_bits must be an integer, got False$"),
    (_set(["input", "layout"], "diagonal"), r"^input\.layout 'diagonal' must be one of"),
    (_set(["input"], [9]), r"^input must be a JSON object, got list$"),
    (_set(["layers"], {"0": {}}), r"^ir.json: 'layers' must be a list, got dict$"),
    (_set(["layers", 1], [1]), r"^layers\[1\] must be a JSON object, got list$"),
    (_set(["layers", 1, "kind"], ["dense"]), r"^layers\[1\]\.kind \['dense'\] is not supported"),
    (_set(["source"], []), r"^source must be a JSON object, got list$"),
    (_set(["source", "onnx"], "../m.onnx"), r"^source\.onnx '\.\./m\.onnx' must be a file name"),
    (_set(["extra"], 1), r"^ir.json: 'extra' is an unknown field \(the file has format, "),
    (_set(["layers", 0, "note"], "x"), r"^layers\[0\]: 'note' is an unknown field \(layers\[0\] "
                                       r"has kind, n_in, n_out, output, weight_bits, "),
    (_set(["input", "gain"], 2), r"^input: 'gain' is an unknown field \(input has size, "),
    (_set(["tie_rule"], "highest index"), r"^ir.json: tie_rule 'highest index' is not "
                                          r"'lowest index'"),
    (_set(["layers", 0, "p"], 0.25), r"^layers\[0\]\.p is 0.25 but its other fields give 0.5$"),
    (_set(["layers", 1, "p"], 1), r"^layers\[1\]\.p is 1 but its other fields give 1.0$"),
    (_set(["layers", 0, "rng", "leap"], 9), r"^layers\[0\]\.rng\.leap 9 shares the factor 3 "
                                            r"with the period 2\*\*16 - 1"),
])
def test_load_refuses_odd_types_and_fields(saved, edit, match):
    d, _ = saved
    _edit_json(d, edit)
    _refused(d, match)


def test_top_level_must_be_an_object(saved):
    d, _ = saved
    for text, match in (("[1, 2]", r"the top level must be a JSON object, got list$"),
                        ("7", r"the top level must be a JSON object, got int$"),
                        ("[" * 100_000 + "]" * 100_000, r"ir.json: not valid JSON"),
                        ('{"source": ' + '{"a": ' * 40 + "1" + "}" * 41,
                         r"ir.json: nested deeper than 32 levels$"),
                        ('{"layers": [' + "0, " * (1 << 21) + "0]}",
                         r"ir.json: larger than 4,194,304 bytes"),
                        ('{"samples": 1' + "0" * 5000 + "}", r"ir.json: not valid JSON")):
        (d / "ir.json").write_text(text)
        _refused(d, match)


def test_conv_and_pool_derived_fields_are_recomputed(tmp_path, rng):
    for seed in range(40):                       # a net with a conv layer and a pooling layer
        ir = random_conv_ir(np.random.default_rng(seed))
        kinds = [layer.kind for layer in ir.layers]
        if "pool" in kinds:
            break
    irmod.save(ir, tmp_path)
    assert irmod.load(tmp_path).to_json() == ir.to_json()
    c, p = kinds.index("conv2d"), kinds.index("pool")
    for i, key, value in ((c, "h_out", ir.layers[c].h_out + 1), (c, "n_in", 1),
                          (p, "n_out", ir.layers[p].n_out * 2),
                          (p, "output", True), (p, "w_out", float(ir.layers[p].w_out))):
        meta = json.loads(json.dumps(ir.to_json()))
        meta["layers"][i][key] = value
        (tmp_path / "ir.json").write_text(json.dumps(meta))
        _refused(tmp_path, rf"^layers\[{i}\]\.{key} is {value!r} but its other fields give "
                           rf"{getattr(ir.layers[i], key)!r}$")


# --- names ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,match", [
    ("module", "is a Verilog/SystemVerilog keyword"),
    ("logic", "is a Verilog/SystemVerilog keyword"),
    ("nét", "is not a Verilog identifier"),
    ("1net", "is not a Verilog identifier"),
    ("a-b", "is not a Verilog identifier"),
    ("", "is not a Verilog identifier"),
    ("a" * 65, "has 65 characters"),
    ("a-" * 50_000, r"'a-a-a-.* \.\.\. has 100000 characters \(at most 64\)$"),
    (7, "is not a Verilog identifier"),
])
def test_names_must_be_verilog_identifiers(saved, name, match):
    d, _ = saved
    _edit_json(d, _set(["name"], name))
    _refused(d, r"^name .*" + match)
    check_identifier("name", "a" * 64)
    check_identifier("name", "Module")         # keywords are lower case; case matters


def test_keyword_list():
    assert len(VERILOG_KEYWORDS) == 248
    assert {"uwire", "endgenerate", "always_ff", "interconnect", "nettype"} <= VERILOG_KEYWORDS


def test_compiler_refuses_a_bad_name_up_front():
    import onnx

    from nsm_export.compiler import CompileError, compile_model
    with pytest.raises(CompileError, match=r"^name 'wire' is a Verilog/SystemVerilog keyword$"):
        compile_model(onnx.ModelProto(), name="wire")


def test_leap_must_be_coprime_to_the_period():
    from nsm_export.lfsr import galois_mask
    for width in (8, 16, 32):
        period = (1 << width) - 1
        for leap in range(8, 4 * width + 1):
            spec = LfsrSpec(width=width, mask=galois_mask(width), seed=1, leap=leap)
            if np.gcd(leap, period) != 1:
                with pytest.raises(irmod.IRError, match=rf"rng\.leap {leap} shares the factor"):
                    spec.validate("rng", 8)
            else:
                spec.validate("rng", 8)


def _leaves(m, path=()):
    """Every path in a JSON value, containers included (of a list's elements the first and
    the last)."""
    yield path
    items = m.items() if isinstance(m, dict) else \
        {0: m[0], len(m) - 1: m[-1]}.items() if isinstance(m, list) and m else ()
    for k, v in items:
        yield from _leaves(v, path + (k,))


ODD = [True, False, None, 1.0, 0, -1, 2**70, "x", [], {}, [1], {"a": 1}, float("nan")]


@pytest.mark.parametrize("kind", ["dense", "conv", "bernoulli", "thermometer"])
def test_every_field_with_odd_values_is_one_irerror_or_valid(tmp_path, kind):
    """Each field of real ir.json files (every path, containers too) set to each of
    :data:`ODD`: the load ends as one IRError line or a valid IR, never another exception, and
    a value of another JSON type than the one written loads only in ``source`` (provenance)
    or as an ``rng`` of null (then p = 1 must hold)."""
    rng = np.random.default_rng(5)
    if kind == "dense":
        ir = random_ir(rng, sizes=[6, 5, 3], p=[0.5, 1.0], weight_bits=3)
    else:
        ir = next(x for x in (random_conv_ir(np.random.default_rng(s)) for s in range(60))
                  if kind == "conv" and "pool" in [la.kind for la in x.layers]
                  or x.input.encoding == kind)
    irmod.save(ir, tmp_path)
    base = json.loads((tmp_path / "ir.json").read_text())
    for path in list(_leaves(base))[1:]:
        written = base
        for k in path:
            written = written[k]
        for value in ODD:
            meta = json.loads(json.dumps(base))
            _set(list(path), value)(meta)
            (tmp_path / "ir.json").write_text(json.dumps(meta))
            try:
                irmod.load(tmp_path)
            except irmod.IRError as e:
                assert "\n" not in str(e)
                continue
            assert (type(value) is type(written) or path[0] == "source"
                    or (value is None and path[-1] == "rng")), (path, value)
