"""Health (`--check`, readiness after warm-up), `status [--watch] [--json]` and `results --plot`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import redis

from producer.client import Producer
from producer.results import ResultsReader
from producer.sources import synthetic
from protocol.keys import Keys
from tests.helpers import make_loop
from worker.health import check
from worker.status import render, snapshot


def _cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


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
    assert rec["results"] == 120 and rec["throughput_per_s"] == pytest.approx(2.0, abs=0.1)  # 120 in the last 60 s
    assert 0 < rec["e2e_ms_p50"] <= rec["e2e_ms_p99"]
    text = render(doc)
    assert "test-0" in text and "ready" in text and "last 60s: 120 results" in text
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


def test_check_fails_without_replicas_names_them(worker_env: dict[str, str]) -> None:
    out = _cli(worker_env, "--check", "--replicas", "2", "--worker-name", "nobody")
    assert out.returncode == 1
    assert "0/2" in out.stdout and "nobody-0" in out.stdout and "nobody-1" in out.stdout


def test_check_unreachable_redis_is_unhealthy(worker_env: dict[str, str]) -> None:
    from scripts.localredis import free_port

    out = _cli(dict(worker_env, BIGRU_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"), "--check")
    assert out.returncode == 1 and "unreachable" in out.stdout


# Runs the real CLI with the predictor's warm-up slowed down and writing a marker when done.
_SLOW_WARMUP = """
import sys, time
import worker.predictor as p
orig = p.TorchPredictor.warmup
def warmup(self):
    time.sleep(3)
    orig(self)
    open(sys.argv[1], "w").write("warm")
p.TorchPredictor.warmup = warmup
from worker.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
@pytest.mark.chaos
def test_ready_only_after_warmup_and_stale_after_kill(
    r: redis.Redis, prefix: str, worker_env: dict[str, str], tmp_path: Path
) -> None:
    keys = Keys(prefix, prefix)
    marker = tmp_path / "warm"
    # The slowed-down warm-up is the torch backend's.
    env = dict(worker_env, BIGRU_HEARTBEAT_TTL_S="2", BIGRU_HEARTBEAT_INTERVAL_S="0.5", BIGRU_BACKEND="torch")
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WARMUP, str(marker), "--worker-name", "hc"], env=env,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    seen_cold = 0
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            warm_before = marker.exists()
            ok, _ = check(r, keys, ["hc-0"])
            if ok:
                assert warm_before or marker.exists(), "ready before the model was warmed up"
                break
            seen_cold += not warm_before
            assert proc.poll() is None
            time.sleep(0.05)
        else:
            pytest.fail("worker never became ready")
        assert marker.exists() and seen_cold > 0
        assert _cli(env, "--check", "--worker-name", "hc").returncode == 0
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(2.5)  # > heartbeat TTL
        out = _cli(env, "--check", "--worker-name", "hc")
        assert out.returncode == 1 and "hc-0" in out.stdout
        assert [c["alive"] for c in snapshot(r, keys)["consumers"] if c["name"] == "hc-0"] == [False]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


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
