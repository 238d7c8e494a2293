#!/bin/bash
# Reduced-budget conv sweep (runs proxy8-*; as fashion-mnist-cpu-6-proxy.sh, -7-proxy.sh): less
# blank-out noise in the convolutions of the padded net (keep p = 0.875 instead of 0.75; the
# dense layer keeps 0.75 or also 0.875). The records have 8 levels (add --levels 8 to B).
# OUT=/tmp/r8 bash benchmarks/runs/fashion-mnist-cpu-8-proxy.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=.
PY=${PY:-.venv/bin/python}
B="$PY benchmarks/accuracy.py --dataset fashion-mnist --train-limit 15000 --val --val-images 5000 --test-limit 2000 --samples 16 --bits 2 --epochs 8 --threads 1 --models nsm-conv"
mkdir -p $OUT/r
j() { name=$1; shift; $B --run proxy8-$name --out $OUT/r/$name.json "$@" > $OUT/r/$name.log 2>&1; }
j pc875 --p-conv 0.875,0.75 &
j pc875all --p-conv 0.875,0.875 &
wait
$PY benchmarks/runs/gather.py proxy8
