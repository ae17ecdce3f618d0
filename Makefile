# Reproducible deep-learning training on EuroSAT: pinned environments, two training projects, tests.
# Run `make help` for the targets; every variable set with ?= can be overridden: make train PROJECT=... ARGS="..."
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTHON ?= python3
VENV ?= .venv
PROJECT ?= eurosat-amp
ARGS ?=
DATA ?= data/eurosat
VARIANT ?= ms
-include .env
export EUROSAT_CACHE_DIR
# Images in build order, each built FROM the one before it (Dockerfiles live in images/<name>/).
IMAGES := cuda-base torch-ngc lightning jupyter

PROJECTS := $(sort $(patsubst projects/%/train.py,%,$(wildcard projects/*/train.py)))
VENV_STAMP := $(VENV)/.installed
VENV_PY := $(VENV)/bin/python

.PHONY: help venv train data data-sample lock lock-check lint test clean check-project

help: ## list the targets
	@echo "EuroSAT deep-learning monorepo. Projects: $(PROJECTS)"
	@echo
	@grep -E '^[a-zA-Z0-9_%/-]+:.*?## .*$$' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "\033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(VENV_STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --require-hashes --no-deps -r requirements.lock
	$(VENV)/bin/pip install --no-deps --no-build-isolation --editable .
	touch $@

venv: $(VENV_STAMP) ## create .venv from requirements.lock (every file hash-checked)

check-project:
	@if [[ ! -f projects/$(PROJECT)/train.py ]]; then \
		echo "error: unknown PROJECT=$(PROJECT); valid projects: $(PROJECTS)" >&2; exit 2; fi

train: check-project $(VENV_STAMP) ## train PROJECT (default eurosat-amp) on DATA, extra flags in ARGS="..."
	$(VENV_PY) projects/$(PROJECT)/train.py train --data $(DATA) $(ARGS)

data: $(VENV_STAMP) ## download EuroSAT into DATA (VARIANT=ms: 13-band TIFF, 2 GB; VARIANT=rgb: JPEG)
	$(VENV_PY) -m eurosat.download --variant $(VARIANT) --out $(DATA)

data-sample: $(VENV_STAMP) ## write a small synthetic EuroSAT (official layout, 13-band TIFF) into DATA
	$(VENV_PY) -m eurosat.sample --out $(DATA)

lock: $(VENV_STAMP) ## regenerate requirements.lock (hashes, all platforms) from requirements.in
	$(VENV_PY) scripts/lock.py compile requirements.in requirements.lock

lock-check: $(VENV_STAMP) ## fail when requirements.lock no longer matches requirements.in
	$(VENV_PY) scripts/lock.py check requirements.in requirements.lock

lint: $(VENV_STAMP) ## pre-commit on every file: ruff, hadolint, shellcheck, hygiene
	PATH="$(abspath $(VENV))/bin:$$PATH" pre-commit run --all-files --show-diff-on-failure

test: $(VENV_STAMP) ## run the test suite (CPU, offline)
	$(VENV_PY) -m pytest

clean: ## remove .venv and Python caches (data/ and runs/ are kept)
	rm -rf $(VENV) .pytest_cache .ruff_cache src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
