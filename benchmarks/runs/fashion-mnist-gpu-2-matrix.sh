#!/bin/bash
# Run from the repository root with the Fashion-MNIST IDX files in .data/ and OUT set to a
# results folder: OUT=/tmp/r bash benchmarks/runs/fashion-mnist-gpu-2-matrix.sh  (docs/training.md, session 5).
# session 5, call 2: the full matrix on all 60,000 training images, test accuracy.
# MLP recipe chosen on validation in call 1 (2048-2048, 8-level thermometer); conv preset.
export PYTHONUNBUFFERED=1
B="python3 benchmarks/accuracy.py --dataset fashion-mnist --device cuda --data-dir .data --time-limit ${TL:-520} --run gpu-s5"
mkdir -p $OUT/r
j() { name=$1; shift; $B --out $OUT/r/$name.json "$@" > $OUT/r/$name.log 2>&1 & }
M="--epochs-mlp 25 --hidden 2048,2048 --levels 8"
C="--epochs-conv 20"
for b in 32 2 1; do
  j nm$b --models nsm-mlp --bits $b $M
  j dm$b --models det-mlp --bits $b $M
  j nc$b --models nsm-conv --bits $b $C
  j dc$b --models det-conv --bits $b $C
done
sleep 90; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
wait
python3 benchmarks/runs/gather.py final
