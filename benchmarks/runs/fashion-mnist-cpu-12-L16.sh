#!/bin/bash
# The conv preset (32c5s-p2-64c5s-p2-512, 2-bit weights, 20 epochs on all 60,000 images) on a
# 16-level thermometer (run cpu-s8-L16). In the reduced-budget sweep 16 levels gave the NSM
# 87.94 % validation accuracy against 87.48 with 8, its baseline 88.16 against 88.40
# (fashion-mnist-cpu-11-proxy.sh, -7-proxy.sh). NSM and baseline, one CPU thread each, test
# accuracy at T = 1, 4, 16, 64 (the baseline draws no noise: one pass stands for every T).
# bash benchmarks/runs/fashion-mnist-cpu-12-L16.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=.
PY=${PY:-.venv/bin/python}
$PY benchmarks/accuracy.py --dataset fashion-mnist --models nsm-conv,det-conv --bits 2 \
    --epochs 20 --levels 16 --jobs 2 --threads 1 --run cpu-s8-L16 --merge \
    --out benchmarks/results/accuracy-fashion-mnist.json
