# Two commands on a fresh machine with Python 3.11+:  `make run`  and  `make test`.
# Everything is installed into a local virtual environment (.venv); nothing global is touched.
SHELL := /bin/bash
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; done)
VENV ?= .venv
BIN := $(VENV)/bin
# Two stamps: `make run` installs what running needs, `make test` adds the dev tools on top. Each is made
# again when pyproject.toml changes; `make run` after `make test` installs nothing.
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
# pip's own output is ~150 lines; this keeps one line per package it fetches (its name: "Collecting" from an
# index, "Processing" from a local wheel) and a count when it installs. Errors and warnings go to stderr
# and are shown whole.
PIP_LINES := awk '/^Collecting /{n = $$2; sub(/[<>=!~;[].*/, "", n); print "   " n; fflush()} \
	/^Processing .*\.whl/{n = $$2; sub(/.*\//, "", n); split(n, part, "-"); print "   " part[1]; fflush()} \
	/^Installing collected packages:/{print "   installing " split($$0, _, ",") " packages..."; fflush()}'

.PHONY: run test lint install clean

$(RUN_STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: Python 3.11 or newer is required (set PYTHON=...)"; exit 1; }
	@echo "== creating the virtual environment $(VENV) with $(PYTHON)"
	@$(PYTHON) -m venv $(VENV)
	@echo "== updating pip in $(VENV)"
	@$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "== installing announcer and what it needs to run (about a minute the first time)"
	@set -o pipefail; $(BIN)/python -m pip install --progress-bar off -e . | $(PIP_LINES)
	@touch $(RUN_STAMP)
	@echo "== installed"

$(DEV_STAMP): $(RUN_STAMP)
	@echo "== installing the dev tools (pytest, ruff, mypy, ...)"
	@# the [dev] extra's list alone: `pip install -e '.[dev]'` would rebuild and reinstall announcer too
	@$(BIN)/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["dev"], sep="\n")' > $(VENV)/dev-requirements.txt
	@set -o pipefail; $(BIN)/python -m pip install --progress-bar off -r $(VENV)/dev-requirements.txt | $(PIP_LINES)
	@touch $(DEV_STAMP)
	@echo "== installed"

install: $(RUN_STAMP)

## run the service (sandbox mode when no Twilio/ElevenLabs credentials are set)
run: $(RUN_STAMP)
	$(BIN)/announcer serve

## lint, type-check and run the whole suite (SQLite, then PostgreSQL when one answers); -rs lists each
## skipped test and why (the PostgreSQL-only ones on SQLite, the nginx ones without nginx, the browser ones
## without Chromium)
test: $(DEV_STAMP)
	$(BIN)/ruff check announcer tests benchmarks
	$(BIN)/ruff format --check announcer tests benchmarks
	$(BIN)/mypy announcer
	$(BIN)/python -m pytest -q -rs -p no:cacheprovider
	@if $(BIN)/python -m tests.pg_available; then \
		echo "== the same suite on PostgreSQL =="; \
		ANNOUNCER_TEST_DATABASE=postgresql $(BIN)/python -m pytest -q -rs -p no:cacheprovider; \
	elif [ -n "$$CI" ]; then echo "error: CI needs PostgreSQL at 127.0.0.1:5432"; exit 1; \
	else echo "== PostgreSQL not reachable: skipped the PostgreSQL run =="; fi

clean:
	rm -rf $(VENV) data
