"""Prometheus metrics: the observer on the real loop, the endpoints of 2 replicas, a real Prometheus."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from prometheus_client import generate_latest

from bench.harness import LocalRedis, free_port
from producer.client import Producer
from producer.results import ResultsReader
from producer.sources import synthetic
from protocol.entries import encode_window
from protocol.keys import Keys
from tests.conftest import ROOT
from tests.helpers import make_loop
from tests.ops_helpers import parse, scrape, start_worker, stop, value, wait_ready
from worker.metrics import LATENCY_BUCKETS, StreamCollector, WorkerMetrics


def test_observer_counts_served_dead_expired_and_latency(
    r: redis.Redis, redis_url: str, prefix: str, checkpoint_root: Path
) -> None:
    loop = make_loop(redis_url, prefix, checkpoint_root, max_batch=16)
    metrics = WorkerMetrics("test-0")
    keys = Keys(prefix, prefix)
    metrics.registry.register(StreamCollector(r, keys))
    loop.observer = metrics
    prod = Producer(r, keys)
    prod.publish_many([np.zeros((20, 1), np.float32)] * 40)
    r.xadd(keys.shard(0).windows, {b"v": b"1", b"x": b"\xc1", b"ts": b"1"})
    r.xadd(keys.shard(0).windows, encode_window(np.zeros((20, 3), np.float32)))
    prod.publish(np.zeros((20, 1), np.float32), id="late", deadline_us=1)
    metrics.model_version(loop.models.current.version)
    loop.run()
    s = parse(generate_latest(metrics.registry).decode())
    assert value(s, "bigru_windows_served_total", worker="test-0") == 40
    assert value(s, "bigru_windows_expired_total") == 1
    assert value(s, "bigru_dead_letters_total", reason="bad_x") == 1
    assert value(s, "bigru_dead_letters_total", reason="bad_features") == 1
    assert value(s, "bigru_e2e_seconds_count") == 40 == value(s, "bigru_queue_seconds_count")
    assert value(s, "bigru_batch_size_sum") == 40
    assert value(s, "bigru_inference_seconds_count") == value(s, "bigru_batch_size_count") >= 3
    # Cumulative buckets: non-decreasing, +Inf equals the count.
    buckets = [v for lab, v in s["bigru_e2e_seconds_bucket"]]
    assert buckets == sorted(buckets) and buckets[-1] == 40
    assert value(s, "bigru_model_info", version=loop.models.current.version) == 1
    assert value(s, "bigru_ready") == 1
    assert value(s, "bigru_group_lag", shard="0") == 0 and value(s, "bigru_group_pending", shard="0") == 0
    assert value(s, "bigru_stream_length", shard="0") == 43
    assert value(s, "bigru_redis_up") == 1


def test_reload_api_switches_version_and_counts_outcomes() -> None:
    m = WorkerMetrics("w-0")
    m.model_version("v1")
    m.reload(False, "v2")
    m.reload(True, "v3")
    s = parse(generate_latest(m.registry).decode())
    assert value(s, "bigru_model_reloads_total", outcome="accepted") == 1
    assert value(s, "bigru_model_reloads_total", outcome="refused") == 1
    assert [lab["version"] for lab, v in s["bigru_model_info"]] == ["v3"]


@pytest.fixture(scope="module")
def fleet(redis_server: LocalRedis, checkpoint_root: Path) -> Iterator[dict[str, Any]]:
    """Two replicas (one supervisor) with metrics on consecutive ports, ready to serve."""
    prefix = f"m{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = dict(os.environ, BIGRU_REDIS_URL=redis_server.url, BIGRU_PREFIX=prefix, BIGRU_GROUP=prefix,
               BIGRU_CHECKPOINT=str(checkpoint_root), BIGRU_LOG_JSON="true", PYTHONPATH=str(ROOT),
               BIGRU_METRICS_PORT=str(port), BIGRU_WORKER_NAME="mx", BIGRU_MAX_WAIT_MS="5")
    keys = Keys(prefix, prefix)
    proc = start_worker(env, "--replicas", "2")
    try:
        wait_ready(redis_server.url, keys, ["mx-0", "mx-1"], [proc])
        yield {"ports": [port, port + 1], "keys": keys, "url": redis_server.url, "env": env}
    finally:
        stop(proc)


def _traffic(url: str, keys: Keys, n: int, seed: int) -> list[float]:
    r = redis.Redis.from_url(url)
    reader = ResultsReader(r, keys, start="$")
    reader.positions = {k: (r.xinfo_stream(k)["last-generated-id"].decode() if r.exists(k) else "0-0")
                        for k in reader.positions}
    Producer(r, keys).publish_many([w.x for w in synthetic(n, 20, seed=seed)])
    results = reader.collect(n, timeout_s=120)
    assert len(results) == n
    return [res.e2e_us / 1e6 for res in results]


def _settled(fleet: dict[str, Any], served: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Scrapes of every replica once their served counters add up to ``served``.

    A result is readable a moment before the replica's counters are updated, hence the wait.
    """
    deadline = time.monotonic() + timeout
    while True:
        scraped = [scrape(p) for p in fleet["ports"]]
        got = sum(value(s, "bigru_windows_served_total") for s in scraped)
        if got == served or time.monotonic() > deadline:
            assert got == served
            return scraped
        time.sleep(0.1)


