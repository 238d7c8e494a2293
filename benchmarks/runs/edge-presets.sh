#!/usr/bin/env bash
# Train the per-FPGA presets (nsm_train/presets.py) on Fashion-MNIST on a 2-core CPU: one
# thread a run, the two chains side by side. Each stage writes a resumable checkpoint every
# epoch, so a cut-off run continues where it stopped (rerun this script).
#   bash benchmarks/runs/edge-presets.sh [OUT_DIR]     (default out/edge)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-out/edge}
mkdir -p "$OUT"
export OMP_NUM_THREADS=1
run() {   # PRESET: float pre-training, then quantization-aware fine-tuning (nsm train --preset)
    .venv/bin/nsm train --preset "$1" --dataset fashion-mnist --no-progress \
        --checkpoint "$OUT/$1.ckpt" --resume -o "$OUT/$1.pt" > "$OUT/$1.log" 2>&1
}
(run ice40-up5k; run ecp5-25k) &
run ecp5-85k &
wait
