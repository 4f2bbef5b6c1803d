"""Small helpers shared by tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import redis

from training.checkpoint import load_checkpoint
from worker.config import WorkerSettings
from worker.loop import StaticModel, WorkerLoop
from worker.predictor import TorchPredictor


def make_loop(url: str, prefix: str, ckpt: Path, **overrides: object) -> WorkerLoop:
    """A real WorkerLoop in burst mode on the test's Redis and prefix."""
    opts: dict[str, object] = {"burst": True, "burst_idle_ms": 200, **overrides}
    s = WorkerSettings(redis_url=url, prefix=prefix, group=prefix, checkpoint=str(ckpt), **opts)  # type: ignore[arg-type]
    pred = TorchPredictor(load_checkpoint(ckpt))
    return WorkerLoop(redis.Redis.from_url(url), s, "test-0", StaticModel(pred), stop=threading.Event())


def stream_entries(r: redis.Redis, key: str) -> list[tuple[str, dict[bytes, bytes]]]:
    """All entries of a stream."""
    return [(i.decode(), f) for i, f in r.xrange(key)]


def wait_for(cond: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01) -> bool:
    """Poll ``cond()`` until it is true (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    return False
