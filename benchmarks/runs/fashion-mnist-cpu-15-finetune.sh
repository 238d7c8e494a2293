#!/bin/bash
# Quantization-aware fine-tuning at 2 bits (run cpu-s9-tune$EP) of the float conv nets of
# fashion-mnist-cpu-14-float.sh (run cpu-s9-float20, models in $SAVE): EP epochs, Adam from LR
# on a cosine schedule, the NSM and its baseline each from its own float model, one CPU thread
# each. The per-neuron power-of-two scales of the mse quantizer are chosen afresh from the float
# weights at every step, as in training from scratch. In the cpu-s9-tune3 records the NSM ran
# with --threads 2 and the baseline's records were written to a file of their own, then merged
# (each record's command says how it ran).
# SAVE=/tmp/models EP=3 bash benchmarks/runs/fashion-mnist-cpu-15-finetune.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=.
PY=${PY:-.venv/bin/python}
EP=${EP:-3}
LR=${LR:-0.0005}
B="$PY benchmarks/accuracy.py --dataset fashion-mnist --bits 2 --epochs $EP --lr $LR --levels 16 --threads 1 --run cpu-s9-tune${EP} --merge --init-dir ${SAVE:-/tmp/models}"
$B --models nsm-conv --p-conv 0.875,0.75 --out benchmarks/results/accuracy-fashion-mnist.json &
$B --models det-conv --out /tmp/det-tune.json &
wait
