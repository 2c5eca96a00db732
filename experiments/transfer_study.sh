#!/usr/bin/env bash
# The practitioner's question: with a few thousand unlabeled images of my own domain and a few dozen
# labelled ones, does pretraining on the unlabeled ones make my Detectron2 model better?
#
# Data (datasets/prepare_lowlabel.py, built here if needed): vader_lowlabel, cut-paste images of the same
# 7 object classes; 2000 unlabeled images whose object stamps and background photos appear in none of the
# labelled images; labelled train images of which the first 10 / 30 / 100 are the label budgets; a fixed
# test split of 100 images on background photos of its own. Nothing is tuned on the test split: every
# setting below was declared before the first run (docs/results.md, "In-domain, few labels").
#
# The grid, for each seed s in SEEDS:
#   pretraining  random init (none), MoCo v2, DenseCL, PixPro, VADeR on vader_lowlabel_unlabeled with their
#                demo configs (ResNet-18-FPN, 96 px views, batch 8, SEED s), at an equal wall time: VADeR
#                for VADER_ITERS iterations, every other method for as many as fit in VADeR's time, from
#                the seconds per step of a 30-iteration calibration run of each (back to back, once per
#                OUT, kept in OUT/calibration/): a ratio of step times, which a machine shared with other
#                work changes less than it changes the step times themselves;
#   vader_resnet (when METHODS names it) is no pretraining of its own: VADeR's export without its FPN
#                tensors (experiments/resnet_only_weights.py), so that the downstream FPN starts from
#                Detectron2's initialisation as from the other exports (docs/results.md, "VADeR's ResNet alone");
#   downstream   for each initialisation, TASKS x BUDGETS with SEED s, evaluated on the test split:
#                semantic      semantic FPN fine-tuned end to end (lowlabel_semantic_R_18_FPN.yaml)
#                frozen        semantic FPN on the frozen pretrained ResNet (..._frozen.yaml)
#                mask_rcnn     Mask R-CNN fine-tuned end to end (lowlabel_mask_rcnn_R_18_FPN.yaml)
#
#   [VADER_ITERS=160] [TASKS="semantic frozen mask_rcnn"] [BUDGETS="10 30 100"] \
#   [METHODS="moco_v2 densecl pixpro vader"] [RESULTS=experiments/results/transfer_study] \
#       experiments/transfer_study.sh [SEEDS] [OUT]        (defaults: "1 2 3" output/transfer_study)
# A study with other VADER_ITERS or METHODS needs its own OUT and RESULTS: results are named by seed,
# task, budget and initialisation only.
#
# Work is done a seed at a time (pretrainings, then that seed's downstream runs), so that a session
# that ends mid-way loses at most one seed's pretraining. Each downstream result is a small JSON under
# RESULTS (experiments/results/transfer_study/, committed to the repository): re-running skips results
# that exist, and pretrains a seed again only when one of its results is missing. The tables
# (RESULTS/table.md) are made from every result there by experiments/summarise_transfer.py.
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/common.sh
read -r -a SEED_LIST <<< "${1:-1 2 3}"
OUT=${2:-output/transfer_study}
RESULTS=${RESULTS:-experiments/results/transfer_study}
VADER_ITERS=${VADER_ITERS:-160}
read -r -a TASK_LIST <<< "${TASKS:-semantic frozen mask_rcnn}"
read -r -a BUDGET_LIST <<< "${BUDGETS:-10 30 100}"

declare -A PRETRAIN_CONFIG=(
    [moco_v2]=configs/moco_global_demo.yaml
    [densecl]=configs/densecl_demo.yaml
    [pixpro]=configs/pixpro_demo.yaml
    [vader]=configs/vader_pretrain_demo.yaml
)
read -r -a METHODS <<< "${METHODS:-moco_v2 densecl pixpro vader}"
INITS=(random_init "${METHODS[@]}")
# Initialisations made from another method's export rather than pretrained: name -> that method.
declare -A DERIVED_FROM=([vader_resnet]=vader)
PRETRAINED=()
for method in "${METHODS[@]}"; do [ -n "${DERIVED_FROM[$method]:-}" ] || PRETRAINED+=("$method"); done
declare -A TASK_CONFIG=(
    [semantic]=configs/downstream/lowlabel_semantic_R_18_FPN.yaml
    [frozen]=configs/downstream/lowlabel_semantic_R_18_FPN_frozen.yaml
    [mask_rcnn]=configs/downstream/lowlabel_mask_rcnn_R_18_FPN.yaml
)
declare -A TRAIN_SET=([semantic]=vader_lowlabel_sem_seg_train [frozen]=vader_lowlabel_sem_seg_train [mask_rcnn]=vader_lowlabel_train)

