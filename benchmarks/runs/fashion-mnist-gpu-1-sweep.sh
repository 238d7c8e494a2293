#!/bin/bash
# Run from the repository root with the Fashion-MNIST IDX files in .data/ and OUT set to a
# results folder: OUT=/tmp/r bash benchmarks/runs/fashion-mnist-gpu-1-sweep.sh  (docs/training.md).
# Recipe sweep on validation (runs sweep-*): train on the first 55,000 images, choose on the
# last 5,000; test accuracy is recorded but not used for the choice. Settings not given here
# come from PRESETS; the records ran on 512-512 and 32c5-p2-64c5-p2-512, 4 levels (their config).
export PYTHONUNBUFFERED=1
B="python3 benchmarks/accuracy.py --dataset fashion-mnist --device cuda --data-dir .data --train-limit 55000 --val --time-limit ${TL:-420} --bits 2"
mkdir -p $OUT/r
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
j() { name=$1; shift; $B --run sweep-$name --out $OUT/r/$name.json "$@" > $OUT/r/$name.log 2>&1 & }
M="--models nsm-mlp --epochs-mlp 15"
C="--models nsm-conv --epochs-conv 10"
j m512 $M
j m1024 $M --hidden 1024,1024
j m2048 $M --hidden 2048,2048
j m1024L8 $M --hidden 1024,1024 --levels 8
j m2048L8 $M --hidden 2048,2048 --levels 8
j m2048s1 $M --hidden 2048,2048 --shift 1
j m2048p05 $M --hidden 2048,2048 --p 0.5
j m1024x3 $M --hidden 1024,1024,1024
j cpre $C
j cvgg $C --conv 64c3-64c3-p2-128c3-128c3-p2-512
j cwide $C --conv 64c5-p2-128c5-p2-1024
j cvggs1 $C --conv 64c3-64c3-p2-128c3-128c3-p2-512 --shift 1
sleep 60; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
wait
python3 benchmarks/runs/gather.py sweep
