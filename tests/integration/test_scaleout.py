"""Scaling out on one Redis: several `bigru-worker` processes ("hosts") with distinct names."""

from __future__ import annotations

from collections import Counter

import pytest
import redis

from producer.client import Producer
from producer.results import ResultsReader
from producer.sources import synthetic
from protocol.keys import Keys
from tests.ops_helpers import start_worker, stop, wait_ready
from worker.health import check


@pytest.mark.slow
def test_four_replicas_on_two_hosts_serve_each_window_once(r: redis.Redis, prefix: str,
                                                            worker_env: dict[str, str]) -> None:
    keys = Keys(prefix, prefix)
    hosts = [start_worker(worker_env, "--replicas", "2", "--worker-name", h, "--max-batch", "16") for h in ("ha", "hb")]
    consumers = ["ha-0", "ha-1", "hb-0", "hb-1"]
    try:
        wait_ready(worker_env["BIGRU_REDIS_URL"], keys, consumers, hosts)
        assert check(r, keys, ["ha-0", "ha-1"])[0] and check(r, keys, ["hb-0", "hb-1"])[0]
        cids = [f"s{i}" for i in range(3000)]
        Producer(r, keys).publish_many([w.x for w in synthetic(3000, 20, seed=9)], ids=cids)
        results = ResultsReader(r, keys).collect(3000, timeout_s=180)
    finally:
        stop(*hosts)
    assert Counter(res.cid for res in results) == Counter(cids)
    assert len(ResultsReader(r, keys).poll(count=10_000)) == 3000  # nothing served twice
    workers = Counter(res.worker for res in results)
    assert set(workers) == set(consumers), workers
    assert r.xpending(keys.shard(0).windows, prefix)["pending"] == 0
