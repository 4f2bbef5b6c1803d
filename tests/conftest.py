"""Shared fixtures: a real redis-server on a free port, per-test key prefixes, a small checkpoint.

The folder a test lives in is its kind: ``tests/unit`` (no Redis), ``tests/integration`` (a real
redis-server) or ``tests/chaos`` (kills, failover, soak). Each test gets its kind's marker and, unless it
sets its own ``timeout`` marker, its kind's timeout (:data:`KIND_TIMEOUT_S`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bench.harness import LocalCluster, LocalRedis
from protocol.cluster import shard_nodes
from protocol.keys import Keys
from protocol.redisconn import connect
from tests.cluster_support import SHARDS

ROOT = Path(__file__).resolve().parents[1]


#: Per-test timeout of each kind, seconds (pyproject's ``timeout`` applies to anything else).
KIND_TIMEOUT_S = {"unit": 180, "integration": 300, "chaos": 900}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its folder's kind, and give it the kind's timeout."""
    for item in items:
        rel = Path(str(item.fspath)).resolve().relative_to(ROOT / "tests")
        kind = rel.parts[0] if len(rel.parts) > 1 else None
        if kind not in KIND_TIMEOUT_S:
            continue
        item.add_marker(getattr(pytest.mark, kind))
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(KIND_TIMEOUT_S[kind]))


def pytest_report_header(config: pytest.Config) -> str:
    """Which server binary the integration tests start (``BIGRU_TEST_SERVER``, else redis-server on PATH)."""
    exe = os.environ.get("BIGRU_TEST_SERVER") or shutil.which("redis-server")
    if exe is None:
        return "server under test: none found (redis-server not on PATH, BIGRU_TEST_SERVER unset)"
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()
    return f"server under test: {exe}: {version}"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[LocalRedis]:
    """One redis-server for the session, started by the fixture (never an existing one)."""
    with LocalRedis() as srv:
        yield srv


@pytest.fixture
def redis_url(redis_server: LocalRedis) -> str:
    """URL of the session's redis-server."""
    return redis_server.url


@pytest.fixture
def r(redis_server: LocalRedis) -> Iterator[redis.Redis]:
    """A client of the session's redis-server."""
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture
def prefix() -> str:
    """A key prefix unique to the test, so tests never see each other's streams."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def checkpoint_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small BiGRU trained on the synthetic task (a few seconds on CPU)."""
    import torch

    from training.model.checkpoint import save_checkpoint
    from training.model.data import stratified_split, synthetic
    from training.model.network import ModelConfig
    from training.train import TrainConfig, fit

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ckpt")
    ds = synthetic(1500, 20, seed=1)
    tr, va = stratified_split(ds.y, 0.2, 1)
    # batch 32: the model the int8 and gate tests were written against (issue 21's default batch)
    res = fit(ds.subset(tr), ds.subset(va), ModelConfig(hidden=16, layers=1), TrainConfig(epochs=6, seed=1, batch_size=32))
    save_checkpoint(res.checkpoint, root)
    return root


@pytest.fixture
def worker_env(redis_url: str, prefix: str, checkpoint_root: Path) -> dict[str, str]:
    """Environment for worker/producer subprocesses pointed at the test's Redis and prefix."""
    env = dict(os.environ)
    env.update(
        BIGRU_REDIS_URL=redis_url,
        BIGRU_PREFIX=prefix,
        BIGRU_GROUP=prefix,
        BIGRU_CHECKPOINT=str(checkpoint_root),
        BIGRU_LOG_JSON="true",
        PYTHONPATH=str(ROOT),
    )
    return env


# --- a Redis Cluster (tests/integration/test_cluster.py, tests/chaos/test_cluster_kill.py) ---------------


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
