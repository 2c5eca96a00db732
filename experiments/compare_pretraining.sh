#!/usr/bin/env bash
# Random init vs the global MoCo v2 baseline vs VADeR at an equal CPU budget, on the demo photos, over
# seeds: for each seed, pretrain both recipes for the same number of iterations (and the global one also
# for the same wall clock), then evaluate every model's frozen features with tools/evaluate_dense.py
# (correspondence, linear probe) and tools/propagate_labels.py (label propagation on the offline videos
# of datasets/prepare_videos.py). Prints mean ± std over the seeds of every number.
#
#   experiments/compare_pretraining.sh [ITERS] [OUT] [SEEDS]     (defaults: 600 output/compare 3)
#
# Seed s pretrains with SEED s and evaluates with --seed s-1 (view pairs, probe, the random
# initialisation), so seed 1 is the single-seed setting docs/results.md used before. Runs go to
# OUT/seed<s>/; re-running skips pretrainings whose model_final.pth exists and evaluations whose results
# file exists. Tables: OUT/table_ITERS.md (evaluate_dense) and OUT/propagation_ITERS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/common.sh
ITERS=${1:-600}
OUT=${2:-output/compare}
SEEDS=${3:-3}
VIDEOS=${VIDEOS:-${DETECTRON2_DATASETS:-datasets}/vader_videos/DAVIS}
# The global step costs about a third of the dense one on a CPU (no FPN, no dense head, one key per
# image instead of 256; see docs/results.md).
GLOBAL_EQUAL_TIME_ITERS=$((ITERS * 3))
# 128 px views, the long demo's (configs/vader_pretrain_demo_long.yaml) and docs/results.md's, for both recipes.
COMMON=(MODEL.DEVICE cpu SOLVER.CHECKPOINT_PERIOD 100000 INPUT.VIEWS.CROP_SIZE 128)
MODELS=(random_init "moco_global_$ITERS" "moco_global_$GLOBAL_EQUAL_TIME_ITERS" "vader_$ITERS")

evaluate() {  # seed, name, config, weights
    local run=$OUT/seed$1
    mkdir -p "$run/eval" "$run/propagation"
    [ -f "$run/eval/$2.json" ] || "$PY" tools/evaluate_dense.py --config-file "$3" --name "$2" --seed $(($1 - 1)) \
        --output "$run/eval/$2.json" MODEL.DEVICE cpu MODEL.WEIGHTS "$4"
    [ -f "$run/propagation/$2.json" ] || "$PY" tools/propagate_labels.py --config-file "$3" --name "$2" --seed $(($1 - 1)) \
        --davis-root "$VIDEOS" --output "$run/propagation/$2.json" MODEL.DEVICE cpu MODEL.WEIGHTS "$4"
}

for seed in $(seq 1 "$SEEDS"); do
    run=$OUT/seed$seed
    train_unless_done "$run/vader_$ITERS" configs/vader_pretrain_demo.yaml "${COMMON[@]}" SOLVER.MAX_ITER "$ITERS" SEED "$seed"
    for iters in "$ITERS" "$GLOBAL_EQUAL_TIME_ITERS"; do
        train_unless_done "$run/moco_global_$iters" configs/moco_global_demo.yaml "${COMMON[@]}" SOLVER.MAX_ITER "$iters" SEED "$seed"
    done
    evaluate "$seed" random_init configs/vader_pretrain_demo.yaml ""
    for iters in "$ITERS" "$GLOBAL_EQUAL_TIME_ITERS"; do
        evaluate "$seed" "moco_global_$iters" configs/moco_global_demo.yaml "$run/moco_global_$iters/model_final.pth"
    done
    evaluate "$seed" "vader_$ITERS" configs/vader_pretrain_demo.yaml "$run/vader_$ITERS/model_final.pth"
done

results() {  # kind of results (eval or propagation): every seed's file of every model
    for seed in $(seq 1 "$SEEDS"); do
        for model in "${MODELS[@]}"; do echo "$OUT/seed$seed/$1/$model.json"; done
    done
}
# shellcheck disable=SC2046  # one argument per file name; the names hold no spaces
"$PY" experiments/summarise_seeds.py table $(results eval) | tee "$OUT/table_$ITERS.md"
# shellcheck disable=SC2046
"$PY" experiments/summarise_seeds.py table $(results propagation) | tee "$OUT/propagation_$ITERS.md"
