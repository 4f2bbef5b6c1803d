"""The batching loop: collect -> decode -> predict -> encode -> publish.

Each stage lives in one named place: collect in :class:`worker.reader.Collector` (a batch is what
one collect call hands over, sized by the batch-wait policy of ``worker.batching``), decode/predict/encode
in :class:`worker.stages.Stages` around one :class:`worker.types.Batch`, the predict stage's thread in
:class:`worker.compute.Compute`, the breaker's verdict in :class:`worker.guard.ModelGuard`,
publish in :class:`worker.publisher.Publisher`. This module only drives them: batch ``k + 1`` is
collected and decoded while batch ``k`` computes and queued behind it, then ``k`` is encoded and
published while ``k + 1`` computes. The collaborators (Redis client, model source, clock, counters, stop event)
are passed in and every other part is built from the settings by :meth:`LoopParts.build` (the one place
parts are made; :class:`WorkerLoop` only assigns them), so tests drive the real loop against a real Redis.

What happens around a published batch is one event, ``Listeners.published`` (``worker.events``): the
batch-wait policy, tracing, the counts, drift and the breaker listen to it. Everything the metrics see goes
through one object, :class:`worker.counters.Counters`.

Threads and what they share (the loop thread owns everything not named here):

- the compute thread (``Compute``) runs the predict stage and the breaker's verdict: it alone writes
  ``Progress.computing_since``; the heartbeat thread only reads it (one reference store, atomic under the GIL);
- the heartbeat thread (``Pulse``) calls :meth:`worker.liveness.Vitals.beat`, as the loop thread does: both
  go through its lock (the breaker state last shown and the ``Heartbeat``'s due time); it reads
  ``Progress.stepped`` (written by the loop thread only) and the counters (ints, written by the loop thread only);
- the claim keeper thread (``ClaimKeeper``) reads the batches held, a :class:`worker.liveness.HeldBatches`
  that the loop thread fills and empties, under that object's own lock;
- the model source's checker and watcher threads (``worker.reload``) hand a new model over under
  their own lock; ``models.current`` changes only in ``poll()``, on the loop thread.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
import structlog

from protocol.durability import Durability
from protocol.redisconn import TRANSIENT
from protocol.wire import now_us
from worker.batching import BatchWait, ServiceTimes, make_batch_wait
from worker.compute import Compute
from worker.config import WorkerSettings
from worker.counters import Counters, LoopStats, Observer
from worker.drift import DriftMonitor
from worker.events import Listeners
from worker.guard import ModelGuard, breaker_rules
from worker.liveness import ClaimKeeper, Heartbeat, HeldBatches, Progress, Pulse, Vitals
from worker.maintenance import Maintenance
from worker.publisher import Publisher
from worker.reader import Collector, ReadPlan, ensure_groups
from worker.shadow_publisher import publisher_class
from worker.stages import BatchMismatch, Stages
from worker.types import Batch, Entry, ModelSource, Predictor, StaticModel

__all__ = ["BatchMismatch", "Clock", "Counters", "LoopParts", "LoopStats", "ModelSource", "Observer", "Predictor",
           "StaticModel", "WorkerLoop"]


@dataclass
class Clock:
    """Time sources (replaceable in tests)."""

    monotonic: Callable[[], float] = time.monotonic
    now_us: Callable[[], int] = now_us


@dataclass
class LoopParts:
    """Every part of one loop; :meth:`build` makes them from the settings (the loop only assigns them)."""

    clock: Clock
    stop: threading.Event
    counters: Counters
    collector: Collector
    stages: Stages
    publisher: Publisher
    policy: BatchWait
    maintenance: Maintenance
    guard: ModelGuard
    drift: DriftMonitor
    progress: Progress
    compute: Compute
    vitals: Vitals
    pulse: Pulse
    held: HeldBatches
    keeper: ClaimKeeper
    listeners: Listeners = field(default_factory=Listeners)

    @classmethod
    def build(cls, r: redis.Redis, s: WorkerSettings, consumer: str, models: ModelSource, *,
              clock: Clock | None = None, stop: threading.Event | None = None,
              counters: Counters | None = None, observer: Observer | None = None) -> LoopParts:
        """The parts for ``settings``, serving ``models``; ``counters`` is what tells the metrics (a new one,
        telling ``observer`` or no one, when not given)."""
        clock = clock or Clock()
        stop = stop or threading.Event()
        counters = counters or Counters(observer)
        keys = s.keys
        policy = make_batch_wait(s)
        plan = ReadPlan([keys.shard(i) for i in s.assigned_shards], s.max_batch,
                        s.burst_idle_ms if s.burst else s.block_ms, s.burst, s.claim_idle_ms, s.reclaim_interval_ms,
                        max_batch_bytes=s.max_batch_bytes, entry_bytes=s.max_window_bytes)
        stages = make_stages(s, consumer, counters.dead, clock.now_us)
        guard = ModelGuard(r, keys, consumer, breaker_rules(s), models, counters.breaker, clock.monotonic)
        drift = DriftMonitor.from_settings(s, counters.drift)
        progress = Progress.from_settings(s, clock.monotonic)
        vitals = Vitals(Heartbeat.from_settings(r, keys, consumer, s, clock.monotonic), models, counters.stats,
                        guard.breaker_view, drift.summary)
        held = HeldBatches()  # batches read and not yet published

        def predict(batch: Batch) -> Batch:
            """The predict stage, then the breaker's verdict (on the compute thread)."""
            progress.computing_since = clock.monotonic()
            try:
                return guard.judge(stages.predict(batch))
            finally:
                progress.computing_since = None

        listeners = Listeners([ServiceTimes(policy)])
        if s.tracing:
            from worker.tracing import TraceEnd

            listeners.add(TraceEnd())
        for listener in (counters, drift, guard):
            listeners.add(listener)
        return cls(
            clock=clock, stop=stop, counters=counters,
            collector=Collector(r, keys, consumer, plan, policy, clock.monotonic, clock.now_us, stop,
                                on_reclaimed=counters.reclaimed),
            stages=stages,
            publisher=publisher_class(s).from_settings(r, keys, s, durability=Durability(s.wait_replicas, s.wait_timeout_ms),
                                                       on_short=counters.replica_ack_short),
            policy=policy,
            maintenance=Maintenance.from_settings(r, keys, consumer, s, clock.monotonic),
            guard=guard, drift=drift, progress=progress,
            compute=Compute(predict, overlap=s.overlap),
            vitals=vitals,
            pulse=Pulse(lambda: vitals.beat(force=True), progress.working, s.heartbeat_interval_s),
            held=held,
            keeper=ClaimKeeper(r, keys, consumer, s.claim_idle_ms, held.snapshot, stop, clock.monotonic),
            listeners=listeners,
        )


