#!/usr/bin/env bash
# An ECP5-25F candidate network trained with the ECP5-85F preset's recipe: 16 input levels,
# 22 float epochs, a warm restart of 12 at lr 0.001, 4 epochs of 3-bit convs and ternary dense
# layers at lr 0.0005, then 4 more at lr 0.0002. One thread, lowest priority; resumable after a
# cut-off (every stage keeps a checkpoint: rerun the same command). With NO_RESTART=1 the
# fine-tuning starts from the 22-epoch float model (no float warm restart; the 85F's restart
# gained 0.05 points after fine-tuning, for 12 epochs).
#   [NO_RESTART=1] bash benchmarks/runs/edge-25k-candidate.sh OUT_DIR CONV_SPEC
# Candidates that fit the part's 56 EBR by the estimate (nsm compile --target ecp5-25k, 3-bit
# convs, ternary dense layers):
#   32c3s-p2-48c3s-p2-128         70/s, 5.2 k LUTs, 56 EBR (the 128-neuron head takes 37);
#     NO_RESTART=1: 91.24 % float, 91.13 % fine-tuned, golden model 91.23 % of all 10,000
#     (out/e25b3): the ECP5-25F preset now (54 EBR in yosys at the search's folding; 63 at
#     the folding the estimate chose before it counted the stores' write enables).
#   32c3s-p2-64c3s-p2-64c3s-p2-128  279/s, 11.2 k LUTs, 54 EBR; its float training trailed
#     the preset's own net (train accuracy 0.880 against 0.887 after 11 epochs): stopped.
# (32c3s-p2-64c3s-p2-128, the ECP5-85F's convs with a 128-neuron head, needs 62 EBR.)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:?usage: edge-25k-candidate.sh OUT_DIR CONV_SPEC}
CONV=${2:?usage: edge-25k-candidate.sh OUT_DIR CONV_SPEC}
mkdir -p "$OUT"
source benchmarks/runs/_stage.sh
NET=(--dataset fashion-mnist --model nsm-conv --conv "$CONV" --levels 16
     --encoding thermometer --p 0.875,0.75 --norm l1 --quantizer mse --batch-size 100
     --noise input --no-progress)
TUNE=(--weight-bits 2 --conv-weight-bits 3 --output-weight-bits 8)
stage float1 "${NET[@]}" --weight-bits 32 --epochs 22 --lr 0.002
FLOAT=$OUT/float1.pt
if [ "${NO_RESTART:-0}" != 1 ]; then
    stage float "${NET[@]}" --weight-bits 32 --epochs 12 --lr 0.001 --init "$OUT/float1.pt"
    FLOAT=$OUT/float.pt
fi
stage c3a "${NET[@]}" "${TUNE[@]}" --epochs 4 --lr 0.0005 --init "$FLOAT"
stage c3 "${NET[@]}" "${TUNE[@]}" --epochs 4 --lr 0.0002 --init "$OUT/c3a.pt"
grep -h "test accuracy" "$OUT"/*.log || true
