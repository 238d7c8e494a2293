#!/bin/bash
# Run from the repository root with the Fashion-MNIST IDX files in .data/ (carried) and OUT set
# to a results folder:
#   OUT=$OUT bash benchmarks/runs/fashion-mnist-gpu-4-conv.sh
# The conv matrix on all 60,000 training images with the conv preset (32c5s-p2-64c5s-p2-512 on
# a 16-level thermometer, docs/training.md): NSM and baseline, float, 2-bit and binary, test
# accuracy at T = 1, 4, 16, 64 (runs gpu-conv-${EP}ep; benchmarks/results has none). EP epochs
# must finish inside one 10-minute call: the valid-conv 4-level net takes about 25 s an epoch
# with 12 runs sharing an H100 (fashion-mnist-gpu-2-matrix.sh), the padded net on 8 levels about
# 3x that and on 16 levels a little more, so start with EP=12, 6 runs.
export PYTHONUNBUFFERED=1
EP=${EP:-12}
B="python3 benchmarks/accuracy.py --dataset fashion-mnist --device cuda --data-dir .data --time-limit ${TL:-500} --run gpu-conv-${EP}ep --epochs-conv $EP"
mkdir -p $OUT/r
j() { name=$1; shift; $B --out $OUT/r/$name.json "$@" > $OUT/r/$name.log 2>&1 & }
for b in 32 2 1; do
  j nc$b --models nsm-conv --bits $b
  j dc$b --models det-conv --bits $b
done
sleep 90; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
wait
python3 benchmarks/runs/gather.py conv
