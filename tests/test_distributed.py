"""Data-parallel training under torchrun (gloo on CPU): ranks stay in sync, rank 0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nsm_train.train import load_checkpoint

SCRIPT = """
import hashlib, json, os, sys
import torch, torch.distributed as dist
torch.set_num_threads(1)
from nsm_train.train import TrainConfig, train
cfg = TrainConfig(hidden=[16], epochs=2, batch_size=64, seed=5, samples=2,
                  checkpoint=sys.argv[1])
model, hist = train(cfg, progress=False)
flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
digest = hashlib.sha256(flat.numpy().tobytes()).hexdigest()
out = [None] * dist.get_world_size()
dist.all_gather_object(out, digest)
if dist.get_rank() == 0:
    open(sys.argv[2], "w").write(json.dumps(dict(digests=out, world=hist["world_size"],
                                                 loss=hist["loss"])))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_torchrun_two_ranks_gloo(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(SCRIPT)
    ckpt, result = tmp_path / "ddp.pt", tmp_path / "result.json"
    env = dict(os.environ, NSM_DIST_BACKEND="gloo", OMP_NUM_THREADS="1",
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--standalone", str(script), str(ckpt), str(result)],      # a free port, not a fixed one
        env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(result.read_text())
    assert res["world"] == 2 and len(res["digests"]) == 2
    assert res["digests"][0] == res["digests"][1]          # gradients were averaged
    assert res["loss"][-1] < res["loss"][0]
    model, raw = load_checkpoint(ckpt)
    assert raw["resume"]["epoch"] == 2
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    import hashlib
    assert hashlib.sha256(flat.numpy().tobytes()).hexdigest() == res["digests"][0]
