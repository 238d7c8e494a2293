#!/bin/bash
# Reduced-budget conv sweep (runs proxy13-*; as fashion-mnist-cpu-11-proxy.sh: 15,000 training
# images, 8 epochs, 5,000 validation images, T = 16, 2-bit weights) on the 16-level preset:
# 32 levels, and keep p 0.875 in the convolutions (the best noise level on 8 levels, runs
# proxy8-*).
# OUT=/tmp/r13 bash benchmarks/runs/fashion-mnist-cpu-13-proxy.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=.
PY=${PY:-.venv/bin/python}
B="$PY benchmarks/accuracy.py --dataset fashion-mnist --train-limit 15000 --val --val-images 5000 --test-limit 2000 --samples 16 --bits 2 --epochs 8 --threads 1 --models nsm-conv"
mkdir -p $OUT/r
j() { name=$1; shift; $B --run proxy13-$name --out $OUT/r/$name.json "$@" > $OUT/r/$name.log 2>&1; }
j L32 --levels 32 &
j L16pc875 --p-conv 0.875,0.75 &
wait
$PY benchmarks/runs/gather.py proxy13
