"""The predict stage's breaker: a model that starts failing mid-load holds the stream instead of
dead-lettering it, reports unhealthy, and serves every window once when fixed; a reload to a version
that breaks falls back to the previous one; a poison window is still dead-lettered (real Redis,
real WorkerLoops, faults injected by predictor wrappers)."""

from __future__ import annotations

import threading
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from producer.client import Producer
from protocol.keys import Keys
from tests.chaos_support import Outputs
from tests.helpers import make_loop, wait_for
from tests.zoo import Zoo, zoo_fixture  # noqa: F401  (the session's tiny checkpoints)
from training.model.checkpoint import load_checkpoint
from training.publish import publish_checkpoint
from worker import reload as reload_mod
from worker.breaker import CLOSED, OPEN, PROBING, Breaker, BreakerRules, suspect, verdict
from worker.config import WorkerSettings
from worker.gate import GOLDEN_CHUNK
from worker.health import check
from worker.loop import WorkerLoop
from worker.metrics import WorkerMetrics
from worker.predictor import TorchPredictor
from worker.reload import ReloadingSource, initial_predictor
from worker.status import snapshot


class Flaky:
    """Delegates to a real predictor; every call fails while ``broken`` (set after ``fail_after`` calls)."""

    def __init__(self, inner: Any, fail_after: int | None = None) -> None:
        self.inner = inner
        self.fail_after = fail_after
        self.broken = False
        self.calls = 0
        self.failed = 0

    def __getattr__(self, name: str) -> Any:  # version, classes, n_features, checkpoint, precision
        return getattr(self.inner, name)

    def predict(self, xs: list[np.ndarray]) -> np.ndarray:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            self.broken = True
            self.fail_after = None
        if self.broken:
            self.failed += 1
            raise RuntimeError("CUDA error: device-side assert triggered")
        return np.asarray(self.inner.predict(xs))


@pytest.fixture(scope="module")
def predictor(checkpoint_root: Path) -> TorchPredictor:
    """One real predictor shared by the loops of a test."""
    return TorchPredictor(load_checkpoint(checkpoint_root))


def _run(loop: WorkerLoop) -> threading.Thread:
    t = threading.Thread(target=loop.run, daemon=True)
    t.start()
    return t


# -- the decision and the state -------------------------------------------------------------------


def test_suspect_and_verdict_tell_a_poison_window_from_a_broken_model() -> None:
    rules = BreakerRules(failure_ratio=0.5)
    assert not suspect(64, 1, rules) and not verdict(64, 1, False, rules)  # one of 64: poison
    assert suspect(64, 64, rules) and verdict(64, 64, False, rules)  # all fail, probe fails: broken
    assert not verdict(64, 64, True, rules)  # all fail but the golden batch passes: the windows are bad
    assert verdict(2, 2, None, rules) and not verdict(1, 1, None, rules)  # nothing to probe with
    assert not verdict(64, 64, False, BreakerRules(enabled=False))


def test_breaker_backs_off_with_jitter_and_closes_after_a_good_half_open_batch() -> None:
    now = [100.0]
    b = Breaker(BreakerRules(backoff_s=1.0, backoff_max_s=4.0), lambda: now[0], rand=lambda: 0.5)
    assert b.trip("boom") and b.state == OPEN and b.trips == 1 and b.holding
    assert b.wait_s() == 1.0 and not b.probe_due()
    now[0] += 1.0
    assert b.probe_due()
    b.probed(False)
    assert b.state == OPEN and b.wait_s() == 2.0  # doubled
    for _ in range(5):
        b.probed(False)
    assert b.wait_s() == 4.0  # capped
    now[0] += 4.0
    b.probed(True)
    assert b.state == PROBING and not b.holding
    assert not b.trip("still broken") and b.trips == 1 and b.state == OPEN  # a half-open failure is no new trip
    b.probed(True)
    assert b.served() and b.state == CLOSED and b.reason == ""
    assert Breaker(BreakerRules(backoff_s=1.0), lambda: 0.0, rand=lambda: 0.0).delay_s() == 0.5  # jitter 0.5x..1.5x


# -- a model that starts failing mid-load ---------------------------------------------------------


def test_model_failing_mid_load_holds_the_stream_and_serves_every_window_once_when_fixed(
    r: redis.Redis, redis_url: str, prefix: str, checkpoint_root: Path, predictor: TorchPredictor
) -> None:
    keys = Keys(prefix, prefix)
    model = Flaky(predictor, fail_after=5)
    # max_deliveries=1: any delivery the breaker episode counted would dead-letter a healthy window.
    loop = make_loop(redis_url, prefix, checkpoint_root, predictor=model, max_batch=32, max_deliveries=1,
                     breaker_backoff_ms=50, breaker_backoff_max_ms=200, burst_idle_ms=300)
    metrics = WorkerMetrics("test-0")
    loop.observer = metrics
    ids = Producer(r, keys).publish_many([np.zeros((20, 1), np.float32)] * 2000)
    t = _run(loop)
    try:
        assert wait_for(lambda: loop.guard.breaker.state == OPEN and model.failed >= 3, timeout=30)
        sk = keys.shard(0)
        pending = r.xpending_range(sk.windows, keys.group, "-", "+", 3000)
        served_before = int(r.xlen(sk.results))
        assert r.xlen(sk.dead) == 0
        assert pending and max(int(p["times_delivered"]) for p in pending) == 0  # held, this delivery not counted
        assert wait_for(lambda: not check(r, keys, ["test-0"])[0], timeout=5)
        ok, msg = check(r, keys, ["test-0"])
        assert "breaker open" in msg and "CUDA error" in msg
        doc = snapshot(r, keys)
        assert doc["consumers"][0]["breaker"] == OPEN and doc["consumers"][0]["breaker_trips"] == 1
        assert metrics.registry.get_sample_value("bigru_breaker_state", {"worker": "test-0"}) == 1
        assert metrics.registry.get_sample_value("bigru_breaker_trips_total", {"worker": "test-0"}) == 1
        assert int(r.xlen(sk.results)) == served_before  # nothing more is taken while open
        model.broken = False
        t.join(timeout=60)
        assert not t.is_alive()
    finally:
        loop.stop.set()
        t.join(timeout=10)
    out = Outputs(r, keys)
    out.poll()
    assert len(out.dead) == 0 and loop.stats.dead == 0
    assert all(out.results[i] == 1 for i in ids) and sum(out.results.values()) == len(ids)
    assert loop.guard.breaker.state == CLOSED and loop.guard.breaker.trips == 1
    assert metrics.registry.get_sample_value("bigru_breaker_state", {"worker": "test-0"}) == 0
    assert r.xpending(keys.shard(0).windows, keys.group)["pending"] == 0


