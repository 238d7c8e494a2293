#!/bin/bash
# The Fashion-MNIST networks benchmarks/early_exit.py measures (issue 20), trained on CPU with
# the preset recipe of benchmarks/accuracy.py (batch 100, lr 0.002, mse quantizer, L1 norm,
# p = 0.75), one thread, one after the other; checkpoints under $OUT/pt:
#   mlp128:  784-128-10, threshold input, binary weights (2-bit output layer): the MLP that
#            fits the iCE40 UP5K (the hardware benchmark's fmnist-mlp-784-128-10), 20 epochs
#   conv:    16c5-p2-32c5-p2-128-10 on a 4-level thermometer, binary, on a time budget
#   mlp2048: the 2-bit MLP preset, 6272-2048-2048-10 (8-level thermometer), on a time budget
# OUT=out/ee bash benchmarks/runs/early-exit-models.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=.
PY=${PY:-.venv/bin/python}
OUT=${OUT:-out/ee}
mkdir -p "$OUT/pt"
B="$PY benchmarks/accuracy.py --dataset fashion-mnist --threads 1 --samples 16 --save-dir $OUT/pt"
$B --run ee-mlp128 --models nsm-mlp --bits 1 --hidden 128 --levels 1 --epochs 20 \
    --out $OUT/mlp128.json > $OUT/mlp128.log 2>&1
$B --run ee-conv --models nsm-conv --bits 1 --conv 16c5-p2-32c5-p2-128 --levels 4 \
    --epochs 20 --time-limit ${CONV_S:-1500} --out $OUT/conv.json > $OUT/conv.log 2>&1
$B --run ee-mlp2048 --models nsm-mlp --bits 2 --epochs 35 --time-limit ${BIG_S:-1800} \
    --out $OUT/mlp2048.json > $OUT/mlp2048.log 2>&1
