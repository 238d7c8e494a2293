#!/bin/bash
# The conv preset's net (32c5s-p2-64c5s-p2-512) on an 8-level thermometer at its full budget
# (run cpu-s7-20ep): 20 epochs on all 60,000 images, 2-bit weights, NSM and its deterministic
# baseline, one CPU thread each, test accuracy at T = 1, 4, 16, 64. The records have 8 levels;
# the preset has 16, so add --levels 8 to reproduce them.
# bash benchmarks/runs/fashion-mnist-cpu-9-20ep.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=.
PY=${PY:-.venv/bin/python}
$PY benchmarks/accuracy.py --dataset fashion-mnist --models nsm-conv,det-conv --bits 2 \
    --epochs 20 --jobs 2 --threads 1 --run cpu-s7-20ep --merge \
    --out benchmarks/results/accuracy-fashion-mnist.json
