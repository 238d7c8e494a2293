"""Quality of the random bits: keep frequency and correlations of the LFSR draws, per
configuration, on the model the hardware is derived from (``nsm_export.lfsr.draws``).

For each LFSR width, ``p_bits``, leap (by default the compiler's,
:func:`nsm_export.build.default_leap`) and keep probability ``p_num / 2**p_bits`` it draws
``--draws`` values from each of three streams with the seeds the compiler derives (layers 0 and
1, and the stochastic input encoder) and records:

* ``z``: layer 0's keep frequency, ``u < p_num``, from ``p_num / 2**p_bits`` in binomial
  standard errors;
* ``max_abs_autocorr`` and ``worst_lag``: the largest |autocorrelation| of layer 0's keep bits
  over lags 1 to 64 (lanes are consecutive draws and a T' batch cuts the one stream, so these
  lags hold the correlation between lanes and between the samples of a batch);
* ``sample_lag_corr``: the correlation between draw ``j`` and draw ``j + n_in`` (the same input
  of consecutive samples, ``n_in`` in ``--n-in``);
* ``layer_corr``: the largest |correlation| between any two of the three streams;
* ``encoder_z`` and ``encoder_autocorr``: the encoder stream's own frequency and lags 1 to 64
  (its draws compare against ``probs[pixel]``; here every pixel has ``p_num``);
* ``exact_max_abs_autocorr``: lags 1 to 64 over the whole period, without drawing
  (:func:`nsm_export.lfsr.lag_correlations`);
* ``ok``: ``|z| <= 4`` for both streams and every correlation under 0.01 in absolute value, the
  bar of issue 18.

    python benchmarks/rng_quality.py          # writes benchmarks/results/rng-quality.json
    python benchmarks/rng_quality.py --widths 32 --p-bits 8 --leaps 8,9,10,11,12,13,16,20,24,64 \\
        --p 0.1,0.25,0.5,0.75,0.9 --seeds 1,2,3 --out benchmarks/results/rng-quality-leaps.json

On 32 bits with 8-bit ``p``, draws 25 to 32 LFSR steps apart are linearly related, and those
27, 28, 30, 31 or 32 steps apart correlate at p = 0.1 (|r| 0.007 to 0.026), so a leap fails or
comes near the bar where a lag of 1 to 64 draws lands on one of those distances (leaps 8, 9,
10, 14, 15, 16, 27, 28, 30, 31, 32); the default rule takes 11.

Two kinds of configuration miss the bar with the default leaps
(``benchmarks/results/rng-quality.json``: 22 of 1,300 records). Width 22, whose polynomial is
the trinomial x^22 + x + 1: with 8 to 15 bits a draw, no leap up to 88 keeps draws 1 to 64
apart under 0.01 (exact 0.010 to 0.015). And ``p_num`` = 1 or ``2**p_bits - 1`` with
``p_bits`` 13 or 14: a million draws hold only ``1e6 / 2**p_bits`` of the rare value, so one
chance coincidence at some lag reads as a correlation of ``2**p_bits / 1e6`` (0.016 at 14
bits) while the exact correlation stays under 0.003; at 15 and 16 bits a coincidence is rarer
still.

Widths below 20 bits repeat within a million draws (a 19-bit LFSR has a period of 524,287
steps) and are listed with ``period_draws``, not measured; their exact correlations are what
``default_leap`` minimizes.
"""

from __future__ import annotations

import argparse
import sys
from math import gcd
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import provenance, write_results                    # noqa: E402
from nsm_export import lfsr                                                 # noqa: E402
from nsm_export.build import (ENCODER_SEED_INDEX, LEAP_LAGS, default_leap,  # noqa: E402
                              derive_seed, leap_probe_p_nums)

BAR = 0.01
N_INS = (64, 784, 2304)


