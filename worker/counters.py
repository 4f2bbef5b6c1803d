"""The one way anything in a replica tells the metrics: :class:`Counters`.

Every event a replica counts or shows — a batch published, a dead letter, entries reclaimed,
duplicates refused, a short ``WAIT``, the breaker's state, a drift reading, a reload's outcome, the
version served — goes through one :class:`Counters` method, which hands it to every
:class:`Observer` of the replica: :class:`Tally` (which keeps :class:`LoopStats`, the
loop's own counts: what ``WorkerLoop.run`` returns and the heartbeat shows) and the metrics observer
(``worker.metrics.WorkerMetrics`` for Prometheus, or the no-op default). An event is defined once,
here, and each observer records it its own way; no part of the replica holds an observer. The loop,
the stages, the publisher, the breaker (``worker.guard``), drift (``worker.drift``), hot reload
(``worker.reload``) and the supervisor are given this object (or one of its bound methods).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from worker.drift_report import DriftReport
from worker.types import Batch

if TYPE_CHECKING:
    from protocol.durability import ReplicaAckShort

__all__ = ["RECENT_BATCHES", "Counters", "LoopStats", "Observer", "Tally"]

#: How many recent batch sizes :class:`LoopStats` keeps (bounded: a worker runs for months).
RECENT_BATCHES = 1024


class Observer:
    """Hooks for metrics (``worker.metrics``); the default does nothing. Only :class:`Counters` calls them."""

    def batch(self, batch: Batch) -> None:
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

    def replica_ack_short(self) -> None:
        """Called when a publish's ``WAIT`` got fewer replica acknowledgements than ``wait_replicas``."""

    def breaker(self, state: str, trips: int) -> None:
        """Called when the breaker changes state (``worker.breaker``); ``trips`` counts its openings."""

    def drift(self, report: DriftReport) -> None:
        """Called with each drift reading (``worker.drift``)."""


@dataclass
class LoopStats:
    """Counts of one loop run (kept by :class:`Tally`); ``batch_sizes`` holds the most recent batches' sizes only."""

    batches: int = 0
    results: int = 0
    dead: int = 0
    expired: int = 0
    reclaimed: int = 0
    duplicates: int = 0
    replica_ack_short: int = 0  # publishes whose WAIT fell short of wait_replicas
    windows: int = 0  # windows that went through the model
    batch_sizes: deque[int] = field(default_factory=lambda: deque(maxlen=RECENT_BATCHES))


class Tally(Observer):
    """The observer that keeps a :class:`LoopStats`."""

    def __init__(self, stats: LoopStats | None = None) -> None:
        self.stats = stats or LoopStats()

    def batch(self, batch: Batch) -> None:
        """Count a published batch: its results (served and expired), windows and size."""
        s = self.stats
        s.batches += 1
        s.results += batch.served + batch.expired
        s.expired += batch.expired
        s.windows += len(batch.xs)
        s.batch_sizes.append(batch.pass_windows)

    def dead(self, reason: str) -> None:
        """Count a dead letter."""
        self.stats.dead += 1

    def reclaimed(self, n: int) -> None:
        """Count entries claimed from other consumers."""
        self.stats.reclaimed += n

    def duplicates(self, n: int) -> None:
        """Count outputs refused because their inputs were acknowledged elsewhere."""
        self.stats.duplicates += n

    def replica_ack_short(self) -> None:
        """Count a publish whose ``WAIT`` fell short."""
        self.stats.replica_ack_short += 1


class Counters:
    """Tells every observer of a replica about an event (see the module docstring)."""

    def __init__(self, observer: Observer | None = None) -> None:
        self.tally = Tally()
        self.observer = observer or Observer()
        self.log = structlog.get_logger("worker")

    @property
    def stats(self) -> LoopStats:
        """The loop's own counts."""
        return self.tally.stats

    @property
    def _observers(self) -> tuple[Observer, Observer]:
        return self.tally, self.observer

    def on_published(self, batch: Batch) -> None:
        """A batch was published (a listener of ``worker.events.Listeners``)."""
        for o in self._observers:
            o.batch(batch)

    def dead(self, reason: str) -> None:
        """An entry was dead-lettered."""
        for o in self._observers:
            o.dead(reason)

    def reclaimed(self, n: int) -> None:
        """``n`` entries were claimed from other consumers."""
        for o in self._observers:
            o.reclaimed(n)

    def duplicates(self, n: int) -> None:
        """``n`` outputs were refused because their inputs were acknowledged elsewhere."""
        for o in self._observers:
            o.duplicates(n)

    def replica_ack_short(self, short: ReplicaAckShort) -> None:
        """A publish's ``WAIT`` got fewer replica acknowledgements than asked (logged, counted, not retried)."""
        for o in self._observers:
            o.replica_ack_short()
        self.log.warning("replica_ack_short", node=short.node, asked=short.asked, acked=short.acked)

    def breaker(self, state: str, trips: int) -> None:
        """The breaker changed state."""
        for o in self._observers:
            o.breaker(state, trips)

    def drift(self, report: DriftReport) -> None:
        """A drift reading (``worker.drift``)."""
        for o in self._observers:
            o.drift(report)

    def reload(self, accepted: bool, version: str) -> None:
        """A new version was accepted (swapped in) or refused (``worker.reload``)."""
        for o in self._observers:
            o.reload(accepted, version)

    def model_version(self, version: str) -> None:
        """The replica serves ``version`` (once loaded and warmed up, and after each swap or fallback)."""
        for o in self._observers:
            o.model_version(version)