def make_stages(s: WorkerSettings, consumer: str, on_dead: Callable[[str], None], now: Callable[[], int]) -> Stages:
    """The decode/predict/encode stages; with ``tracing`` on, the traced ones (``worker.tracing``)."""
    args = (consumer, s.limits, s.max_deliveries, on_dead, now, s.max_batch)
    if not s.tracing:
        return Stages(*args)
    from worker.tracing import traced_stages

    return traced_stages(s, *args)


class WorkerLoop:
    """One replica's consumer loop (see the module docstring)."""

    def __init__(
        self, r: redis.Redis, settings: WorkerSettings, consumer: str, models: ModelSource, *,
        clock: Clock | None = None, observer: Observer | None = None, stop: threading.Event | None = None,
        counters: Counters | None = None,
    ) -> None:
        """``counters``: what tells the metrics (shared with the model source, ``worker.supervisor``); else a
        new one telling ``observer``."""
        p = LoopParts.build(r, settings, consumer, models, clock=clock, stop=stop, counters=counters, observer=observer)
        self.r, self.s, self.keys, self.consumer, self.models = r, settings, settings.keys, consumer, models
        self.parts = p
        self.clock, self.stop, self.counters = p.clock, p.stop, p.counters
        self.collector, self.stages, self.publisher, self.policy = p.collector, p.stages, p.publisher, p.policy
        self.maintenance, self.guard, self.drift, self.compute = p.maintenance, p.guard, p.drift, p.compute
        self.progress, self.vitals, self.pulse, self.keeper = p.progress, p.vitals, p.pulse, p.keeper
        self._held, self.listeners = p.held, p.listeners
        self.log = structlog.get_logger("worker").bind(consumer=consumer)

    @property
    def stats(self) -> LoopStats:
        """This run's counters."""
        return self.counters.stats

    @property
    def observer(self) -> Observer:
        """The metrics hooks."""
        return self.counters.observer

    @observer.setter
    def observer(self, obs: Observer) -> None:
        self.counters.observer = obs

    def heartbeat(self, force: bool = False) -> None:
        """Refresh this replica's heartbeat (when due, or now with ``force``)."""
        self.vitals.beat(force)

    # -- driver -------------------------------------------------------------------------------

    def step(self) -> bool:
        """One cycle: collect (while the previous batch computes), queue it, publish what is computed.

        Returns False when burst mode found the stream drained.
        """
        self.progress.step()
        served = self.models.current.version
        self.models.poll()
        self.heartbeat(force=self.models.current.version != served)  # a swap shows in status at once
        self.maintenance.maybe_run()
        self.guard.observe(self.models.current.version)
        if self.guard.holding:  # the model is broken: take no work, probe with backoff
            self.guard.hold(self.stop)
            return True
        entries = self.collector.collect(self.compute)
        if entries is None and not self.compute.inflight:
            return False
        if entries:
            batch = self.stages.decode(entries, self.models.current)
            self._held.add(id(batch), self.clock.monotonic(), batch.entries)
            batch.t_submit = time.perf_counter()
            self.compute.submit(batch)
        # Publish what is computed; with two batches in flight wait for the older one (the newer
        # one starts computing the moment it ends, so the model never waits for this thread).
        while self.compute.inflight and (self.compute.inflight >= 2 or self.compute.ready()):
            self.finish(self.compute.take())
        return True

    def finish(self, batch: Batch) -> None:
        """Encode and publish a computed batch (its inputs are acknowledged by the publish script)."""
        if batch.broken is not None:
            self._hold(batch)
            return
        outputs = self.stages.encode(batch)
        try:
            self._count_published(self.publisher.send(outputs))
        finally:
            self._held.drop(id(batch))
        self.listeners.published(batch)

    def _hold(self, batch: Batch) -> None:
        """The model is broken: publish nothing of ``batch`` or the batches behind it; release their inputs."""
        held = self._drop_inflight("held_batch_failed")
        self._count_published(self.publisher.collect())
        self.collector.restart()  # once closed, re-read them first
        self.guard.trip(batch, held)

    def _count_published(self, done: list[tuple[int, int]]) -> None:
        for sent, published in done:
            if published < sent:
                self.counters.duplicates(sent - published)
                self.log.warning("already_acknowledged", count=sent - published)

    def _drop_inflight(self, event: str) -> list[Entry]:
        """Take and drop every batch in flight (a failure is logged as ``event``); the entries of every
        batch held, which this replica stops holding (they stay pending)."""
        while self.compute.inflight:
            try:
                self.compute.take()
            except Exception as err:  # the batch is dropped either way
                self.log.warning(event, error=str(err))
        return self._held.take_all()

    def _abandon(self) -> None:
        """After a Redis error: drop every batch held; its inputs stay pending and are read again."""
        self._drop_inflight("abandoned_batch_failed")
        self.publisher.reset()
        self.collector.restart()

    def run(self) -> LoopStats:
        """Serve until ``stop`` is set (or, in burst mode, the stream is drained)."""
        ensure_groups(self.r, self.keys)
        self.keeper.start()
        self.pulse.start()
        self.log.info("worker_started", model=self.models.current.version, pid=os.getpid())
        try:
            self._serve()
        except BaseException:
            self.pulse.close()  # a crashed loop vouches for nothing (its threads may outlive it in-process)
            raise
        self._drain()
        self.shutdown()
        return self.stats

    def _serve(self) -> None:
        outage_since: float | None = None
        delay = 0.05
        while not self.stop.is_set():
            try:
                if not self.step():
                    break
                if outage_since is not None:  # the one outage vocabulary of every role (docs/operations.md)
                    self.log.info("redis_outage_ended", operation="serve",
                                  outage_s=round(time.monotonic() - outage_since, 3))
                    outage_since, delay = None, 0.05
            except TRANSIENT as err:
                self._abandon()
                if outage_since is None:
                    outage_since = time.monotonic()
                    self.log.warning("redis_outage_started", operation="serve", error=f"{type(err).__name__}: {err}")
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 2.0)
            except redis.ResponseError as err:
                if "NOGROUP" not in str(err):
                    raise
                self.log.error("group_missing_recreated", error=str(err))
                self._abandon()
                ensure_groups(self.r, self.keys)

    def _drain(self) -> None:
        """On stop: finish and acknowledge the batch in flight, then read the last publish replies."""
        try:
            while self.compute.inflight:
                self.finish(self.compute.take())
            self._count_published(self.publisher.collect())
        except (*TRANSIENT, redis.ResponseError) as err:  # the inputs stay pending for a restart
            self.log.warning("final_publish_failed", error=str(err))
        finally:
            self.compute.close()

    def shutdown(self) -> None:
        """Drop our heartbeat; delete our consumer if it holds no pending entries."""
        self.pulse.close()
        try:
            self.vitals.heartbeat.remove()
            for sk in self.keys.all_shards():
                self.maintenance.delete_if_idle(sk.windows, self.consumer)
        except (*TRANSIENT, redis.ResponseError) as err:
            self.log.warning("shutdown_cleanup_failed", error=str(err))
        self.log.info("worker_stopped", batches=self.stats.batches, results=self.stats.results, dead=self.stats.dead)
