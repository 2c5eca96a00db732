#!/usr/bin/env bash
# How the short demo recipe (configs/vader_pretrain_demo.yaml, `make demo`) was chosen: 160-iteration runs
# of the demo config that differ from it in one or a few keys, each scored beside the random
# initialisation by a *tuning* protocol that `make demo` never prints:
#   - held-out correspondence on other view pairs than the demo's (--seed 1 instead of 0; same 13 photos,
#     2 pairs each);
#   - label propagation on the other 4 of the 8 offline videos (04-07; the demo shows 00-03).
# The recipe is chosen on these numbers only; `make demo` (seed 0 view pairs, videos 00-03) is then the
# confirmation, run once with the chosen recipe. About 7 minutes per run on 2 CPU cores;
# docs/results.md ("How the short demo recipe was chosen") reports the table.
#
#   experiments/sweep_demo_recipe.sh [OUT] [RUN ...]   (default: output/sweep_demo, every run below)
#
# Re-running skips pretrainings whose model_final.pth exists and evaluations whose JSON exists. The table
# goes to OUT/table.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/common.sh
OUT=${1:-output/sweep_demo}
shift || true
CONFIG=configs/vader_pretrain_demo.yaml
TUNING_VIDEOS=(04_vegetable-fruit-flower 05_mammal-fruit 06_vegetable-fruit 07_mammal-flower-bird)
TUNING_SEED=1

evaluate() {  # name, then KEY VALUE overrides (MODEL.WEIGHTS among them)
    local name=$1
    shift
    if [ ! -f "$OUT/$name.correspondence.json" ]; then
        "$PY" tools/evaluate_dense.py --config-file "$CONFIG" --name "$name" --tasks correspondence --pairs-per-image 2 \
            --seed "$TUNING_SEED" --output "$OUT/$name.correspondence.json" "$@"
    fi
    if [ ! -f "$OUT/$name.propagation.json" ]; then
        "$PY" tools/propagate_labels.py --config-file "$CONFIG" --davis-root datasets/vader_videos/DAVIS --no-oracle \
            --videos "${TUNING_VIDEOS[@]}" --seed "$TUNING_SEED" --name "$name" --output "$OUT/$name.propagation.json" "$@"
    fi
}

run() {  # name, KEY VALUE overrides of the demo config
    local name=$1
    shift
    train_unless_done "$OUT/$name" "$CONFIG" "$@"
    evaluate "$name" "$@" MODEL.WEIGHTS "$OUT/$name/model_final.pth"
}

# The grid, declared before any of it ran. Stage 1: one lever at a time from the demo recipe as it was
# (lr 0.05, 20 warm-up iterations, momentum 0.99, queue of 8 steps, crops of 20-100%, homography 0.1,
# BN groups of 4). Stage 2 (appended after stage 1, with the rule that chose it): the levers that helped,
# together.
declare -A GRID=(
    [baseline]=""
    [lr0.1]="SOLVER.BASE_LR 0.1"
    [lr0.02]="SOLVER.BASE_LR 0.02"
    [warmup5]="SOLVER.WARMUP_ITERS 5"
    [momentum0.9]="MODEL.VADER.MOMENTUM 0.9"
    [queue4096]="MODEL.VADER.QUEUE_SIZE 4096"
    [crop0.5]="INPUT.VIEWS.CROP_SCALE (0.5,1.0)"
    [homography0.2]="INPUT.VIEWS.HOMOGRAPHY_STRENGTH 0.2"
    [bngroup8]="MODEL.VADER.BN_GROUP_SIZE 8"
    # Stage 2, declared when stage 1 had run up to queue4096: of the levers, only a lower learning rate
    # moved held-out correspondence much (lr 0.02: head median error 35 px against 61), so the learning
    # rate around it, and lr 0.02 with the two levers that did not hurt (warm-up 5, queue 4096).
    [lr0.01]="SOLVER.BASE_LR 0.01"
    [lr0.03]="SOLVER.BASE_LR 0.03"
    [lr0.02_warmup5_queue4096]="SOLVER.BASE_LR 0.02 SOLVER.WARMUP_ITERS 5 MODEL.VADER.QUEUE_SIZE 4096"
    # Stage 3, declared when lr0.01 and crop0.5 had run: `p2` correspondence is the one no run came near
    # random init on (PCK@8 18 at best against 22, median error twice random's). Crops of 50-100% were the
    # other lever that lowered the median error; views that differ less in scale, overlap and mirroring
    # keep more of what a homography leaves in place. lr 0.02 with crops of 50-100%, then with 384 shared
    # cells of 576 (2/3 instead of 4/9), then without the flip.
    [lr0.02_crop0.5]="SOLVER.BASE_LR 0.02 INPUT.VIEWS.CROP_SCALE (0.5,1.0)"
    [lr0.02_crop0.5_overlap384]="SOLVER.BASE_LR 0.02 INPUT.VIEWS.CROP_SCALE (0.5,1.0) MODEL.VADER.MIN_SHARED_CELLS 384"
    [lr0.02_crop0.5_noflip]="SOLVER.BASE_LR 0.02 INPUT.VIEWS.CROP_SCALE (0.5,1.0) INPUT.VIEWS.FLIP_PROB 0.0"
)
ORDER=(baseline lr0.1 lr0.02 warmup5 momentum0.9 queue4096 crop0.5 homography0.2 bngroup8
       lr0.01 lr0.03 lr0.02_warmup5_queue4096
       lr0.02_crop0.5 lr0.02_crop0.5_overlap384 lr0.02_crop0.5_noflip)

RUNS=("$@")
[ ${#RUNS[@]} -gt 0 ] || RUNS=("${ORDER[@]}")
for name in "${RUNS[@]}"; do
    [ -n "${GRID[$name]+set}" ] || fail "no run named '$name' in the grid of $0 (runs: ${ORDER[*]})"
done

mkdir -p "$OUT"
evaluate random_init MODEL.WEIGHTS ""
for name in "${RUNS[@]}"; do
    # shellcheck disable=SC2086  # the overrides are words
    run "$name" ${GRID[$name]}
done

"$PY" experiments/summarise_sweep.py --random "$OUT/random_init" "${ORDER[@]/#/$OUT/}" | tee "$OUT/table.md"
