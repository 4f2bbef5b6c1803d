"""What the serving loop does with the breaker (``worker.breaker``): judge, hold, probe, fall back.

- :meth:`ModelGuard.judge` runs on the compute thread after the predict stage: a batch whose
  failures look systemic is marked ``broken`` (probing the model with its checkpoint's golden batch,
  else with windows this replica served recently).
- :meth:`ModelGuard.trip` runs on the loop thread for a broken batch: its outputs are dropped and
  the inputs of every batch in hand are *released* — left pending at this consumer, their delivery
  count set back by one (``XCLAIM … JUSTID RETRYCOUNT``), so that a breaker episode never pushes a
  healthy window towards ``max_deliveries``. When the broken model was swapped in by a reload less
  than ``breaker_reload_batches`` batches ago, the model source falls back to the previous version.
- :meth:`ModelGuard.hold` runs instead of collecting while the breaker is open: it waits out the
  backoff and probes.

Threads: :meth:`~ModelGuard.judge` is the only method the compute thread calls, and the only writer
of the probe windows (``_good``, ``_fallback``); the loop thread reads them in :meth:`~ModelGuard.hold`
only while the breaker is open, when no batch computes. The breaker itself is touched by the loop
thread only (the heartbeat thread reads its state through :meth:`~ModelGuard.breaker_view`).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np
import redis
import structlog

from protocol.keys import Keys
from worker.breaker import Breaker, BreakerRules, suspect, verdict
from worker.config import Breaking
from worker.types import Batch, Entry, ModelSource, Predictor

#: Longest single wait while open, so heartbeats and a stop request are not delayed.
HOLD_TICK_S = 0.5


def release(r: redis.Redis, keys: Keys, consumer: str, entries: list[Entry]) -> None:
    """Keep ``entries`` pending at ``consumer`` as if this delivery had not happened.

    ``XCLAIM … JUSTID RETRYCOUNT n`` sets the delivery count to ``deliveries - 1``; re-reading the
    entries later (own pending entries first, or another replica's XAUTOCLAIM) adds the one back.
    """
    groups: dict[tuple[int, int], list[str]] = {}
    for e in entries:
        groups.setdefault((e.shard, max(0, e.deliveries - 1)), []).append(e.id)
    if not groups:
        return
    pipe = r.pipeline(transaction=False)
    for (shard, count), ids in groups.items():
        pipe.xclaim(keys.shard(shard).windows, keys.group, consumer, 0, ids, justid=True, retrycount=count)
    pipe.execute()


def probe(model: Predictor, xs: list[np.ndarray]) -> bool:
    """Whether ``model`` answers ``xs`` (one output per window, no exception)."""
    try:
        return len(model.predict(xs)) == len(xs)
    except Exception:  # any failure is the answer
        return False


class ModelGuard:
    """The breaker of one replica and what the loop does with it (see the module docstring)."""

    def __init__(self, r: redis.Redis, keys: Keys, consumer: str, rules: BreakerRules, models: ModelSource,
                 on_state: Callable[[str, int], None], monotonic: Callable[[], float] = time.monotonic) -> None:
        self.r, self.keys, self.consumer, self.rules, self.models = r, keys, consumer, rules, models
        self.on_state = on_state
        self.breaker = Breaker(rules, monotonic)
        self.log = structlog.get_logger("worker").bind(consumer=consumer)
        self._good: deque[np.ndarray] = deque(maxlen=rules.probe_windows)  # windows served recently
        self._fallback: list[np.ndarray] = []  # a broken batch's windows, when nothing else is known
        self._version = models.current.version
        self.since_swap = rules.reload_batches + 1  # the model loaded at start is not a reload

    @property
    def holding(self) -> bool:
        """Whether the breaker is open (take no work)."""
        return self.breaker.holding

    # -- compute thread --------------------------------------------------------------------------

    def probe_windows(self, model: Predictor) -> list[np.ndarray]:
        """What to probe ``model`` with: its golden batch, else windows served recently, else the last broken batch's."""
        xs = list(model.golden_windows()[: self.rules.probe_windows])
        return xs or list(self._good) or self._fallback

    def judge(self, batch: Batch) -> Batch:
        """Mark ``batch.broken`` when its failures mean a broken model rather than poison windows."""
        n, failed = len(batch.xs), len(batch.failed)
        if not suspect(n, failed, self.rules):
            if n > failed:
                self._good.extend(x for i, x in enumerate(batch.xs[: self.rules.probe_windows]) if i not in batch.failed)
            return batch
        xs = self.probe_windows(batch.model)
        ok = probe(batch.model, xs) if xs else None
        if verdict(n, failed, ok, self.rules):
            err = next(iter(batch.failed.values()))
            batch.broken = (f"{failed}/{n} windows failed alone ({type(err).__name__}: {str(err)[:200]}); "
                            f"probe {'failed' if ok is False else 'unavailable'}")
            if not xs:
                self._fallback = batch.xs[: self.rules.probe_windows]
        return batch

    # -- loop thread -----------------------------------------------------------------------------

    def observe(self, version: str) -> None:
        """The version the loop serves now (a change is a swap: the reload window starts again)."""
        if version != self._version:
            self._version, self.since_swap = version, 0

    def on_published(self, batch: Batch) -> None:
        """A batch was published (a listener of ``worker.events.Listeners``): see :meth:`served`."""
        self.served()

    def served(self) -> None:
        """A batch was published without a broken verdict (closes a half-open breaker)."""
        self.since_swap += 1
        if self.since_swap == self.rules.reload_batches + 1:  # no fallback any more: free the old version
            self.models.forget_previous()
        if self.breaker.served():
            self.log.info("breaker_closed", model=self._version, trips=self.breaker.trips)
            self._notify()

    def trip(self, batch: Batch, held: list[Entry]) -> None:
        """``batch`` is broken: release ``held`` (every entry in hand), open, maybe fall back."""
        release(self.r, self.keys, self.consumer, held)
        reason = batch.broken or "broken"
        new = self.breaker.trip(reason)
        self.log.error("breaker_opened" if new else "breaker_reopened", reason=reason, model=batch.model.version,
                       held=len(held), trips=self.breaker.trips, failures=self.breaker.failures,
                       retry_in_s=round(self.breaker.wait_s(), 2))
        if self.since_swap <= self.rules.reload_batches and batch.model.version == self.models.current.version:
            version = self.models.fall_back(reason)
            if version is not None:
                self._version, self.since_swap = version, self.rules.reload_batches + 1
                self.breaker.probe_now()
        self._notify()

    def hold(self, stop: threading.Event) -> None:
        """While open: wait for the backoff (at most :data:`HOLD_TICK_S` per call), then probe."""
        if not self.breaker.probe_due():
            stop.wait(min(HOLD_TICK_S, self.breaker.wait_s()))
            return
        model = self.models.current
        xs = self.probe_windows(model)
        ok = probe(model, xs) if xs else True  # nothing to probe with: let the next batch decide
        self.breaker.probed(ok)
        self.log.info("breaker_probe", ok=ok, model=model.version, windows=len(xs), failures=self.breaker.failures,
                      retry_in_s=round(self.breaker.wait_s(), 2))
        self._notify()

    def breaker_view(self) -> tuple[str, int, str]:
        """What the heartbeat says about the breaker: state, trips, reason (``--check`` fails while open)."""
        return self.breaker.state, self.breaker.trips, self.breaker.reason[:300]

    def _notify(self) -> None:
        self.on_state(self.breaker.state, self.breaker.trips)


def breaker_rules(settings: Breaking) -> BreakerRules:
    """The breaker thresholds configured in ``settings``."""
    return BreakerRules(
        enabled=settings.breaker, failure_ratio=settings.breaker_failure_ratio,
        backoff_s=settings.breaker_backoff_ms / 1000, backoff_max_s=settings.breaker_backoff_max_ms / 1000,
        reload_batches=settings.breaker_reload_batches,
    )
