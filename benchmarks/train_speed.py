"""Training speed with and without denormal floats flushed to zero: seconds per training step
(batch 100, Adam, cross-entropy on one sampled pass, as ``nsm_train.train``) of the Fashion-MNIST
conv preset (32c5s-p2-64c5s-p2-512, 16-level thermometer) and the MLP preset (2048-2048, 8
levels), float and 2-bit, on one CPU thread. Steps are timed after ``--warm`` steps, by when
the erf estimator's gradients and Adam's second moments have decayed into denormals, which x86
CPUs handle in microcode. ``nsm_train.train.train`` flushes them (``_no_denormals``).

    python benchmarks/train_speed.py            # writes benchmarks/results/train-speed.json
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import provenance, write_results   # noqa: E402


def _step_seconds(net, x, y, warm: int, steps: int, batch: int) -> float:
    import torch

    opt = torch.optim.Adam(net.parameters(), lr=0.002)
    net.train()
    t0 = 0.0
    for k in range(warm + steps):
        if k == warm:
            t0 = time.perf_counter()
        i = (k * batch) % (len(y) - batch)
        loss = torch.nn.functional.cross_entropy(net(x[i:i + batch]), y[i:i + batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / steps


def main(argv=None) -> int:
    import torch

    from nsm_train.data import load_dataset
    from nsm_train.model import NSMConvNet, NSMMLP, as_pixels
    from nsm_train.train import _no_denormals

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--warm", type=int, default=60, help="untimed steps first")
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--bits", default="32,2", help="weight widths (32 = float)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--output", type=Path,
                    default=ROOT / "benchmarks" / "results" / "train-speed.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    x, y, _, _ = load_dataset("fashion-mnist", seed=0, data_dir=a.data_dir)
    x, y = as_pixels(x), torch.from_numpy(y)
    common = dict(encoding="thermometer", quantizer="mse", norm="l1")
    nets = {
        "conv 32c5s-p2-64c5s-p2-512, 16 levels": lambda wb: NSMConvNet(
            [1, 28, 28], "32c5s-p2-64c5s-p2-512", 10, p=0.75, weight_bits=wb, levels=16,
            output_weight_bits=wb if wb == 32 else 2, **common),
        "mlp 2048-2048, 8 levels": lambda wb: NSMMLP(
            784, [2048, 2048], 10, p=0.75, weight_bits=wb, levels=8,
            output_weight_bits=wb if wb == 32 else 2, **common)}
    records = []
    for name, make in nets.items():
        for wb in (int(b) for b in a.bits.split(",")):
            sec = {}
            for flush in (False, True):
                torch.manual_seed(0)
                net = make(wb)
                with _no_denormals() if flush else nullcontext():     # as train() does
                    sec[flush] = _step_seconds(net, x, y, a.warm, a.steps, 100)
            rec = dict(network=name, weight_bits=wb, batch=100, threads=1, warm_steps=a.warm,
                       timed_steps=a.steps, seconds_per_step=round(sec[False], 3),
                       seconds_per_step_flushed=round(sec[True], 3),
                       speedup=round(sec[False] / sec[True], 2),
                       **provenance("train_speed.py", argv))
            print(f"{name:38s} w{wb:<2d} {sec[False]:.3f} s a step, {sec[True]:.3f} s with "
                  f"denormals flushed ({rec['speedup']:.2f}x)", flush=True)
            records.append(rec)
    write_results(a.output, records)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
