#!/usr/bin/env bash
# A deeper ECP5-25F candidate: the ECP5-85F's two 3x3 convs, a third 64-filter 3x3 conv and
# pool (7x7 -> 3x3), so the dense head (576 -> 128) takes 0.15 Mbit instead of the 0.8 Mbit a
# 128-neuron head on the 64x7x7 map would (which needs 62 EBR of 56 by the estimate). 16
# input levels, the 85F's recipe: 22 float epochs, a warm restart of 12 at lr 0.001, then 4
# epochs of 3-bit convs and ternary dense layers at lr 0.0005. The folding search gives it
# about 279 inferences/s, 11.2 k LUTs and 54 EBR by the estimate (nsm compile --target
# ecp5-25k). One thread, lowest priority; resumable after a cut-off.
#   bash benchmarks/runs/edge-25k-deep.sh [OUT_DIR]   (default out/e25d)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-out/e25d}
mkdir -p "$OUT"
export OMP_NUM_THREADS=1
NET=(--dataset fashion-mnist --model nsm-conv --conv 32c3s-p2-64c3s-p2-64c3s-p2-128 --levels 16
     --encoding thermometer --p 0.875,0.75 --norm l1 --quantizer mse --batch-size 100
     --noise input --no-progress)
stage() {   # NAME ARGS...: one resumable training run into OUT/NAME.pt
    local name=$1; shift
    test -f "$OUT/$name.pt" && return 0
    nice -n 19 .venv/bin/nsm train "$@" --checkpoint "$OUT/$name.ckpt" --resume \
        -o "$OUT/$name.pt" >> "$OUT/$name.log" 2>&1
}
stage float1 "${NET[@]}" --weight-bits 32 --epochs 22 --lr 0.002
stage float "${NET[@]}" --weight-bits 32 --epochs 12 --lr 0.001 --init "$OUT/float1.pt"
stage c3 "${NET[@]}" --weight-bits 2 --conv-weight-bits 3 --output-weight-bits 8 --epochs 4 \
    --lr 0.0005 --init "$OUT/float.pt"
grep -h "test accuracy" "$OUT"/*.log || true
