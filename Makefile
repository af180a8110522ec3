# Two commands on a fresh machine with Python 3.11+:  `make run`  and  `make test`.
# Everything is installed into a local virtual environment (.venv); nothing global is touched.
SHELL := /bin/bash
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; done)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint install clean

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: Python 3.11 or newer is required (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

## run the service (sandbox mode when no Twilio/ElevenLabs credentials are set)
run: $(STAMP)
	$(BIN)/announcer serve

## lint, type-check and run the whole suite (SQLite, then PostgreSQL when one answers); -rs lists each
## skipped test and why (the PostgreSQL-only ones on SQLite, the nginx ones without nginx, the browser ones
## without Chromium)
test: $(STAMP)
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
