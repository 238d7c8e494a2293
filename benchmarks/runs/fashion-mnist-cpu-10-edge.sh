#!/bin/bash
# The accuracy of Fashion-MNIST nets that fit the small FPGAs by hw.synth.choose_folding's
# estimate (runs edge-*; the presets do not: the 2048-2048 MLP on 8 levels fits no target, the
# conv preset only the ECP5-85F). Binary weights (2-bit output layer), keep p = 0.75, the
# preset's other settings, 20 epochs on all 60,000 images, NSM and its baseline:
#   784-128-10 on a 1-level (threshold) input  (the hardware benchmark's fmnist-mlp-784-128-10)
#   3136-256-10 on a 4-level thermometer
#   16c5-p2-32c5-p2-128-10 on a 4-level thermometer (the hardware benchmark's small conv net)
# The conv net's records in accuracy-fashion-mnist-edge.json were made with --threads 2.
# OUT=/tmp/r10 bash benchmarks/runs/fashion-mnist-cpu-10-edge.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=.
PY=${PY:-.venv/bin/python}
B="$PY benchmarks/accuracy.py --dataset fashion-mnist --bits 1 --epochs 20 --threads 1"
mkdir -p $OUT/r
j() { name=$1; shift; $B --run edge-$name --out $OUT/r/$name.json "$@" > $OUT/r/$name.log 2>&1; }
j mlp784-128 --models nsm-mlp,det-mlp --hidden 128 --levels 1
j mlp3136-256 --models nsm-mlp,det-mlp --hidden 256 --levels 4
j conv16-32-128 --models nsm-conv,det-conv --conv 16c5-p2-32c5-p2-128 --levels 4
$PY benchmarks/runs/gather.py edge
