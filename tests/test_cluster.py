"""Sharding on a real three-master Redis Cluster started by the fixture (redis+cluster:// URLs)."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from bench.harness import LocalCluster, free_port
from producer.client import Producer
from producer.results import ResultsReader
from producer.sources import synthetic
from protocol.cluster import is_cluster, shard_nodes
from protocol.keys import Keys
from protocol.redisconn import connect
from tests.conftest import ROOT
from tests.ops_helpers import scrape, start_worker, stop, value, wait_ready
from training.checkpoint import load_checkpoint
from worker.config import WorkerSettings
from worker.loop import WorkerLoop
from worker.predictor import TorchPredictor
from worker.status import snapshot
from worker.types import StaticModel

pytestmark = pytest.mark.cluster
SHARDS = 6


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """Three masters on free ports, joined with ``redis-cli --cluster create``."""
    with LocalCluster(3) as c:
        yield c


@pytest.fixture
def rc(cluster: LocalCluster) -> Iterator[redis.Redis]:
    """A cluster client from the system's own connection factory."""
    client = connect(cluster.url)
    yield client
    client.close()


@pytest.fixture
def spread_prefix(rc: redis.Redis) -> str:
    """A fresh prefix whose shard streams land on all three masters."""
    for _ in range(1000):
        prefix = f"c{uuid.uuid4().hex[:8]}"
        if len(set(shard_nodes(rc, Keys(prefix, prefix, SHARDS)).values())) == 3:
            return prefix
    raise AssertionError("no prefix spreads the shards over every node")


def _env(cluster: LocalCluster, prefix: str, checkpoint_root: Path, **extra: str) -> dict[str, str]:
    return dict(os.environ, BIGRU_REDIS_URL=cluster.url, BIGRU_PREFIX=prefix, BIGRU_GROUP=prefix,
                BIGRU_SHARDS=str(SHARDS), BIGRU_CHECKPOINT=str(checkpoint_root), BIGRU_LOG_JSON="true",
                PYTHONPATH=str(ROOT), **extra)


def _assert_exactly_once(rc: redis.Redis, keys: Keys, cids: list[str], results: list) -> Counter[str]:  # type: ignore[type-arg]
    # Entry ids are unique per shard stream only; the client id identifies an input across shards.
    per_input = Counter(res.cid for res in results)
    assert set(per_input) == set(cids) and max(per_input.values()) == 1
    for sk in keys.all_shards():
        assert rc.xpending(sk.windows, keys.group)["pending"] == 0, sk
    return Counter(res.worker for res in results)


def test_shard_streams_share_a_slot_and_spread_over_nodes(rc: redis.Redis, spread_prefix: str) -> None:
    keys = Keys(spread_prefix, spread_prefix, SHARDS)
    assert is_cluster(rc)
    for sk in keys.all_shards():
        assert rc.keyslot(sk.windows) == rc.keyslot(sk.results) == rc.keyslot(sk.dead)
    assert len(set(shard_nodes(rc, keys).values())) == 3


def test_consume_shards_subset(rc: redis.Redis, cluster: LocalCluster, spread_prefix: str, checkpoint_root: Path) -> None:
    keys = Keys(spread_prefix, spread_prefix, SHARDS)
    ids = [f"id-{i}" for i in range(120)]
    Producer(rc, keys).publish_many([np.zeros((20, 1), np.float32)] * len(ids), ids=ids)
    per_shard = {sk.shard: rc.xlen(sk.windows) for sk in keys.all_shards()}
    pred = TorchPredictor(load_checkpoint(checkpoint_root))

    def serve(name: str, subset: str) -> None:
        s = WorkerSettings(redis_url=cluster.url, prefix=spread_prefix, group=spread_prefix, shards=SHARDS,
                           consume_shards=subset, burst=True, burst_idle_ms=200, checkpoint=str(checkpoint_root))
        WorkerLoop(rc, s, name, StaticModel(pred), stop=threading.Event()).run()

    serve("low-0", "0-2")
    lag = {s["shard"]: s["lag"] for s in snapshot(rc, keys)["shards"]}
    assert lag == {i: 0 if i <= 2 else per_shard[i] for i in range(SHARDS)}
    serve("high-0", "3,4,5")
    served_by = {sk.shard: {f[b"worker"].decode() for _, f in rc.xrange(sk.results)} for sk in keys.all_shards()}
    assert served_by == {i: {"low-0" if i <= 2 else "high-0"} for i in range(SHARDS) if per_shard[i]}
    results = ResultsReader(rc, keys).collect(len(ids), timeout_s=10)
    assert Counter(r.cid for r in results) == Counter(ids)