def test_poison_window_alone_in_its_batch_is_still_dead_lettered(
    r: redis.Redis, redis_url: str, prefix: str, checkpoint_root: Path, predictor: TorchPredictor
) -> None:
    class Poison(Flaky):
        def predict(self, xs: list[np.ndarray]) -> np.ndarray:
            if any(float(x[0, 0]) == 42.0 for x in xs):
                raise FloatingPointError("poison window")
            return super().predict(xs)

    keys = Keys(prefix, prefix)
    loop = make_loop(redis_url, prefix, checkpoint_root, predictor=Poison(predictor), max_batch=1)
    ids = Producer(r, keys).publish_many([np.full((20, 1), 42.0 if i == 10 else 0.0, np.float32) for i in range(20)])
    stats = loop.run()
    out = Outputs(r, keys)
    out.poll()
    assert (stats.results, stats.dead, loop.guard.breaker.trips) == (19, 1, 0)
    assert out.dead_reasons == {ids[10]: "predict_failed"}


# -- a reload to a version that breaks ------------------------------------------------------------


def break_reloads(monkeypatch: pytest.MonkeyPatch) -> list[Flaky]:
    """From now on every predictor the reload path makes breaks 3 calls after it passed the gate
    (the gate's golden-batch passes, in chunks of ``GOLDEN_CHUNK``, come first)."""
    made: list[Flaky] = []
    real = reload_mod.make_predictor

    def make(*args: Any, **kw: Any) -> Any:
        golden = args[0].golden_batch()
        passes = -(-len(golden[0]) // GOLDEN_CHUNK) if golden else 0
        pred = Flaky(real(*args, **kw), fail_after=passes + 3)
        made.append(pred)
        return pred

    monkeypatch.setattr(reload_mod, "make_predictor", make)
    return made


def test_reload_to_a_version_that_breaks_falls_back_to_the_previous_one(
    r: redis.Redis, redis_url: str, prefix: str, zoo: Zoo, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = Keys(prefix, prefix)
    s = WorkerSettings(redis_url=redis_url, prefix=prefix, group=prefix, checkpoint=str(zoo.base), burst=True,
                       burst_idle_ms=300, max_batch=16, reload_min_accuracy=0.7, reload_max_drop=0.1,
                       reload_interval_s=3600, breaker_backoff_ms=50, breaker_backoff_max_ms=200)
    src = ReloadingSource(redis.Redis.from_url(redis_url), s, "test-0", initial_predictor(s, r))
    made = break_reloads(monkeypatch)
    base = src.current.version
    entry, _ = publish_checkpoint(r, keys, Zoo.data(zoo.good[0]))
    assert src.check() == entry.version  # passed the gate; starts failing once served
    ids = Producer(r, keys).publish_many([np.zeros((20, 1), np.float32)] * 300)
    loop = WorkerLoop(redis.Redis.from_url(redis_url), s, "test-0", src, stop=threading.Event())
    stats = loop.run()
    out = Outputs(r, keys)
    out.poll()
    assert stats.dead == 0 and len(out.dead) == 0
    assert all(out.results[i] == 1 for i in ids) and sum(out.results.values()) == len(ids)
    assert src.current.version == base and src.refused[entry.version] == "broken_after_reload"
    assert loop.guard.breaker.trips == 1 and loop.guard.breaker.state == CLOSED
    assert made[0].failed >= 1
    notes = r.hgetall(keys.model_refusals(entry.version))
    assert b"broken_after_reload" in notes[b"test-0"]
    assert src.check() is None  # the broken version is not taken again
    models = {f[b"model"].decode() for _, f in r.xrange(keys.shard(0).results)}
    assert models <= {base, entry.version} and base in models


def test_previous_version_is_dropped_once_the_fallback_window_passes() -> None:
    """The version kept for a fallback costs a model's memory: it goes after ``reload_batches`` good batches."""
    from worker.guard import ModelGuard

    class Models:
        def __init__(self) -> None:
            self.current = types.SimpleNamespace(version="v1")
            self.forgotten = 0

        def forget_previous(self) -> None:
            self.forgotten += 1

    models = Models()
    guard = ModelGuard(None, Keys("p", "p"), "c", BreakerRules(reload_batches=3), models,  # type: ignore[arg-type]
                       on_state=lambda state, trips: None)
    models.current.version = "v2"
    guard.observe("v2")  # a swap
    for _ in range(3):
        guard.served()
    assert models.forgotten == 0  # still inside the window: a failure now would fall back to v1
    guard.served()
    guard.served()
    assert models.forgotten == 1
