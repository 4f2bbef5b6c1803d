"""Health (`--check`, readiness after warm-up), `status [--watch] [--json]` and `results --plot`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import redis

from producer.client import Producer
from producer.results import ResultsReader
from producer.sources import synthetic
from protocol.keys import Keys
from tests.helpers import make_loop
from tests.ops_helpers import worker_cli as _cli
from worker.status import recent_results, render, snapshot


def test_status_after_traffic(r: redis.Redis, redis_url: str, prefix: str, checkpoint_root: Path,
                              worker_env: dict[str, str]) -> None:
    keys = Keys(prefix, prefix, shards=2)
    loop = make_loop(redis_url, prefix, checkpoint_root, shards=2, max_batch=32)
    Producer(r, keys).publish_many([w.x for w in synthetic(120, 20, seed=3)], ids=[f"s{i}" for i in range(120)])
    loop.heartbeat(force=True)
    loop.run()
    Producer(r, keys).publish_many([np.zeros((20, 1), np.float32)] * 5)  # left waiting: lag 5
    loop.heartbeat(force=True)  # run() removed it on exit; pretend the replica is still up
    doc = snapshot(r, keys)
    assert [s["shard"] for s in doc["shards"]] == [0, 1]
    assert sum(s["results"] for s in doc["shards"]) == 120
    assert sum(s["length"] for s in doc["shards"]) == 125
    assert sum(s["lag"] for s in doc["shards"]) == 5 and sum(s["pending"] for s in doc["shards"]) == 0
    (c,) = doc["consumers"]
    assert c["name"] == "test-0" and c["alive"] and c["model"] == loop.models.current.version
    assert c["precision"] == "fp32"  # what the replica serves (a torch predictor: fp32)
    assert 0 <= c["heartbeat_age_s"] < 5 and c["pending"] == 0
    rec = doc["recent"]
    # 120 results within the last 60 s, published by one burst run: the rate is over the span they
    # arrived in (first to last, at least 1 s), not 120 / 60 = 2.0/s as if they had trickled in.
    assert rec["results"] == 120 and 1.0 <= rec["span_s"] < 60
    assert rec["throughput_per_s"] == pytest.approx(120 / rec["span_s"], abs=0.1) and rec["throughput_per_s"] > 2.0
    assert 0 < rec["e2e_ms_p50"] <= rec["e2e_ms_p99"]
    text = render(doc)
    assert "test-0" in text and "ready" in text and "last 60s: 120 results" in text and "(first to last result" in text
    # The CLI: one JSON document, and --watch printing one per refresh.
    env = dict(worker_env, BIGRU_SHARDS="2")
    out = _cli(env, "status", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["recent"]["results"] == 120
    watch = subprocess.Popen([sys.executable, "-m", "worker.cli", "status", "--watch", "--json", "--interval", "0.2"],
                             env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert watch.stdout is not None
        lines = [json.loads(watch.stdout.readline()) for _ in range(3)]
    finally:
        watch.send_signal(signal.SIGINT)
        watch.wait(10)
    assert watch.returncode == 0
    assert lines[0]["ts"] < lines[1]["ts"] < lines[2]["ts"]


def _results_at(r: redis.Redis, stream: str, stamps_ms: list[int]) -> None:
    for i, ms in enumerate(stamps_ms):
        r.xadd(stream, {"status": "ok", "e2e_us": str(1000 + i)}, id=f"{ms}-0")


def test_recent_rate_is_over_the_span_seen(r: redis.Redis, prefix: str) -> None:
    """3000 results within 3 s, read 30 s later with a 60 s window: 1000/s, not 3000 / 60 = 50/s."""
    keys = Keys(prefix, prefix)
    base = 1_764_230_400_000
    _results_at(r, keys.shard(0).results, [base + i for i in range(3000)])  # first to last: 2.999 s
    rec = recent_results(r, keys, 60.0, now=(base + 30_000) / 1000)
    assert rec["results"] == 3000 and rec["span_s"] == pytest.approx(2.999)
    assert rec["throughput_per_s"] == pytest.approx(1000.3, abs=0.1)
    assert "3000 results, 1000.3/s over 3.0s (first to last result" in render(
        {"prefix": prefix, "group": prefix, "ts": base / 1000, "shards": [], "consumers": [], "recent": rec})
    # A shorter window sees only its part of the burst: the last 1000 ms of it.
    rec = recent_results(r, keys, 1.0, now=(base + 2999) / 1000)
    assert (rec["results"], rec["span_s"], rec["throughput_per_s"]) == (1001, 1.0, 1001.0)


def test_recent_rate_steady_single_and_empty(r: redis.Redis, prefix: str) -> None:
    keys = Keys(prefix, prefix, shards=2)
    base = 1_764_230_400_000
    now = (base + 60_000) / 1000
    assert recent_results(r, keys, 60.0, now=now)["span_s"] is None  # nothing: no span, 0/s
    _results_at(r, keys.shard(0).results, [base + 30_000])
    one = recent_results(r, keys, 60.0, now=now)
    assert (one["results"], one["span_s"], one["throughput_per_s"]) == (1, 1.0, 1.0)  # at least 1 s
    # Steady traffic over (nearly) the whole window: about results / window, as before.
    _results_at(r, keys.shard(0).results, [base + 30_001 + k * 500 for k in range(60)])  # ..59.501 s
    _results_at(r, keys.shard(1).results, [base + 500 + k * 500 for k in range(119)])  # 0.5 s..59.5 s
    rec = recent_results(r, keys, 60.0, now=now)
    assert rec["results"] == 180 and rec["span_s"] == pytest.approx(59.001)
    assert rec["throughput_per_s"] == pytest.approx(180 / 59.001, abs=0.05)
    # Sampled (both shards over `sample`): only results since the newest of the shards' oldest
    # sampled ones (30.001 s) count: 60 of shard 0, 59 of shard 1, over 30.001 s..59.501 s.
    sampled = recent_results(r, keys, 60.0, now=now, sample=60)
    assert sampled["results"] == 120 and sampled["span_s"] == pytest.approx(29.5)
    assert sampled["throughput_per_s"] == pytest.approx(119 / 29.5, abs=0.05)


def test_check_fails_without_replicas_names_them(worker_env: dict[str, str]) -> None:
    out = _cli(worker_env, "--check", "--replicas", "2", "--worker-name", "nobody")
    assert out.returncode == 1
    assert "0/2" in out.stdout and "nobody-0" in out.stdout and "nobody-1" in out.stdout


def test_check_unreachable_redis_is_unhealthy(worker_env: dict[str, str]) -> None:
    from bench.harness import free_port

    out = _cli(dict(worker_env, BIGRU_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"), "--check")
    assert out.returncode == 1 and "unreachable" in out.stdout


def test_results_plot(r: redis.Redis, redis_url: str, prefix: str, checkpoint_root: Path,
                      worker_env: dict[str, str], tmp_path: Path) -> None:
    keys = Keys(prefix, prefix)
    Producer(r, keys).publish_many([w.x for w in synthetic(200, 20, seed=4)])
    make_loop(redis_url, prefix, checkpoint_root, max_batch=16).run()
    out_png = tmp_path / "results.png"
    res = subprocess.run([sys.executable, "-m", "producer.cli", "results", "--plot", str(out_png)], env=worker_env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["results"] == 200 and summary["plot"] == str(out_png)
    e2e = np.array([x.e2e_us for x in ResultsReader(r, keys).collect(200)]) / 1000
    assert summary["e2e_ms_p50"] == pytest.approx(float(np.percentile(e2e, 50)), abs=1e-3)
    data = out_png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    empty = subprocess.run([sys.executable, "-m", "producer.cli", "--prefix", "nothing-here", "results", "--plot",
                            str(tmp_path / "none.png")], env=worker_env, capture_output=True, text=True, timeout=60)
    assert empty.returncode == 1 and "no results" in empty.stderr
