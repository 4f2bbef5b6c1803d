"""Shared fixtures: a real redis-server on a free port, per-test key prefixes, a small checkpoint."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bench.harness import LocalRedis

ROOT = Path(__file__).resolve().parents[1]


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

    from training.checkpoint import save_checkpoint
    from training.data import stratified_split, synthetic
    from training.model import ModelConfig
    from training.train import TrainConfig, fit

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ckpt")
    ds = synthetic(1500, 20, seed=1)
    tr, va = stratified_split(ds.y, 0.2, 1)
    res = fit(ds.subset(tr), ds.subset(va), ModelConfig(hidden=16, layers=1), TrainConfig(epochs=6, seed=1))
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
