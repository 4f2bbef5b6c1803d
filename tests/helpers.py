"""Small helpers shared by tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import redis

from producer.client import Producer
from training.model.checkpoint import load_checkpoint
from worker.config import WorkerSettings
from worker.loop import LoopStats, WorkerLoop
from worker.predictor import TorchPredictor
from worker.types import Predictor, StaticModel


def make_loop(
    url: str, prefix: str, ckpt: Path, *, client: redis.Redis | None = None, consumer: str = "test-0",
    predictor: Predictor | None = None, **overrides: object,
) -> WorkerLoop:
    """A real WorkerLoop in burst mode on the test's Redis and prefix (``client``: e.g. an ACL user's)."""
    opts: dict[str, object] = {"burst": True, "burst_idle_ms": 200, **overrides}
    s = WorkerSettings(redis_url=url, prefix=prefix, group=prefix, checkpoint=str(ckpt), **opts)  # type: ignore[arg-type]
    pred = predictor or TorchPredictor(load_checkpoint(ckpt))
    r = client if client is not None else redis.Redis.from_url(url)
    return WorkerLoop(r, s, consumer, StaticModel(pred), stop=threading.Event())


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


def run_with_trickle(loop: WorkerLoop, prod: Producer, n: int, gap_s: float) -> LoopStats:
    """Run ``loop`` (burst mode) while another thread publishes ``n`` zero windows ``gap_s`` apart."""

    def trickle() -> None:
        for _ in range(n):
            prod.publish(np.zeros((20, 1), np.float32))
            time.sleep(gap_s)

    t = threading.Thread(target=trickle)
    t.start()
    stats = loop.run()
    t.join()
    return stats
