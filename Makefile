# Reproducible deep-learning training on EuroSAT: pinned environments, two training projects, tests.
# Run `make help` for the targets; every variable set with ?= can be overridden: make train PROJECT=... ARGS="..."
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTHON ?= python3
VENV ?= .venv
ARGS ?=
DATA ?= data/eurosat
VARIANT ?= ms
-include .env

# --- projects: projects/<name>/project.toml says which image a project trains in and how it launches ---
MANIFEST := $(PYTHON) src/eurosat/manifest.py
PROJECTS := $(shell $(MANIFEST) projects)
ifeq ($(origin PROJECT),undefined)
PROJECT := $(shell $(MANIFEST) default 2>/dev/null)
endif
PROJECT_IMAGE = $(shell $(MANIFEST) image $(PROJECT) 2>/dev/null)

# --- images ---------------------------------------------------------------------------------------
include images/versions.env
# IMAGES in build order and each one's PARENT_<image>: another image, or the root base CUDA_BASE or NGC_BASE
include images/hierarchy.env
DOCKER ?= docker
IMAGE_PREFIX ?= eurosat/
# The build context: the Dockerfiles and the locks (tests point it at a copy)
IMAGES_DIR ?= images
# The layers `make lock-images` solves and `make lock-drift` re-solves, in build order
LOCK_LAYERS ?= $(IMAGES)
# LOCKED=1: build only from the committed locks (CI); unset, a lock solved against another base is re-solved
LOCKED ?=
# make lock-drift keeps its fresh solves here when set (default: a scratch folder it removes)
DRIFT_OUT ?=
REGISTRY ?=
# What `make push` pushed: "<registry>/<image>:<git sha> <registry>/<image>@sha256:..." lines; cluster files pin by it
PUSHED ?= build/pushed-images.txt
# A CA bundle for pip inside builds, for networks that intercept TLS (a build secret: never in a layer).
PIP_CA ?=
comma := ,
# Each root base (CUDA_BASE, NGC_BASE) defaults to the digest-pinned `FROM ... AS root-base` of the image built on it
root_base_of = $(shell sed -n 's/^FROM \([^ ]*\) AS root-base$$/\1/p' images/$(1)/Dockerfile)
$(foreach image,$(IMAGES),$(if $(filter $(PARENT_$(image)),$(IMAGES)),,$(eval $(PARENT_$(image)) ?= $(call root_base_of,$(image)))))
# The image an image is built FROM: its parent image's latest tag, or the root base's reference
base_of = $(if $(filter $(PARENT_$(1)),$(IMAGES)),$(IMAGE_PREFIX)$(PARENT_$(1)):latest,$($(PARENT_$(1))))
GIT_SHA := $(shell git rev-parse --short HEAD 2>/dev/null || echo nogit)
# The images' OCI source label (e.g. https://github.com/you/eurosat), set where images are published; never the
# checkout's path or remote, which would make every clone build another image
IMAGE_SOURCE ?=
# A lock that does not hold on the base it is built on is re-solved into RESOLVED_LOCKS/<layer>/, never over images/
RESOLVED_LOCKS ?= build/locks
# NO_BUILD=1: train, notebook, shell, doctor, ... refuse a stale image in one line instead of rebuilding it
NO_BUILD ?=
STALE_IMAGES = $(PYTHON) scripts/stale_images.py --images $(IMAGES_DIR) --prefix $(IMAGE_PREFIX) \
	--root CUDA_BASE=$(CUDA_BASE) --root NGC_BASE=$(NGC_BASE)
# Before a container runs IMAGE: its layers built from other inputs than the tree's, or on another parent, and the
# layers on them, are rebuilt in build order (NO_BUILD=1: refused in one line)
fresh_image = layers=$$($(STALE_IMAGES) stale $(1) $(if $(NO_BUILD),--refuse)) && for layer in $$layers; do $(MAKE) image-$$layer || exit 2; done
# Containers run as the host user's ids (one fixed user in the image), so files written into runs/ stay the host user's.
HOST_UID := $(shell id -u)
HOST_GID := $(shell id -g)

