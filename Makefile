# make train   the bundled tiny Qwen3 demo, end to end, in the toolkit image
# make test    the test suite (docker-marked tests need a running Docker engine)
# Inside the toolkit image the same targets run without a venv or Docker.

PYTHON ?= python3
VENV ?= .venv
CONFIG ?= configs/tiny-cpu-demo.yaml
DEMO_CONFIG := configs/tiny-cpu-demo.yaml
TINY_MODEL := .cache/tiny-qwen3
ARGS ?=
PYTEST_ARGS ?=
# gpu-marked tests need a GPU: `make test-gpu` runs them on one.
MARK ?= not gpu

ifeq ($(TOOLKIT_IN_CONTAINER),1)
TOOLKIT := toolkit
HOST_ENV :=
else
TOOLKIT := $(VENV)/bin/toolkit
HOST_ENV := $(VENV)/.host
endif
DEV_ENV := $(VENV)/.dev
# axolotl's own code, read by the tests that compare masks with it and by the key
# inventory (make axolotl-keys); kept out of the venv's packages, without its
# dependencies (its chat-template code needs only what the trainer's stack has).
AXOLOTL_VERSION := 0.19.0
AXOLOTL_REF := $(VENV)/axolotl-$(AXOLOTL_VERSION)

.PHONY: help train merge image tiny-model test test-fast test-gpu device-wheels lint axolotl-keys clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## /  make \1\t/' | expand -t 22

# The host needs only the light CLI (pydantic, PyYAML); training runs in the image.
$(VENV)/.host: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e .
	touch $@

# Tests train tiny models in-process, so they need the trainer's stack here too.
# torch is pinned in the same command so pip takes the CPU build, not a CUDA one.
$(VENV)/.dev: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet torch==2.13.0 -e '.[train,trackers,dev]'
	$(VENV)/bin/pip install --quiet --no-deps --target $(AXOLOTL_REF) \
		axolotl==$(AXOLOTL_VERSION) addict==2.4.0 colorama==0.4.6 fire==0.7.1 termcolor==3.1.0
	touch $@ $(VENV)/.host

train: $(HOST_ENV)  ## the bundled tiny demo end to end (CONFIG=… ARGS=… for others)
ifeq ($(CONFIG),$(DEMO_CONFIG))
	$(TOOLKIT) tiny-model $(TINY_MODEL)
endif
	$(TOOLKIT) train $(CONFIG) $(ARGS)
	$(TOOLKIT) merge-lora $(CONFIG) $(ARGS)

merge: $(HOST_ENV)  ## merge the config's adapter into its base
	$(TOOLKIT) merge-lora $(CONFIG) $(ARGS)

tiny-model: $(HOST_ENV)  ## build the tiny Qwen3 the demo trains
	$(TOOLKIT) tiny-model $(TINY_MODEL)

image: $(HOST_ENV)  ## build the cpu image
	$(TOOLKIT) images build cpu

test: $(DEV_ENV)  ## the test suite (docker tests need an engine)
	$(VENV)/bin/python -m pytest -m "$(MARK)" $(PYTEST_ARGS)

test-fast: $(DEV_ENV)  ## the quick tests: no engine, no GPU, nothing marked slow
	$(VENV)/bin/python -m pytest -m "not gpu and not docker and not slow" $(PYTEST_ARGS)

test-gpu: $(DEV_ENV)  ## the gpu-marked tests, on a GPU
	$(VENV)/bin/python -m pytest -m gpu $(PYTEST_ARGS)

device-wheels: $(DEV_ENV)  ## the wheels bench/device/check.sh carries to a lent GPU machine
	$(VENV)/bin/python bench/device/fetch.py

lint: $(DEV_ENV)  ## ruff (rules and format) over toolkit, tests and bench; mypy over toolkit
	$(VENV)/bin/ruff check toolkit tests bench
	$(VENV)/bin/ruff format --check toolkit tests bench
	$(VENV)/bin/mypy

axolotl-keys: $(DEV_ENV)  ## reread toolkit/config/axolotl_keys.yaml's key lists from axolotl (AXOLOTL_VERSION=…)
	$(VENV)/bin/pip install --quiet --no-deps --upgrade --target $(AXOLOTL_REF) axolotl==$(AXOLOTL_VERSION)
	$(VENV)/bin/python -m toolkit.config.inventory $(AXOLOTL_REF)

clean:  ## remove outputs and pytest's cache
	rm -rf outputs .pytest_cache
