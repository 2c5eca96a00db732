#!/usr/bin/env bash
# How the demo recipe (128 px views: configs/vader_pretrain_demo_long.yaml) was chosen: 600-iteration runs
# that differ from it in one or two keys, each scored by held-out correspondence (tools/evaluate_dense.py).
# About 5-7 minutes per 600-iteration run on 2 CPU cores (the 2650-iteration one 20), about 55 in all;
# docs/results.md reports the table.
#
#   experiments/sweep_demo_long_recipe.sh [OUT]     (default: output/sweep)
#
# Re-running skips pretrainings whose model_final.pth exists. The table goes to OUT/table.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/common.sh
OUT=${1:-output/sweep}
CONFIG=configs/vader_pretrain_demo_long.yaml
EVALUATIONS=()  # every run's JSON, in the order of the table

run() {  # name, KEY VALUE overrides of the demo config
    local name=$1
    shift
    train_unless_done "$OUT/$name" "$CONFIG" MODEL.DEVICE cpu SOLVER.MAX_ITER 600 SOLVER.CHECKPOINT_PERIOD 100000 "$@"
    "$PY" tools/evaluate_dense.py --config-file "$CONFIG" --name "$name" --tasks correspondence \
        --output "$OUT/$name.json" MODEL.DEVICE cpu MODEL.WEIGHTS "$OUT/$name/model_final.pth" "$@"
    EVALUATIONS+=("$OUT/$name.json")
}

# The queue always holds 8-16 steps of keys.
PAIRS_32=(MODEL.VADER.PAIRS_PER_IMAGE 32 MODEL.VADER.MIN_SHARED_CELLS 32 MODEL.VADER.QUEUE_SIZE 4096)
PAIRS_128=(MODEL.VADER.PAIRS_PER_IMAGE 128 MODEL.VADER.MIN_SHARED_CELLS 128 MODEL.VADER.QUEUE_SIZE 16384)

run pairs32 "${PAIRS_32[@]}"
run pairs32_lr0.1 "${PAIRS_32[@]}" SOLVER.BASE_LR 0.1
run pairs32_t0.2 "${PAIRS_32[@]}" MODEL.VADER.TEMPERATURE 0.2
run pairs128 "${PAIRS_128[@]}"
run pairs256
run pairs256_t0.2 MODEL.VADER.TEMPERATURE 0.2
# The 32-pair recipe given the wall time of the demo's 1800 256-pair steps (20 min; 0.45 s vs 0.65 s a step).
run pairs32_2650it "${PAIRS_32[@]}" SOLVER.MAX_ITER 2650

"$PY" tools/evaluate_dense.py --table "${EVALUATIONS[@]}" | tee "$OUT/table.md"