# --- containers -----------------------------------------------------------------------------------
# `docker compose` when the plugin is there, else the Compose v2 binary that requirements.lock installs in .venv
HAS_COMPOSE_PLUGIN := $(shell $(DOCKER) compose version >/dev/null 2>&1 && echo yes)
COMPOSE ?= $(if $(HAS_COMPOSE_PLUGIN),$(DOCKER) compose,$(abspath $(VENV))/bin/compose-v2)
COMPOSE_DEP = $(if $(HAS_COMPOSE_PLUGIN),,$(VENV_STAMP))
RUNNER ?= $(if $(shell $(DOCKER) info --format '{{.ServerVersion}}' 2>/dev/null),docker,local)
GPUS ?=
NODES ?= 1
# The decoded-image cache, one for every runner: local runs read it as EUROSAT_CACHE_DIR, containers mount it at /cache
CACHE_DIR ?= $(or $(EUROSAT_CACHE_DIR),.cache/eurosat)
export EUROSAT_CACHE_DIR := $(abspath $(CACHE_DIR))
# Pretrained weights (Hugging Face hub, torch hub) and torch.compile's kernels (Inductor, Triton) in one host folder:
# local runs use it, containers mount it at /models, so that a second run reuses both
MODEL_CACHE ?= .cache/models
export HF_HOME := $(abspath $(MODEL_CACHE))/huggingface
export TORCH_HOME := $(abspath $(MODEL_CACHE))/torch
export TORCHINDUCTOR_CACHE_DIR := $(abspath $(MODEL_CACHE))/inductor
export TRITON_CACHE_DIR := $(abspath $(MODEL_CACHE))/triton
# Which ImageNet weights a run may start from (eurosat.weights); LOCKED=1 also refuses a model it does not list
WEIGHTS_LOCK ?= $(or $(EUROSAT_WEIGHTS_LOCK),weights.lock)
export EUROSAT_WEIGHTS_LOCK := $(abspath $(WEIGHTS_LOCK))
export LOCKED

VENV_STAMP := $(VENV)/.installed
VENV_PY := $(VENV)/bin/python
# Node tools (package-lock.json): the Dev Containers CLI the dev container tests drive
NODE_STAMP := node_modules/.installed
# make test and make test-all run the tests in this many processes (pytest-xdist), each test on its share of the cores
TEST_WORKERS ?= auto

.PHONY: help venv docs docs-serve sweep summary bench gpu-check reproduce report cluster-files train-nodes train train-local train-docker data data-sample lock lock-check lock-drift lint test test-all test-images clean \
	new-project doctor check-project check-data check-docker images image-ngc lock-images relock pin push shell notebook mlflow execute down \
	slurm-image slurm-up slurm-shell slurm-down weights

help: ## list the targets
	@echo "EuroSAT deep-learning monorepo. Projects: $(PROJECTS)"
	@echo
	@grep -hE '^[a-zA-Z0-9_%/-]+:.*?## .*$$' $(firstword $(MAKEFILE_LIST)) | awk 'BEGIN {FS = ":.*?## "}; {printf "\033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(VENV_STAMP): requirements.lock pyproject.toml
	$(PYTHON) scripts/lock.py verify requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --require-hashes --no-deps --no-compile -r requirements.lock
	$(VENV)/bin/pip install --no-deps --no-build-isolation --editable .
	@# pip byte-compiles one file at a time; compileall uses every core (make venv: 200 -> 170 s on 2). A file that does not
	@# compile (torch ships a Python 3.12-only one) is skipped, as pip skips it, and is not an error.
	$(VENV_PY) -m compileall -q -j 0 $$($(VENV_PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))') >/dev/null || true
	ln -sf "$$($(VENV)/bin/python -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).with_name("docker-compose"))')" $(VENV)/bin/compose-v2
	touch $@

venv: $(VENV_STAMP) ## create .venv from requirements.lock (every file hash-checked)

$(NODE_STAMP): package-lock.json
	npm ci --no-audit --no-fund
	touch $@

new-project: ## write projects/NAME/ (manifest, train.py, README.md) as a copy of FROM (default: the default project)
	@$(PYTHON) scripts/new_project.py "$(NAME)" $(if $(FROM),--from "$(FROM)")

