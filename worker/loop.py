"""The batching loop: collect -> decode -> batch/predict -> unbatch -> publish, with named stages.

The loop takes its collaborators (Redis client, model source, clock, observer, stop event) as
arguments so tests drive the real loop against a real Redis.
"""

from __future__ import annotations

import json
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import redis
import structlog

from worker import streams
from worker.batching import enqueued_us, make_batch_wait
from worker.config import WorkerSettings
from worker.keys import ShardKeys
from worker.maintenance import Maintenance
from worker.redisconn import TRANSIENT
from worker.streams import Entry, Output
from worker.wire import Result, Window, WireError, decode_windows, encode_dead, encode_result, encode_results, now_us

#: Poll interval while a batch fills.
FILL_POLL_S = 0.0005


class Predictor(Protocol):
    """What the loop needs from a model backend."""

    version: str
    classes: list[str]
    n_features: int

    def predict(self, xs: list[np.ndarray]) -> np.ndarray: ...


class ModelSource(Protocol):
    """Supplies the predictor; ``poll()`` runs between batches and may swap ``current``."""

    current: Predictor

    def poll(self) -> None: ...


@dataclass
class StaticModel:
    """A model source that never changes."""

    current: Predictor

    def poll(self) -> None:
        """Nothing to reload."""


class Observer:
    """Hooks for metrics; the default does nothing."""

    def batch(self, outputs: list[Output], results: list[Result], infer_s: float) -> None:
        """Called after each batch is published."""

    def dead(self, reason: str) -> None:
        """Called per dead-lettered entry."""

    def reclaimed(self, n: int) -> None:
        """Called with the number of entries claimed from other consumers."""

    def duplicates(self, n: int) -> None:
        """Called when the publish script refused ``n`` outputs already acknowledged elsewhere."""

    def model_version(self, version: str) -> None:
        """Called when the replica serves ``version``: once loaded and warmed up, and after each reload."""

    def reload(self, accepted: bool, version: str) -> None:
        """Called when a new model version was accepted (swapped in) or refused (old one keeps serving)."""


@dataclass
class Clock:
    """Time sources (replaceable in tests)."""

    monotonic: Callable[[], float] = time.monotonic
    now_us: Callable[[], int] = now_us


@dataclass
class LoopStats:
    """Counters of one loop run."""

    batches: int = 0
    results: int = 0
    dead: int = 0
    expired: int = 0
    reclaimed: int = 0
    duplicates: int = 0
    batch_sizes: list[int] = field(default_factory=list)


class BatchMismatch(RuntimeError):
    """The predictor returned a different number of outputs than it was given inputs."""


