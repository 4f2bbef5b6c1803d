"""Chaos tests on real WorkerLoops against a real Redis, with faults injected by test-only predictor
wrappers (nothing in the worker's hot path): a poison window in a batch of 64, a batch slower than
the claim idle time, and 50 worker restarts (crashes and clean exits) under load."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import redis

from producer.client import Producer
from protocol.keys import Keys
from tests.chaos_support import Outputs, audit, wait_until
from tests.helpers import make_loop
from training.model.checkpoint import load_checkpoint
from worker.liveness import ClaimKeeper
from worker.loop import WorkerLoop
from worker.predictor import TorchPredictor
from worker.types import Predictor, PredictorDefaults

pytestmark = pytest.mark.chaos


class Wrapped(PredictorDefaults):
    """A predictor that delegates to a real one and runs ``hook(call_number, xs)`` first."""

    def __init__(self, inner: Predictor, hook: object) -> None:
        self.inner = inner
        self.hook = hook
        self.version, self.classes, self.n_features = inner.version, inner.classes, inner.n_features
        self.calls = 0

    def predict(self, xs: list[np.ndarray]) -> np.ndarray:
        self.calls += 1
        self.hook(self.calls, xs)  # type: ignore[operator]
        return self.inner.predict(xs)


@pytest.fixture(scope="module")
def predictor(checkpoint_root: Path) -> TorchPredictor:
    """One real predictor shared by the loops of a test."""
    return TorchPredictor(load_checkpoint(checkpoint_root))


def test_forward_pass_raising_for_one_window_in_a_batch_of_64(
    r: redis.Redis, redis_url: str, prefix: str, checkpoint_root: Path, predictor: TorchPredictor
) -> None:
    def poison(_: int, xs: list[np.ndarray]) -> None:
        if any(float(x[0, 0]) == 42.0 for x in xs):
            raise FloatingPointError("poison window")

    model = Wrapped(predictor, poison)
    loop = make_loop(redis_url, prefix, checkpoint_root, predictor=model, max_batch=64, batch_wait="fixed", max_wait_ms=200)
    keys = Keys(prefix, prefix)
    windows = [np.zeros((20, 1), np.float32) for _ in range(64)]
    windows[41] = np.full((20, 1), 42.0, np.float32)
    ids = Producer(r, keys).publish_many(windows)
    stats = loop.run()
    out = Outputs(r, keys)
    out.poll()
    fig = audit("forward_raises_one_of_64", out, ids, batch_sizes=list(stats.batch_sizes), forward_calls=model.calls,
                dead_reason=out.dead_reasons.get(ids[41]))
    assert list(stats.batch_sizes) == [64]
    assert (fig.results, fig.dead_lettered, fig.duplicates, fig.lost) == (63, 1, 0, 0)
    assert out.dead_reasons[ids[41]] == "predict_failed" and out.dead[ids[41]] == 1
    assert model.calls <= 1 + 2 * 6  # bisection: two halves per level, log2(64) levels


def _run_in_thread(loop: WorkerLoop) -> threading.Thread:
    t = threading.Thread(target=loop.run, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("keeper", [True, False], ids=["claim-keeper", "no-keeper-control"])
def test_batch_slower_than_claim_idle_time(
    r: redis.Redis, redis_url: str, prefix: str, checkpoint_root: Path, predictor: TorchPredictor,
    monkeypatch: pytest.MonkeyPatch, keeper: bool,
) -> None:
    """A's first batch takes 5x the claim idle time while B keeps trying to reclaim. With the
    claim keeper, B never takes A's entries; without it (control), B reclaims and serves them and
    the publish script refuses A's late copies — still exactly one result each."""
    if not keeper:
        monkeypatch.setattr(ClaimKeeper, "start", lambda self: None)
    claim_idle_ms = 300
    keys = Keys(prefix, prefix)
    opts = {"burst": False, "claim_idle_ms": claim_idle_ms, "reclaim_interval_ms": 100, "max_batch": 64, "block_ms": 100}
    slow = Wrapped(predictor, lambda n, xs: time.sleep(5 * claim_idle_ms / 1000) if n == 1 else None)
    a = make_loop(redis_url, prefix, checkpoint_root, predictor=slow, consumer="a", **opts)
    b = make_loop(redis_url, prefix, checkpoint_root, predictor=predictor, consumer="b", **opts)
    ids = Producer(r, keys).publish_many([np.zeros((20, 1), np.float32)] * 64)
    out = Outputs(r, keys)
    ta = _run_in_thread(a)
    wait_until(lambda: slow.calls == 1, 10, "a's slow batch to start")
    tb = _run_in_thread(b)
    try:
        out.wait_served(ids, 30)
        wait_until(lambda: slow.calls >= 1 and not a._held, 10, "a to finish its batch")
        time.sleep(0.3)
    finally:
        a.stop.set()
        b.stop.set()
        ta.join(10)
        tb.join(10)
    by_a = sum(out.workers.get(i) == "a" for i in ids)
    fig = audit(f"slow_batch_{'keeper' if keeper else 'control'}", out, ids, claim_idle_ms=claim_idle_ms,
                batch_s=5 * claim_idle_ms / 1000, reclaimed_by_b=b.stats.reclaimed, served_by_a=by_a,
                late_publishes_refused=a.stats.duplicates)
    assert fig.lost == 0 and fig.duplicates == 0 and fig.results == 64
    if keeper:
        assert b.stats.reclaimed == 0 and a.stats.duplicates == 0 and by_a == 64
    else:  # the control shows the test can tell: B reclaimed, A's late publish was refused
        assert b.stats.reclaimed > 0 and a.stats.duplicates > 0


