# The single entry point: `make demo`, `make test`, `make lint`, `make bench`, `make soak`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: venv redis test-tools demo test test-fast lint bench soak bench-scale failover accuracy compare config-table clean

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch from the local CPU wheel; anything newer would pull a multi-GB CUDA build.
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[model,train,onnx,dev]"
	@touch $(STAMP)

venv: $(STAMP)

redis:
	@bash scripts/ensure-redis-server.sh

# openssl, prometheus/promtool for the tests that use them (installed when missing and possible; else they skip)
test-tools:
	@bash scripts/ensure-test-tools.sh

demo: venv redis
	$(PY) -m scripts.demo

# The three kinds of tests (tests/unit: no Redis; tests/integration: real redis-server; tests/chaos: kills,
# failover, soak), each in its own run with its own per-test timeout (tests/conftest.py: KIND_TIMEOUT_S).
test: venv redis test-tools
	$(PY) -m pytest -q tests/unit
	$(PY) -m pytest -q tests/integration
	$(PY) -m pytest -q tests/chaos

test-fast: venv redis
	$(PY) -m pytest -q -m "not chaos and not slow"

lint: venv
	$(VENV)/bin/ruff check protocol worker producer training tests scripts bench
	$(VENV)/bin/mypy

bench: venv redis
	$(PY) -m bench.run

# 10 minutes at half load, 2 replicas, a hot reload and a kill -9 -> results/soak.{json,md,png}; exit 1 on a miss
# (SOAK_ARGS="--minutes 1.5" for a short run).
soak: venv redis
	$(PY) -m bench.soak $(SOAK_ARGS)

# 1/2/4 replicas on one Redis and on a local 3-master cluster -> bench-out/scaleout.json
bench-scale: venv redis
	$(PY) -m bench.scaleout

# kill -9 a cluster master mid-stream (clean, and with its replica lagging 1 s) with and without WAIT for replicas -> results/failover.{json,md}
failover: venv redis
	$(PY) -m bench.failover

# Training experiments (CPU-heavy; results/ holds the committed outputs).
accuracy: venv
	$(VENV)/bin/bigru-train accuracy --results results --readme README.md

compare: venv
	$(VENV)/bin/bigru-train compare --results results

# README.md's configuration tables, rendered from the settings classes (tests/unit/test_config_doc.py checks them).
config-table: venv
	$(PY) scripts/config_table.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
