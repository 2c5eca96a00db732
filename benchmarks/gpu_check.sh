#!/usr/bin/env bash
# One call on a bare CUDA machine (torch and torchvision installed, no internet) that measures what
# needs a GPU, in under 10 minutes:
#   1. installs the wheels of benchmarks/download_gpu_wheels.sh (run beforehand where PyPI is reachable)
#      into a temporary --target: Detectron2 as pure Python (no _C, as tools/install_detectron2.py);
#   2. pytest -m gpu (tests/test_gpu.py);
#   3. the overhead benchmark at R50-FPN 224 px with AMP and channels-last (images/s, full/bare ratio,
#      peak memory, the loader with 16 workers), on synthetic photos (the demo data is not carried);
#   4. a 2-minute VADeR pretraining stopped by SIGTERM (the pre-emption checkpoint), then its export.
# Writes gpu_check.json and gpu_check.log into OUTPUT_DIR. The steps' time limits add up to 600 s (the pretraining: 120 s, then 30 s to write its checkpoint).
# Usage: benchmarks/gpu_check.sh OUTPUT_DIR [WHEEL_DIR (default gpu_wheels)]
set -uo pipefail
fail() { echo "gpu_check: $*" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || fail "usage: benchmarks/gpu_check.sh OUTPUT_DIR [WHEEL_DIR]"
out=$1
wheels=${2:-gpu_wheels}
python=${PYTHON:-python3}
repo=$(cd "$(dirname "$0")/.." && pwd)
[ -e "$out" ] && [ -n "$(ls -A "$out" 2>/dev/null)" ] && fail "$out exists and is not empty; give a new folder"
"$python" -c "import torch" 2>/dev/null || fail "$python cannot import torch; set PYTHON to the Python that has it"
"$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
  || fail "no CUDA GPU is visible to torch (torch.cuda.is_available() is False): nothing to check here"
[ -d "$wheels" ] && ls "$wheels"/*.whl >/dev/null 2>&1 \
  || fail "no wheels in $wheels; run benchmarks/download_gpu_wheels.sh $wheels where PyPI is reachable and bring the folder"
mkdir -p "$out" || fail "cannot create $out"
out=$(cd "$out" && pwd)
log=$out/gpu_check.log
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
site=$work/site
phases=$work/phases.tsv
started=$(date +%s)

phase() {  # phase NAME SECONDS COMMAND...: run with a time limit, log its output, note status and time
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  echo "=== $name (limit ${limit}s): $*" >> "$log"
  timeout -s TERM -k 20 "$limit" "$@" >> "$log" 2>&1
  local status=$?
  printf '%s\t%s\t%s\n' "$name" "$status" "$(( $(date +%s) - t0 ))" >> "$phases"
  echo "=== $name: exit $status after $(( $(date +%s) - t0 ))s" >> "$log"
  return $status
}

pip_target() { "$python" -m pip install --disable-pip-version-check --quiet --no-index --no-compile --no-deps --target "$site" "$@"; }
phase install 60 bash -c "
  $(declare -f pip_target); python='$python'; site='$site'
  pip_target --python-version 3.10 --implementation cp --only-binary=:all: '$wheels'/sal_detectron2-*.whl &&
  rm -rf '$site'/tools '$site'/detectron2/_C*.so &&
  pip_target --find-links '$wheels' --prefer-binary \$(ls '$wheels'/*.whl | grep -v sal_detectron2 | sed 's|.*/||; s|-.*||' | sort -u)
" || fail "installing the wheels failed; see $log"
export PYTHONPATH=$site:$repo${PYTHONPATH:+:$PYTHONPATH}
cd "$repo"

phase photos 30 "$python" -c "
import cv2, numpy as np, os, sys
folder = sys.argv[1]; os.makedirs(folder)
rng = np.random.default_rng(0)
for i in range(256):  # smooth random scenes: blurred noise plus rectangles, 480 x 640
    image = cv2.GaussianBlur(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), (0, 0), 4)
    for _ in range(6):
        x, y = rng.integers(0, 560), rng.integers(0, 400)
        cv2.rectangle(image, (int(x), int(y)), (int(x) + 80, int(y) + 80), rng.integers(0, 256, 3).tolist(), -1)
    cv2.imwrite(os.path.join(folder, f'{i:03d}.jpg'), image)
" "$work/photos"
phase pytest_gpu 170 "$python" -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py
phase overhead 150 "$python" -m benchmarks.vader_overhead --device cuda --amp --channels-last --batch 128 \
  --queue-sizes 65536 --workers 16 --pipeline-steps 10 --warmup 3 --steps 10 --dataset "folder:$work/photos" \
  --output "$work/overhead.json"
t0=$(date +%s)
echo "=== pretrain: 2 minutes, then SIGTERM (pre-emption: a checkpoint, exit status 75)" >> "$log"
"$python" tools/train_net.py --config-file configs/vader_pretrain.yaml \
  SOLVER.AMP.ENABLED True MODEL.MOMENTUM_CONTRAST.CHANNELS_LAST True SOLVER.IMS_PER_BATCH 128 DATALOADER.NUM_WORKERS 16 \
  DATASETS.TRAIN "('folder:$work/photos',)" SOLVER.CHECKPOINT_PERIOD 100000 OUTPUT_DIR "$work/pretrain" >> "$log" 2>&1 &
pretrain=$!
( sleep 120; kill -TERM $pretrain 2>/dev/null; sleep 30; kill -KILL $pretrain 2>/dev/null ) &
stopper=$!
wait $pretrain
status=$?
kill $stopper 2>/dev/null
printf 'pretrain\t%s\t%s\n' "$status" "$(( $(date +%s) - t0 ))" >> "$phases"
checkpoint=$(cat "$work/pretrain/last_checkpoint" 2>/dev/null)
phase export 40 "$python" tools/convert_vader_to_d2.py --input "$work/pretrain/${checkpoint:-model_final.pth}" --output "$work/exported.pkl"

"$python" - "$phases" "$work/overhead.json" "$work/pretrain/metrics.json" "$out/gpu_check.json" "$started" <<'PY'
import json, os, sys, time, torch
phases_file, overhead_file, metrics_file, output, started = sys.argv[1:]
phases = {}
for line in open(phases_file):
    name, status, seconds = line.split("\t")
    phases[name] = {"exit_status": int(status), "seconds": int(seconds)}
result = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
          "phases": phases, "total_seconds": int(time.time()) - int(started)}
if os.path.exists(overhead_file):
    overhead = json.load(open(overhead_file))
    result["overhead"] = {k: overhead.get(k) for k in ("steps", "ratios", "memory", "loader", "pipeline", "settings")}
if os.path.exists(metrics_file):
    records = [json.loads(line) for line in open(metrics_file) if line.strip()]
    result["pretrain"] = {"iterations": 1 + max((r.get("iteration", -1) for r in records), default=-1), "last": records[-1] if records else None}
json.dump(result, open(output, "w"), indent=1)
PY
echo "gpu_check: $out/gpu_check.json and $out/gpu_check.log ($(( $(date +%s) - started ))s)"
