#!/bin/bash
# Reduced-budget sweep for a more accurate ECP5-25F preset (runs edge25-*; as
# fashion-mnist-cpu-13-proxy.sh: 15,000 training images, 8 epochs, 5,000 validation images,
# T = 16). The 25F's 56 EBR, not its LUTs, bound the network (benchmarks/fit.py: every candidate
# below fits in 53 to 56 EBR at 7 to 17 k LUTs by the estimate), so binary weights buy twice the
# filters or neurons of ternary ones. The preset (16c5s-p2-32c5s-p2-128, ternary) against:
# the preset's convs with 256 binary neurons (855/s by the estimate), the large preset's 32 and
# 64 filters with 128 binary neurons (408/s), 32 and 32 filters ternary (218/s).
# OUT=/tmp/e25 bash benchmarks/runs/edge-25k-proxy.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=.
PY=${PY:-.venv/bin/python}
B="$PY benchmarks/accuracy.py --dataset fashion-mnist --train-limit 15000 --val --val-images 5000 --test-limit 2000 --samples 16 --epochs 8 --threads 1 --models nsm-conv --levels 8 --p-conv 0.875,0.75 --output-bits 8"
mkdir -p $OUT/r
j() { name=$1; shift; $B --run edge25-$name --out $OUT/r/$name.json "$@" > $OUT/r/$name.log 2>&1; }
j preset --conv 16c5s-p2-32c5s-p2-128 --bits 2 &
j c16-32-256-w1 --conv 16c5s-p2-32c5s-p2-256 --bits 1 &
wait
j c32-64-128-w1 --conv 32c5s-p2-64c5s-p2-128 --bits 1 &
j c32-32-128-w2 --conv 32c5s-p2-32c5s-p2-128 --bits 2 &
wait
$PY benchmarks/runs/gather.py edge25
