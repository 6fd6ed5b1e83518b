# Two entry points on a fresh machine: `make demo` and `make test`. Both set up .venv (once), install
# the project, prepare the embedded data they need, then run. Set-up is idempotent: a second run
# skips what is done (stamp files).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fromscratch-installed
DATA ?= data
PYTEST_ARGS ?=

.PHONY: demo test test-fast lint data install fashion-mnist-source slurm bench clean-data

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

# Debian's dataset-fashion-mnist, installed when missing and we can; FASHION_MNIST_DIR overrides.
fashion-mnist-source:
	@if [ -n "$$FASHION_MNIST_DIR" ] || [ -d /usr/share/datasets/fashion-mnist ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	  (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null); \
	else echo "Fashion-MNIST missing: run 'sudo apt-get install dataset-fashion-mnist' or set FASHION_MNIST_DIR"; exit 1; fi

# Debian's slurm-wlm and munge for the SLURM tests (tests/slurm_cluster.py starts a one-node cluster on
# 127.0.0.1); where they cannot be installed (not root, no apt-get) those tests are skipped with the reason.
slurm:
	@if command -v slurmctld >/dev/null || [ -x /usr/sbin/slurmctld ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -q slurm-wlm munge >/dev/null 2>&1 || \
	  (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q slurm-wlm munge >/dev/null 2>&1) || \
	  echo "slurm-wlm could not be installed: the SLURM tests will be skipped"; \
	else echo "slurm-wlm missing (needs root and apt-get): the SLURM tests will be skipped"; fi

$(DATA)/trees/train.json: | $(STAMP)
	$(PY) -m fromscratch data prepare trees --out $(DATA)

$(DATA)/fashion-mnist/train.npz: | $(STAMP) fashion-mnist-source
	$(PY) -m fromscratch data prepare fashion-mnist --out $(DATA)

$(DATA)/fashion-scenes/train.json: | $(DATA)/trees/train.json $(DATA)/fashion-mnist/train.npz
	$(PY) -m fromscratch data prepare fashion-scenes --out $(DATA)

data: $(DATA)/trees/train.json $(DATA)/fashion-mnist/train.npz $(DATA)/fashion-scenes/train.json

# ruff (settings in pyproject.toml) first: a lint finding fails `make test` in seconds
lint: install
	$(VENV)/bin/ruff check .

test: lint data slurm
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: lint data
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

demo: data
	$(PY) -m fromscratch demo

bench: data
	$(PY) benchmarks/run_all.py

# On a CUDA machine: images/s and peak memory of the paper's R50-FPN GN model and the modern LSJ recipe (bf16 and
# fp16, DDP over every visible GPU, channels_last) beside torchvision's reference loop (benchmarks/gpu_check.py).
# Without a GPU it prints what it would measure and exits 0. GPU_CHECK_ARGS: e.g. --iters 50 --models modern
.PHONY: gpu-check
gpu-check: data
	$(PY) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

clean-data:
	rm -rf $(DATA)/trees $(DATA)/fashion-mnist $(DATA)/fashion-scenes
