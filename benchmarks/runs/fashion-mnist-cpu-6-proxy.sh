#!/bin/bash
# Reduced-budget conv recipe sweep on a 2-core CPU (runs proxy6-*): train on the first 15,000
# images for 8 epochs, choose on the next 5,000 (val), T = 16 only; two runs at a time, one
# thread each. Settings not given here come from PRESETS; the records' config has the net they
# ran on (32c5-p2-64c5-p2-512, 4 levels). pc09 fails: p = 0.9 is not a multiple of 2^-16.
# Run from the repository root: OUT=/tmp/r6 bash benchmarks/runs/fashion-mnist-cpu-6-proxy.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=.
PY=${PY:-.venv/bin/python}
B="$PY benchmarks/accuracy.py --dataset fashion-mnist --train-limit 15000 --val --val-images 5000 --samples 16 --bits 2 --epochs 8 --threads 1"
mkdir -p $OUT/r
j() { name=$1; shift; $B --run proxy6-$name --out $OUT/r/$name.json "$@" > $OUT/r/$name.log 2>&1; }
q1() {
  j base --models nsm-conv
  j same --models nsm-conv --conv 32c5s-p2-64c5s-p2-512
  j pc09 --models nsm-conv --p-conv 0.9,0.75
  j lr5 --models nsm-conv --lr 0.005
}
q2() {
  j detbase --models det-conv
  j L8 --models nsm-conv --levels 8
  j vgg --models nsm-conv --conv 32c3s-32c3s-p2-64c3s-64c3s-p2-512
}
q1 & q2 & wait
$PY benchmarks/runs/gather.py proxy6