def corr(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of two equally long bit streams (counted, not multiplied)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    n = a.size
    ma, mb = np.count_nonzero(a) / n, np.count_nonzero(b) / n
    var = ma * (1 - ma) * mb * (1 - mb)
    return float((np.count_nonzero(a & b) / n - ma * mb) / np.sqrt(var)) if var else 0.0


def lag_corr(bits: np.ndarray, lags) -> np.ndarray:
    """The sample autocorrelation ``sum c[t] c[t+k] / sum c[t]**2`` of the centred bits at each
    lag ``k``, from counts: ``c[t] c[t+k]`` sums to ``n11 - m (n1 head + n1 tail) + (N-k) m**2``
    (no float copy of the stream; exact up to rounding)."""
    b = np.asarray(bits, dtype=bool)
    n = b.size
    ones = np.concatenate([[0], np.cumsum(b, dtype=np.int64)])
    m = ones[-1] / n
    den = n * m * (1 - m)
    if not den:
        return np.zeros(len(lags))
    out = []
    for k in lags:
        both = np.count_nonzero(b[:-k] & b[k:])
        head, tail = ones[n - k], ones[-1] - ones[k]
        out.append((both - m * (head + tail) + (n - k) * m * m) / den)
    return np.array(out)


def z_score(bits: np.ndarray, p: float) -> float:
    return float((np.count_nonzero(bits) / bits.size - p) / np.sqrt(p * (1 - p) / bits.size))


def stream_stats(keep: np.ndarray, p: float, n_ins=N_INS) -> dict:
    """Frequency, lags 1 to 64 and sample lags of one stream of keep bits."""
    ac = lag_corr(keep, range(1, LEAP_LAGS + 1))
    worst = int(np.argmax(np.abs(ac)))
    return {"z": round(z_score(keep, p), 3),
            "max_abs_autocorr": round(float(abs(ac[worst])), 5), "worst_lag": worst + 1,
            "sample_lag_corr": {str(n): round(float(c), 5)
                                for n, c in zip(n_ins, lag_corr(keep, n_ins))}}


def passes(rec: dict) -> bool:
    """The bar: frequency within 4 standard errors, every |correlation| under 0.01."""
    corrs = [rec["max_abs_autocorr"], rec.get("layer_corr", 0.0),
             rec.get("encoder_autocorr", 0.0), *map(abs, rec["sample_lag_corr"].values())]
    return bool(abs(rec["z"]) <= 4 and abs(rec.get("encoder_z", 0.0)) <= 4
                and max(corrs) < BAR)


def measure(width: int, leap: int, p_bits: int, p_nums, draws: int, n_ins=N_INS,
            seed: int = 1) -> list[dict]:
    """One record per ``p_num``: the statistics above, on the three streams of one design."""
    mask = lfsr.galois_mask(width)
    seeds = [derive_seed(seed, i, width) for i in (0, 1, ENCODER_SEED_INDEX)]
    streams = [lfsr.draws(width, mask, leap, s, draws, p_bits)[0] for s in seeds]
    exact = np.abs(lfsr.lag_correlations(width, mask, leap, p_bits, p_nums,
                                         range(1, LEAP_LAGS + 1))).max(axis=0)
    records = []
    for p_num, ex in zip(p_nums, exact):
        p = p_num / (1 << p_bits)
        b0, b1, be = (u < p_num for u in streams)
        layer = max(abs(corr(b0, b1)), abs(corr(b0, be)), abs(corr(b1, be)))
        rec = {"width": width, "leap": leap, "p_bits": p_bits, "p_num": p_num, "p": p,
               "draws": draws, **stream_stats(b0, p, n_ins),
               "layer_corr": round(float(layer), 5),
               "encoder_z": round(z_score(be, p), 3),
               "encoder_autocorr": round(float(np.abs(lag_corr(be, range(1, LEAP_LAGS + 1)))
                                               .max()), 5),
               "exact_max_abs_autocorr": round(float(ex), 5)}
        rec["ok"] = passes(rec)
        records.append(rec)
    return records


def _ints(text: str, every: range) -> list[int]:
    """``"all"``, a comma list, or ranges ``a-b``."""
    if text == "all":
        return list(every)
    out = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += range(int(lo), int(hi or lo) + 1)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--draws", type=int, default=1_000_000)
    ap.add_argument("--widths", default="all", help="comma list or ranges (8-32)")
    ap.add_argument("--p-bits", default="all", help="comma list or ranges (1-16)")
    ap.add_argument("--leaps", default="default",
                    help="comma list; default = the compiler's default_leap(width, p_bits)")
    ap.add_argument("--p", default="probes",
                    help="comma list of p, or probes = 1/2**p_bits, 0.1, 0.25, 0.5, 0.75, "
                         "0.9 and 1 - 1/2**p_bits (default_leap's)")
    ap.add_argument("--n-in", default=",".join(map(str, N_INS)))
    ap.add_argument("--seeds", default="1",
                    help="comma list of base seeds (the streams' seeds derive from each)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/rng-quality.json")
    args = ap.parse_args(argv)
    n_ins = [int(v) for v in args.n_in.split(",")]
    records = []
    for width in _ints(args.widths, range(lfsr.MIN_WIDTH, lfsr.MAX_WIDTH + 1)):
        for p_bits in _ints(args.p_bits, range(1, min(16, width) + 1)):
            if p_bits > min(16, width):
                continue
            p_nums = (leap_probe_p_nums(p_bits) if args.p == "probes" else
                      sorted({int(round(float(v) * (1 << p_bits))) for v in args.p.split(",")}))
            leaps = ([default_leap(width, p_bits)] if args.leaps == "default"
                     else [int(v) for v in args.leaps.split(",")])
            for leap in leaps:
                period = ((1 << width) - 1) // gcd((1 << width) - 1, leap)
                if period < args.draws:
                    records.append({"width": width, "leap": leap, "p_bits": p_bits,
                                    "period_draws": period, "ok": None})
                    continue
                for seed in (int(s) for s in args.seeds.split(",")):
                    for rec in measure(width, leap, p_bits, p_nums, args.draws, n_ins, seed):
                        records.append(rec if args.seeds == "1" else {"seed": seed, **rec})
                        print(f"width {width} p_bits {p_bits:2d} leap {leap:3d} seed {seed} "
                              f"p_num {rec['p_num']:5d}: z {rec['z']:+.2f}, |autocorr| "
                              f"{rec['max_abs_autocorr']:.4f} at lag {rec['worst_lag']} "
                              f"(exact {rec['exact_max_abs_autocorr']:.4f}), layers "
                              f"{rec['layer_corr']:.4f}, samples "
                              f"{max(map(abs, rec['sample_lag_corr'].values())):.4f}: "
                              f"{'ok' if rec['ok'] else 'FAILS'}", flush=True)
    measured = [r for r in records if r["ok"] is not None]
    write_results(args.out, {**provenance("rng_quality.py", argv), "bar": BAR,
                             "measured": len(measured),
                             "failing": sum(not r["ok"] for r in measured),
                             "records": records})
    return 0


if __name__ == "__main__":
    sys.exit(main())
