# `make run` and `make test` set everything up on a fresh machine and are cheap on a second call:
# each step leaves a stamp and reruns only when its inputs change.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
SURETY := $(VENV)/bin/surety
MODEL_REPOSITORY ?= model_repository
PORT ?= 8000

KERNEL_SOURCES := $(shell find kernels/src -type f) CMakeLists.txt kernels/CMakeLists.txt

.PHONY: help setup build data run test check lint bench clean image lock fresh fresh-newest

help:
	@echo "make run    set up, build the kernels and default models, serve on http://127.0.0.1:8000 (PORT=...)"
	@echo "make test   set up, build, lint and run the whole test suite"
	@echo "make check  lint and the unit and model tests that are not slow (the inner loop, about two minutes)"
	@echo "make bench  run the benchmarks in bench/ (figures go to docs/benchmarks.md by hand)"
	@echo "make lint   ruff, mypy, the import contracts (lint-imports) and hadolint"
	@echo "make image  build the Docker image surety:latest (starts an engine if none answers)"
	@echo "make lock   regenerate requirements/*.lock from pyproject.toml (newest allowed versions)"
	@echo "make fresh  clone HEAD to a temporary folder and time make test and make run there"
	@echo "make fresh-newest  the same with the newest versions pyproject.toml allows, no lock"
	@echo "make clean  remove the virtualenv and build outputs"

# Python packages come from the lock, requirements/full.lock (exact versions and hashes, every
# extra and the build tools; `make lock` writes it from pyproject.toml). The project itself is
# built last, without isolation or dependencies (scikit-build-core + CMake, incremental in build/),
# which compiles the kernels. Reruns when the lock, the project or the native sources change.
#
# SURETY_RESOLVE=newest installs instead the newest versions pyproject.toml allows (no lock): the
# fresh-install check's second mode (scripts/fresh_install.sh --newest), which finds the next
# upstream break before a user does. The stamp names the mode, so switching reinstalls.
SURETY_RESOLVE ?= lock
LOCK := requirements/full.lock
SERVING_LOCK := requirements/serving.lock
BUILD_LOCK := requirements/build.lock
INSTALLED := $(VENV)/.installed-$(SURETY_RESOLVE)

$(INSTALLED): pyproject.toml $(LOCK) $(KERNEL_SOURCES)
	@echo "==> installing packages ($(SURETY_RESOLVE)) and building the ai.surety kernels (first run takes a few minutes)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	rm -f $(VENV)/.installed-*
ifeq ($(SURETY_RESOLVE),lock)
	$(PIP) install -q --require-hashes -r $(LOCK)
else ifeq ($(SURETY_RESOLVE),newest)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q --upgrade scikit-build-core cmake ninja
	$(PIP) install -q --upgrade --upgrade-strategy eager --no-build-isolation -e '.[models,dev]'
else
	$(error SURETY_RESOLVE must be lock or newest, not $(SURETY_RESOLVE))
endif
	$(PIP) install -q --no-build-isolation --no-deps -e .
	touch $@

# Regenerate the locks from pyproject.toml with pip-tools (in .venv): the newest versions that
# pyproject.toml allows, hashes of every file PyPI has for them. The image's two, at the versions
# full.lock chose: serving.lock ([project].dependencies alone) and build.lock ([build-system]).
lock: build
	CUSTOM_COMPILE_COMMAND="make lock" $(VENV)/bin/pip-compile -q --upgrade --all-extras \
	  --all-build-deps --allow-unsafe --generate-hashes --strip-extras --no-emit-index-url \
	  --no-emit-find-links --output-file $(LOCK) pyproject.toml
	CUSTOM_COMPILE_COMMAND="make lock" $(VENV)/bin/pip-compile -q --upgrade --allow-unsafe \
	  --generate-hashes --strip-extras --no-emit-index-url --no-emit-find-links \
	  --constraint $(LOCK) --output-file $(SERVING_LOCK) pyproject.toml
	CUSTOM_COMPILE_COMMAND="make lock" $(VENV)/bin/pip-compile -q --upgrade --allow-unsafe \
	  --generate-hashes --strip-extras --no-emit-index-url --no-emit-find-links \
	  --only-build-deps --all-build-deps --constraint $(LOCK) --output-file $(BUILD_LOCK) \
	  pyproject.toml

# A fresh clone of HEAD in a temporary folder, `make test` then `make run` there, timed
# (docs/operations.md); `make fresh-newest` does the same with SURETY_RESOLVE=newest.
fresh:
	scripts/fresh_install.sh

fresh-newest:
	scripts/fresh_install.sh --newest

# The kit (kit/surety_kit: server start-up, ports, readiness, payloads, HTTP helpers), shared by
# tests/, bench/ and load_tests/: importable in .venv through a .pth file naming kit/, as the
# editable install names service/ and kernels/; never in the wheel (docs/development.md).
KIT := $(VENV)/.kit

$(KIT): $(INSTALLED)
	$(PY) -c 'import pathlib, sys, sysconfig; pathlib.Path(sysconfig.get_path("purelib"), "surety_kit.pth").write_text(sys.argv[1] + "\n")' "$(CURDIR)/kit"
	touch $@

setup build: $(INSTALLED) $(KIT)

# The default models (digits, fortune-topics, stsb-judge): build-defaults builds the entries that are missing,
# so a new default model joins an existing repository, and skips built ones in about a second
# (delete an entry, or run it with --force, to rebuild).
run: build
	@echo "==> default models in $(MODEL_REPOSITORY) (built when missing: a few minutes)"
	$(SURETY) build-defaults --model-repository $(MODEL_REPOSITORY)
	$(SURETY) serve --model-repository $(MODEL_REPOSITORY) --host 127.0.0.1 --port $(PORT)

lint: build
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/hadolint Dockerfile

# The deployment tests install what they need when it is missing (scripts/deploy_tools.sh:
# prometheus/promtool, docker-compose) and start a Docker engine (scripts/docker/engine.sh);
# without root they skip with the reason, except under CI=true, where they fail.
test: build lint data
	$(PY) -m pytest

# The fortunes corpus the text tests read, fetched with apt-get download on the first run into
# data/fortunes (or $SURETY_FORTUNES_DIR); then checked against its stamp in a second.
data: build
	$(SURETY) data fortunes > /dev/null

# The inner loop: the unit and model tiers, not slow (tests/tiers.py; about two minutes).
check: build lint data
	$(PY) -m pytest -q -m "$(CHECK_TIERS)"

CHECK_TIERS := (unit or model) and not (network or image or slow)

bench: build
	$(PY) bench/softmax.py
	$(PY) bench/attention.py

# The Docker image (Dockerfile). build_image.sh starts a Docker engine when none answers, makes
# the base image where no registry can be reached, the wheelhouse the build installs from (both
# cached in build/docker/), and the default models the image carries, then runs docker build.
image: build
	scripts/docker/build_image.sh

clean:
	rm -rf $(VENV) build
