"""Sharding on a real three-master Redis Cluster started by the fixture (redis+cluster:// URLs)."""

from __future__ import annotations

import threading
import time
from collections import Counter
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
from tests.cluster_support import SHARDS, assert_exactly_once, cluster_env
from tests.ops_helpers import scrape, start_worker, stop, value, wait_ready
from training.model.checkpoint import load_checkpoint
from worker.config import WorkerSettings
from worker.loop import WorkerLoop
from worker.predictor import TorchPredictor
from worker.status import snapshot
from worker.types import StaticModel

pytestmark = pytest.mark.cluster


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
    env = cluster_env(cluster, spread_prefix, checkpoint_root, BIGRU_WORKER_NAME="cl", BIGRU_METRICS_PORT=str(port))
    proc = start_worker(env, "--replicas", "2", "--max-batch", "32")
    try:
        wait_ready(cluster.url, keys, ["cl-0", "cl-1"], [proc])
        windows = list(synthetic(1500, 20, seed=7))
        ids = [f"w{i}" for i in range(1500)]
        Producer(rc, keys).publish_many([w.x for w in windows], ids=ids)
        results = ResultsReader(rc, keys).collect(1500, timeout_s=180)
        time.sleep(0.5)
        assert len(ResultsReader(rc, keys).poll(count=10_000)) == 1500  # nothing extra
        workers = assert_exactly_once(rc, keys, ids, results)
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
