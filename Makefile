# Two commands a newcomer needs: `make demo` and `make test`. Both set up the environment first.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
SETUP_DONE := $(VENV)/.vader_d2_setup_done
PYTEST_ARGS ?=

.PHONY: setup data demo test clean-venv

setup: $(SETUP_DONE)

# Re-runs only when the recipe or the package metadata changes: a second `make setup` is instant.
$(SETUP_DONE): Makefile setup.py tools/install_detectron2.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check --quiet "torch==2.14.*" "torchvision==0.29.*" "numpy<2" "opencv-python-headless<4.11"
	$(PY) tools/install_detectron2.py
	$(PY) -m pip install --disable-pip-version-check --quiet -e ".[dev]"
	$(PY) -m vader_d2.collect_env
	@touch $@

data: setup
	$(PY) datasets/prepare_demo_photos.py
	$(PY) datasets/prepare_cutpaste.py

DEMO_OUT := output/vader_pretrain_demo
# A second `make demo` resumes both runs: an interrupted one continues, a finished one is not trained
# again (pictures, evaluations and export are made anew). `make demo DEMO_TRAIN_FLAGS=--start-over`
# trains anew, after moving the earlier runs' files into $(DEMO_OUT)/previous_runs/.
DEMO_TRAIN_FLAGS ?= --resume

# Pretrain on the demo photos -> pictures and dense evaluation on held-out photos -> export to a
# Detectron2 .pkl -> Mask R-CNN fine-tune and COCO evaluation on the cut-paste set.
demo: data
	$(PY) tools/train_net.py $(DEMO_TRAIN_FLAGS) --config-file configs/vader_pretrain_demo.yaml OUTPUT_DIR $(DEMO_OUT)
	$(PY) tools/visualize.py --config-file configs/vader_pretrain_demo.yaml --output-dir $(DEMO_OUT)/pictures MODEL.WEIGHTS $(DEMO_OUT)/model_final.pth
	$(PY) tools/evaluate_dense.py --config-file configs/vader_pretrain_demo.yaml --name vader_demo --output $(DEMO_OUT)/dense_eval.json MODEL.WEIGHTS $(DEMO_OUT)/model_final.pth
	$(PY) tools/convert_vader_to_d2.py --input $(DEMO_OUT)/model_final.pth --output $(DEMO_OUT)/vader_r18.pkl
	$(PY) tools/train_net.py $(DEMO_TRAIN_FLAGS) --config-file configs/downstream/cutpaste_mask_rcnn_R_18_FPN.yaml MODEL.WEIGHTS $(DEMO_OUT)/vader_r18.pkl OUTPUT_DIR $(DEMO_OUT)/mask_rcnn_cutpaste

test: data
	$(PY) -m pytest $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
