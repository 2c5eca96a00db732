#!/usr/bin/env bash
# Random init vs the global MoCo v2 baseline vs DenseCL vs PixPro vs VADeR at an equal CPU budget, on
# the demo photos, over seeds: for each seed, pretrain every method for the same number of iterations on
# the same views (configs/*_demo.yaml: ResNet-18-FPN, batch 8, one SGD schedule; only the method differs),
# and with GLOBAL_EQUAL_TIME=1 (the default) the global baseline also for VADeR's wall clock; then evaluate
# every model's frozen features with tools/evaluate_dense.py (correspondence, linear probe) and
# tools/propagate_labels.py (label propagation on the offline videos of datasets/prepare_videos.py).
# Prints mean ± std over the seeds of every number, and each pretraining's wall time.
#
#   [CROP=128] [GLOBAL_EQUAL_TIME=1] experiments/compare_pretraining.sh [ITERS] [OUT] [SEEDS]
#       (defaults: 600 output/compare 3; CROP is INPUT.VIEWS.CROP_SIZE, 128 px the long demo's)
#
# Seed s pretrains with SEED s and evaluates with --seed s-1 (view pairs, probe, the random
# initialisation), so seed 1 is the single-seed setting docs/results.md used before. Runs go to
# OUT/seed<s>/; re-running skips pretrainings whose model_final.pth exists and evaluations whose results
# file exists. Tables: OUT/table_ITERS.md (evaluate_dense), OUT/propagation_ITERS.md and
# OUT/wall_time_ITERS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/common.sh
ITERS=${1:-600}
OUT=${2:-output/compare}
SEEDS=${3:-3}
CROP=${CROP:-128}
GLOBAL_EQUAL_TIME=${GLOBAL_EQUAL_TIME:-1}
require_whole_number ITERS "$ITERS" 1
require_whole_number SEEDS "$SEEDS" 1
[[ "$GLOBAL_EQUAL_TIME" =~ ^[01]$ ]] || fail "GLOBAL_EQUAL_TIME must be 1 or 0, not '$GLOBAL_EQUAL_TIME'"
VIDEOS=${VIDEOS:-${DETECTRON2_DATASETS:-datasets}/vader_videos/DAVIS}
COMMON=(MODEL.DEVICE cpu SOLVER.CHECKPOINT_PERIOD 100000 INPUT.VIEWS.CROP_SIZE "$CROP")
# Each pretrained model: its run name and the config it trains with (and is evaluated with).
declare -A CONFIG_OF=(
    ["moco_global_$ITERS"]=configs/moco_global_demo.yaml
    ["densecl_$ITERS"]=configs/densecl_demo.yaml
    ["pixpro_$ITERS"]=configs/pixpro_demo.yaml
    ["vader_$ITERS"]=configs/vader_pretrain_demo.yaml
)
PRETRAINED=("moco_global_$ITERS" "densecl_$ITERS" "pixpro_$ITERS" "vader_$ITERS")
if [ "$GLOBAL_EQUAL_TIME" = 1 ]; then
    # A global step costs about a third of a VADeR step on a CPU (no FPN, no dense head, one key per view).
    CONFIG_OF["moco_global_$((ITERS * 3))"]=configs/moco_global_demo.yaml
    PRETRAINED=("moco_global_$ITERS" "moco_global_$((ITERS * 3))" "densecl_$ITERS" "pixpro_$ITERS" "vader_$ITERS")
fi
MODELS=(random_init "${PRETRAINED[@]}")

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
    for model in "${PRETRAINED[@]}"; do
        train_unless_done "$run/$model" "${CONFIG_OF[$model]}" "${COMMON[@]}" SOLVER.MAX_ITER "${model##*_}" SEED "$seed"
    done
    evaluate "$seed" random_init configs/vader_pretrain_demo.yaml ""
    for model in "${PRETRAINED[@]}"; do
        evaluate "$seed" "$model" "${CONFIG_OF[$model]}" "$run/$model/model_final.pth"
    done
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
{
    echo "| run | seed | Detectron2's training speed line |"
    echo "|---|---:|---|"
    for seed in $(seq 1 "$SEEDS"); do
        for model in "${PRETRAINED[@]}"; do
            echo "| $model | $seed | $(grep -ho 'Overall training speed: .*' "$OUT/seed$seed/$model/log.txt" | tail -1) |"
        done
    done
} | tee "$OUT/wall_time_$ITERS.md"
