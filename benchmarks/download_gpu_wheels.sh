#!/usr/bin/env bash
# Download, on a machine that reaches PyPI, the wheels benchmarks/gpu_check.sh installs on a bare CUDA
# machine that has torch and torchvision (with numpy and Pillow) but no internet: Detectron2 as pure
# Python (sal-detectron2, as tools/install_detectron2.py), its runtime and vader_d2's, and pytest.
# Compiled ones for each Python of PYTHON_VERSIONS (default 3.11 3.12; each adds about 1.3 MB). Usage: benchmarks/download_gpu_wheels.sh [folder]
set -euo pipefail
dest=${1:-gpu_wheels}
python=${PYTHON:-python3}
versions=${PYTHON_VERSIONS:-"3.11 3.12"}
# Pure Python, built into wheels here where PyPI has only sources (fvcore, iopath, antlr4)...
pure=(
  "fvcore" "iopath" "portalocker" "yacs" "tqdm" "termcolor" "tabulate" "cloudpickle"
  "omegaconf<2.4" "hydra-core" "antlr4-python3-runtime==4.9.*" "packaging"
  # Detectron2's trainer writes TensorBoard events (torch.utils.tensorboard: tensorboard and protobuf).
  "tensorboard" "protobuf"
  "pytest" "pluggy" "iniconfig"
)
# ...and the compiled ones, per Python version (OpenCV's abi3 wheel serves them all).
compiled=("pycocotools" "pyyaml" "opencv-python-headless<4.11")
mkdir -p "$dest"
get() { "$python" -m pip download --disable-pip-version-check --quiet --no-deps --only-binary=:all: \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --dest "$dest" "$@"; }
get --python-version 3.10 --implementation cp "sal-detectron2==0.7.2"
"$python" -m pip wheel --disable-pip-version-check --quiet --no-deps --wheel-dir "$dest" "${pure[@]}"
for version in $versions; do
  get --python-version "$version" --implementation cp "${compiled[@]}"
done
bytes=$(cat "$dest"/* | wc -c)
echo "$(ls "$dest" | wc -l) wheels, $bytes bytes ($((bytes / 1048576)) MiB) in $dest"
if [ "$bytes" -ge $((64 * 1048576)) ]; then
  echo "download_gpu_wheels: $dest holds $bytes bytes, over the 64 MiB a device run may carry; fewer PYTHON_VERSIONS" >&2
  exit 1
fi
