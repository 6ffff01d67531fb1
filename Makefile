# The two commands of the quickstart: `make up` and `make test`. Both create .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Options for `hpo up`, e.g. make up ARGS="--workers 4 --trials 40"
ARGS   ?=
LINTED := service search_space workers migrations tests benchmarks

.PHONY: up test test-fast lint format bench bench-quality bench-advice fuzz soak clean

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
	$(BIN)/hpo up $(ARGS)

# The checks pre-commit runs too (.pre-commit-config.yaml): lint, format, types.
lint: $(VENV)/.installed-test
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy

format: $(VENV)/.installed-test
	$(BIN)/ruff format $(LINTED)
	$(BIN)/ruff check --fix $(LINTED)

# The whole suite, as CI runs it: every test on every core, but those marked serial (worker
# processes with TensorFlow, whose timings matter; schemathesis) one at a time after.
test: lint
	scripts/ensure-test-tools.sh
	$(BIN)/pytest -m "not serial" -n auto --dist loadfile
	$(BIN)/pytest -m serial

# The edit-run loop: everything not marked slow (no Keras model trained, SQLite only),
# with 10 fuzzed requests an operation instead of 25; under 3 minutes on 2 cores.
# `make test` still runs all of it.
test-fast: lint
	scripts/ensure-test-tools.sh
	$(BIN)/pytest -m "not slow and not serial" -n auto --dist loadfile
	HPO_FUZZ_EXAMPLES=10 $(BIN)/pytest -m "serial and not slow"

# The benchmarks at full size, search quality aside (25 to 35 minutes on 2 cores), then
# benchmarks/RESULTS.md from every benchmark's latest full run.
bench: $(VENV)/.installed-bench
	scripts/ensure-test-tools.sh postgresql
	$(BIN)/python -m benchmarks --size full --only overhead feeding scaling memory

# Search quality against the peers at an equal budget, in parts: one run per budget of the
# data sets in QUALITY_DATASETS (all four: budget 100 took 61 minutes on 2 cores, budget
# 400 about 4 hours, wine alone 47 minutes), each kept in benchmarks/results/quality-parts/, then every part there
# joined into results/quality.json and RESULTS.md. Budget 400 fits a shorter sitting split
# by data set: `make bench-quality QUALITY_BUDGETS=400 QUALITY_DATASETS=digits,wine`, then
# the same with breast_cancer,diabetes. A data set and budget measured twice is refused
# when the parts are joined: remove the older part's folder.
# Each named configuration is retrained --retrains times (5); parts made with fewer are
# brought up by `python -m benchmarks.quality_rescore PART.json ...`.
QUALITY_BUDGETS ?= 100 400
QUALITY_DATASETS ?= digits,wine,breast_cancer,diabetes
QUALITY_PARTS := benchmarks/results/quality-parts
comma := ,
bench-quality: $(VENV)/.installed-bench
	for b in $(QUALITY_BUDGETS); do \
		$(BIN)/python -m benchmarks.quality --size full --budget $$b \
			--dataset $(QUALITY_DATASETS) --summary \
			--out $(QUALITY_PARTS)/budget-$$b-$(subst $(comma),+,$(QUALITY_DATASETS)) || exit 1; \
	done
	$(BIN)/python -m benchmarks.quality_merge $(QUALITY_PARTS)/*/quality.json
	$(BIN)/python -m benchmarks.report

# Whether the study report's advice pays: a study, its report, its suggested spec run
# (about 15 minutes on 2 cores).
bench-advice: $(VENV)/.installed-bench
	$(BIN)/python -m benchmarks --size full --only advice

# schemathesis at 1,000 examples an operation, then its stateful mode following the links
# between operations, against a real API (under 20 minutes on 2 cores); its section of
# benchmarks/RESULTS.md says what it found.
fuzz: $(VENV)/.installed-test
	$(BIN)/python -m benchmarks --size full --only fuzz

# The soak with faults (about 35 minutes on 2 cores): PostgreSQL, two API processes, 50
# studies, 24 simulated and 2 real workers, while workers, an API process and the database
# are killed and restarted; then every study is checked (benchmarks/soak_check.py). Longer:
# make soak SOAK_ARGS="--minutes 120 --studies 200".
soak: $(VENV)/.installed-bench
	scripts/ensure-test-tools.sh postgresql
	$(BIN)/python -m benchmarks.soak --size full $(SOAK_ARGS)
	$(BIN)/python -m benchmarks.report

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