check-project:
	@$(MANIFEST) check "$(PROJECT)"

doctor: check-project ## check this host, Docker and PROJECT's image can train, on the GPUs if any (a table; exit 1: what blocks)
	@# a stale image is rebuilt first (NO_BUILD=1: refused); one not built yet is the table's to report, and so is a
	@# rebuild that fails (no registry, no base): the table still comes, with that row, since this is where users look
	@stale=; if [[ $(RUNNER) == docker ]]; then log=$$(mktemp); \
		if ! { ( $(call fresh_image,$(PROJECT_IMAGE) --built-only) ) 2>&1 1>&3 | tee $$log >&2; } 3>&1; then \
			stale=$$(grep -m1 '^error: ' $$log | sed 's/^error: //' || true); stale=$${stale:-$$(tail -n 1 $$log)}; fi; \
		rm -f $$log; fi; \
	$(call compose_env) RUNNER=$(RUNNER) IMAGE_PREFIX=$(IMAGE_PREFIX) VENV_PY=$(VENV_PY) CUDA_BASE=$(CUDA_BASE) NGC_BASE=$(NGC_BASE) \
		EUROSAT_STALE_IMAGE="$$stale" $(PYTHON) src/eurosat/doctor.py

train: check-project ## train PROJECT on DATA with ARGS="..." [RUNNER=docker|local] [GPUS=N]
	@$(MAKE) train-$(RUNNER)

# Before a run starts (a container, torchrun's processes, a job): its model's ImageNet weights locked in WEIGHTS_LOCK and
# in MODEL_CACHE, by the host, where the lock is writable and the hub reachable (nothing when ARGS need no hub weights)
WEIGHTS_FOR_RUN = $(VENV_PY) -m eurosat.weights --for-run $(PROJECT) $(ARGS)

check-data:
	@if [[ ! -d "$(DATA)" ]]; then echo "error: DATA=$(DATA) is not a directory: run 'make data' or 'make data-sample', or set DATA" >&2; exit 2; fi

train-local: check-project check-data $(VENV_STAMP)
	@$(WEIGHTS_FOR_RUN)
	$$($(MANIFEST) launch $(PROJECT) "$(GPUS)" $(VENV_PY)) --data $(DATA) $(ARGS)

train-docker: check-project check-docker check-data $(VENV_STAMP)
	@$(WEIGHTS_FOR_RUN)
	@$(call fresh_image,$(PROJECT_IMAGE))
	@$(call compose_env) scripts/compose.sh run --rm train $$($(MANIFEST) launch $(PROJECT) "$(GPUS)") --data /data $(ARGS)

train-nodes: check-project check-docker check-data $(VENV_STAMP) ## train PROJECT on two containers acting as two nodes (torchrun c10d rendezvous, ARGS, GPUS per node)
	@$(WEIGHTS_FOR_RUN)
	@$(call fresh_image,$(PROJECT_IMAGE))
	@$(call compose_env) TRAIN_ARGS="$$($(MANIFEST) layout $(PROJECT) 2 $(or $(GPUS),1)) $(ARGS)" NPROC_PER_NODE=$(or $(GPUS),1) \
		scripts/train-nodes.sh

data: $(VENV_STAMP) ## download EuroSAT into DATA (VARIANT=ms: 13-band TIFF, 2 GB; VARIANT=rgb: JPEG)
	$(VENV_PY) -m eurosat.download --variant $(VARIANT) --out $(DATA)

data-sample: $(VENV_STAMP) ## write a small synthetic EuroSAT (official layout, 13-band TIFF) into DATA
	$(VENV_PY) -m eurosat.sample --out $(DATA)

weights: $(VENV_STAMP) ## fetch weights.lock's pinned ImageNet weights into MODEL_CACHE (MODEL=<timm name>: add or check one; REVISION=)
	@$(VENV_PY) -m eurosat.weights $(if $(MODEL),"$(MODEL)") $(if $(REVISION),"$(REVISION)")

