#!/bin/bash
# Reduced-budget conv sweep (runs proxy7-*; as fashion-mnist-cpu-6-proxy.sh): the 8-level input
# and zero-padded ("same") convolutions, each worth about 2 validation points there, together,
# for the NSM and its deterministic baseline. Test set cut to 2,000.
# OUT=/tmp/r7 bash benchmarks/runs/fashion-mnist-cpu-7-proxy.sh
export PYTHONUNBUFFERED=1 PYTHONPATH=.
PY=${PY:-.venv/bin/python}
B="$PY benchmarks/accuracy.py --dataset fashion-mnist --train-limit 15000 --val --val-images 5000 --test-limit 2000 --samples 16 --bits 2 --epochs 8 --threads 1 --levels 8 --conv 32c5s-p2-64c5s-p2-512"
mkdir -p $OUT/r
j() { name=$1; shift; $B --run proxy7-$name --out $OUT/r/$name.json "$@" > $OUT/r/$name.log 2>&1; }
q1() { j L8same --models nsm-conv; j L8sameEO --models nsm-conv --expected-output; }
q2() { while pgrep -f "proxy6-lr5" > /dev/null; do sleep 10; done
       j detL8same --models det-conv; j L8sameFlip --models nsm-conv --flip; }
q1 & q2 & wait
$PY benchmarks/runs/gather.py proxy7
