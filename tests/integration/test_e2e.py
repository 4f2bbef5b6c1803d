"""End to end: producer -> 2 worker processes (bigru-worker --replicas 2) -> results stream."""

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest
import redis

from bench.harness import start_worker
from producer.client import Producer
from producer.results import ResultsReader
from producer.sources import synthetic
from protocol.keys import Keys
from worker.health import live_replicas


def _start_workers(env: dict[str, str], *extra: str) -> subprocess.Popen[bytes]:
    return start_worker(env, ["--replicas", "2", *extra], stderr=subprocess.PIPE)


@pytest.mark.slow
def test_2000_windows_two_replicas_exactly_one_result_each(r: redis.Redis, prefix: str, worker_env: dict[str, str]) -> None:
    keys = Keys(prefix, prefix)
    proc = _start_workers(worker_env, "--max-batch", "32", "--max-wait-ms", "5")
    try:
        # A replica drains 2000 windows in well under a second: publish only once both are serving.
        deadline = time.monotonic() + 120
        while len(live_replicas(r, keys)) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        windows = list(synthetic(2000, 20, seed=5))
        ids = Producer(r, keys).publish_many([w.x for w in windows], ids=[f"w{i}" for i in range(2000)])
        results = ResultsReader(r, keys).collect(2000, timeout_s=120)
        time.sleep(0.5)
        extra = ResultsReader(r, keys).poll(count=10_000)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert len(extra) == 2000 and len(results) == 2000
    per_input = Counter(res.input_id for res in results)
    assert set(per_input) == set(ids) and max(per_input.values()) == 1
    truth = {f"w{i}": w.label for i, w in enumerate(windows)}
    acc = np.mean([res.class_name == truth[res.cid] for res in results])
    assert acc > 0.85, acc
    workers = Counter(res.worker for res in results)
    assert len(workers) == 2, workers  # both replicas served
    assert r.xpending(keys.shard(0).windows, prefix)["pending"] == 0


@pytest.mark.slow
def test_burst_mode_cli_drains_and_exits(r: redis.Redis, prefix: str, worker_env: dict[str, str]) -> None:
    keys = Keys(prefix, prefix)
    Producer(r, keys).publish_many([w.x for w in synthetic(300, 20, seed=2)])
    out = subprocess.run([sys.executable, "-m", "worker.cli", "--burst"], env=worker_env, capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    assert r.xlen(keys.shard(0).results) == 300


def test_bad_config_fails_naming_the_field(worker_env: dict[str, str]) -> None:
    env = dict(worker_env, BIGRU_MAX_BATCH="lots")
    out = subprocess.run([sys.executable, "-m", "worker.cli"], env=env, capture_output=True, timeout=60)
    assert out.returncode == 2
    assert b"max_batch" in out.stderr


def test_producer_cli_publish_and_results_json(r: redis.Redis, prefix: str, worker_env: dict[str, str]) -> None:
    keys = Keys(prefix, prefix)
    pub = subprocess.run([sys.executable, "-m", "producer.cli", "publish", "--source", "synthetic", "--count", "50",
                          "--rate", "500"], env=worker_env, capture_output=True, timeout=60)
    assert pub.returncode == 0, pub.stderr.decode()
    assert r.xlen(keys.shard(0).windows) == 50
    subprocess.run([sys.executable, "-m", "worker.cli", "--burst"], env=worker_env, capture_output=True, timeout=120, check=True)
    res = subprocess.run([sys.executable, "-m", "producer.cli", "results", "--json", "--count", "50"], env=worker_env,
                         capture_output=True, timeout=60)
    import json

    lines = [json.loads(line) for line in res.stdout.decode().splitlines()]
    assert len(lines) == 50 and {d["status"] for d in lines} == {"ok"}
    assert {d["cid"] for d in lines} == {f"w-{i}" for i in range(50)}
    # Named as on the wire: in, class, ts (not input_id, class_name, ts_us).
    assert all(d["in"] and d["class"] and d["ts"] > 0 and "input_id" not in d for d in lines)


def test_producer_reads_ts_file(r: redis.Redis, prefix: str, worker_env: dict[str, str]) -> None:
    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "ItalyPowerDemand_TRAIN.ts")
    keys = Keys(prefix, prefix)
    pub = subprocess.run([sys.executable, "-m", "producer.cli", "publish", "--source", path], env=worker_env,
                         capture_output=True, timeout=60)
    assert pub.returncode == 0, pub.stderr.decode()
    assert r.xlen(keys.shard(0).windows) == 67


@pytest.mark.slow
def test_process_group_sigterm_shuts_replicas_down_cleanly(r: redis.Redis, prefix: str, worker_env: dict[str, str]) -> None:
    """systemd-style stop: SIGTERM to the whole process group reaches each replica twice (directly and
    forwarded by the supervisor); that must still be a graceful stop, not an immediate exit."""
    keys = Keys(prefix, prefix)
    proc = start_worker(worker_env, ["--replicas", "2"], stderr=subprocess.PIPE, new_session=True)
    try:
        deadline = time.monotonic() + 120
        while len([c for c in r.hkeys(keys.workers) if r.exists(keys.heartbeat(c.decode()))]) < 2:
            assert time.monotonic() < deadline and proc.poll() is None, "replicas did not become ready"
            time.sleep(0.2)
        Producer(r, keys).publish_many([w.x for w in synthetic(3000, 20, seed=9)])
        assert len(ResultsReader(r, keys).collect(3000, timeout_s=120)) == 3000
        import json

        pids = [json.loads(r.get(keys.heartbeat(c.decode())))["pid"] for c in r.hkeys(keys.workers)]
        # The group's signal reaches the idle replicas (blocked in XREADGROUP) first; the supervisor's
        # forward follows shortly after (spaced out so CPython does not coalesce the two).
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        time.sleep(0.15)
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err.decode()[-2000:]
    # Graceful: the batches in hand were acknowledged, consumers left nothing pending and removed
    # their heartbeats (an immediate exit would leave both behind).
    assert r.xpending(keys.shard(0).windows, prefix)["pending"] == 0
    assert not any(r.exists(keys.heartbeat(c.decode())) for c in r.hkeys(keys.workers))
    assert err.count(b"worker_stopped") == 2, err.decode()[-2000:]
