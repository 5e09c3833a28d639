# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test test-fast lint demo bench bench-quick chaos clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

test: venv  ## the whole suite against real redis-server, nx-27017 and celery workers
	$(BIN)/python -m pytest

test-fast: venv  ## unit tests only (no worker subprocesses)
	$(BIN)/python -m pytest -m "not worker"

lint: venv
	$(BIN)/ruff check earnevents tests workers bench
	$(BIN)/ruff format --check earnevents tests workers bench
	$(BIN)/mypy

demo: venv  ## embedded Redis/Mongo unless EARNEVENTS_REDIS_URI / EARNEVENTS_MONGO_URI are set
	$(BIN)/python -m workers.demo

bench: venv
	$(BIN)/python -m bench.run

bench-quick: venv
	$(BIN)/python -m bench.run --quick

chaos: venv
	$(BIN)/python -m bench.chaos $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
