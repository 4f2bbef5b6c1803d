"""Producer backpressure against a real consumer group's lag."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import redis

from producer.backpressure import Backpressure, BackpressureError, group_lag
from producer.client import Producer
from protocol.keys import Keys
from tests.helpers import make_loop
from worker import reader

W = np.zeros((20, 1), np.float32)


def test_refuses_over_the_limit_naming_lag_and_limit(r: redis.Redis, prefix: str) -> None:
    keys = Keys(prefix, prefix)
    free = Producer(r, keys)
    free.publish_many([W] * 30)
    assert group_lag(r, keys, 10) == 30  # no group yet: every entry is waiting
    reader.ensure_groups(r, keys)
    gated = Producer(r, keys, pipeline_size=5, backpressure=Backpressure(r, keys, max_lag=29, check_interval_s=0))
    with pytest.raises(BackpressureError, match="lag 30 exceeds max_lag 29") as ei:
        gated.publish(W)
    assert (ei.value.lag, ei.value.limit) == (30, 29)
    assert r.xlen(keys.shard(0).windows) == 30  # nothing was published
    r.xreadgroup(prefix, "c", {keys.shard(0).windows: ">"}, count=3)  # workers take 3: lag 27
    gated.publish(W)
    assert r.xlen(keys.shard(0).windows) == 31


def test_publish_many_stops_at_the_first_refused_chunk(r: redis.Redis, prefix: str) -> None:
    keys = Keys(prefix, prefix)
    reader.ensure_groups(r, keys)
    gated = Producer(r, keys, pipeline_size=5, backpressure=Backpressure(r, keys, max_lag=12, check_interval_s=0))
    with pytest.raises(BackpressureError) as ei:
        gated.publish_many([W] * 40)
    # Chunks start at lag 0, 5, 10; the fourth sees 15 > 12 and is refused.
    assert len(ei.value.published) == 15 and r.xlen(keys.shard(0).windows) == 15
    assert ei.value.lag == 15


def test_unknown_lag_is_counted_with_a_bounded_range(r: redis.Redis, prefix: str) -> None:
    keys = Keys(prefix, prefix)
    sk = keys.shard(0)
    reader.ensure_groups(r, keys)
    ids = Producer(r, keys).publish_many([W] * 10)
    r.xreadgroup(prefix, "c", {sk.windows: ">"}, count=2)
    r.xdel(sk.windows, ids[5])  # a tombstone after the group's position: Redis reports lag nil
    assert r.xinfo_groups(sk.windows)[0]["lag"] is None
    assert group_lag(r, keys, 100) == 7
    assert group_lag(r, keys, 3) == 4  # counts just past the limit, no further


def test_block_mode_waits_for_workers_to_catch_up(r: redis.Redis, redis_url: str, prefix: str, checkpoint_root: Path) -> None:
    keys = Keys(prefix, prefix)
    reader.ensure_groups(r, keys)
    Producer(r, keys).publish_many([W] * 200)
    loop = make_loop(redis_url, prefix, checkpoint_root, burst_idle_ms=500)
    starter = threading.Timer(0.5, loop.run)
    gated = Producer(r, keys, backpressure=Backpressure(r, keys, max_lag=10, mode="block", block_timeout_s=30))
    t0 = time.monotonic()
    starter.start()
    gated.publish(W)
    waited = time.monotonic() - t0
    starter.join()
    assert waited >= 0.45
    assert r.xlen(keys.shard(0).results) >= 190
    gated.backpressure = Backpressure(r, keys, max_lag=0, mode="block", block_timeout_s=0.3)
    r.xadd(keys.shard(0).windows, {"v": "1"})
    with pytest.raises(BackpressureError, match=r"lag \d+ exceeds max_lag 0 after waiting 0\.3s"):
        gated.publish(W)


def test_cli_publish_refuses_with_exit_3(r: redis.Redis, prefix: str, worker_env: dict[str, str]) -> None:
    keys = Keys(prefix, prefix)
    reader.ensure_groups(r, keys)
    Producer(r, keys).publish_many([W] * 100)
    out = subprocess.run([sys.executable, "-m", "producer.cli", "publish", "--count", "50", "--max-lag", "20"],
                         env=worker_env, capture_output=True, timeout=60)
    assert out.returncode == 3, out.stderr.decode()
    doc = json.loads(out.stdout)
    assert doc["published"] == 0 and doc["lag"] == 100 and doc["max_lag"] == 20
    assert "lag 100 exceeds max_lag 20" in doc["error"]
    assert r.xlen(keys.shard(0).windows) == 100
