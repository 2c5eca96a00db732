#!/usr/bin/env bash
# Mask R-CNN fine-tuned on the cut-paste set (configs/downstream/cutpaste_mask_rcnn_R_18_FPN.yaml) from
# random init, from the global MoCo v2 baseline and from VADeR: the equal-time pretrainings of
# experiments/compare_pretraining.sh (run it first with the same ITERS and OUT). Prints one markdown table of
# COCO box and mask AP on the val split.
#
#   experiments/compare_finetuning.sh [ITERS] [OUT]     (defaults: 600 output/compare)
#
# Re-running skips fine-tunes whose model_final.pth exists. docs/results.md reports its output.
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/common.sh
ITERS=${1:-600}
OUT=${2:-output/compare}
CONFIG=configs/downstream/cutpaste_mask_rcnn_R_18_FPN.yaml
GLOBAL_RUN=moco_global_$((ITERS * 3))  # the global run given VADeR's wall time

for run in "vader_$ITERS" "$GLOBAL_RUN"; do
    if [ ! -f "$OUT/$run/model_final.pth" ]; then
        echo "missing $OUT/$run/model_final.pth: run experiments/compare_pretraining.sh $ITERS $OUT first" >&2
        exit 1
    fi
    "$PY" tools/convert_vader_to_d2.py --input "$OUT/$run/model_final.pth" --output "$OUT/$run/d2.pkl"
done

finetune() {  # name, weights
    train_unless_done "$OUT/finetune/$1" "$CONFIG" MODEL.WEIGHTS "$2"
}

finetune random_init ""
finetune "$GLOBAL_RUN" "$OUT/$GLOBAL_RUN/d2.pkl"
finetune "vader_$ITERS" "$OUT/vader_$ITERS/d2.pkl"

"$PY" - "$OUT/finetune" random_init "$GLOBAL_RUN" "vader_$ITERS" <<'EOF' | tee "$OUT/finetune/table_$ITERS.md"
import os, sys

from vader_d2.training_metrics import read_metrics

root, runs = sys.argv[1], sys.argv[2:]
columns = ["bbox/AP", "bbox/AP50", "segm/AP", "segm/AP50"]
print("| initialisation | loss, first 20 it | loss, last 20 it | " + " | ".join(columns) + " |")
print("|---|---:|---:|" + "---:|" * len(columns))
for run in runs:
    metrics = read_metrics(os.path.join(root, run, "metrics.json"))
    losses = [m["total_loss"] for m in metrics if "total_loss" in m]
    final = [m for m in metrics if "bbox/AP" in m][-1]
    row = [run, f"{losses[0]:.3f}", f"{losses[-1]:.3f}", *(f"{final[c]:.2f}" for c in columns)]
    print("| " + " | ".join(row) + " |")
EOF