require_whole_number VADER_ITERS "$VADER_ITERS" 30
for seed in "${SEED_LIST[@]}"; do require_whole_number "a seed" "$seed" 1; done
for task in "${TASK_LIST[@]}"; do [ -n "${TASK_CONFIG[$task]:-}" ] || fail "TASKS: unknown task '$task' (known: ${!TASK_CONFIG[*]})"; done
for method in "${METHODS[@]}"; do
    [ -n "${PRETRAIN_CONFIG[$method]:-}${DERIVED_FROM[$method]:-}" ] || fail "METHODS: unknown method '$method' (known: ${!PRETRAIN_CONFIG[*]} ${!DERIVED_FROM[*]})"
done
[[ " ${METHODS[*]} " == *" vader "* ]] || fail "METHODS must include vader: the others get VADeR's pretraining time"
for budget in "${BUDGET_LIST[@]}"; do [[ "$budget" =~ ^(10|30|100)$ ]] || fail "BUDGETS: the label budgets are 10, 30 and 100, not '$budget'"; done

"$PY" datasets/prepare_lowlabel.py

# Seconds per pretraining step of each method on this machine: Detectron2's "Overall training speed"
# line of a 30-iteration run (it leaves out the first iterations).
seconds_per_step() {  # method
    local run=$OUT/calibration/$1
    train_unless_done "$run" "${PRETRAIN_CONFIG[$1]}" "${LOWLABEL_PRETRAIN[@]}" SOLVER.MAX_ITER 30 SOLVER.WARMUP_ITERS 5 >&2
    local per_step
    per_step=$(grep -ho '([0-9.]* s / it)' "$run/log.txt" | tail -1 | tr -d '(' | cut -d' ' -f1)
    [ -n "$per_step" ] || fail "no training speed in $run/log.txt; delete $run and run again"
    echo "$per_step"
}

missing_results() {  # seed -> the number of downstream results not yet in RESULTS
    local count=0
    for task in "${TASK_LIST[@]}"; do
        for budget in "${BUDGET_LIST[@]}"; do
            for init in "${INITS[@]}"; do
                [ -f "$RESULTS/seed$1/${task}_$budget/$init.json" ] || count=$((count + 1))
            done
        done
    done
    echo "$count"
}

declare -A MAX_ITER=()  # "=()": an array only declared is unbound under set -u
calibrate() {
    declare -A per_step
    for method in "${PRETRAINED[@]}"; do per_step[$method]=$(seconds_per_step "$method"); done
    for method in "${PRETRAINED[@]}"; do
        MAX_ITER[$method]=$("$PY" -c "print(round($VADER_ITERS * ${per_step[vader]} / ${per_step[$method]}))")
        echo "$method: ${per_step[$method]} s a calibration step -> ${MAX_ITER[$method]} iterations" >&2
    done
}

for seed in "${SEED_LIST[@]}"; do
    [ "$(missing_results "$seed")" -gt 0 ] || continue
    [ ${#MAX_ITER[@]} -gt 0 ] || calibrate
    run=$OUT/seed$seed
    for method in "${PRETRAINED[@]}"; do
        train_unless_done "$run/$method" "${PRETRAIN_CONFIG[$method]}" "${LOWLABEL_PRETRAIN[@]}" SEED "$seed" \
            SOLVER.MAX_ITER "${MAX_ITER[$method]}" SOLVER.WARMUP_ITERS $((MAX_ITER[$method] / 8))
        export_unless_done "$run/$method"
    done
    for method in "${METHODS[@]}"; do
        source_method=${DERIVED_FROM[$method]:-}
        [ -n "$source_method" ] && [ ! -f "$run/$method/d2.pkl" ] || continue
        mkdir -p "$run/$method"
        "$PY" experiments/resnet_only_weights.py --input "$run/$source_method/d2.pkl" --output "$run/$method/d2.pkl"
    done
    for task in "${TASK_LIST[@]}"; do
        for budget in "${BUDGET_LIST[@]}"; do
            for init in "${INITS[@]}"; do
                result=$RESULTS/seed$seed/${task}_$budget/$init.json
                [ ! -f "$result" ] || continue
                weights=""
                [ "$init" = random_init ] || weights=$run/$init/d2.pkl
                train_unless_done "$run/${task}_$budget/$init" "${TASK_CONFIG[$task]}" MODEL.DEVICE cpu MODEL.WEIGHTS "$weights" \
                    DATASETS.TRAIN "(\"${TRAIN_SET[$task]}_$budget\",)" SEED "$seed"
                mkdir -p "$(dirname "$result")"
                "$PY" experiments/summarise_seeds.py finetune-result --name "$init" --seed "$seed" \
                    --output "$result" "$run/${task}_$budget/$init"
            done
        done
    done
    # The pretraining each model got, beside its results (a run with fewer METHODS keeps the others' lines).
    record=$RESULTS/seed$seed/pretraining.txt
    for method in "${PRETRAINED[@]}"; do
        { grep -v "^$method: " "$record" 2>/dev/null || true
          echo "$method: $(grep -ho 'Overall training speed: .*' "$run/$method/log.txt" | tail -1)"; } > "$record.new"
        mv "$record.new" "$record"
    done
done

"$PY" experiments/summarise_transfer.py "$RESULTS" | tee "$RESULTS/table.md"
