#!/usr/bin/env bash
# Random init vs the global MoCo v2 baseline vs VADeR at an equal CPU budget, on the demo photos:
# pretrain both recipes for the same number of iterations (and the global one also for the same wall
# clock), evaluate every model with tools/evaluate_dense.py, print one markdown table.
#
#   experiments/compare_pretraining.sh [ITERS] [OUT]     (defaults: 600 output/compare)
#
# Re-running skips pretrainings whose model_final.pth exists. The table goes to OUT/table_ITERS.md;
# docs/results.md reports it.
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/common.sh
ITERS=${1:-600}
OUT=${2:-output/compare}
# The global step costs about a third of the dense one on a CPU (no FPN, no dense head, one key per
# image instead of 256; see docs/results.md).
GLOBAL_EQUAL_TIME_ITERS=$((ITERS * 3))
COMMON=(MODEL.DEVICE cpu SOLVER.CHECKPOINT_PERIOD 100000)

pretrain() {  # config, iterations, output folder
    train_unless_done "$3" "$1" "${COMMON[@]}" SOLVER.MAX_ITER "$2"
}

evaluate() {  # name, config, weights
    "$PY" tools/evaluate_dense.py --config-file "$2" --name "$1" --output "$OUT/eval/$1.json" \
        MODEL.DEVICE cpu MODEL.WEIGHTS "$3"
}

pretrain configs/vader_pretrain_demo.yaml "$ITERS" "$OUT/vader_$ITERS"
pretrain configs/moco_global_demo.yaml "$ITERS" "$OUT/moco_global_$ITERS"
pretrain configs/moco_global_demo.yaml "$GLOBAL_EQUAL_TIME_ITERS" "$OUT/moco_global_$GLOBAL_EQUAL_TIME_ITERS"

mkdir -p "$OUT/eval"
evaluate random_init configs/vader_pretrain_demo.yaml ""
evaluate "moco_global_$ITERS" configs/moco_global_demo.yaml "$OUT/moco_global_$ITERS/model_final.pth"
evaluate "moco_global_$GLOBAL_EQUAL_TIME_ITERS" configs/moco_global_demo.yaml \
    "$OUT/moco_global_$GLOBAL_EQUAL_TIME_ITERS/model_final.pth"
evaluate "vader_$ITERS" configs/vader_pretrain_demo.yaml "$OUT/vader_$ITERS/model_final.pth"

"$PY" tools/evaluate_dense.py --table "$OUT/eval/random_init.json" "$OUT/eval/moco_global_$ITERS.json" \
    "$OUT/eval/moco_global_$GLOBAL_EQUAL_TIME_ITERS.json" "$OUT/eval/vader_$ITERS.json" | tee "$OUT/table_$ITERS.md"
