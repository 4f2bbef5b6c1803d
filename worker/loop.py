"""The batching loop: collect -> decode -> predict -> encode -> publish.

Each stage lives in one named place: collect in :class:`worker.reader.Collector` (a batch is what
one collect call hands over, sized by the batch-wait policy of ``worker.batching``), decode/predict/encode
in :class:`worker.stages.Stages` around one :class:`worker.types.Batch`, the predict stage's thread in
:class:`worker.compute.Compute`, the breaker's verdict in :class:`worker.guard.ModelGuard`,
publish in :class:`worker.publisher.Publisher`. This module only drives them: batch ``k + 1`` is
collected and decoded while batch ``k`` computes and queued behind it, then ``k`` is encoded and
published while ``k + 1`` computes. The collaborators (Redis client, model source, clock, observer, stop event)
are passed in and the stage objects are built from the settings (:meth:`LoopParts.build`), so tests
drive the real loop against a real Redis.

Threads and what they share (the loop thread owns everything not named here):

- the compute thread (``Compute``) runs :meth:`WorkerLoop._predict`: it alone writes
  ``_computing_since``; the heartbeat thread only reads it (one reference store, atomic under the GIL);
- the heartbeat thread (``Pulse``) calls :meth:`WorkerLoop.heartbeat`, as the loop thread does: both
  go through ``_beat_lock`` (the breaker state last shown and the ``Heartbeat``'s due time); it reads
  ``_progress`` (written by the loop thread only) and the counters (ints, written by the loop thread only);
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
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
import structlog

from protocol.durability import Durability, ReplicaAckShort
from protocol.redisconn import TRANSIENT
from protocol.wire import now_us
from worker.batching import BatchWait, make_batch_wait
from worker.compute import Compute
from worker.config import WorkerSettings
from worker.drift import DriftMonitor
from worker.guard import ModelGuard, breaker_rules
from worker.liveness import ClaimKeeper, Heartbeat, HeldBatches, Pulse
from worker.maintenance import Maintenance
from worker.publisher import Publisher
from worker.reader import Collector, ReadPlan, ensure_groups
from worker.shadow_publisher import publisher_class
from worker.stages import BatchMismatch, Stages
from worker.types import Batch, Entry, ModelSource, Observer, Predictor, StaticModel

__all__ = ["BatchMismatch", "Clock", "LoopParts", "LoopStats", "ModelSource", "Observer", "Predictor",
           "StaticModel", "WorkerLoop"]


@dataclass
class Clock:
    """Time sources (replaceable in tests)."""

    monotonic: Callable[[], float] = time.monotonic
    now_us: Callable[[], int] = now_us


#: How many recent batch sizes :class:`LoopStats` keeps (bounded: a worker runs for months).
RECENT_BATCHES = 1024


@dataclass
class LoopStats:
    """Counters of one loop run; ``batch_sizes`` holds the most recent batches' sizes only."""

    batches: int = 0
    results: int = 0
    dead: int = 0
    expired: int = 0
    reclaimed: int = 0
    duplicates: int = 0
    replica_ack_short: int = 0  # publishes whose WAIT fell short of wait_replicas
    windows: int = 0  # windows that went through the model
    batch_sizes: deque[int] = field(default_factory=lambda: deque(maxlen=RECENT_BATCHES))


class Counters:
    """The one place the loop counts: every event updates :class:`LoopStats` and tells the observer."""

    def __init__(self, observer: Observer) -> None:
        self.stats = LoopStats()
        self.observer = observer
        self.log = structlog.get_logger("worker")

    def batch(self, b: Batch) -> None:
        """A batch was published."""
        s = self.stats
        s.batches += 1
        s.results += b.served + b.expired
        s.expired += b.expired
        s.windows += len(b.xs)
        s.batch_sizes.append(b.pass_windows)
        self.observer.batch(b)

    def dead(self, reason: str) -> None:
        """An entry was dead-lettered."""
        self.stats.dead += 1
        self.observer.dead(reason)

    def reclaimed(self, n: int) -> None:
        """``n`` entries were claimed from other consumers."""
        self.stats.reclaimed += n
        self.observer.reclaimed(n)

    def duplicates(self, n: int) -> None:
        """``n`` outputs were refused because their inputs were acknowledged elsewhere."""
        self.stats.duplicates += n
        self.observer.duplicates(n)

    def replica_ack_short(self, short: ReplicaAckShort) -> None:
        """A publish's ``WAIT`` got fewer replica acknowledgements than asked (logged, counted, not retried)."""
        self.stats.replica_ack_short += 1
        self.observer.replica_ack_short()
        self.log.warning("replica_ack_short", node=short.node, asked=short.asked, acked=short.acked)

    def breaker(self, state: str, trips: int) -> None:
        """The breaker changed state."""
        self.observer.breaker(state, trips)


