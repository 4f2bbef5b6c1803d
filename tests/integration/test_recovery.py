"""Recovery paths of the real loop: entries deleted while pending, over-delivered entries, and a
consumer group that disappears under a running worker."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import redis

from producer.client import Producer
from producer.results import ResultsReader
from protocol.keys import Keys
from tests.helpers import make_loop, stream_entries
from worker import reader

W = np.zeros((20, 1), np.float32)


def test_reclaim_skips_entries_deleted_while_pending(r: redis.Redis, redis_url: str, prefix: str, checkpoint_root: Path) -> None:
    keys = Keys(prefix, prefix)
    sk = keys.shard(0)
    reader.ensure_groups(r, keys)
    ids = Producer(r, keys).publish_many([W] * 5)
    r.xreadgroup(prefix, "crashed", {sk.windows: ">"}, count=5)
    r.xdel(sk.windows, ids[2])
    time.sleep(0.15)
    stats = make_loop(redis_url, prefix, checkpoint_root, claim_idle_ms=100, reclaim_interval_ms=100).run()
    assert stats.reclaimed == 4 and stats.results == 4
    assert r.xpending(sk.windows, prefix)["pending"] == 0  # Redis 7 dropped the deleted id from the PEL


def test_entry_delivered_too_often_is_dead_lettered(r: redis.Redis, redis_url: str, prefix: str, checkpoint_root: Path) -> None:
    keys = Keys(prefix, prefix)
    sk = keys.shard(0)
    reader.ensure_groups(r, keys)
    poison, fine = Producer(r, keys).publish_many([W] * 2)
    r.xreadgroup(prefix, "crashed", {sk.windows: ">"}, count=2)
    r.xclaim(sk.windows, prefix, "crashed", 0, [poison], retrycount=5, justid=True)  # it killed 5 workers
    time.sleep(0.15)
    stats = make_loop(redis_url, prefix, checkpoint_root, claim_idle_ms=100, reclaim_interval_ms=100, max_deliveries=5).run()
    assert stats.results == 1 and stats.dead == 1
    (dead,) = [f for _, f in stream_entries(r, sk.dead)]
    assert dead[b"dead.id"].decode() == poison and dead[b"dead.reason"] == b"max_deliveries"
    assert dead[b"dead.deliveries"] == b"6"
    assert [res.input_id for res in ResultsReader(r, keys).collect(1)] == [fine]


def test_group_destroyed_under_a_running_worker_is_recreated(
    r: redis.Redis, redis_url: str, prefix: str, checkpoint_root: Path, capsys: object
) -> None:
    keys = Keys(prefix, prefix)
    sk = keys.shard(0)
    loop = make_loop(redis_url, prefix, checkpoint_root, burst=False, block_ms=50)
    t = threading.Thread(target=loop.run, daemon=True)
    t.start()
    prod = Producer(r, keys)
    try:
        first = prod.publish(W)
        ResultsReader(r, keys).collect(1, timeout_s=10)
        loop.maintenance.run_once()  # trims the acknowledged entry, as the periodic duty would
        r.xgroup_destroy(sk.windows, prefix)  # what a Redis restart without persistence looks like
        time.sleep(0.3)
        second = prod.publish(W)
        got = ResultsReader(r, keys).collect(2, timeout_s=10)
        time.sleep(0.2)
    finally:
        loop.stop.set()
        t.join(10)
    assert [res.input_id for res in got] == [first, second]
    assert r.xlen(sk.results) == 2
    seen = capsys.readouterr()  # type: ignore[attr-defined]
    # structlog prints to stdout until something in the session configures it (then: stderr)
    assert "group_missing_recreated" in seen.out + seen.err
