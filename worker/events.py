"""What happens around a published batch: one event, handed to the parts that listen.

A small callback runner in the manner of LitServe's: :class:`Listeners` holds the parts a replica's
:meth:`worker.loop.WorkerLoop.finish` tells about each batch it published — the batch-wait policy's
service times (``worker.batching.ServiceTimes``), tracing's spans (``worker.tracing.TraceEnd``, only
with ``tracing`` on), the counts (``worker.counters.Counters``), drift's sample (``worker.drift``) and
the breaker (``worker.guard.ModelGuard``), in that order, on the loop thread. A listener is anything
with :meth:`BatchListener.on_published` (a Protocol, never probed); a new feature adds a listener in
``worker.loop.LoopParts.build``, not a line in the loop. A listener's error propagates, as a line in the
loop would.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from worker.types import Batch

__all__ = ["BatchListener", "Listeners"]


class BatchListener(Protocol):
    """A part told about each published batch."""

    def on_published(self, batch: Batch) -> None:
        """``batch``'s outputs are published and its inputs acknowledged (loop thread)."""
        ...


class Listeners:
    """Runs the listeners of the "batch published" event, in the order they were added."""

    def __init__(self, listeners: Iterable[BatchListener] = ()) -> None:
        self._listeners: list[BatchListener] = list(listeners)

    def add(self, listener: BatchListener) -> None:
        """Tell ``listener`` too, after the ones already added."""
        self._listeners.append(listener)

    def published(self, batch: Batch) -> None:
        """Tell every listener that ``batch`` was published."""
        for listener in self._listeners:
            listener.on_published(batch)

    def __len__(self) -> int:
        return len(self._listeners)
