"""Batch-fill policies: the fixed wait, the learned cost curve and the SLO-aware wait."""

from pathlib import Path

import numpy as np
import pytest
import redis

from producer.client import Producer
from producer.results import ResultsReader
from protocol.keys import Keys
from tests.helpers import make_loop, run_with_trickle
from worker.batching import CostModel, FixedWait, NoWait, SloWait, make_batch_wait
from worker.config import WorkerSettings
from worker.reader import enqueued_us
from worker.types import Entry


def test_fixed_wait_ignores_age_and_size() -> None:
    w = FixedWait(0.005)
    assert w.fill_deadline(10.0, 3.0, 1) == w.fill_deadline(10.0, 0.0, 64) == pytest.approx(10.005)


def test_cost_model_recovers_a_linear_curve() -> None:
    m = CostModel()
    for n in [1, 8, 16, 32, 64] * 5:
        m.add(n, 0.001 + 0.0002 * n)
    assert m.ready
    assert m.predict(10) == pytest.approx(0.003, rel=1e-3)
    assert m.predict(128) == pytest.approx(0.0266, rel=1e-3)


def test_cost_model_with_one_batch_size_assumes_proportional_cost() -> None:
    m = CostModel()
    for _ in range(5):
        m.add(4, 0.002)
    assert m.predict(8) == pytest.approx(0.004)


def test_cost_model_forgets_old_observations() -> None:
    m = CostModel(decay=0.5)
    for _ in range(20):
        m.add(10, 0.010)
    for _ in range(20):
        m.add(10, 0.001)
    assert m.predict(10) == pytest.approx(0.001, rel=1e-3)


def test_slo_wait_does_not_wait_before_it_has_learned() -> None:
    assert SloWait(0.010).fill_deadline(5.0, 0.0, 1) == 5.0


def test_slo_wait_keeps_the_oldest_window_inside_the_budget() -> None:
    w = SloWait(0.010, headroom=0.6)
    for n in (1, 2, 4, 8, 16, 32):
        w.observe(n, 0.0005 + 0.0001 * n)
    # budget 6 ms; oldest already 1 ms old; a batch of 4 costs 0.9 ms -> 4.1 ms left
    assert w.fill_deadline(100.0, 0.001, 3) == pytest.approx(100.0041, abs=1e-6)
    # more windows in hand cost more, so the batch closes sooner
    assert w.fill_deadline(100.0, 0.001, 30) < w.fill_deadline(100.0, 0.001, 3)
    # an old window closes the batch at once
    assert w.fill_deadline(100.0, 0.008, 1) < 100.0


def test_make_batch_wait_follows_settings() -> None:
    assert isinstance(make_batch_wait(WorkerSettings(batch_wait="slo", slo_p99_ms=20)), SloWait)
    assert isinstance(make_batch_wait(WorkerSettings()), NoWait)
    fixed = make_batch_wait(WorkerSettings(batch_wait="fixed", max_wait_ms=7))
    assert isinstance(fixed, FixedWait) and fixed.max_wait_s == pytest.approx(0.007)


def test_enqueued_us_uses_ts_then_entry_id() -> None:
    assert enqueued_us(Entry(0, "5-0", {b"ts": b"123456"}, 0)) == 123456
    assert enqueued_us(Entry(0, "5-0", {b"ts": b"junk"}, 0)) == 5000
    assert enqueued_us(Entry(0, "7-3", {}, 0)) == 7000


def test_fill_wait_is_not_stretched_by_redis_block_granularity(
    r: redis.Redis, redis_url: str, prefix: str, checkpoint_root: Path
) -> None:
    """Redis checks BLOCK timeouts at hz (every 100 ms): a 5 ms batch wait must still close in ~5 ms."""
    loop = make_loop(redis_url, prefix, checkpoint_root, max_batch=64, batch_wait="fixed", max_wait_ms=5, burst_idle_ms=400)
    keys = Keys(prefix, prefix)
    stats = run_with_trickle(loop, Producer(redis.Redis.from_url(redis_url), keys), 5, 0.15)
    assert stats.results == 5 and max(stats.batch_sizes) == 1
    waits = [res.wait_us for res in ResultsReader(r, keys).collect(5, timeout_s=5)]
    assert max(waits) < 60_000, waits  # 5 ms plus scheduling noise, far below Redis' 100 ms tick


def test_slo_policy_serves_everything(r: redis.Redis, redis_url: str, prefix: str, checkpoint_root: Path) -> None:
    loop = make_loop(redis_url, prefix, checkpoint_root, max_batch=16, batch_wait="slo", slo_p99_ms=50)
    keys = Keys(prefix, prefix)
    Producer(r, keys).publish_many([np.zeros((20, 1), np.float32)] * 100)
    stats = loop.run()
    assert stats.results == 100 and max(stats.batch_sizes) <= 16
    assert r.xpending(keys.shard(0).windows, prefix)["pending"] == 0
