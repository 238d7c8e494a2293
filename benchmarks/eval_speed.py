"""Evaluation speed: ``evaluate_many`` (T = 1, 4, 16, 64 from one set of 64 samples) on random
pixels through an untrained Fashion-MNIST conv net (32c5-p2-64c5-p2-512, valid convs, 4 levels)
and the 2048-2048 MLP, at the default batch (sized by ``activation_width``) and at forced
batches. Batches sized by the pixel count alone page-fault on conv maps: that rule gives 341
images a batch for 784 pixels at T = 64, the last forced batch of the default run.

    python benchmarks/eval_speed.py                 # writes benchmarks/results/eval-speed.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import provenance, write_results   # noqa: E402


def main(argv=None) -> int:
    import torch

    from nsm_train.model import NSMConvNet, NSMMLP
    from nsm_train.train import _eval_batch, evaluate_many

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="8,32,128,341", help="forced batch sizes to compare")
    ap.add_argument("--output", type=Path,
                    default=ROOT / "benchmarks" / "results" / "eval-speed.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    x = torch.randint(0, 256, (a.images, 784)).float()
    y = torch.randint(0, 10, (a.images,))
    nets = {"conv 32c5-p2-64c5-p2-512, 4 levels": NSMConvNet(
                [1, 28, 28], "32c5-p2-64c5-p2-512", 10, p=0.75, weight_bits=2,
                encoding="thermometer", levels=4, norm="l1"),
            "mlp 2048-2048, 8 levels": NSMMLP(784, [2048, 2048], 10, p=0.75, weight_bits=2,
                                              encoding="thermometer", levels=8, norm="l1")}
    records = []
    for name, net in nets.items():
        for bs in [None, *(int(b) for b in a.batches.split(","))]:
            t0 = time.perf_counter()
            evaluate_many(net, x, y, [1, 4, 16, 64], batch_size=bs)
            sec = time.perf_counter() - t0
            rec = dict(network=name, images=a.images, samples=64, threads=a.threads,
                       batch=bs or _eval_batch(64, net), default_batch=bs is None,
                       seconds=round(sec, 1), **provenance("eval_speed.py", argv))
            print(f"{name:36s} batch {rec['batch']:4d}{' (default)' if bs is None else '':10s} "
                  f"{sec:6.1f} s", flush=True)
            records.append(rec)
    write_results(a.output, records)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
