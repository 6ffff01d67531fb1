# The two commands of the quickstart: `make up` and `make test`. Both create .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: up test lint bench clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[bench]'
	touch $@ $(VENV)/.installed

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed $(VENV)/.installed-bench

up: $(VENV)/.installed
	$(BIN)/hpo up

lint: $(VENV)/.installed-test
	$(BIN)/ruff check service search_space workers migrations tests benchmarks
	$(BIN)/mypy

test: lint
	scripts/ensure-test-tools.sh
	$(BIN)/pytest

# All five benchmarks at full size (about 30 minutes on 2 cores): benchmarks/RESULTS.md.
bench: $(VENV)/.installed-bench
	scripts/ensure-test-tools.sh postgresql
	$(BIN)/python -m benchmarks --size full

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
