#!/bin/bash
# Run from the repository root with the Fashion-MNIST IDX files in .data/ and OUT set to a
# results folder: OUT=/tmp/r bash benchmarks/runs/fashion-mnist-gpu-2-matrix.sh  (docs/training.md).
# The full matrix on all 60,000 training images, test accuracy (run gpu-s5): the MLP recipe
# chosen on validation by fashion-mnist-gpu-1-sweep.sh (2048-2048, 8-level thermometer) and the
# conv net, which the records have as 32c5-p2-64c5-p2-512 on 4 levels (add
# --conv 32c5-p2-64c5-p2-512 --levels 4 to C to reproduce them).
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
