"""Publishing windows onto the input stream(s)."""

from __future__ import annotations

import itertools
import time
import uuid
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import redis

from producer.backpressure import Backpressure, BackpressureError
from producer.classify import AsyncProducer, Call, ClassifyError, block_ms
from producer.config import ProducerSettings
from producer.entries import Entry, entries_of, group_windows
from producer.labels import Sent, send_labels
from producer.writes import entry_id as _eid
from producer.writes import reloads_script as _reloads_script
from producer.writes import write as _write
from protocol.durability import Durability, ReplicaAckError, execute
from protocol.idempotent import IdempotentWriter
from protocol.keys import Keys, ShardKeys
from protocol.outage import OutageBudget, RedisOutageError
from protocol.results import Result

__all__ = ["AsyncProducer", "ClassifyError", "Entry", "Producer", "RedisOutageError", "group_windows"]


class Producer:
    """Publishes windows (wire format v1) to the input stream, routing by id across shards.

    Every publishing method goes through :meth:`publish_entries`: one backpressure check, then one
    pipelined round trip. With a :class:`Backpressure` gate, every ``publish``/``publish_batch`` and
    every ``publish_many`` chunk first checks the consumer group's lag and raises
    :class:`BackpressureError` (or waits) when it is over the limit. The lag counts stream entries,
    so a multi-window entry counts once.

    With an :class:`~protocol.idempotent.IdempotentWriter` (``idempotence``) every write is idempotent:
    a retried write of the same entry id (:attr:`Entry.iid`) within the writer's window returns the
    first entry's id instead of adding a second entry (docs/reliability.md, "Idempotent publishing").

    With ``durability`` enabled every round trip ends with ``WAIT`` for its replicas; fewer
    replicas than asked raises :class:`~protocol.durability.ReplicaAckError` (the entries were
    written: ``err.results`` holds their ids; they may or may not survive a failover).

    Every round trip rides out a Redis outage (``outage``, default 60 s: a restart, a failover of one
    cluster shard) by retrying it with backoff; past the budget it raises
    :class:`~protocol.outage.RedisOutageError`. A retried write whose first reply was lost is not
    duplicated with ``idempotence``; without it, it may be (docs/reliability.md).
    """

    def __init__(
        self, r: redis.Redis, keys: Keys, pipeline_size: int = 500, backpressure: Backpressure | None = None,
        idempotence: IdempotentWriter | None = None,
        durability: Durability | None = None, outage: OutageBudget | None = None,
    ) -> None:
        self.r = r
        self.outage = outage if outage is not None else OutageBudget.for_client(r)
        self.keys = keys
        self.pipeline_size = pipeline_size
        self.backpressure = backpressure
        self.idempotence = idempotence
        self.durability = durability or Durability()
        self._rr = itertools.count()

    @classmethod
    def from_settings(cls, s: ProducerSettings, r: redis.Redis | None = None) -> Producer:
        """A producer configured by ``s`` (connecting with its credentials/TLS unless ``r`` is given)."""
        r = r if r is not None else s.connect()
        gate = None
        if s.max_lag > 0:
            gate = Backpressure(r, s.keys, s.max_lag, s.backpressure, block_timeout_s=s.backpressure_timeout_s,
                                check_interval_s=s.lag_check_interval_ms / 1000)
        idem = IdempotentWriter(s.keys, s.producer_id, s.idempotency_window_s) if s.producer_id else None
        return cls(r, s.keys, s.pipeline_size, gate, idem, Durability(s.wait_replicas, s.wait_timeout_ms),
                   s.outage())

    def label(self, labels: Iterable[tuple[str, str]], src: str = "") -> list[Sent]:
        """Send the true class of served windows, ``(cid, class name or index)`` pairs, onto the labels
        stream (:func:`producer.labels.send_labels`: a malformed label or one outside the serving model's
        classes is refused in its :class:`Sent`, the others are written)."""
        return send_labels(self.r, self.keys, labels, src=src)

    def gate(self) -> None:
        """Apply backpressure (no-op without a gate)."""
        if self.backpressure is not None:
            self.backpressure.wait()

    def shard_for(self, cid: str | None) -> int:
        """Shard of a window: crc32 of its id, or round-robin when it has none."""
        if self.keys.shards == 1:
            return 0
        if cid:
            return zlib.crc32(cid.encode()) % self.keys.shards
        return next(self._rr) % self.keys.shards

    def publish_entries(self, entries: Sequence[Entry]) -> list[str]:
        """Send ``entries`` in one pipelined round trip after one backpressure check; their stream entry ids.

        Each entry is encoded once the gate has let the round trip through and goes to the shard
        of its :attr:`Entry.route`. Callers keep a round trip to about ``pipeline_size`` entries.
        Through a Redis outage the round trip is retried (see the class docstring).
        """
        if not entries:
            return []
        windows = sum(e.windows for e in entries)
        return self.outage.call(lambda: self._publish_once(entries), operation="publish", windows=windows)

    @_reloads_script
    def _publish_once(self, entries: Sequence[Entry]) -> list[str]:
        self.gate()
        if len(entries) == 1 and not self.durability.enabled:
            (e,) = entries
            return [_eid(self._add(self.r, self._shard(e), e))]
        pipe = self.r.pipeline(transaction=False)
        return self._execute(pipe, self._queue(pipe, entries))

    def _queue(self, pipe: Any, entries: Sequence[Entry]) -> list[tuple[int, int | None]]:
        """Queue the writes of ``entries``; per entry, where its id is: (reply index, index in that reply).

        Idempotent writes on the script path go as one call per shard; otherwise one command per entry.
        """
        idem = self.idempotence
        if idem is not None:
            idem.prepare(self.r)
        if idem is None or not idem.batches:
            for e in entries:
                self._add(pipe, self._shard(e), e)
            return [(k, None) for k in range(len(entries))]
        by_shard: dict[int, list[int]] = {}
        for i, e in enumerate(entries):
            by_shard.setdefault(self.shard_for(e.route), []).append(i)
        slots: list[tuple[int, int | None]] = [(0, None)] * len(entries)
        for k, (shard, idxs) in enumerate(by_shard.items()):
            idem.add_many(pipe, self.keys.shard(shard), [(entries[i].fields(), entries[i].iid or uuid.uuid4().hex)
                                                         for i in idxs])
            for j, i in enumerate(idxs):
                slots[i] = (k, j)
        return slots

    def _execute(self, pipe: Any, slots: list[tuple[int, int | None]] | None = None) -> list[str]:
        """Run a pipeline of writes (then ``WAIT`` for the replicas when durability asks for it); the
        entry ids, per ``slots`` (default: one reply per entry)."""
        def ids(replies: list[Any]) -> list[str]:
            if slots is None:
                return [_eid(eid) for eid in replies]
            return [_eid(replies[k] if j is None else replies[k][j]) for k, j in slots]

        try:
            return ids(execute(self.r, pipe, self.durability).check())
        except ReplicaAckError as err:
            err.results = ids(err.results)
            raise

    def _shard(self, e: Entry) -> ShardKeys:
        return self.keys.shard(self.shard_for(e.route))

    def _add(self, target: Any, sk: ShardKeys, e: Entry, iid: str | None = None) -> Any:
        """Append (pipeline) or send (client) the write of ``e`` to ``sk`` (see :func:`producer.writes.write`)."""
        if self.idempotence is not None:
            self.idempotence.prepare(self.r)
        return _write(self.idempotence, target, sk, e.fields(), iid or e.iid)

    def publish(
        self,
        window: np.ndarray,
        id: str | None = None,
        *,
        deadline_us: int | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> str:
        """Publish one [T, F] window; returns the stream entry id."""
        return self.publish_entries([Entry(window, cid=id, deadline_us=deadline_us, meta=meta)])[0]

    def publish_batch(
        self,
        xs: np.ndarray,
        ids: Sequence[str | None] | None = None,
        *,
        cid: str | None = None,
        deadline_us: int | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> str:
        """Publish ``xs`` [N, T, F] as ONE multi-window entry; returns its stream entry id.

        ``ids`` (one per window) become the entry's ``cids``; ``cid``, ``deadline_us`` and ``meta``
        are shared by the entry. The entry goes to the shard of ``cid``, else of its first
        non-empty id, else round-robin.
        """
        entry = Entry(xs, multi=True, cid=cid, cids=ids, deadline_us=deadline_us, meta=meta)
        return self.publish_entries([entry])[0]

    def publish_many(
        self,
        windows: Iterable[np.ndarray],
        ids: Sequence[str | None] | None = None,
        *,
        meta: Mapping[str, Any] | None = None,
        per_entry: int = 1,
    ) -> list[str]:
        """Publish windows in pipelined round trips of ``pipeline_size`` entries; returns entry ids in order.

        ``per_entry`` 1: one entry per window (one id per window). ``per_entry`` > 1: consecutive
        windows of equal shape are packed into multi-window entries of up to ``per_entry`` windows,
        their ``ids`` becoming the entry's ``cids``; the result has ONE id per entry (a window left
        alone by a shape change goes out as a single-window entry). An entry is routed by its
        first non-empty id, else round-robin. ``meta`` is set on every entry.

        On backpressure refusal the :class:`BackpressureError` carries the ids already published
        (``err.published``); the remaining windows were not sent. A :class:`ReplicaAckError` carries
        them too (earlier chunks' ids and its chunk's, all written).
        """
        if per_entry < 1:
            raise ValueError(f"per_entry must be >= 1, got {per_entry}")
        out: list[str] = []
        entries = entries_of(windows, ids, meta, per_entry)
        try:
            while chunk := list(itertools.islice(entries, self.pipeline_size)):
                out += self.publish_entries(chunk)
        except BackpressureError as err:
            err.published = out
            raise
        except ReplicaAckError as err:
            err.published = out + err.results
            raise
        return out

    def classify(
        self, windows: Iterable[np.ndarray], ids: Sequence[str] | None = None, *, timeout: float = 10.0,
        meta: Mapping[str, Any] | None = None,
    ) -> list[Result]:
        """Classify ``windows`` ([T, F] each) and wait for their results, returned in input order.

        Publishes one single-window entry per window (client ids: ``ids``, else the window's index)
        naming a fresh reply stream, reads that stream (``XREAD BLOCK``) until every window is
        answered or ``timeout`` seconds pass, then deletes it. Raises :class:`ClassifyError` naming
        the windows that timed out or were dead-lettered (with the results it did get). Applies
        backpressure once, before publishing. Rides out a Redis outage like :meth:`publish_entries`
        (the reply stream is read from where the call had got to).
        """
        call = Call(self.keys, windows, ids, meta)
        if not call.entries:
            return []
        deadline = time.monotonic() + timeout
        self.outage.call(self.gate, operation="classify")
        eids: list[str] = []
        for lo in range(0, len(call.entries), self.pipeline_size):
            chunk = call.entries[lo: lo + self.pipeline_size]
            eids += self.outage.call(lambda chunk=chunk: self._classify_chunk(call, chunk),  # type: ignore[misc]
                                     operation="classify", windows=len(chunk))
        call.published(eids)
        try:
            while not call.done and (block := block_ms(deadline)) is not None:
                call.add(self.outage.call(lambda block=block: self.r.xread(  # type: ignore[misc]
                    {call.key: call.last}, count=1000, block=block), operation="classify"))
        finally:
            self.outage.call(lambda: self.r.delete(call.key), operation="classify")
        return call.outcome()

    @_reloads_script
    def _classify_chunk(self, call: Call, chunk: Sequence[Entry]) -> list[str]:
        pipe = self.r.pipeline(transaction=False)
        for e in chunk:
            self._add(pipe, call.sk, e, call.iid(e))
        return self._execute(pipe)
