"""Small helpers shared by tests."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import redis

from producer.client import Producer
from training.checkpoint import load_checkpoint
from worker.config import WorkerSettings
from worker.loop import LoopStats, StaticModel, WorkerLoop
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
