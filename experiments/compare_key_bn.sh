#!/usr/bin/env bash
# Shuffle-BN vs synchronised BN (MODEL.VADER.KEY_BN) at the same budget, on the demo photos: the same
# recipe, seed and iterations, once with each; then what training reports (top-1, positive and negative
# similarity: a leak of batch statistics inflates them) beside held-out correspondence and the linear
# probe (a leak does not help them).
#
#   experiments/compare_key_bn.sh [ITERS] [OUT] [KEY VALUE ...]     (defaults: 600 output/compare_key_bn)
#
# Trailing KEY VALUE pairs override the demo config in both runs (e.g. INPUT.VIEWS.CROP_SIZE 96).
# Re-running skips pretrainings whose model_final.pth exists. Tables go to OUT/training_ITERS.md and
# OUT/table_ITERS.md; docs/results.md reports them.
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/common.sh
ITERS=${1:-600}
OUT=${2:-output/compare_key_bn}
require_whole_number ITERS "$ITERS" 1
shift $(($# < 2 ? $# : 2))
CONFIG=configs/vader_pretrain_demo_long.yaml  # 128 px views unless overridden
COMMON=(MODEL.DEVICE cpu SOLVER.MAX_ITER "$ITERS" SOLVER.CHECKPOINT_PERIOD 100000 "$@")
# One process: naiveSyncBN is plain BN over the whole batch of 8, the former default.
SYNC=(MODEL.VADER.KEY_BN sync MODEL.RESNETS.NORM naiveSyncBN MODEL.FPN.NORM naiveSyncBN)

train_unless_done "$OUT/shuffle_$ITERS" "$CONFIG" "${COMMON[@]}"
train_unless_done "$OUT/sync_$ITERS" "$CONFIG" "${COMMON[@]}" "${SYNC[@]}"

mkdir -p "$OUT/eval"
for run in shuffle sync; do
    "$PY" tools/evaluate_dense.py --config-file "$CONFIG" --name "${run}_$ITERS" --output "$OUT/eval/${run}_$ITERS.json" \
        MODEL.DEVICE cpu MODEL.WEIGHTS "$OUT/${run}_$ITERS/model_final.pth" "$@"
done

"$PY" - "$OUT" "$ITERS" <<'EOF' | tee "$OUT/training_$ITERS.md"
import sys
from vader_d2.evaluation.report import read_metrics
from vader_d2.modeling.momentum import NEGATIVE_SIMILARITY, POSITIVE_SIMILARITY, TOP1_ACCURACY

out, iters = sys.argv[1:]
LAST = 5  # records averaged at the end of training: each one is a single batch
print(f"| KEY_BN | top-1 | positive sim | negative sim | gap | (mean of the last {LAST} records) |")
print("|---|---:|---:|---:|---:|---|")
for run in ("shuffle", "sync"):
    records = [r for r in read_metrics(f"{out}/{run}_{iters}/metrics.json") if TOP1_ACCURACY in r][-LAST:]
    top1, positive, negative = (sum(r[name] for r in records) / len(records) for name in (TOP1_ACCURACY, POSITIVE_SIMILARITY, NEGATIVE_SIMILARITY))
    print(f"| {run} | {top1:.3f} | {positive:.3f} | {negative:.3f} | {positive - negative:.3f} | |")
EOF
"$PY" tools/evaluate_dense.py --table "$OUT/eval/shuffle_$ITERS.json" "$OUT/eval/sync_$ITERS.json" | tee "$OUT/table_$ITERS.md"