@pytest.mark.slow
def test_endpoints_of_two_replicas_after_traffic(fleet: dict[str, Any]) -> None:
    before = [value(scrape(p), "bigru_windows_served_total") for p in fleet["ports"]]
    _traffic(fleet["url"], fleet["keys"], 600, seed=11)
    scraped = _settled(fleet, int(sum(before)) + 600)
    workers = set()
    for s in scraped:
        assert value(s, "bigru_ready") == 1
        ((labels, v),) = s["bigru_model_info"]
        assert v == 1 and labels["version"].startswith("v")
        workers.add(labels["worker"])
        assert value(s, "bigru_e2e_seconds_count") == value(s, "bigru_windows_served_total")
        assert [lab["le"] for lab, _ in s["bigru_e2e_seconds_bucket"]][:-1] == [repr(float(b)) for b in LATENCY_BUCKETS]
    assert workers == {"mx-0", "mx-1"}
    # Health: both replicas of this "host" are ready; a third one is missing.
    check = [sys.executable, "-m", "worker.cli", "--check", "--worker-name", "mx", "--replicas"]
    assert subprocess.run([*check, "2"], env=fleet["env"], capture_output=True, timeout=60).returncode == 0
    assert subprocess.run([*check, "3"], env=fleet["env"], capture_output=True, timeout=60).returncode == 1


def _prom_query(port: int, q: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": q})
    doc = json.loads(urllib.request.urlopen(url, timeout=10).read())
    assert doc["status"] == "success", doc
    return list(doc["data"]["result"])


def _bucket(v: float) -> int:
    return next((i for i, b in enumerate(LATENCY_BUCKETS) if v <= b), len(LATENCY_BUCKETS))


@pytest.mark.slow
def test_real_prometheus_sums_replicas_and_computes_quantiles(fleet: dict[str, Any]) -> None:
    exe = shutil.which("prometheus")
    if exe is None:
        pytest.skip("prometheus binary not installed (apt-get install prometheus)")
    tmp = Path(tempfile.mkdtemp(prefix="bigru-prom-"))
    targets = ", ".join(f"'127.0.0.1:{p}'" for p in fleet["ports"])
    (tmp / "prometheus.yml").write_text(
        f"global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n"
        f"scrape_configs:\n  - job_name: bigru-worker\n    static_configs: [{{targets: [{targets}]}}]\n")
    port = free_port()
    prom = subprocess.Popen([exe, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if len(_prom_query(port, "up == 1")) == 2:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("Prometheus did not scrape both replicas within 60 s")
        _traffic(fleet["url"], fleet["keys"], 800, seed=12)
        total = redis.Redis.from_url(fleet["url"]).xlen(fleet["keys"].shard(0).results)
        _settled(fleet, total)
        while time.monotonic() < deadline + 60:
            got = _prom_query(port, "sum(bigru_windows_served_total)")
            if got and float(got[0]["value"][1]) == total:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"Prometheus saw {got} served, not {total}; up: {_prom_query(port, 'up')}")
        # Buckets count all traffic since the workers started: compare with every result's exact e2e.
        everything = ResultsReader(redis.Redis.from_url(fleet["url"]), fleet["keys"]).collect(int(total), timeout_s=10)
        e2e = [res.e2e_us / 1e6 for res in everything]
        assert len(e2e) == total
        for q in (0.5, 0.99):
            (est,) = _prom_query(port, f"histogram_quantile({q}, sum by (le) (bigru_e2e_seconds_bucket))")
            v = float(est["value"][1])
            assert math.isfinite(v) and v > 0
            assert abs(_bucket(v) - _bucket(float(np.quantile(e2e, q)))) <= 1, (q, v, np.quantile(e2e, q))
        # The dashboard's form: a rate over a window, summed across replicas.
        (est,) = _prom_query(port, "histogram_quantile(0.99, sum by (le) (rate(bigru_e2e_seconds_bucket[1m])))")
        assert math.isfinite(float(est["value"][1])) and float(est["value"][1]) > 0
    finally:
        prom.terminate()
        prom.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def test_stream_gauges_report_redis_down_without_failing_the_scrape(prefix: str) -> None:
    m = WorkerMetrics("w-0")
    m.registry.register(StreamCollector(redis.Redis(port=free_port(), socket_connect_timeout=0.5), Keys(prefix, prefix)))
    s = parse(generate_latest(m.registry).decode())
    assert value(s, "bigru_redis_up") == 0 and "bigru_group_lag" not in s
    assert "bigru_windows_served_total" in s


def test_metrics_port_in_use_fails_naming_the_setting(prefix: str) -> None:
    import socket

    from worker.metrics import MetricsPortError, start_metrics

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(MetricsPortError, match="metrics_port"):
            start_metrics(port, "127.0.0.1", 0, "w-0", None, Keys(prefix, prefix))
    assert type(start_metrics(None, "127.0.0.1", 0, "w-0", None, Keys(prefix, prefix))).__name__ == "Observer"
