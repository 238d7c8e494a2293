"""Quality of the blank-out bits: keep frequency and autocorrelation of the LFSR draws, per
configuration, on the model the hardware is derived from (``nsm_export.lfsr.draws``).

For each LFSR width, leap and keep probability ``p`` (on ``p_bits`` bits) it draws ``--draws``
keep bits from one stream (a layer's, in its draw order: lanes are consecutive draws, so lags
1 to ``lanes - 1`` are the correlation between lanes) and records:

* ``z``: the keep frequency's distance from ``p_num / 2**p_bits`` in binomial standard errors;
* ``max_abs_autocorr`` and ``worst_lag``: the largest autocorrelation over lags 1 to 64;
* ``sample_lag_corr``: the correlation between draw ``j`` and draw ``j + n_in`` (the same input
  of consecutive samples, for ``n_in`` in ``--n-in``);
* ``layer_corr``: the correlation between two layers' streams (seeds ``derive_seed(seed, 0)``
  and ``derive_seed(seed, 1)``, as the compiler gives them);
* ``ok``: ``|z| <= 4`` and every correlation under 0.01 in absolute value, the bar of the
  datapath issue.

    python benchmarks/rng_quality.py          # writes benchmarks/results/rng-quality.json
    python benchmarks/rng_quality.py --widths 32 --leaps 8,9,10,11,12,13,16,20,24,64 \
        --seeds 1,2,3 --out benchmarks/results/rng-quality-leaps.json

On 32 bits, pairs of draws 27, 28, 30, 31 or 32 steps apart correlate at p = 0.1 (|r| 0.007 to
0.025; every other distance from 8 to 129 steps stays under 0.005), so a leap fails or comes
near the bar where a lag of 1 to 64 draws lands on one of those distances (leaps 8, 9, 10, 14,
15, 16, 27, 28, 30, 31, 32) and passes with margin otherwise (measured: 11, 12, 13, 17 to 26,
29, 33 to 40, 48, 56, 64).

Widths below 24 bits repeat within a million draws at any leap (a 16-bit LFSR has a period of
65,535 steps) and are listed with ``period_draws``, not measured.
"""

from __future__ import annotations

import argparse
import sys
from math import gcd
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import provenance, write_results   # noqa: E402
from nsm_export import lfsr                                # noqa: E402
from nsm_export.build import derive_seed                   # noqa: E402

LAGS = 64
BAR = 0.01


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64) - a.mean()
    b = b.astype(np.float64) - b.mean()
    den = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / den) if den else 0.0


def _autocorr(bits: np.ndarray, lags: int) -> np.ndarray:
    c = bits.astype(np.float64) - bits.mean()
    den = c @ c
    return np.array([c[:-k] @ c[k:] / den for k in range(1, lags + 1)])


def measure(width: int, leap: int, p_num: int, p_bits: int, draws: int, n_ins: list[int],
            seed: int = 1) -> dict:
    mask = lfsr.galois_mask(width)
    s0, s1 = derive_seed(seed, 0, width), derive_seed(seed, 1, width)
    u0, _ = lfsr.draws(width, mask, leap, s0, draws, p_bits)
    u1, _ = lfsr.draws(width, mask, leap, s1, draws, p_bits)
    b0, b1 = u0 < p_num, u1 < p_num
    p = p_num / (1 << p_bits)
    z = (b0.mean() - p) / np.sqrt(p * (1 - p) / draws)
    ac = _autocorr(b0, LAGS)
    worst = int(np.argmax(np.abs(ac)))
    sample = {n: _corr(b0[:-n], b0[n:]) for n in n_ins}
    layer = _corr(b0, b1)
    corrs = [abs(ac[worst]), abs(layer), *map(abs, sample.values())]
    return {"width": width, "leap": leap, "p_bits": p_bits, "p_num": p_num, "p": p,
            "draws": draws, "z": round(float(z), 3),
            "max_abs_autocorr": round(float(abs(ac[worst])), 5), "worst_lag": worst + 1,
            "sample_lag_corr": {str(n): round(v, 5) for n, v in sample.items()},
            "layer_corr": round(layer, 5),
            "ok": bool(abs(z) <= 4 and max(corrs) < BAR)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--draws", type=int, default=1_000_000)
    ap.add_argument("--widths", default="24,32")
    ap.add_argument("--leaps", default="8,16,w,2w",
                    help="comma list; w = the width, 2w = twice it")
    ap.add_argument("--p", default="0.1,0.25,0.5,0.75,0.9")
    ap.add_argument("--p-bits", type=int, default=8)
    ap.add_argument("--n-in", default="64,784")
    ap.add_argument("--seeds", default="1",
                    help="comma list of base seeds (the layers' seeds derive from each)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/rng-quality.json")
    args = ap.parse_args(argv)
    n_ins = [int(v) for v in args.n_in.split(",")]
    records = []
    for width in (int(w) for w in args.widths.split(",")):
        for spec in args.leaps.split(","):
            leap = width * int(spec[:-1] or 1) if spec.endswith("w") else int(spec)
            period = ((1 << width) - 1) // gcd((1 << width) - 1, leap)
            for seed, p in ((int(s), float(v)) for s in args.seeds.split(",")
                            for v in args.p.split(",")):
                p_num = int(round(p * (1 << args.p_bits)))
                if period < args.draws:
                    records.append({"width": width, "leap": leap, "p_num": p_num,
                                    "period_draws": period, "ok": False})
                    continue
                rec = measure(width, leap, p_num, args.p_bits, args.draws, n_ins, seed)
                records.append(rec if args.seeds == "1" else {"seed": seed, **rec})
                print(f"width {width} leap {leap:3d} seed {seed} p {p:.2f}: z {rec['z']:+.2f}, "
                      f"|autocorr| {rec['max_abs_autocorr']:.4f} at lag {rec['worst_lag']}, "
                      f"layers {rec['layer_corr']:+.4f}, samples "
                      f"{max(map(abs, rec['sample_lag_corr'].values())):.4f}: "
                      f"{'ok' if rec['ok'] else 'FAILS'}")
    write_results(args.out, {**provenance("rng_quality.py", argv), "bar": BAR,
                             "records": records})
    return 0


if __name__ == "__main__":
    sys.exit(main())
