# The README's two commands: `make run` and `make test`. Both install first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install packages lint docs bench clean

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

## Debian's packages the tests drive (the browser tests' Chromium; Prometheus and promtool for
## the metrics and alert-rule tests; PgBouncer for the transaction-mode tests), installed when missing:
## as root, or with sudo that asks no password. Elsewhere (not Debian, no root) nothing is
## installed and the tests that need a missing one are skipped, saying why in one line.
DEBIAN_PACKAGES ?= chromium prometheus pgbouncer
packages:
	@missing=""; \
	for p in $(DEBIAN_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	[ -n "$$missing" ] || exit 0; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "make: not Debian, so not installing$$missing: the tests that need it are skipped"; exit 0; \
	fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; \
	elif sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	else echo "make: no root, so not installing$$missing: the tests that need it are skipped"; exit 0; fi; \
	echo "make: installing Debian's$$missing"; \
	$$sudo apt-get update -q >/dev/null && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q$$missing >/dev/null || \
	  echo "make: apt-get could not install$$missing: the tests that need it are skipped"

## Install, then run every test (unit, database, actors, end-to-end, browser).
test: install packages
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## Lint: ruff, ruff format, mypy strict, the layers contract (import-linter), the Dockerfile (hadolint).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy core db tasks service dashboard stepwise api
	$(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile

## README.md's list of modules, rewritten from their docstrings (tests/test_readme.py checks it).
docs: install
	$(BIN)/python -m testkit.architecture --write

bench: install
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) .pytest_cache
