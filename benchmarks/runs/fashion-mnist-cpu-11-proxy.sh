#!/bin/bash
# Reduced-budget conv sweep (runs proxy11-*; 15,000 training images, 8 epochs, 5,000 validation
# images, T = 16, 2-bit weights): the padded conv net on a 16-level thermometer, the NSM and its
# baseline (8 levels: fashion-mnist-cpu-7-proxy.sh).
# OUT=/tmp/r11 bash benchmarks/runs/fashion-mnist-cpu-11-proxy.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=.
PY=${PY:-.venv/bin/python}
B="$PY benchmarks/accuracy.py --dataset fashion-mnist --train-limit 15000 --val --val-images 5000 --test-limit 2000 --samples 16 --bits 2 --epochs 8 --threads 1"
mkdir -p $OUT/r
j() { name=$1; shift; $B --run proxy11-$name --out $OUT/r/$name.json "$@" > $OUT/r/$name.log 2>&1; }
j L16 --models nsm-conv --levels 16 &
j detL16 --models det-conv --levels 16 &
wait
$PY benchmarks/runs/gather.py proxy11
