#!/usr/bin/env bash
# The ECP5-85F preset with wider conv weights (mixed precision, docs/presets.md): fine-tune the
# preset's float model (OUT/ecp5-85k-float.pt, from bash benchmarks/runs/edge-presets.sh) with
# 3- and 4-bit conv layers and ternary dense layers, side by side (one thread a run), then take
# each through the RTL on the first 1,000 test images into a record file of its own
# (benchmarks/results/edge-ecp5-85k-convN.json; edge.json keeps the preset's record).
# Resumable: every stage keeps a checkpoint; rerun after a cut-off.
#   bash benchmarks/runs/edge-85k-mixed.sh [OUT_DIR] [BITS...]   (default out/edge, 3 4)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-out/edge}
shift || true
BITS=${*:-3 4}
export OMP_NUM_THREADS=1
test -f "$OUT/ecp5-85k-float.pt" || {
    echo "edge-85k-mixed.sh: $OUT/ecp5-85k-float.pt: no float model (train the preset first)" >&2
    exit 1
}
tune() {   # N: fine-tune with N-bit convs
    .venv/bin/nsm train --preset ecp5-85k --dataset fashion-mnist --no-progress \
        --init "$OUT/ecp5-85k-float.pt" --conv-weight-bits "$1" \
        --checkpoint "$OUT/ecp5-85k-conv$1.ckpt" --resume -o "$OUT/ecp5-85k-conv$1.pt" \
        >> "$OUT/ecp5-85k-conv$1.log" 2>&1
}
for n in $BITS; do tune "$n" & done
wait
for n in $BITS; do
    .venv/bin/python benchmarks/edge.py --preset ecp5-85k --checkpoint "$OUT/ecp5-85k-conv$n.pt" \
        --no-bitstream --images 1000 --shards 2 --build-root "$OUT/builds-conv$n" \
        --out "benchmarks/results/edge-ecp5-85k-conv$n.json"
done
