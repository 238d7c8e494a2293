#!/bin/bash
# Run from the repository root with the Fashion-MNIST IDX files in .data/ and OUT set to a
# results folder: OUT=/tmp/r bash benchmarks/runs/fashion-mnist-gpu-3-long.sh  (docs/training.md).
# The validation-chosen 2-bit MLP recipe (2048-2048, 8 levels) on its preset schedule, 35
# epochs (runs gpu-s5-35ep-seed0, -seed1), NSM and its baseline, two seeds each; full training
# set, test accuracy.
export PYTHONUNBUFFERED=1
B="python3 benchmarks/accuracy.py --dataset fashion-mnist --device cuda --data-dir .data --time-limit 440 --bits 2 --epochs-mlp 35 --hidden 2048,2048 --levels 8"
mkdir -p $OUT/r
for s in 0 1; do for m in nsm-mlp det-mlp; do
  $B --models $m --seed $s --run gpu-s5-35ep-seed$s --out $OUT/r/$m$s.json > $OUT/r/$m$s.log 2>&1 &
done; done
wait
python3 benchmarks/runs/gather.py long
