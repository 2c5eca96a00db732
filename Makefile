# Two commands a newcomer needs: `make demo` and `make test`. Both set up the environment first.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
SETUP_DONE := $(VENV)/.vader_d2_setup_done
DEMO_DATA := datasets/vader_demo_photos/manifest.json
CUTPASTE_DATA := datasets/vader_cutpaste/manifest.json
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

demo: data
	$(PY) tools/train_net.py --config-file configs/vader_pretrain_demo.yaml

test: data
	$(PY) -m pytest $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
