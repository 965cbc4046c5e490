# r1lab developer Makefile (GNU make).
#
#   make            -> help
#   make demo       -> create .venv, install r1lab, run the demo
#   make test       -> create .venv, install r1lab[test], run pytest
#
# The exact torch build is installed first (TORCH); pyproject.toml only
# declares a range, so pip keeps the pinned build when installing r1lab.
# Extra pip arguments for the torch install (e.g. a CPU-only index) can be
# given with TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu".

PY             ?= python3
VENV           ?= .venv
TORCH          ?= torch==2.13.0
TORCH_PIP_ARGS ?=
PYTEST_ARGS    ?=

VPY := $(VENV)/bin/python
PIP := $(VPY) -m pip

.DEFAULT_GOAL := help

.PHONY: help install install-test demo test test-all bench clean

help:
	@echo "r1lab make targets:"
	@echo "  help          show this message"
	@echo "  install       create $(VENV) and install r1lab (editable) with $(TORCH)"
	@echo "  install-test  as install, plus the [test] extras"
	@echo "  demo          run 'r1lab demo' from $(VENV)"
	@echo "  test          run the test suite (fails if no tests are collected)"
	@echo "  test-all      the test suite including slow tests"
	@echo "  bench         run benchmarks/train_step.py"
	@echo "  clean         remove $(VENV) and build artefacts"
	@echo "variables: PY=$(PY) VENV=$(VENV) TORCH=$(TORCH) TORCH_PIP_ARGS=$(TORCH_PIP_ARGS) PYTEST_ARGS=$(PYTEST_ARGS)"

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install $(TORCH_PIP_ARGS) "$(TORCH)"
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -e ".[test]"
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

demo: $(VENV)/.installed
	$(VENV)/bin/r1lab demo

# pytest exits 5 when no tests were collected; make treats any non-zero
# status as failure. The status is propagated explicitly (no pipes).
test: $(VENV)/.installed-test
	@rc=0; $(VPY) -m pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: FAILED - pytest collected no tests (exit 5)" >&2; \
	elif [ $$rc -ne 0 ]; then echo "make test: FAILED - pytest exit status $$rc" >&2; fi; \
	exit $$rc

# also the slow tests (torch.compile of the fast training path: minutes when cold)
test-all: $(VENV)/.installed-test
	$(VPY) -m pytest -m "" $(PYTEST_ARGS)

bench: $(VENV)/.installed
	$(VPY) benchmarks/train_step.py

clean:
	rm -rf $(VENV) build dist .pytest_cache .ruff_cache *.egg-info
	find . -path ./.git -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
	find . -path ./.git -prune -o -type d -name '*.egg-info' -prune -exec rm -rf {} +
