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

KERNEL_SOURCES := $(shell find kernels/src -type f) CMakeLists.txt kernels/CMakeLists.txt

.PHONY: help setup build run test check lint bench clean image

help:
	@echo "make run    set up, build the kernels and default models, serve on http://127.0.0.1:8000"
	@echo "make test   set up, build, lint and run the whole test suite"
	@echo "make check  lint and the tests not marked slow (the inner loop, about a minute)"
	@echo "make bench  run the benchmarks in bench/ (figures go to docs/benchmarks.md by hand)"
	@echo "make lint   ruff, mypy and hadolint"
	@echo "make image  build the Docker image surety:latest (starts an engine if none answers)"
	@echo "make clean  remove the virtualenv and build outputs"

# Python packages and the project itself, whose build (scikit-build-core + CMake, incremental in
# build/) compiles the kernels. Reruns when the dependencies or the native sources change.
$(VENV)/.installed: pyproject.toml $(KERNEL_SOURCES)
	@echo "==> installing packages and building the ai.surety kernels (first run takes a few minutes)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q scikit-build-core cmake ninja
	$(PIP) install -q --no-build-isolation -e '.[models,dev]'
	touch $@

setup build: $(VENV)/.installed

# The default models (digits, fortune-topics, stsb-judge): build-defaults builds the entries that are missing,
# so a new default model joins an existing repository, and skips built ones in about a second
# (delete an entry, or run it with --force, to rebuild).
run: build
	@echo "==> default models in $(MODEL_REPOSITORY) (built when missing: a few minutes)"
	$(SURETY) build-defaults --model-repository $(MODEL_REPOSITORY)
	$(SURETY) serve --model-repository $(MODEL_REPOSITORY) --host 127.0.0.1 --port 8000

lint: build
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .
	$(VENV)/bin/hadolint Dockerfile

# The deployment tests install what they need when it is missing (scripts/deploy_tools.sh:
# prometheus/promtool, docker-compose) and start a Docker engine (scripts/docker/engine.sh);
# without root they skip with the reason, except under CI=true, where they fail.
test: build lint
	$(PY) -m pytest

check: build lint
	$(PY) -m pytest -q -m "not slow"

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