@dataclass
class LoopParts:
    """The stage objects of one loop; :meth:`build` makes them from the settings."""

    collector: Collector
    stages: Stages
    publisher: Publisher
    policy: BatchWait
    maintenance: Maintenance
    heartbeat: Heartbeat
    overlap: bool

    @classmethod
    def build(cls, r: redis.Redis, s: WorkerSettings, consumer: str, clock: Clock, stop: threading.Event,
              counters: Counters) -> LoopParts:
        """The default parts for ``settings``."""
        keys = s.keys
        policy = make_batch_wait(s)
        plan = ReadPlan([keys.shard(i) for i in s.assigned_shards], s.max_batch,
                        s.burst_idle_ms if s.burst else s.block_ms, s.burst, s.claim_idle_ms, s.reclaim_interval_ms,
                        max_batch_bytes=s.max_batch_bytes, entry_bytes=s.max_window_bytes)
        return cls(
            collector=Collector(r, keys, consumer, plan, policy, clock.monotonic, clock.now_us, stop,
                                on_reclaimed=counters.reclaimed),
            stages=make_stages(s, consumer, counters.dead, clock.now_us),
            publisher=publisher_class(s)(r, keys, s.results_maxlen, s.dead_maxlen, reply_maxlen=s.reply_maxlen,
                                reply_ttl_s=s.reply_ttl_s, results_shared=s.results_shared,
                                durability=Durability(s.wait_replicas, s.wait_timeout_ms),
                                on_short=counters.replica_ack_short),
            policy=policy,
            maintenance=Maintenance(r, keys, consumer, interval_s=s.maintenance_interval_ms / 1000, trim=s.trim_input,
                                    reap_idle_ms=s.reap_idle_ms, monotonic=clock.monotonic),
            heartbeat=Heartbeat(r, keys, consumer, s.heartbeat_ttl_s, s.heartbeat_interval_s, clock.monotonic),
            overlap=s.overlap,
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
    ) -> None:
        self.r, self.s, self.keys, self.consumer, self.models = r, settings, settings.keys, consumer, models
        self.clock = clock or Clock()
        self.stop = stop or threading.Event()
        self.counters = Counters(observer or Observer())
        p = LoopParts.build(r, settings, consumer, self.clock, self.stop, self.counters)
        self.collector, self.stages, self.publisher, self.policy = p.collector, p.stages, p.publisher, p.policy
        self.maintenance, self.beats = p.maintenance, p.heartbeat
        self.guard = ModelGuard(r, self.keys, consumer, breaker_rules(settings), models, self.counters.breaker,
                                self.clock.monotonic)
        self._beat_state = self.guard.breaker.state
        self.compute = Compute(self._predict, overlap=p.overlap)
        self._progress = self.clock.monotonic()  # the loop thread last began a step
        self._computing_since: float | None = None  # the batch on the compute thread began
        self.pulse = Pulse(lambda: self.heartbeat(force=True), self._working, settings.heartbeat_interval_s)
        self._beat_lock = threading.Lock()
        self._held = HeldBatches()  # batches read and not yet published
        self.keeper = ClaimKeeper(r, self.keys, consumer, settings.claim_idle_ms, self._held.snapshot, self.stop,
                                  self.clock.monotonic)
        self.log = structlog.get_logger("worker").bind(consumer=consumer)
        self.drift = DriftMonitor(settings.drift_sample_every, settings.drift_window,
                                  lambda rep: self.counters.observer.drift(rep))

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

    def _predict(self, batch: Batch) -> Batch:
        """The predict stage, then the breaker's verdict (on the compute thread)."""
        self._computing_since = self.clock.monotonic()
        try:
            return self.guard.judge(self.stages.predict(batch))
        finally:
            self._computing_since = None

    def _working(self) -> bool:
        """Whether the heartbeat thread may vouch for this replica: the loop stepped within the
        heartbeat TTL, or a batch has been computing for less than ``stall_s``."""
        now = self.clock.monotonic()
        since = self._computing_since
        return now - self._progress < self.s.heartbeat_ttl_s or (since is not None and now - since < self.s.stall_s)

    def heartbeat(self, force: bool = False) -> None:
        """Refresh this replica's heartbeat (when due, or now with ``force``)."""
        with self._beat_lock:  # the loop thread and the heartbeat thread
            self._beat(force)

    def _beat(self, force: bool) -> None:
        model = self.models.current
        state = self.guard.breaker.state
        force, self._beat_state = force or state != self._beat_state, state  # a breaker change shows at once
        self.beats.beat(model.version, self.stats.results, self.stats.dead, force, model.precision,
                        breaker=self.guard.breaker_view, drift=self.drift.summary)

    # -- driver -------------------------------------------------------------------------------

    def step(self) -> bool:
        """One cycle: collect (while the previous batch computes), queue it, publish what is computed.

        Returns False when burst mode found the stream drained.
        """
        self._progress = self.clock.monotonic()
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
        self.policy.observe(len(batch.entries), time.perf_counter() - (batch.t_submit or time.perf_counter()))
        if batch.trace is not None:
            batch.trace.end(batch)
        self.counters.batch(batch)
        self.drift.observe(batch)
        self.guard.served()

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
                if outage_since is not None:
                    self.log.info("redis_recovered", outage_s=round(time.monotonic() - outage_since, 2))
                    outage_since, delay = None, 0.05
            except TRANSIENT as err:
                self._abandon()
                if outage_since is None:
                    outage_since = time.monotonic()
                    self.log.error("redis_unavailable", error=str(err))
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
            self.beats.remove()
            for sk in self.keys.all_shards():
                self.maintenance.delete_if_idle(sk.windows, self.consumer)
        except (*TRANSIENT, redis.ResponseError) as err:
            self.log.warning("shutdown_cleanup_failed", error=str(err))
        self.log.info("worker_stopped", batches=self.stats.batches, results=self.stats.results, dead=self.stats.dead)
