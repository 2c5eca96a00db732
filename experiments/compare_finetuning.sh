#!/usr/bin/env bash
# Downstream training on the cut-paste set from random init and from each pretraining of
# experiments/compare_pretraining.sh (run it first with the same ITERS, OUT, SEEDS and GLOBAL_EQUAL_TIME):
# the global MoCo v2 baseline (given VADeR's wall time where GLOBAL_EQUAL_TIME=1, the default), DenseCL,
# PixPro and VADeR. For each seed: Mask R-CNN fine-tuned end to end
# (configs/downstream/cutpaste_mask_rcnn_R_18_FPN.yaml) and semantic FPN on the frozen backbone
# (configs/downstream/cutpaste_semantic_R_18_FPN_frozen.yaml: only the head trains). Prints mean ± std
# over the seeds of the first and last logged loss and the final evaluation.
#
#   [GLOBAL_EQUAL_TIME=1] [TASKS="mask_rcnn frozen_semantic"] [FINETUNE_ITERS=N] \
#       experiments/compare_finetuning.sh [ITERS] [OUT] [SEEDS]
#       (defaults: 600 output/compare 3; TASKS=mask_rcnn runs only the Mask R-CNN fine-tunes;
#       FINETUNE_ITERS shortens the downstream schedules, 300 iterations in the configs, to N with the
#       same shape, into folders and tables named TASK_Nit)
#
# Seed s trains with SEED s from seed s's pretrainings. Re-running skips runs whose model_final.pth
# exists. Tables: OUT/finetune/table_ITERS.md (Mask R-CNN) and OUT/finetune/frozen_semantic_ITERS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/common.sh
ITERS=${1:-600}
OUT=${2:-output/compare}
SEEDS=${3:-3}
require_whole_number ITERS "$ITERS" 1
require_whole_number SEEDS "$SEEDS" 1
[[ "${GLOBAL_EQUAL_TIME:-1}" =~ ^[01]$ ]] || fail "GLOBAL_EQUAL_TIME must be 1 or 0, not '$GLOBAL_EQUAL_TIME'"
GLOBAL_RUN=moco_global_$ITERS
[ "${GLOBAL_EQUAL_TIME:-1}" = 1 ] && GLOBAL_RUN=moco_global_$((ITERS * 3))  # the global run given VADeR's wall time
PRETRAINED=("$GLOBAL_RUN" "densecl_$ITERS" "pixpro_$ITERS" "vader_$ITERS")
MODELS=(random_init "${PRETRAINED[@]}")
declare -A CONFIGS=(
    [mask_rcnn]=configs/downstream/cutpaste_mask_rcnn_R_18_FPN.yaml
    [frozen_semantic]=configs/downstream/cutpaste_semantic_R_18_FPN_frozen.yaml
)
read -r -a TASK_LIST <<< "${TASKS:-mask_rcnn frozen_semantic}"
SCHEDULE=()
SUFFIX=""
if [ -n "${FINETUNE_ITERS:-}" ]; then
    require_whole_number FINETUNE_ITERS "$FINETUNE_ITERS" 10
    n=$FINETUNE_ITERS
    # The configs' 300-iteration shape: warm-up for the first sixth, learning-rate drops at 2/3 and 9/10.
    SCHEDULE=(SOLVER.MAX_ITER "$n" SOLVER.WARMUP_ITERS $((n / 6)) SOLVER.STEPS "($((n * 2 / 3)),$((n * 9 / 10)))")
    SUFFIX=_${n}it
fi
for task in "${TASK_LIST[@]}"; do
    [ -n "${CONFIGS[$task]:-}" ] || fail "TASKS: unknown task '$task' (known: ${!CONFIGS[*]})"
done

for seed in $(seq 1 "$SEEDS"); do
    run=$OUT/seed$seed
    for pretrained in "${PRETRAINED[@]}"; do
        [ -f "$run/$pretrained/model_final.pth" ] \
            || fail "missing $run/$pretrained/model_final.pth: run experiments/compare_pretraining.sh $ITERS $OUT $SEEDS first"
        export_unless_done "$run/$pretrained"
    done
    for task in "${TASK_LIST[@]}"; do
        for model in "${MODELS[@]}"; do
            weights=""
            [ "$model" = random_init ] || weights=$run/$model/d2.pkl
            train_unless_done "$run/$task$SUFFIX/$model" "${CONFIGS[$task]}" MODEL.WEIGHTS "$weights" SEED "$seed" "${SCHEDULE[@]}"
            "$PY" experiments/summarise_seeds.py finetune-result --name "$model" --seed "$seed" \
                --output "$run/$task$SUFFIX/$model.json" "$run/$task$SUFFIX/$model"
        done
    done
done

results() {  # task: every seed's results file of every model
    for seed in $(seq 1 "$SEEDS"); do
        for model in "${MODELS[@]}"; do echo "$OUT/seed$seed/$1$SUFFIX/$model.json"; done
    done
}
mkdir -p "$OUT/finetune"
declare -A TABLE=([mask_rcnn]=table_$ITERS$SUFFIX.md [frozen_semantic]=frozen_semantic_$ITERS$SUFFIX.md)
for task in "${TASK_LIST[@]}"; do
    # shellcheck disable=SC2046  # one argument per file name; the names hold no spaces
    "$PY" experiments/summarise_seeds.py table $(results "$task") | tee "$OUT/finetune/${TABLE[$task]}"
done