@pytest.mark.slow
def test_end_to_end_on_cluster(rc: redis.Redis, cluster: LocalCluster, spread_prefix: str, checkpoint_root: Path) -> None:
    keys = Keys(spread_prefix, spread_prefix, SHARDS)
    port = free_port()
    env = _env(cluster, spread_prefix, checkpoint_root, BIGRU_WORKER_NAME="cl", BIGRU_METRICS_PORT=str(port))
    proc = start_worker(env, "--replicas", "2", "--max-batch", "32")
    try:
        wait_ready(cluster.url, keys, ["cl-0", "cl-1"], [proc])
        windows = list(synthetic(1500, 20, seed=7))
        ids = [f"w{i}" for i in range(1500)]
        Producer(rc, keys).publish_many([w.x for w in windows], ids=ids)
        results = ResultsReader(rc, keys).collect(1500, timeout_s=180)
        time.sleep(0.5)
        assert len(ResultsReader(rc, keys).poll(count=10_000)) == 1500  # nothing extra
        workers = _assert_exactly_once(rc, keys, ids, results)
        assert set(workers) == {"cl-0", "cl-1"}
        truth = {f"w{i}": w.label for i, w in enumerate(windows)}
        assert np.mean([res.class_name == truth[res.cid] for res in results]) > 0.85
        # Every shard served, on every node; status and metrics see all shards through the cluster.
        doc = snapshot(rc, keys)
        assert all(s["results"] > 0 and s["lag"] == 0 and s["pending"] == 0 for s in doc["shards"])
        assert len({s["node"] for s in doc["shards"]}) == 3 and doc["recent"]["results"] == 1500
        m = scrape(port)
        assert {lab["shard"] for lab, _ in m["bigru_group_lag"]} == {str(i) for i in range(SHARDS)}
        assert value(m, "bigru_redis_up") == 1
    finally:
        stop(proc)


@pytest.mark.slow
@pytest.mark.chaos
def test_kill9_worker_on_cluster_loses_and_duplicates_nothing(
    rc: redis.Redis, cluster: LocalCluster, spread_prefix: str, checkpoint_root: Path
) -> None:
    keys = Keys(spread_prefix, spread_prefix, SHARDS)
    env = _env(cluster, spread_prefix, checkpoint_root, BIGRU_CLAIM_IDLE_MS="1000", BIGRU_RECLAIM_INTERVAL_MS="300",
               BIGRU_MAX_BATCH="8", BIGRU_MAX_WAIT_MS="2")
    victim = start_worker(env, "--worker-name", "victim")
    survivor = start_worker(env, "--worker-name", "survivor")
    try:
        wait_ready(cluster.url, keys, ["victim-0", "survivor-0"], [victim, survivor])
        ids = [f"k{i}" for i in range(2000)]
        Producer(rc, keys).publish_many([w.x for w in synthetic(2000, 20, seed=8)], ids=ids)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # kill the victim mid-stream, once it has served something
            done = ResultsReader(rc, keys).poll(count=10_000)
            if any(res.worker == "victim-0" for _, res in done) and len(done) < 1500:
                break
            time.sleep(0.05)
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
        stranded = sum(len(rc.xpending_range(sk.windows, keys.group, "-", "+", 1000, consumername="victim-0"))
                       for sk in keys.all_shards())
        results = ResultsReader(rc, keys).collect(2000, timeout_s=180)
        time.sleep(1.0)
        assert len(ResultsReader(rc, keys).poll(count=10_000)) == 2000  # nothing served twice
        # Every input once, nothing pending: the victim's stranded entries were reclaimed by the survivor.
        workers = _assert_exactly_once(rc, keys, ids, results)
        assert workers["victim-0"] > 0 and workers["survivor-0"] > 0, (workers, stranded)
    finally:
        stop(victim, survivor)