sweep: check-project $(VENV_STAMP) ## every combination of SWEEP="--seed 1,2,3 --lr 1e-3,3e-4" as runs of PROJECT (ARGS; JOBS=N at a time; SWEEP_NAME), then their summary
	@[[ -n "$(SWEEP)" ]] || { echo 'error: pass SWEEP="--seed 1,2,3" (flags with comma-separated values)' >&2; exit 2; }
	$(VENV_PY) -m eurosat.sweep $(PROJECT) --sweep "$(SWEEP)" --args "$(ARGS)" --data $(DATA) --jobs $(or $(JOBS),1) \
		--runs $(or $(RUNS_DIR),runs) $(if $(SWEEP_NAME),--name "$(SWEEP_NAME)")

summary: $(VENV_STAMP) ## summary.md, .csv and .png of many runs, grouped by setting, mean and spread over seeds: RUNS="runs/<project>/<sweep or glob>"
	@[[ -n "$(RUNS)" ]] || { echo 'error: pass RUNS="runs/<project>/<sweep or glob>" (run directories to summarize)' >&2; exit 2; }
	$(VENV_PY) -m eurosat.summary $(RUNS)

reproduce: $(VENV_STAMP) $(COMPOSE_DEP) ## train a recorded run again where it ran (its image, the venv; a cluster job: printed, SUBMIT=1), compare: RUN=runs/<project>/<id>
	@[[ -n "$(RUN)" ]] || { echo "error: pass RUN=runs/<project>/<run-id> (a run directory to reproduce)" >&2; exit 2; }
	@$(call compose_env) $(VENV_PY) -m eurosat.reproduce "$(RUN)" $(if $(SUBMIT),--submit) $(if $(IN_IMAGE),--image "$(IN_IMAGE)")

report: $(VENV_STAMP) ## report.md and report.png (curves, confusion matrix, settings, provenance) in a run directory: RUN=runs/<project>/<id>
	@[[ -n "$(RUN)" ]] || { echo "error: pass RUN=runs/<project>/<run-id> (a run directory to report on)" >&2; exit 2; }
	$(VENV_PY) -m eurosat.report "$(RUN)"

bench: $(VENV_STAMP) ## the articles' baseline vs this project on DATA, within --budget (ARGS: --device, --budget ...)
	$(VENV_PY) bench/run.py --data $(DATA) --project $(PROJECT) $(ARGS)

# Outside the project's images too: the venv's Python when there is one, else PYTHON with the machine's packages
GPU_CHECK_PYTHON ?= $(if $(wildcard $(VENV_PY)),$(VENV_PY),$(PYTHON))
gpu-check: ## measure one NVIDIA GPU offline in about 10 minutes; report into bench/results (ARGS: --device cpu ...)
	PYTHONPATH=src $(GPU_CHECK_PYTHON) scripts/gpu_check.py $(ARGS)

lock: $(VENV_STAMP) ## regenerate requirements.lock (hashes, all platforms) from requirements.in
	$(VENV_PY) scripts/lock.py compile requirements.in requirements.lock

lock-check: $(VENV_STAMP) ## fail when a lock no longer satisfies its requirements.in or LOCK_CUTOFF, or was edited after it was generated (offline)
	$(VENV_PY) scripts/lock.py check requirements.in requirements.lock
	$(VENV_PY) scripts/lock.py check-images $(IMAGES_DIR)

lock-drift: $(VENV_STAMP) check-docker ## report what a re-solve today would change in each lock (LOCK_LAYERS), with upload times; never fails on drift
	@$(DOCKER) image inspect $(NGC_BASE) >/dev/null 2>&1 || $(DOCKER) pull $(NGC_BASE)
	DOCKER=$(DOCKER) PIP_CA=$(PIP_CA) $(VENV_PY) scripts/lock_drift.py --ngc-base $(NGC_BASE) --images $(IMAGES_DIR) \
		$(if $(DRIFT_OUT),--out $(DRIFT_OUT)) $(LOCK_LAYERS)

relock: $(VENV_STAMP) check-docker ## refresh every lock: LOCK_CUTOFF (images/versions.env) set to now, then make lock lock-images
	$(VENV_PY) scripts/lock.py relock
	$(MAKE) lock lock-images


