"""Helpers of the Redis Cluster tests (tests/integration/test_cluster.py, tests/chaos/test_cluster_kill.py); their
fixtures (``cluster``, ``rc``, ``spread_prefix``) are in tests/conftest.py."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import redis

from bench.harness import LocalCluster
from protocol.keys import Keys

ROOT = Path(__file__).resolve().parents[1]
SHARDS = 6


def cluster_env(cluster: LocalCluster, prefix: str, checkpoint_root: Path, **extra: str) -> dict[str, str]:
    """Environment of a worker process on ``cluster`` under ``prefix`` (``SHARDS`` shards)."""
    return dict(os.environ, BIGRU_REDIS_URL=cluster.url, BIGRU_PREFIX=prefix, BIGRU_GROUP=prefix,
                BIGRU_SHARDS=str(SHARDS), BIGRU_CHECKPOINT=str(checkpoint_root), BIGRU_LOG_JSON="true",
                PYTHONPATH=str(ROOT), **extra)


def assert_exactly_once(rc: redis.Redis, keys: Keys, cids: list[str], results: list) -> Counter[str]:  # type: ignore[type-arg]
    """Every input answered once and nothing pending; how many results each worker served."""
    # Entry ids are unique per shard stream only; the client id identifies an input across shards.
    per_input = Counter(res.cid for res in results)
    assert set(per_input) == set(cids) and max(per_input.values()) == 1
    for sk in keys.all_shards():
        assert rc.xpending(sk.windows, keys.group)["pending"] == 0, sk
    return Counter(res.worker for res in results)
