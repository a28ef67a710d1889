# The README's two commands: `make run` and `make test`. Both install first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install lint docs bench clean

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Stepwise needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

## Install, then run everything (dashboard, scheduler, dispatcher, workers, demo agent).
run: install
	$(BIN)/stepwise run

## Install, then run every test (unit, database, actors, end-to-end, browser).
test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## Lint: ruff, ruff format, mypy strict, and the layers contract (import-linter).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy core db tasks service dashboard stepwise api
	$(BIN)/lint-imports

## README.md's list of modules, rewritten from their docstrings (tests/test_readme.py checks it).
docs: install
	$(BIN)/python -m testkit.architecture --write

bench: install
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) .pytest_cache