docs: $(VENV_STAMP) ## build the documentation site into site/ (MkDocs, strict: a broken link or a missing page fails)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict  # not --quiet: strict ignores the warnings it hides

docs-serve: $(VENV_STAMP) ## serve the documentation site on 127.0.0.1:8000, rebuilt on every change
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve --strict --dev-addr 127.0.0.1:8000
lint: $(VENV_STAMP) ## pre-commit on every file: ruff, hadolint, shellcheck, hygiene
	PATH="$(abspath $(VENV))/bin:$$PATH" pre-commit run --all-files --show-diff-on-failure

test: $(VENV_STAMP) ## the fast tests, about 2 minutes on 2 cores (CPU, offline): in-process, no slow marker
	$(VENV_PY) -m pytest --ignore=tests/images -m "not slow" --numprocesses $(TEST_WORKERS) --dist loadgroup

test-all: $(VENV_STAMP) ## every test but the image tests: real processes, signals, torchrun (CPU, offline)
	$(VENV_PY) -m pytest --ignore=tests/images --numprocesses $(TEST_WORKERS) --dist loadgroup

check-docker:
	@$(DOCKER) info >/dev/null 2>&1 || { echo "error: no Docker engine answers ('$(DOCKER) info' failed): start Docker, or train with RUNNER=local" >&2; exit 2; }

image-ngc: image-torch-ngc ## build torch-ngc: NGC PyTorch + training dependencies

images: $(addprefix image-,$(IMAGES)) ## build every image, in order

image-%: check-docker ## build one image (IMAGES in images/hierarchy.env); a missing parent is built first
	@if [[ -z "$(filter $*,$(IMAGES))" ]]; then echo "error: no image '$*'; images: $(IMAGES)" >&2; exit 2; fi
	@if [[ -n "$(filter $(PARENT_$*),$(IMAGES))" ]] && ! $(DOCKER) image inspect $(call base_of,$*) >/dev/null 2>&1; then \
		$(MAKE) image-$(PARENT_$*); fi
	@# the build context: IMAGES_DIR, or a copy with the lock re-solved for this base (scripts/lock_images.py says which)
	@context=$$(DOCKER=$(DOCKER) PIP_CA=$(PIP_CA) $(PYTHON) scripts/lock_images.py --ngc-base $(NGC_BASE) \
		--build-on $(call base_of,$*) --out $(IMAGES_DIR) --resolved $(RESOLVED_LOCKS) $(if $(LOCKED),--locked) $*) && \
	lock_sha256=$$(sha256sum $$context/$*/requirements.lock | cut -d' ' -f1) && revision=$$(git rev-parse HEAD 2>/dev/null || echo unknown) && \
	echo "building $(IMAGE_PREFIX)$*:$(GIT_SHA) on $(call base_of,$*) from $$context" && \
	DOCKER_BUILDKIT=1 $(DOCKER) build --file $$context/$*/Dockerfile --build-arg BASE_IMAGE=$(call base_of,$*) \
		--build-arg IMAGE_REVISION=$$revision --build-arg LOCK_SHA256=$$lock_sha256 \
		$(if $(PIP_CA),--secret id=pip-ca$(comma)src=$(PIP_CA)) \
		--label org.opencontainers.image.title=$* \
		$(if $(IMAGE_SOURCE),--label org.opencontainers.image.source=$(IMAGE_SOURCE)) \
		--label org.opencontainers.image.revision=$$revision \
		--label org.opencontainers.image.created="$$(git log -1 --format=%cI 2>/dev/null)" \
		--label org.opencontainers.image.base.name=$(call base_of,$*) \
		--label org.opencontainers.image.base.digest="$$(scripts/image-digest.sh $(call base_of,$*))" \
		--label io.github.eurosat.lock.$*.sha256=$$lock_sha256 \
		$$($(STALE_IMAGES) labels $* $(call base_of,$*)) \
		--tag $(IMAGE_PREFIX)$*:$(GIT_SHA) --tag $(IMAGE_PREFIX)$*:latest $$context