class WorkerLoop:
    """One replica's consumer loop."""

    def __init__(
        self,
        r: redis.Redis,
        settings: WorkerSettings,
        consumer: str,
        models: ModelSource,
        *,
        clock: Clock | None = None,
        observer: Observer | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.r = r
        self.s = settings
        self.keys = settings.keys
        self.consumer = consumer
        self.models = models
        self.clock = clock or Clock()
        self.observer = observer or Observer()
        self.stop = stop or threading.Event()
        self.stats = LoopStats()
        self.log = structlog.get_logger("worker").bind(consumer=consumer)
        self.publisher = streams.Publisher(r, self.keys, settings.results_maxlen, settings.dead_maxlen)
        self.maintenance = Maintenance(
            r, self.keys, consumer, interval_s=settings.maintenance_interval_ms / 1000, trim=settings.trim_input,
            reap_idle_ms=settings.reap_idle_ms, monotonic=self.clock.monotonic,
        )
        self._claim_cursor: dict[int, str] = {}
        self.batch_wait = make_batch_wait(settings)
        self.read_ahead = streams.ReadAhead(r, self.keys, consumer)
        self._pending_phase = True
        self._next_reclaim = 0.0
        self._next_heartbeat = 0.0
        self._rr = 0
        self.shards = [self.keys.shard(i) for i in settings.assigned_shards]
        self._started = time.time()
        self._inflight: list[Entry] = []
        self._inflight_since = 0.0

    # -- stages -------------------------------------------------------------------------------

    def collect(self) -> list[Entry] | None:
        """Gather up to ``max_batch`` entries: own pending first, then reclaims, then new ones.

        Returns ``None`` in burst mode once the stream is drained.
        """
        s, mono = self.s, self.clock.monotonic
        if self.read_ahead.pending:
            got = self.read_ahead.take(self.clock.now_us())
            if got:
                return got
        shards = self.shards
        if self._pending_phase:
            for sk in shards:
                got = streams.read(self.r, self.keys, sk, self.consumer, s.max_batch, None, True, self.clock.now_us())
                if got:
                    streams.delivery_counts(self.r, self.keys, got)
                    return got
            self._pending_phase = False
        if mono() >= self._next_reclaim:
            got = self._reclaim(shards)
            if got:
                return got
        block = s.burst_idle_ms if s.burst else s.block_ms
        batch: list[Entry] = []
        # Non-blocking pass over every shard, then block on one shard at a time.
        for sk in shards:
            batch += streams.read(self.r, self.keys, sk, self.consumer, s.max_batch - len(batch), None, False, self.clock.now_us())
            if len(batch) >= s.max_batch:
                return batch
        if not batch:
            if len(shards) == 1:
                batch = streams.read(self.r, self.keys, shards[0], self.consumer, s.max_batch, block, False, self.clock.now_us)
            else:
                deadline = mono() + block / 1000
                while not batch and mono() < deadline and not self.stop.is_set():
                    sk = shards[self._rr % len(shards)]
                    self._rr += 1
                    batch = streams.read(self.r, self.keys, sk, self.consumer, s.max_batch, 10, False, self.clock.now_us)
            if not batch:
                if not s.burst:
                    return []
                # Drained: before exiting, take over whatever crashed consumers left idle (a second
                # pass in case the first one started mid-stream at the saved cursor).
                return self._reclaim(shards) or self._reclaim(shards) or None
        start = mono()
        oldest_age_s = max(0.0, (self.clock.now_us() - enqueued_us(batch[0])) / 1e6)
        # Fill by polling: Redis checks BLOCK timeouts only every 1/hz s (100 ms at the default
        # hz 10), so a short blocking read can overshoot the batch wait by ~100 ms.
        while len(batch) < s.max_batch:
            remaining = self.batch_wait.fill_deadline(start, oldest_age_s, len(batch)) - mono()
            if remaining <= 0:
                break
            sk = shards[self._rr % len(shards)]
            self._rr += 1
            got = streams.read(self.r, self.keys, sk, self.consumer, s.max_batch - len(batch), None, False, self.clock.now_us())
            if got:
                batch += got
            elif self.stop.wait(min(remaining, FILL_POLL_S)):
                break
        return batch

    def _reclaim(self, shards: list[ShardKeys]) -> list[Entry]:
        """Claim entries idle longer than ``claim_idle_ms`` from other consumers (XAUTOCLAIM)."""
        s = self.s
        self._next_reclaim = self.clock.monotonic() + s.reclaim_interval_ms / 1000
        for sk in shards:
            got, deleted, self._claim_cursor[sk.shard] = streams.autoclaim(
                self.r, self.keys, sk, self.consumer, s.claim_idle_ms, s.max_batch, self.clock.now_us(),
                self._claim_cursor.get(sk.shard, "0-0"),
            )
            if deleted:
                self.log.warning("reclaim_deleted_entries", shard=sk.shard, ids=deleted[:10], count=len(deleted))
            if got:
                streams.delivery_counts(self.r, self.keys, got)
                self.stats.reclaimed += len(got)
                self.observer.reclaimed(len(got))
                self.log.info("reclaimed", shard=sk.shard, count=len(got))
                return got
        return []

    def decode(self, entries: list[Entry], now: int) -> tuple[list[tuple[Entry, Window]], list[Output]]:
        """Validate entries; invalid, over-delivered or expired ones become outputs right away."""
        good: list[tuple[Entry, Window]] = []
        early: list[Output] = []
        todo = []
        for e in entries:
            if e.deliveries > self.s.max_deliveries:
                early.append(self._dead(e, "max_deliveries", f"delivered {e.deliveries} times"))
            else:
                todo.append(e)
        decoded = decode_windows([e.fields for e in todo], self.s.limits, self.models.current.n_features)
        for e, w in zip(todo, decoded):
            if isinstance(w, WireError):
                early.append(self._dead(e, w.reason, w.detail))
                continue
            if w.deadline_us is not None and now > w.deadline_us:
                early.append(Output(e, "r", encode_result(self._expired(e, w, now))))
                self.stats.expired += 1
                continue
            good.append((e, w))
        return good, early

    def predict(self, items: list[tuple[Entry, Window]]) -> list[np.ndarray | BaseException]:
        """Forward the batch; if it raises, split it so only the failing window is dead-lettered."""
        if not items:
            return []
        model = self.models.current
        try:
            probs = model.predict([w.x for _, w in items])
        except Exception as err:  # any model failure: isolate the culprit by bisection
            if len(items) == 1:
                return [err]
            mid = len(items) // 2
            return self.predict(items[:mid]) + self.predict(items[mid:])
        if len(probs) != len(items):
            raise BatchMismatch(f"predictor returned {len(probs)} outputs for {len(items)} inputs")
        return list(probs)

    def unbatch(
        self, items: list[tuple[Entry, Window]], outs: list[np.ndarray | BaseException], batch_us: int, infer_us: int, pub_us: int
    ) -> tuple[list[Output], list[Result]]:
        """Turn per-window predictions into result (or dead-letter) outputs."""
        if len(outs) != len(items):
            raise BatchMismatch(f"{len(outs)} outputs for {len(items)} inputs")
        model = self.models.current
        outputs: list[Output] = []
        results: list[Result] = []
        entries: list[Entry] = []
        for (e, w), p in zip(items, outs):
            if isinstance(p, BaseException):
                outputs.append(self._dead(e, "predict_failed", f"{type(p).__name__}: {p}"))
                continue
            probs = p.tolist()
            label = int(np.argmax(p)) if len(probs) > 16 else probs.index(max(probs))
            results.append(Result(
                input_id=e.id, cid=w.cid, status="ok", label=label, class_name=model.classes[label],
                probs=probs, model=model.version, worker=self.consumer,
                queue_us=max(0, e.read_us - w.ts_us), wait_us=max(0, batch_us - e.read_us), infer_us=infer_us,
                e2e_us=max(0, pub_us - w.ts_us), ts_us=pub_us, batch=len(items), meta=w.meta,
            ))
            entries.append(e)
        outputs += [Output(e, "r", f) for e, f in zip(entries, encode_results(results))]
        return outputs, results

    def publish(self, outputs: list[Output]) -> None:
        """Publish outputs and acknowledge inputs atomically (see ``streams.PUBLISH_LUA``)."""
        self._count_published(self.publisher.send(outputs))

    def _count_published(self, done: list[tuple[int, int]]) -> None:
        for sent, published in done:
            if published < sent:
                dup = sent - published
                self.stats.duplicates += dup
                self.observer.duplicates(dup)
                self.log.warning("already_acknowledged", count=dup)

    # -- driver -------------------------------------------------------------------------------

    def step(self) -> bool:
        """Run one batch cycle; returns False when burst mode found the stream drained."""
        served = self.models.current.version
        self.models.poll()
        self.heartbeat(force=self.models.current.version != served)  # a swap shows in status at once
        self.maintenance.maybe_run()
        entries = self.collect()
        if entries is None:
            return False
        if not entries:
            return True
        if len(entries) >= self.s.max_batch and not self.stop.is_set():
            # Saturated: have Redis deliver the next batch while this one computes.
            self.read_ahead.request(entries[-1].shard, self.s.max_batch)
        self.process(entries)
        return True

    def process(self, entries: list[Entry]) -> None:
        """Decode, predict, unbatch and publish one batch of entries."""
        self._inflight, self._inflight_since = entries, self.clock.monotonic()
        t_read = time.perf_counter()
        try:
            batch_us = self.clock.now_us()
            good, outputs = self.decode(entries, batch_us)
            t0 = time.perf_counter()
            outs = self.predict(good)
            infer_s = time.perf_counter() - t0
            more, results = self.unbatch(good, outs, batch_us, int(infer_s * 1e6), self.clock.now_us())
            outputs += more
            self.publish(outputs)
            self.batch_wait.observe(len(entries), time.perf_counter() - t_read)
        finally:
            self._inflight = []
        n_dead = sum(o.kind == "d" for o in outputs)
        self.stats.batches += 1
        self.stats.results += len(outputs) - n_dead
        self.stats.dead += n_dead
        self.stats.batch_sizes.append(len(good))
        self.observer.batch(outputs, results, infer_s)

    def run(self) -> LoopStats:
        """Serve until ``stop`` is set (or, in burst mode, the stream is drained)."""
        streams.ensure_groups(self.r, self.keys)
        keeper = threading.Thread(target=self._keep_claims, name="claim-keeper", daemon=True)
        keeper.start()
        outage_since: float | None = None
        delay = 0.05
        self.log.info("worker_started", model=self.models.current.version, pid=os.getpid())
        while not self.stop.is_set():
            try:
                if not self.step():
                    break
                if outage_since is not None:
                    self.log.info("redis_recovered", outage_s=round(time.monotonic() - outage_since, 2))
                    outage_since, delay = None, 0.05
            except TRANSIENT as err:
                self.publisher.reset()
                self.read_ahead.reset()
                if outage_since is None:
                    outage_since = time.monotonic()
                    self.log.error("redis_unavailable", error=str(err))
                self._pending_phase = True  # re-read our own pending entries once Redis is back
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 2.0)
            except redis.ResponseError as err:
                if "NOGROUP" not in str(err):
                    raise
                self.log.error("group_missing_recreated", error=str(err))
                streams.ensure_groups(self.r, self.keys)
                self._pending_phase = True
        try:
            held = self.read_ahead.take(self.clock.now_us())
            if held:  # entries already delivered to us: serve them before leaving
                self.process(held)
            self._count_published(self.publisher.collect())
        except (*TRANSIENT, redis.ResponseError) as err:  # the inputs stay pending for a restart
            self.log.warning("final_publish_failed", error=str(err))
        self.shutdown()
        return self.stats

    def shutdown(self) -> None:
        """Drop our heartbeat; delete our consumer if it holds no pending entries."""
        try:
            self.r.delete(self.keys.heartbeat(self.consumer))
            self.r.hdel(self.keys.workers, self.consumer)
            for sk in self.keys.all_shards():
                self.maintenance.delete_if_idle(sk.windows, self.consumer)
        except (*TRANSIENT, redis.ResponseError) as err:
            self.log.warning("shutdown_cleanup_failed", error=str(err))
        self.log.info("worker_stopped", batches=self.stats.batches, results=self.stats.results, dead=self.stats.dead)

    def heartbeat(self, force: bool = False) -> None:
        """Refresh this replica's heartbeat key (TTL) and its entry in the workers hash."""
        now = self.clock.monotonic()
        if not force and now < self._next_heartbeat:
            return
        self._next_heartbeat = now + self.s.heartbeat_interval_s
        info: dict[str, Any] = {
            "consumer": self.consumer, "host": socket.gethostname(), "pid": os.getpid(),
            "model": self.models.current.version, "started": self._started, "ts": time.time(),
            "results": self.stats.results, "dead": self.stats.dead,
        }
        doc = json.dumps(info)
        pipe = self.r.pipeline(transaction=False)
        pipe.set(self.keys.heartbeat(self.consumer), doc, ex=max(1, int(self.s.heartbeat_ttl_s)))
        pipe.hset(self.keys.workers, self.consumer, doc)
        pipe.execute()

    def _keep_claims(self) -> None:
        interval = self.s.claim_idle_ms / 3000
        while not self.stop.wait(interval):
            inflight = self._inflight
            if inflight and self.clock.monotonic() - self._inflight_since >= interval:
                try:
                    streams.refresh_claims(self.r, self.keys, self.consumer, inflight, int(interval * 1000))
                except Exception as err:  # never let the keeper thread die
                    self.log.warning("claim_refresh_failed", error=str(err))

    def _dead(self, e: Entry, reason: str, detail: str) -> Output:
        self.observer.dead(reason)
        self.log.warning("dead_letter", id=e.id, reason=reason, detail=detail[:200])
        return Output(e, "d", encode_dead(e.fields, input_id=e.id, reason=reason, detail=detail,
                                          worker=self.consumer, deliveries=e.deliveries))

    def _expired(self, e: Entry, w: Window, now: int) -> Result:
        return Result(
            input_id=e.id, cid=w.cid, status="expired", label=-1, class_name="", probs=[],
            model=self.models.current.version, worker=self.consumer, queue_us=max(0, e.read_us - w.ts_us),
            wait_us=0, infer_us=0, e2e_us=max(0, now - w.ts_us), ts_us=now, batch=0, meta=w.meta,
        )
