"""Redis Cluster, the chaos part: kill -9 of a worker mid-stream loses and duplicates nothing (the rest is
tests/integration/test_cluster.py)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import redis

from bench.harness import LocalCluster
from producer.client import Producer
from producer.results import ResultsReader
from producer.sources import synthetic
from protocol.keys import Keys
from tests.cluster_support import SHARDS, assert_exactly_once, cluster_env
from tests.ops_helpers import start_worker, stop, wait_ready

pytestmark = pytest.mark.cluster

@pytest.mark.slow
@pytest.mark.chaos
def test_kill9_worker_on_cluster_loses_and_duplicates_nothing(
    rc: redis.Redis, cluster: LocalCluster, spread_prefix: str, checkpoint_root: Path
) -> None:
    keys = Keys(spread_prefix, spread_prefix, SHARDS)
    env = cluster_env(cluster, spread_prefix, checkpoint_root, BIGRU_CLAIM_IDLE_MS="1000", BIGRU_RECLAIM_INTERVAL_MS="300",
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
        workers = assert_exactly_once(rc, keys, ids, results)
        assert workers["victim-0"] > 0 and workers["survivor-0"] > 0, (workers, stranded)
    finally:
        stop(victim, survivor)
