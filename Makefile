# fogmesh: `make demo` runs a whole site and asks it a question; `make test` runs the tests.
# Both install whatever is missing first. The virtual environment (.venv) and
# pip's cache are kept, so llama-cpp-python is built from source only once.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: setup demo up test test-fast test-faults reliability lint schemas bench bench-report clean

$(BIN)/python:
	./deploy/install-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/python -c "from agents.model import default_model_path; print('model:', default_model_path())"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/fogmesh demo "MQTT is a protocol that"

up: setup
	$(BIN)/fogmesh up

$(VENV)/.test-deps: $(VENV)/.installed deploy/install-deps.sh
	./deploy/install-deps.sh --test
	touch $@

test: setup $(VENV)/.test-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-faults: setup
	$(BIN)/python -m pytest -m fault $(PYTEST_ARGS)

# Runs the fault tests and fills docs/reliability.md's table from their own counts.
reliability: setup
	mkdir -p build && rm -f build/reliability.jsonl
	FOGMESH_RELIABILITY_OUT=$(CURDIR)/build/reliability.jsonl $(BIN)/python -m pytest -m fault $(PYTEST_ARGS)
	$(BIN)/python -m tests.reliability build/reliability.jsonl

lint: setup
	$(BIN)/ruff check agents broker cloud_bridge schemas tests bench
	$(BIN)/mypy agents broker cloud_bridge schemas
	$(BIN)/lint-imports
	$(BIN)/python -m schemas.generate --check

bench: setup
	$(BIN)/pip install -q -e '.[test,bench]'
	$(BIN)/python -m bench

bench-report: setup
	$(BIN)/python -m bench.report

schemas: setup
	$(BIN)/python -m schemas.generate

clean:
	rm -rf $(VENV) .pytest_cache
