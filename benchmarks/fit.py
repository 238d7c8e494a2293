"""Which FPGA each Fashion-MNIST network fits, by the folding search's estimate: the accuracy
presets and smaller networks trained to fit the small parts (``benchmarks/runs/
fashion-mnist-cpu-10-edge.sh``). No tool runs; weights are random, since resources and cycles
depend only on shapes, widths and keep probabilities.

One record per (network, target) in ``benchmarks/results/fit.json``: ``weight_kbit``,
``fits`` and, where it fits, ``nsm_export.folding.choose_folding``'s fastest folding (``folding``),
``inferences_per_s`` at the target's calibrated clock (``clock_mhz``) and ``estimate``; else
the search's one-line ``error`` (the folding nearest to fitting, what it needs beyond the
device, the targets that fit). T = 16, keep p = 0.75 everywhere, as the presets train.

    python benchmarks/fit.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import provenance, write_results   # noqa: E402
from hw import synth                                       # noqa: E402
from nsm_export.folding import choose_folding              # noqa: E402
from nsm_export.build import IntConv, IntLayer, IntPool, build_ir   # noqa: E402
from nsm_export.testing import random_weights                       # noqa: E402
from nsm_train.presets import PRESETS                                # noqa: E402

P, T = 0.75, 16

# name: input levels (1: a threshold), hidden layers (conv: (filters, kernel, padding)), the
# dense widths, weight bits, the output layer's (default: at least 2, as training gives it) and
# the conv layers' (default: the weight bits).
NETS = {
    "mlp-preset-6272-2048-2048-10-w2": (8, [], [2048, 2048], 2),
    "mlp-3136-512-512-10-w2": (4, [], [512, 512], 2),
    "mlp-3136-256-10-w1": (4, [], [256], 1),
    "mlp-784-128-10-w1": (1, [], [128], 1),
    "conv-preset-32c5s-p2-64c5s-p2-512-10-w2": (16, [(32, 5, 2), (64, 5, 2)], [512], 2),
    "conv-preset-32c5s-p2-64c5s-p2-512-10-w1": (16, [(32, 5, 2), (64, 5, 2)], [512], 1),
    "conv-16c5-p2-32c5-p2-128-10-w1": (4, [(16, 5, 0), (32, 5, 0)], [128], 1),
}



def preset_net(preset) -> tuple:
    """A :data:`NETS` entry for a preset of ``nsm_train/presets.py`` (its conv spec, input
    levels and weight width)."""
    convs, dense = [], []
    toks = preset.train["conv"].split("-")
    if [t == "p2" for t in toks if "c" in t or t.startswith("p")] != \
            [False, True] * (sum("c" in t for t in toks)):
        raise ValueError(f"{preset.name}: net_ir builds conv-p2 pairs, not {toks}")
    for tok in toks:
        if "c" in tok:
            n, k = tok.rstrip("s").split("c")
            convs.append((int(n), int(k), int(k) // 2 if tok.endswith("s") else 0))
        elif not tok.startswith("p"):
            dense.append(int(tok))
    return (preset.train["levels"], convs, dense, preset.weight_bits, preset.output_weight_bits,
            preset.conv_weight_bits)


NETS.update({f"preset-{name}": preset_net(pr) for name, pr in PRESETS.items()})


def net_ir(name: str, seed: int = 0, samples: int = T):
    """The IR of network ``name`` with random weights, unfolded (``pe`` 1)."""
    rng = np.random.default_rng(seed)
    levels, convs, dense, bits, *rest = NETS[name]
    out_bits = rest[0] if rest else max(bits, 2)
    conv_bits = rest[1] if len(rest) > 1 and rest[1] else bits
    layers, c, h = [], levels, 28
    for filters, k, pad in convs:
        layers.append(IntConv(random_weights(rng, conv_bits, (filters, c, k, k)),
                              rng.integers(-8, 9, filters), P, conv_bits, h_in=h, w_in=h, stride=1,
                              padding=pad))
        h = h + 2 * pad - k + 1
        layers.append(IntPool(filters, h, h, 2, "or"))
        c, h = filters, h // 2
    n_in = c * h * h if convs else 784 * levels
    for i, n_out in enumerate([*dense, 10]):
        wb = bits if i < len(dense) else out_bits
        layers.append(IntLayer(random_weights(rng, wb, (n_out, n_in)),
                               rng.integers(-8, 9, n_out), P, wb))
        n_in = n_out
    thresholds = [int(256 * (i + 0.5) / levels) for i in range(levels)]
    if convs:
        return build_ir(layers, input_size=784, input_threshold=0, samples=samples,
                        thresholds=thresholds, layout="level-major")
    if levels == 1:
        return build_ir(layers, input_size=784, input_threshold=128, samples=samples)
    return build_ir(layers, input_size=784, input_threshold=0, samples=samples,
                    thresholds=thresholds)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--network", action="append", choices=list(NETS))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/fit.json")
    a = ap.parse_args(argv)
    prov = provenance("fit.py", argv)
    records = []
    for name in a.network or NETS:
        ir = net_ir(name)
        kbit = sum(np.asarray(ly.weights).size * ly.weight_bits
                   for ly in ir.layers if ly.kind != "pool") / 1024
        for target in synth.TARGETS:
            rec = dict(network=name, target=target, samples=T, weight_kbit=round(kbit, 1))
            try:
                f = choose_folding(ir, target)
            except synth.FitError as e:
                rec.update(fits=False, error=str(e))
            else:
                rec.update(fits=True, folding=f.summary, clock_mhz=f.clock_mhz,
                           inferences_per_s=round(f.inferences_per_s, 1),
                           estimate={k: round(v) for k, v in f.estimate.items()})
            print(f"{name:42s} {target:11s} {kbit:8,.0f} kbit  "
                  + (f"{rec['inferences_per_s']:10,.1f} inferences/s" if rec["fits"]
                     else "does not fit"), flush=True)
            records.append({**rec, **prov})
    write_results(a.out, records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
