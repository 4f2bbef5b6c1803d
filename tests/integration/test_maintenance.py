"""Input trimming that never drops unprocessed entries, consumer reaping, and the XAUTOCLAIM cursor."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import redis

from producer.client import Producer
from protocol.keys import Keys
from tests.helpers import make_loop
from worker import reader
from worker.maintenance import Maintenance


def _maint(r: redis.Redis, keys: Keys, consumer: str = "me", reap_idle_ms: int = 1000) -> Maintenance:
    return Maintenance(r, keys, consumer, interval_s=0.001, trim=True, reap_idle_ms=reap_idle_ms)


def _ids(r: redis.Redis, stream: str) -> list[str]:
    return [i.decode() for i, _ in r.xrange(stream)]


def test_trim_keeps_every_entry_some_group_still_needs(r: redis.Redis, prefix: str) -> None:
    keys = Keys(prefix, prefix)
    sk = keys.shard(0)
    reader.ensure_groups(r, keys)
    ids = [r.xadd(sk.windows, {"i": i}).decode() for i in range(100)]
    r.xgroup_create(sk.windows, "audit", id="0")
    r.xreadgroup(prefix, "c1", {sk.windows: ">"}, count=60)  # 0..59 delivered to the main group
    r.xack(sk.windows, prefix, *ids[:10], *ids[12:40])  # 10, 11 and 40..59 still pending
    r.xreadgroup("audit", "a1", {sk.windows: ">"}, count=30)
    r.xack(sk.windows, "audit", *ids[:30])  # the audit group has everything up to 29 done
    m = _maint(r, keys)
    rep = m.run_once()
    assert rep.trimmed == 10 and _ids(r, sk.windows) == ids[10:]  # 10 is the oldest entry still pending
    r.xack(sk.windows, prefix, ids[10], ids[11])
    assert m.run_once().trimmed == 20 and _ids(r, sk.windows) == ids[30:]  # now the audit group holds it back
    # Lag stays exact after trimming (backpressure relies on it).
    lags = {g["name"].decode(): g["lag"] for g in r.xinfo_groups(sk.windows)}
    assert lags == {prefix: 40, "audit": 70}
    r.xreadgroup("audit", "a1", {sk.windows: ">"}, count=100)
    r.xack(sk.windows, "audit", *ids[30:])
    assert _ids(r, sk.windows) == ids[30:]
    m.run_once()
    assert _ids(r, sk.windows) == ids[40:]  # main group: 40..59 pending, 60..99 undelivered
    r.xreadgroup(prefix, "c1", {sk.windows: ">"}, count=100)
    r.xack(sk.windows, prefix, *ids[40:])
    m.run_once()
    assert r.xlen(sk.windows) == 0
    assert not _maint(r, Keys(prefix + "x", prefix)).run_once().trimmed_to  # no stream: nothing to do


def test_worker_trims_as_a_periodic_duty_unless_disabled(r: redis.Redis, redis_url: str, prefix: str, checkpoint_root: Path) -> None:
    keys = Keys(prefix, prefix)
    prod = Producer(r, keys)
    prod.publish_many([np.zeros((20, 1), np.float32)] * 30)
    assert make_loop(redis_url, prefix, checkpoint_root, trim_input=False, maintenance_interval_ms=1).run().results == 30
    assert r.xlen(keys.shard(0).windows) == 30
    prod.publish_many([np.zeros((20, 1), np.float32)] * 30)
    loop = make_loop(redis_url, prefix, checkpoint_root, maintenance_interval_ms=1)
    assert loop.run().results == 30
    loop.maintenance.run_once()
    assert r.xlen(keys.shard(0).windows) == 0 and r.xlen(keys.shard(0).results) == 60


def test_reaper_removes_only_idle_consumers_with_nothing_pending(r: redis.Redis, prefix: str) -> None:
    keys = Keys(prefix, prefix)
    sk = keys.shard(0)
    reader.ensure_groups(r, keys)
    ids = [r.xadd(sk.windows, {"i": i}).decode() for i in range(5)]
    r.xreadgroup(prefix, "crashed-with-work", {sk.windows: ">"}, count=1)
    r.xreadgroup(prefix, "crashed-empty", {sk.windows: ">"}, count=1)
    r.xack(sk.windows, prefix, ids[1])
    r.xreadgroup(prefix, "alive-heartbeat", {sk.windows: ">"}, count=1)
    r.xack(sk.windows, prefix, ids[2])
    r.set(keys.heartbeat("alive-heartbeat"), "{}", ex=30)
    r.hset(keys.workers, "crashed-empty", "{}")
    r.xreadgroup(prefix, "me", {sk.windows: ">"}, count=1)
    r.xack(sk.windows, prefix, ids[3])
    time.sleep(0.25)
    r.xreadgroup(prefix, "fresh", {sk.windows: ">"}, count=1)  # idle ~0 ms
    m = _maint(r, keys, reap_idle_ms=200)
    assert m.reap(sk.windows) == ["crashed-empty"]
    names = {c["name"].decode() for c in r.xinfo_consumers(sk.windows, prefix)}
    assert names == {"crashed-with-work", "alive-heartbeat", "me", "fresh"}
    assert not r.hexists(keys.workers, "crashed-empty")
    assert not m.delete_if_idle(sk.windows, "crashed-with-work")  # the atomic check refuses
    assert r.xpending(sk.windows, prefix)["pending"] == 2  # crashed-with-work and fresh each hold one


def test_reclaim_cursor_reaches_idle_entries_behind_fresh_ones(
    r: redis.Redis, redis_url: str, prefix: str, checkpoint_root: Path
) -> None:
    keys = Keys(prefix, prefix)
    sk = keys.shard(0)
    reader.ensure_groups(r, keys)
    pipe = r.pipeline()
    for i in range(750):
        pipe.xadd(sk.windows, {"i": i})
    ids = [i.decode() for i in pipe.execute()]
    r.xreadgroup(prefix, "busy", {sk.windows: ">"}, count=750)
    r.xclaim(sk.windows, prefix, "dead", 0, ids[700:], idle=60_000, justid=True)
    # XAUTOCLAIM COUNT 64 inspects 640 pending entries per call: the first pass finds nothing.
    loop = make_loop(redis_url, prefix, checkpoint_root, max_batch=64, claim_idle_ms=5000, reclaim_interval_ms=100)
    got: list[reader.Entry] = []
    for _ in range(3):
        got = loop.collector.collect(loop.compute) or []
        if got:
            break
        time.sleep(0.12)
    assert [e.id for e in got] == ids[700:]
