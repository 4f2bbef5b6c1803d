"""What a replica tells the world while it serves: its heartbeat key, and claims kept fresh.

The heartbeat (a key with a TTL plus an entry in the workers hash) is what ``bigru-worker --check``
and ``status`` read. The loop refreshes it between batches; a :class:`Pulse` thread refreshes it
too, so a batch that computes longer than the TTL does not make a working replica look dead, while
a replica whose loop is stuck (or whose batch computes past ``stall_s``) still goes stale. The claim keeper is a thread that resets the idle time of entries this replica
holds, so a slow batch is not reclaimed by another consumer while it is still being served.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable

import redis
import structlog

from protocol.keys import Keys
from worker.config import Liveness
from worker.counters import LoopStats
from worker.drift_report import DriftSummary
from worker.heartbeat_record import HeartbeatRecord
from worker.reader import refresh_claims
from worker.types import Entry, ModelSource


class Heartbeat:
    """Writes this replica's heartbeat at most every ``interval_s`` (or at once when forced)."""

    def __init__(self, r: redis.Redis, keys: Keys, consumer: str, ttl_s: float, interval_s: float,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.r, self.keys, self.consumer = r, keys, consumer
        self.ttl_s, self.interval_s, self.monotonic = ttl_s, interval_s, monotonic
        self.started = time.time()
        self._next = 0.0

    @classmethod
    def from_settings(cls, r: redis.Redis, keys: Keys, consumer: str, settings: Liveness,
                      monotonic: Callable[[], float] = time.monotonic) -> Heartbeat:
        """``consumer``'s heartbeat as its :class:`~worker.config.Liveness` settings configure it."""
        return cls(r, keys, consumer, settings.heartbeat_ttl_s, settings.heartbeat_interval_s, monotonic)

    def beat(self, model: str, results: int, dead: int, force: bool = False, precision: str = "fp32",
             breaker: Callable[[], tuple[str, int, str]] | None = None,
             drift: Callable[[], DriftSummary | None] | None = None) -> None:
        """Refresh the heartbeat key (TTL) and the workers hash entry, if due (``breaker()``: the breaker's
        state, trips and reason; ``drift()``: the last drift summary; both asked for only when a beat is written)."""
        now = self.monotonic()
        if not force and now < self._next:
            return
        self._next = now + self.interval_s
        state, trips, reason = breaker() if breaker is not None else ("closed", 0, "")
        doc = HeartbeatRecord(consumer=self.consumer, host=socket.gethostname(), pid=os.getpid(), model=model,
                              precision=precision, started=self.started, ts=time.time(), results=results, dead=dead,
                              breaker=state, breaker_trips=trips, breaker_reason=reason,
                              drift=drift() if drift is not None else None).to_json()
        pipe = self.r.pipeline(transaction=False)
        pipe.set(self.keys.heartbeat(self.consumer), doc, ex=max(1, int(self.ttl_s)))
        pipe.hset(self.keys.workers, self.consumer, doc)
        pipe.execute()

    def remove(self) -> None:
        """Drop the heartbeat key and the workers hash entry (clean shutdown)."""
        self.r.delete(self.keys.heartbeat(self.consumer))
        self.r.hdel(self.keys.workers, self.consumer)


class Progress:
    """When the loop thread last began a step, and since when a batch computes: whether the heartbeat
    thread may vouch for the replica (:meth:`working`).

    The loop thread writes ``stepped``; the compute thread alone writes ``computing_since``; the heartbeat
    thread only reads them (one reference store each, atomic under the GIL).
    """

    def __init__(self, ttl_s: float, stall_s: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s, self.stall_s, self.monotonic = ttl_s, stall_s, monotonic
        self.stepped = monotonic()  # the loop thread last began a step
        self.computing_since: float | None = None  # the batch on the compute thread began

    @classmethod
    def from_settings(cls, settings: Liveness, monotonic: Callable[[], float] = time.monotonic) -> Progress:
        """Progress judged by the :class:`~worker.config.Liveness` settings (heartbeat TTL, ``stall_s``)."""
        return cls(settings.heartbeat_ttl_s, settings.stall_s, monotonic)

    def step(self) -> None:
        """The loop thread begins a step."""
        self.stepped = self.monotonic()

    def working(self) -> bool:
        """The loop stepped within the heartbeat TTL, or a batch has computed for less than ``stall_s``."""
        now = self.monotonic()
        since = self.computing_since
        return now - self.stepped < self.ttl_s or (since is not None and now - since < self.stall_s)


class Vitals:
    """What a replica's heartbeat says: the version served, its counts, the breaker, the last drift
    summary. The loop thread and the heartbeat thread both call :meth:`beat` (one lock)."""

    def __init__(self, heartbeat: Heartbeat, models: ModelSource, stats: LoopStats,
                 breaker_view: Callable[[], tuple[str, int, str]], drift: Callable[[], DriftSummary | None]) -> None:
        self.heartbeat, self.models, self.stats = heartbeat, models, stats
        self.breaker_view, self.drift_summary = breaker_view, drift
        self._lock = threading.Lock()
        self._state = breaker_view()[0]  # the breaker state last shown

    def beat(self, force: bool = False) -> None:
        """Refresh the heartbeat (when due, or now with ``force``; a breaker change shows at once)."""
        with self._lock:
            model = self.models.current
            state = self.breaker_view()[0]
            force, self._state = force or state != self._state, state
            self.heartbeat.beat(model.version, self.stats.results, self.stats.dead, force, model.precision,
                                breaker=self.breaker_view, drift=self.drift_summary)


class Pulse:
    """A daemon thread calling ``beat()`` every ``interval_s`` while ``alive()`` says the replica works."""

    def __init__(self, beat: Callable[[], None], alive: Callable[[], bool], interval_s: float) -> None:
        self.beat, self.alive, self.interval_s = beat, alive, interval_s
        self.log = structlog.get_logger("worker")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def close(self) -> None:
        """Stop the thread and wait for it (so no beat follows a clean shutdown's removal)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if not self.alive():
                continue
            try:
                self.beat()
            except Exception as err:  # never let the heartbeat thread die (Redis outages included)
                self.log.warning("heartbeat_failed", error=str(err))


class HeldBatches:
    """The batches a replica read and has not published yet, by key: the loop thread adds and drops
    them, the claim keeper thread reads them; every access takes one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[int, tuple[float, list[Entry]]] = {}

    def add(self, key: int, since: float, entries: list[Entry]) -> None:
        """Hold ``entries`` (read at monotonic time ``since``) under ``key``."""
        with self._lock:
            self._by_key[key] = (since, entries)

    def drop(self, key: int) -> None:
        """Stop holding the batch ``key`` (published), if held."""
        with self._lock:
            self._by_key.pop(key, None)

    def take_all(self) -> list[Entry]:
        """Stop holding every batch; their entries."""
        with self._lock:
            held, self._by_key = self._by_key, {}
        return [e for _, entries in held.values() for e in entries]

    def snapshot(self) -> list[tuple[float, list[Entry]]]:
        """(since, entries) of every batch held now."""
        with self._lock:
            return list(self._by_key.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_key)


class ClaimKeeper:
    """A daemon thread refreshing the claims on entries held longer than ``claim_idle_ms / 3``."""

    def __init__(self, r: redis.Redis, keys: Keys, consumer: str, claim_idle_ms: int,
                 held: Callable[[], list[tuple[float, list[Entry]]]], stop: threading.Event,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.r, self.keys, self.consumer, self.held, self.stop, self.monotonic = r, keys, consumer, held, stop, monotonic
        self.interval = claim_idle_ms / 3000
        self.log = structlog.get_logger("worker").bind(consumer=consumer)
        self._thread = threading.Thread(target=self._run, name="claim-keeper", daemon=True)

    def start(self) -> None:
        """Start the thread (it ends with ``stop``)."""
        self._thread.start()

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            self.refresh()

    def refresh(self) -> None:
        """One pass: refresh the claims of every batch held at least one interval."""
        now = self.monotonic()
        entries = [e for since, es in self.held() if now - since >= self.interval for e in es]
        if not entries:
            return
        try:
            refresh_claims(self.r, self.keys, self.consumer, entries, int(self.interval * 1000))
        except Exception as err:  # never let the keeper thread die
            self.log.warning("claim_refresh_failed", error=str(err))
