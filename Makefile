# Two commands a newcomer needs: `make demo` and `make test`. Both set up the environment first.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
SETUP_DONE := $(VENV)/.vader_d2_setup_done
PYTEST_ARGS ?=

.PHONY: setup data demo demo-long test test-slow test-oldest gpu-wheels clean-venv

setup: $(SETUP_DONE)

# Re-runs only when the recipe or the package metadata changes: a second `make setup` is instant.
# pip installs without byte-compiling (--no-compile, also in install_detectron2.py); one compile_dir over
# the venv then compiles everything on every core: 15-20 s less than pip compiling torch's CUDA build
# file by file on one (back-to-back fresh venvs here). Like pip, it skips what does not compile on this Python (torch ships
# Python-3.12-only test helpers), so its result is not checked.
$(SETUP_DONE): Makefile setup.py tools/install_detectron2.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check --quiet --no-compile "torch==2.14.*" "torchvision==0.29.*" "numpy<2" "opencv-python-headless<4.11"
	$(PY) tools/install_detectron2.py
	$(PY) -m pip install --disable-pip-version-check --quiet --no-compile -e ".[dev]"
	$(PY) -c "import compileall, sys; compileall.compile_dir(sys.prefix, quiet=2, workers=0)"
	$(PY) -m vader_d2.collect_env
	@touch $@

# The three data sets build from the same archive cache, independently, two at a time (about 20 s less
# on 2 cores than one after another: 31 s against 52 s from a warm archive cache). Each script rebuilds only what its manifest says is out of date.
DATASETS := demo_photos cutpaste videos

data: setup
	@$(MAKE) --no-print-directory -j 2 $(addprefix prepare-,$(DATASETS))

.PHONY: $(addprefix prepare-,$(DATASETS))
$(addprefix prepare-,$(DATASETS)): prepare-%:
	$(PY) datasets/prepare_$*.py

# Pretrain on the demo photos -> pictures, held-out correspondence and label propagation, each beside random
# init's -> export to a Detectron2 .pkl -> a Mask R-CNN fine-tune on the cut-paste set. `make demo` is the
# short recipe (under 10 minutes on 2 cores: 2 view pairs per held-out photo, 4 of the 8 videos, and a
# 10-iteration fine-tune that shows the export trains in stock Detectron2, without an evaluation);
# `make demo-long` the longer one whose numbers and pictures the README shows, with every pair and video,
# the linear probe, a 300-iteration fine-tune and its COCO evaluation.
#
# A second `make demo` resumes both runs: an interrupted one continues, a finished one is not trained
# again (pictures, evaluations and export are made anew). `make demo DEMO_TRAIN_FLAGS=--start-over`
# trains anew, after moving the earlier runs' files into the output folder's previous_runs/.
DEMO_TRAIN_FLAGS ?= --resume

demo: data
	$(MAKE) --no-print-directory pretrain-and-transfer DEMO_CONFIG=configs/vader_pretrain_demo.yaml \
		DEMO_OUT=output/vader_pretrain_demo EVALUATE_OPTS="--tasks correspondence --pairs-per-image 2" \
		PROPAGATE_OPTS="--videos 00_flower-bird-mammal 01_vegetable-insect-flower 02_bird-fish-mammal 03_fruit-mammal-fish" \
		FINETUNE_OPTS='SOLVER.MAX_ITER 10 SOLVER.STEPS "(8,)" SOLVER.WARMUP_ITERS 3 DATALOADER.NUM_WORKERS 0 DATASETS.TEST "()" TEST.PRECISE_BN.ENABLED False'

demo-long: data
	$(MAKE) --no-print-directory pretrain-and-transfer DEMO_CONFIG=configs/vader_pretrain_demo_long.yaml \
		DEMO_OUT=output/vader_pretrain_demo_long FINETUNE_OPTS= EVALUATE_OPTS= PROPAGATE_OPTS=

VIDEOS := datasets/vader_videos/DAVIS