class Crash(BaseException):
    """Stands in for the process dying mid-batch (not an Exception: bisection does not catch it)."""


def test_fifty_worker_restarts(
    r: redis.Redis, redis_url: str, prefix: str, checkpoint_root: Path, predictor: TorchPredictor
) -> None:
    """50 replicas in turn, each under a new consumer name (as with containers whose host name
    changes): even ones crash mid-batch leaving entries pending, odd ones exit cleanly. Crashed
    consumers' entries are reclaimed, empty consumers are reaped, nothing stays pending."""
    keys = Keys(prefix, prefix)
    sk = keys.shard(0)
    ids = Producer(r, keys).publish_many([np.zeros((20, 1), np.float32)] * 5000)
    opts = {"burst": True, "burst_idle_ms": 100, "claim_idle_ms": 100, "reclaim_interval_ms": 100, "max_batch": 32,
            "heartbeat_ttl_s": 0.5, "heartbeat_interval_s": 0.1, "reap_idle_ms": 1000, "maintenance_interval_ms": 100}
    max_consumers = crashes = 0
    for i in range(50):
        crash = i % 2 == 0
        box: list[WorkerLoop] = []

        def hook(n: int, xs: list[np.ndarray], crash: bool = crash, box: list[WorkerLoop] = box) -> None:
            if n == 1:
                time.sleep(0.2)  # a replica lives a little while: restarts are paced, not instantaneous
            if n == 3:
                if crash:
                    raise Crash
                box[0].stop.set()  # SIGTERM: this batch completes, then the replica exits

        loop = make_loop(redis_url, prefix, checkpoint_root, predictor=Wrapped(predictor, hook), consumer=f"pod-{i}", **opts)
        box.append(loop)
        try:
            loop.run()
        except Crash:
            crashes += 1
            loop.stop.set()  # the claim keeper dies with the "process"
        max_consumers = max(max_consumers, len(r.xinfo_consumers(sk.windows, prefix)))
    out = Outputs(r, keys)
    time.sleep(1.1)  # let the last crashed consumers pass the reap idle time
    final = make_loop(redis_url, prefix, checkpoint_root, predictor=predictor, consumer="final", **opts)
    final.run()  # drains what is left, reclaims and reaps, then deletes itself
    final.maintenance.run_once()
    consumers = [c["name"].decode() for c in r.xinfo_consumers(sk.windows, prefix)]
    pending = r.xpending(sk.windows, prefix)["pending"]
    fig = audit("fifty_restarts", out, ids, restarts=50, crashes=crashes, max_consumers_seen=max_consumers,
                consumers_at_end=len(consumers), orphaned_pending=pending, served_by_final=final.stats.results,
                workers_hash=r.hlen(keys.workers))
    assert fig.lost == 0 and fig.duplicates == 0
    assert pending == 0 and consumers == [] and r.hlen(keys.workers) == 0
    # Bounded by how many crash within the reap idle time (+ heartbeat TTL), not by the number of restarts.
    assert max_consumers <= 12, fig
