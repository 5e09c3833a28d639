# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOWEST ?= .venv-lowest
LOWEST_STAMP := $(LOWEST)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
ARQ_VENV ?= .venv-arq
ARQ_STAMP := $(ARQ_VENV)/.installed
WORKER_E2E := tests/test_worker_e2e.py tests/test_delivery_e2e.py tests/test_deployments_e2e.py tests/test_worker_modes_e2e.py \
	tests/test_loop_handoff_e2e.py tests/test_strategy.py

.PHONY: venv test test-fast test-lowest lint demo bench bench-quick bench-venvs bench-failed capacity chaos chaos-automations chaos-workflows clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

# Tests spend most of their time waiting on worker subprocesses: pytest-xdist runs TEST_JOBS of them
# at once, each pytest process with its own private redis-server and nx-27017 (TEST_JOBS=0: one process).
TEST_JOBS ?= 3

# Every worker and CLI subprocess imports earnevents: compiled once here, not by each (where
# PYTHONDONTWRITEBYTECODE is set, nothing would ever be cached).
COMPILE = $(BIN)/python -m compileall -q -j 0 earnevents tests workers bench > /dev/null

test: venv  ## the whole suite against real redis-server, nx-27017 and celery workers
	$(COMPILE)
	$(BIN)/python -m pytest -n $(TEST_JOBS)

# The lowest versions pyproject.toml allows (.ci/lowest-constraints.txt), in a venv of their own.
$(LOWEST_STAMP): pyproject.toml .ci/lowest-constraints.txt .ci/lowest-dev.py
	test -x $(LOWEST)/bin/python || $(PYTHON) -m venv $(LOWEST)
	$(LOWEST)/bin/python -m pip install -q --upgrade pip
	$(LOWEST)/bin/python .ci/lowest-dev.py > $(LOWEST)/dev-requirements.txt
	$(LOWEST)/bin/python -m pip install -q -c .ci/lowest-constraints.txt -e . -r $(LOWEST)/dev-requirements.txt
	touch $@

test-lowest: venv $(LOWEST_STAMP)  ## the worker end-to-end tests on the lowest allowed versions
	$(LOWEST)/bin/python -m pip check
	$(COMPILE)
	# nx-27017 needs a newer PyMongo: it runs from the main venv (last on PATH: the system redis-server wins).
	# The one-minute default-settings timing test runs in `make test` only: it measures the visibility
	# timeout's defaults, which the versions do not change (kombu's restore interval is checked by the
	# killed-worker tests with short timeouts).
	PATH="$$PATH:$(CURDIR)/$(BIN)" $(LOWEST)/bin/python -m pytest -n $(TEST_JOBS) -p no:cacheprovider $(WORKER_E2E) \
		-k "not with_default_settings_a_killed_workers_event"

test-fast: venv  ## unit tests only (no worker subprocesses)
	$(BIN)/python -m pytest -m "not worker"

lint: venv
	$(BIN)/ruff check earnevents tests workers bench
	$(BIN)/ruff format --check earnevents tests workers bench
	$(BIN)/mypy

demo: venv  ## embedded Redis/Mongo unless EARNEVENTS_REDIS_URI / EARNEVENTS_MONGO_URI are set
	$(BIN)/python -m workers.demo

# The benchmarks' peers: Dramatiq in the main venv (the bench extra); arq in a venv of its own,
# since arq 0.28 requires redis-py < 6 and earnevents >= 6.1 (bench/peer_arq.py runs from it).
bench-venvs: $(BENCH_STAMP) $(ARQ_STAMP)

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install -q -e ".[dev,bench]"
	touch $@

$(ARQ_STAMP): bench/requirements-arq.txt
	test -x $(ARQ_VENV)/bin/python || $(PYTHON) -m venv $(ARQ_VENV)
	$(ARQ_VENV)/bin/python -m pip install -q --upgrade pip
	$(ARQ_VENV)/bin/python -m pip install -q -r bench/requirements-arq.txt
	touch $@

bench: bench-venvs  ## earnevents, Celery, Dramatiq and arq, 3 interleaved rounds (bench/run.py)
	$(BIN)/python -m bench.run

bench-quick: bench-venvs
	$(BIN)/python -m bench.run --quick

bench-failed: venv  ## 100,000 failed jobs: list, page, count and filter them on each store (bench/failed_jobs_scale.py)
	$(BIN)/python -m bench.failed_jobs_scale $(ARGS)

capacity: venv  ## Redis and MongoDB bytes per delayed event, message, failed job, ... (README "Capacity")
	$(BIN)/python -m bench.capacity

chaos: venv
	$(BIN)/python -m bench.chaos $(ARGS)

chaos-automations: venv  ## model events scheduled at a date, under the same chaos (bench/chaos_automations.py)
	$(BIN)/python -m bench.chaos_automations $(ARGS)

chaos-workflows: venv  ## workflow runs (goto, sleep, signal waits, retries) under the same chaos (bench/chaos_workflows.py)
	$(BIN)/python -m bench.chaos_workflows $(ARGS)

clean:
	rm -rf $(VENV) $(LOWEST) $(ARQ_VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