.PHONY: pretrain-and-transfer
pretrain-and-transfer:
	$(PY) tools/train_net.py $(DEMO_TRAIN_FLAGS) --config-file $(DEMO_CONFIG) OUTPUT_DIR $(DEMO_OUT)
	$(PY) tools/visualize.py --config-file $(DEMO_CONFIG) --output-dir $(DEMO_OUT)/pictures MODEL.WEIGHTS $(DEMO_OUT)/model_final.pth
	$(PY) tools/evaluate_dense.py $(EVALUATE_OPTS) --config-file $(DEMO_CONFIG) --name random_init --output $(DEMO_OUT)/dense_eval_random_init.json MODEL.WEIGHTS ""
	$(PY) tools/evaluate_dense.py $(EVALUATE_OPTS) --config-file $(DEMO_CONFIG) --name vader_demo --output $(DEMO_OUT)/dense_eval.json \
		--beside $(DEMO_OUT)/dense_eval_random_init.json MODEL.WEIGHTS $(DEMO_OUT)/model_final.pth
	$(PY) tools/propagate_labels.py $(PROPAGATE_OPTS) --config-file $(DEMO_CONFIG) --davis-root $(VIDEOS) --no-oracle --name random_init \
		--output $(DEMO_OUT)/propagation_random_init.json MODEL.WEIGHTS ""
	$(PY) tools/propagate_labels.py $(PROPAGATE_OPTS) --config-file $(DEMO_CONFIG) --davis-root $(VIDEOS) --name vader_demo --output $(DEMO_OUT)/propagation.json \
		--beside $(DEMO_OUT)/propagation_random_init.json MODEL.WEIGHTS $(DEMO_OUT)/model_final.pth
	$(PY) tools/convert_vader_to_d2.py --input $(DEMO_OUT)/model_final.pth --output $(DEMO_OUT)/vader_r18.pkl
	$(PY) tools/train_net.py $(DEMO_TRAIN_FLAGS) --config-file configs/downstream/cutpaste_mask_rcnn_R_18_FPN.yaml \
		MODEL.WEIGHTS $(DEMO_OUT)/vader_r18.pkl OUTPUT_DIR $(DEMO_OUT)/mask_rcnn_cutpaste $(FINETUNE_OPTS)

# The fast tests, two at a time (pytest-xdist), one thread each: most of their time is spent importing
# torch and Detectron2 in the tools they start, which a second core halves. Work stealing: a worker that
# runs out of tests takes the other's queued ones, so neither idles at the end beside a long test. The
# end-to-end learning checks (marked slow: a shared demo pretraining and fine-tunes, about 40 minutes on
# 2 cores) run in `make test-slow`; CI (.ci/run) runs both.
test: data
	OMP_NUM_THREADS=1 $(PY) -m pytest -m "not slow and not gpu" -n 2 --dist worksteal $(PYTEST_ARGS)

test-slow: data
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

# The fast tests with the oldest torch and torchvision setup.py supports, in a second venv (.venv-oldest),
# beside the same Detectron2 and data. Not part of `make test`: about 10 minutes on the whole CPU.
OLDEST_VENV := .venv-oldest
test-oldest: data
	@test -x $(OLDEST_VENV)/bin/python || $(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install --disable-pip-version-check --quiet --no-compile "torch==2.11.*" "torchvision==0.26.*" "numpy<2" "opencv-python-headless<4.11"
	$(OLDEST_VENV)/bin/python tools/install_detectron2.py
	$(OLDEST_VENV)/bin/python -m pip install --disable-pip-version-check --quiet --no-compile -e ".[dev]"
	OMP_NUM_THREADS=1 $(OLDEST_VENV)/bin/python -m pytest -m "not slow and not gpu" -n 2 --dist worksteal -p no:cacheprovider $(PYTEST_ARGS)

# The wheels benchmarks/gpu_check.sh installs on a GPU machine without internet (gpu_wheels/, under 64 MiB).
gpu-wheels:
	PYTHON=$(PY) benchmarks/download_gpu_wheels.sh gpu_wheels

clean-venv:
	rm -rf $(VENV)
