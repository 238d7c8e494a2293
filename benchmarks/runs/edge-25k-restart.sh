#!/usr/bin/env bash
# The previous ECP5-25F preset's network (16c5s-p2-32c5s-p2-128, 8 levels) with the ECP5-85F's
# levers (docs/presets.md): 30 float epochs, a warm restart of 12 float epochs at lr 0.001, then
# 6 fine-tuning epochs with ternary weights and with 4-bit convs (ternary dense layers), side by
# side. One thread a run, at the lowest priority (it yields to co-simulation and synthesis).
# Resumable: every stage keeps a checkpoint; rerun after a cut-off.
#   bash benchmarks/runs/edge-25k-restart.sh [OUT_DIR]   (default out/e25)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-out/e25}
mkdir -p "$OUT"
source benchmarks/runs/_stage.sh
NET=(--dataset fashion-mnist --model nsm-conv --conv 16c5s-p2-32c5s-p2-128 --levels 8
     --encoding thermometer --p 0.875,0.75 --norm l1 --quantizer mse --batch-size 100
     --noise input --no-progress)
stage float1 "${NET[@]}" --weight-bits 32 --epochs 30 --lr 0.002
stage float "${NET[@]}" --weight-bits 32 --epochs 12 --lr 0.001 --init "$OUT/float1.pt"
TUNE=(--weight-bits 2 --output-weight-bits 8 --epochs 6 --lr 0.0005 --init "$OUT/float.pt")
stage ternary "${NET[@]}" "${TUNE[@]}" &
stage conv4 "${NET[@]}" "${TUNE[@]}" --conv-weight-bits 4 &
wait
grep -h "test accuracy" "$OUT"/*.log || true
