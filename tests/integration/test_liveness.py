"""Honest health during long batches, and a byte budget per batch (the real loop, a real Redis)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import redis
from pydantic import ValidationError

from producer.client import Producer
from protocol.keys import Keys
from tests.helpers import make_loop, wait_for
from worker import health
from worker.config import WorkerSettings
from worker.types import PredictorDefaults


class Slow(PredictorDefaults):
    """A predictor that sleeps ``delay_s`` per call and answers uniform probabilities."""

    version, classes, n_features = "slow-1", ["a", "b"], 1

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.calls = 0
        self.seen: list[int] = []

    def predict(self, xs: list[np.ndarray]) -> np.ndarray:
        self.calls += 1
        self.seen.append(len(xs))
        time.sleep(self.delay_s)
        return np.full((len(xs), 2), 0.5, np.float32)


def _health_during_batch(r: redis.Redis, redis_url: str, prefix: str, ckpt: Path, stall_s: float) -> list[bool]:
    """Serve one 3 s batch with a 1 s heartbeat TTL; sample ``--check``'s verdict while it computes."""
    keys = Keys(prefix, prefix)
    model = Slow(3.0)
    loop = make_loop(redis_url, prefix, ckpt, predictor=model, heartbeat_ttl_s=1.0, heartbeat_interval_s=0.2,
                     stall_s=stall_s, burst_idle_ms=100)
    Producer(r, keys).publish(np.zeros((20, 1), np.float32))
    t = threading.Thread(target=loop.run)
    t.start()
    assert wait_for(lambda: model.calls == 1, timeout=10)
    samples: list[bool] = []
    while t.is_alive() and model.calls == 1 and len(samples) < 28:
        samples.append(health.check(r, keys, ["test-0"])[0])
        time.sleep(0.1)
    t.join()
    return samples


def test_heartbeat_stays_fresh_through_a_batch_longer_than_its_ttl(
    r: redis.Redis, redis_url: str, prefix: str, checkpoint_root: Path
) -> None:
    samples = _health_during_batch(r, redis_url, prefix, checkpoint_root, stall_s=60)
    assert len(samples) >= 20  # the batch took ~3 s, three heartbeat TTLs
    assert all(samples), samples


def test_a_batch_computing_past_stall_s_lets_the_heartbeat_lapse(
    r: redis.Redis, redis_url: str, prefix: str, checkpoint_root: Path
) -> None:
    samples = _health_during_batch(r, redis_url, prefix, checkpoint_root, stall_s=0.5)
    assert samples[0] is True  # fresh when the batch began
    assert samples[-1] is False  # 0.5 s stall limit + 1 s TTL long passed before the 3 s batch ended


def test_no_heartbeat_left_behind_after_a_clean_exit(r: redis.Redis, redis_url: str, prefix: str,
                                                     checkpoint_root: Path) -> None:
    keys = Keys(prefix, prefix)
    loop = make_loop(redis_url, prefix, checkpoint_root, predictor=Slow(0.0), heartbeat_interval_s=0.01)
    Producer(r, keys).publish_many([np.zeros((20, 1), np.float32)] * 5)
    loop.run()
    time.sleep(0.1)  # several pulse intervals: a beat after the removal would show here
    assert not r.exists(keys.heartbeat("test-0"))


def test_byte_budget_bounds_batches_of_large_entries(r: redis.Redis, redis_url: str, prefix: str,
                                                     checkpoint_root: Path) -> None:
    """64-window batches of ~800 KB windows would hold 51 MB; a 4 MiB budget keeps each under 4 MiB."""
    keys = Keys(prefix, prefix)
    big = np.zeros((200_000, 1), np.float32)  # 800 000 bytes of x
    Producer(r, keys).publish_many([big] * 30)
    small = [np.zeros((20, 1), np.float32)] * 100
    Producer(r, keys).publish_many(small)
    model = Slow(0.0)
    loop = make_loop(redis_url, prefix, checkpoint_root, predictor=model, max_batch=64, max_length=200_000,
                     max_window_bytes=1 << 20, max_batch_bytes=4 << 20)
    stats = loop.run()
    assert stats.results == 130 and stats.dead == 0
    assert max(model.seen[:7]) <= 4  # 4 MiB / 1 MiB per read: at most 4 large windows per batch
    assert sum(model.seen) == 130


def test_oversized_entries_shrink_reads_to_one(r: redis.Redis, redis_url: str, prefix: str,
                                               checkpoint_root: Path) -> None:
    """Entries over max_window_bytes are refused after being read; once one is seen, reads take one at a time."""
    keys = Keys(prefix, prefix)
    sk = keys.shard(0)
    for i in range(6):
        r.xadd(sk.windows, {b"v": b"1", b"x": b"\0" * (3 << 20), b"cid": f"huge{i}".encode()})
    loop = make_loop(redis_url, prefix, checkpoint_root, predictor=Slow(0.0), max_window_bytes=1 << 20,
                     max_batch_bytes=2 << 20)
    sizes: list[int] = []
    read = loop.collector._read

    def spy(*a: object, **kw: object) -> list:  # type: ignore[type-arg]
        got = read(*a, **kw)  # type: ignore[arg-type]
        if got:
            sizes.append(len(got))
        return got

    loop.collector._read = spy  # type: ignore[method-assign]
    stats = loop.run()
    assert stats.dead == 6
    assert sizes[0] <= 2 and all(n == 1 for n in sizes[1:]), sizes


def test_batch_budget_smaller_than_one_window_fails_at_start() -> None:
    with pytest.raises(ValidationError, match="max_batch_bytes"):
        WorkerSettings(max_window_bytes=1 << 20, max_batch_bytes=1 << 10)


def test_a_crashed_loop_stops_its_heartbeat_thread(r: redis.Redis, redis_url: str, prefix: str,
                                                   checkpoint_root: Path) -> None:
    """An exception out of run() (a crash, simulated in-process) must not leave a thread vouching for it."""

    class Crash(BaseException):
        pass

    class Crashing(Slow):
        def predict(self, xs: list[np.ndarray]) -> np.ndarray:
            raise Crash

    keys = Keys(prefix, prefix)
    Producer(r, keys).publish(np.zeros((20, 1), np.float32))
    loop = make_loop(redis_url, prefix, checkpoint_root, predictor=Crashing(0.0), heartbeat_interval_s=0.05)
    with pytest.raises(Crash):
        loop.run()
    assert not loop.pulse._thread.is_alive()