lock-images: $(VENV_STAMP) check-docker ## solve each image layer's lock inside NGC_BASE, against its installed packages (LOCK_LAYERS)
	@$(DOCKER) image inspect $(NGC_BASE) >/dev/null 2>&1 || $(DOCKER) pull $(NGC_BASE)
	DOCKER=$(DOCKER) PIP_CA=$(PIP_CA) $(VENV_PY) scripts/lock_images.py --ngc-base $(NGC_BASE) --out $(IMAGES_DIR) $(LOCK_LAYERS)

pin: check-docker ## re-resolve the root bases' tags (FROM ... AS root-base) to digests (needs the registries)
	DOCKER=$(DOCKER) scripts/pin.sh $(wildcard images/*/Dockerfile)

cluster-files: check-project $(VENV_STAMP) ## render a Slurm script and a Kubeflow PyTorchJob for PROJECT on NODES x GPUS (REGISTRY or CLUSTER_IMAGE, ARGS, MAX_REQUEUES, RUN_AS=UID:GID; SWEEP: a job array) into build/cluster/
	@if [[ -z "$(REGISTRY)$(CLUSTER_IMAGE)" ]]; then echo "error: set REGISTRY, the registry the cluster pulls from (make push REGISTRY=... puts the images there), or CLUSTER_IMAGE" >&2; exit 2; fi
	$(VENV_PY) scripts/cluster/render.py --project $(PROJECT) --nodes $(NODES) --gpus $(or $(GPUS),1) \
		--image $(or $(CLUSTER_IMAGE),$(REGISTRY)/$(PROJECT_IMAGE):$(GIT_SHA)) --pushed $(PUSHED) --args="$(ARGS)" --sweep="$(SWEEP)" --max-requeues $(or $(MAX_REQUEUES),10) \
		$(if $(RUN_AS),--run-as $(RUN_AS))

slurm-image: check-project check-docker ## build the Slurm nodes' image on PROJECT's image (slurm-up does it first)
	@$(call fresh_image,$(PROJECT_IMAGE))
	@$(call compose_env) scripts/slurm.sh build

slurm-up: slurm-image $(COMPOSE_DEP) ## start a Slurm cluster in containers (a controller, two compute nodes) on PROJECT's image
	@$(call compose_env) scripts/slurm.sh up

slurm-shell: check-docker $(COMPOSE_DEP) ## a shell on the Slurm cluster's controller, as you, in this checkout (CMD="sbatch ..." runs one command)
	@$(call compose_env) scripts/slurm.sh exec $(or $(CMD),bash)

slurm-down: $(COMPOSE_DEP) ## stop and remove the Slurm cluster
	@$(call compose_env) scripts/slurm.sh down

push: check-docker ## push every image tag to REGISTRY=host/namespace; records each digest in build/pushed-images.txt
	@if [[ -z "$(REGISTRY)" ]]; then echo "error: set REGISTRY, e.g. make push REGISTRY=ghcr.io/you" >&2; exit 2; fi
	@# only images make built from this tree: a stale one, or one built some other way (no labels), is refused first
	@for image in $(IMAGES); do $(STALE_IMAGES) stale $$image --refuse --refusal "make push sends only images of this tree"; done
	@mkdir -p $(dir $(PUSHED))
	@for image in $(IMAGES); do for tag in $(GIT_SHA) latest; do \
		$(DOCKER) tag $(IMAGE_PREFIX)$$image:$$tag $(REGISTRY)/$$image:$$tag && $(DOCKER) push $(REGISTRY)/$$image:$$tag; done; \
		digest=$$($(DOCKER) image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' $(REGISTRY)/$$image:$(GIT_SHA) \
			| grep -m1 "^$(REGISTRY)/$$image@"); \
		echo "$(REGISTRY)/$$image:$(GIT_SHA) $$digest" >>$(PUSHED) && echo "recorded $$digest in $(PUSHED)"; done

shell: check-docker ## open a shell in IMAGE (default jupyter) as you, with the repository mounted (CMD="...": run one command)
	@$(call fresh_image,$(or $(IMAGE),jupyter))
	@$(DOCKER) run --rm $$([[ -t 0 ]] && echo -it || echo -i) --user $(HOST_UID):$(HOST_GID) --group-add app \
		-v $(CURDIR):/workspace -w /workspace $(IMAGE_PREFIX)$(or $(IMAGE),jupyter):latest $(if $(CMD),bash -c "$(CMD)",bash)

notebook: check-docker $(COMPOSE_DEP) ## start Jupyter and TensorBoard (detached) and print the URL with the token
	@# the notebooks train PROJECT's default model: its weights locked and cached first, where that can be done
	@if [[ -x $(VENV_PY) ]]; then $(WEIGHTS_FOR_RUN) 2>&1 | sed 's/^error: /warning: notebooks: /' >&2 || true; fi
	@$(call fresh_image,jupyter)
	@$(call compose_env) scripts/notebook.sh

mlflow: check-docker $(COMPOSE_DEP) ## start the MLflow tracking server on runs/mlflow.db (detached) and print its URL
	@$(call fresh_image,jupyter)
	@$(call compose_env) scripts/mlflow.sh

execute: check-docker $(COMPOSE_DEP) ## run NOTEBOOK=notebooks/<name>.ipynb top to bottom in the jupyter image (fails on an error)
	@if [[ ! -f "$(NOTEBOOK)" ]]; then echo "error: NOTEBOOK=$(NOTEBOOK) is not a file; e.g. NOTEBOOK=notebooks/train.ipynb" >&2; exit 2; fi
	@$(call fresh_image,jupyter)
	@$(call compose_env) scripts/compose.sh run --rm --no-deps notebook jupyter execute $(NOTEBOOK)

down: $(COMPOSE_DEP) ## stop every container of this repository's compose project
	@$(call compose_env) scripts/compose.sh down --remove-orphans

# Users are not root: run by root (CI), the image tests run as TEST_USER, an unprivileged account in the engine's group
# with a clone of its own, and every file they leave there must be that account's (scripts/test_as_user.py)
TEST_USER ?= eurosat-user
PYTEST_ARGS ?=
test-images: $(VENV_STAMP) $(NODE_STAMP) check-docker ## image, compose and notebook tests against the Docker engine, as a user (root: as TEST_USER)
	@if [[ $$(id -u) == 0 ]]; then $(VENV_PY) scripts/test_as_user.py --user $(TEST_USER) -- $(PYTEST_ARGS); \
	else $(VENV_PY) -m pytest tests/images --numprocesses $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS); fi

clean: ## remove .venv, node_modules, site/ and Python caches (data/ and runs/ are kept)
	rm -rf $(VENV) node_modules site .pytest_cache .ruff_cache src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# Settings every compose call gets: paths on the host, ids of the host user, images, the GPU override. Every folder
# compose mounts is made here first, as the host user: a rootful engine would create a missing one owned by root.
define compose_env
mkdir -p runs notebooks $(DATA) $(CACHE_DIR) $(MODEL_CACHE) && \
REPO_DIR=$(CURDIR) DATA_DIR=$(abspath $(DATA)) CACHE_DIR=$(abspath $(CACHE_DIR)) MODEL_DIR=$(abspath $(MODEL_CACHE)) HOST_UID=$(HOST_UID) HOST_GID=$(HOST_GID) \
WEIGHTS_LOCK=$(EUROSAT_WEIGHTS_LOCK) \
PROJECT=$(PROJECT) TRAIN_IMAGE=$(IMAGE_PREFIX)$(PROJECT_IMAGE):latest JUPYTER_IMAGE=$(IMAGE_PREFIX)jupyter:latest \
TRAIN_IMAGE_ID="$$($(DOCKER) image inspect -f '{{.Id}}' $(IMAGE_PREFIX)$(PROJECT_IMAGE):latest 2>/dev/null)" \
JUPYTER_IMAGE_ID="$$($(DOCKER) image inspect -f '{{.Id}}' $(IMAGE_PREFIX)jupyter:latest 2>/dev/null)" \
EUROSAT_GIT_COMMIT="$$(git rev-parse HEAD 2>/dev/null)" EUROSAT_GIT_DIRTY="$$(git status --porcelain 2>/dev/null | head -c1)" \
DOCKER="$(DOCKER)" COMPOSE="$(COMPOSE)"
endef
