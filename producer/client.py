"""Publishing windows onto the input stream(s)."""

from __future__ import annotations

import hashlib
import itertools
import time
import uuid
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis
import redis.asyncio

from producer.backpressure import Backpressure, BackpressureError
from producer.config import ProducerSettings
from producer.writes import entry_id as _eid
from producer.writes import reloads_script as _reloads_script
from producer.writes import write as _write
from protocol.durability import Durability, ReplicaAckError, execute
from protocol.idempotent import IdempotentWriter
from protocol.keys import Keys, ShardKeys
from protocol.replies import as_str
from protocol.wire import Fields, Result, decode_result, encode_window
from protocol.wire_multi import encode_windows_entry


@dataclass(frozen=True, eq=False)
class Entry:
    """One input-stream entry before encoding: a ``[T, F]`` window, or (``multi``) ``[N, T, F]`` windows.

    :meth:`Producer.publish_entries` encodes it, stamping its ``ts``, once the backpressure gate has
    let it through.
    """

    x: np.ndarray
    multi: bool = False
    cid: str | None = None
    cids: Sequence[str | None] | None = None
    deadline_us: int | None = None
    meta: Mapping[str, Any] | None = None
    reply: str | None = None  # reply stream name (single-window entries; see Producer.classify)

    @classmethod
    def of_windows(
        cls, windows: Sequence[np.ndarray], ids: Sequence[str | None] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> Entry:
        """One window as a single-window entry (its id the ``cid``), or several windows of one shape as a
        multi-window entry (their ids its ``cids``, when any is set); ``meta`` is the entry's."""
        if len(windows) == 1:
            return cls(windows[0], cid=ids[0] if ids is not None else None, meta=meta)
        cids = list(ids) if ids is not None and any(ids) else None
        return cls(np.stack(windows), multi=True, cids=cids, meta=meta)

    @property
    def iid(self) -> str | None:
        """The idempotency id: ``cid``, else (multi-window) ``d:`` and a digest of ``cids``, else None."""
        if self.cid:
            return self.cid
        if self.cids and any(self.cids):
            return "d:" + hashlib.sha256("\x1f".join(c or "" for c in self.cids).encode()).hexdigest()[:32]
        return None

    @property
    def route(self) -> str | None:
        """The id that picks the shard: ``cid``, else the first non-empty of ``cids`` (None: round-robin)."""
        return self.cid or _first_id(self.cids)

    def fields(self) -> dict[bytes, bytes]:
        """The stream fields (wire format v1, ``ts`` stamped now)."""
        if self.multi:
            return encode_windows_entry(self.x, cids=self.cids, cid=self.cid, deadline_us=self.deadline_us,
                                        meta=self.meta)
        return encode_window(self.x, cid=self.cid, deadline_us=self.deadline_us, meta=self.meta, reply=self.reply)


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
    """

    def __init__(
        self, r: redis.Redis, keys: Keys, pipeline_size: int = 500, backpressure: Backpressure | None = None,
        idempotence: IdempotentWriter | None = None,
        durability: Durability | None = None,
    ) -> None:
        self.r = r
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
        return cls(r, s.keys, s.pipeline_size, gate, idem, Durability(s.wait_replicas, s.wait_timeout_ms))

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

    @_reloads_script
    def publish_entries(self, entries: Sequence[Entry]) -> list[str]:
        """Send ``entries`` in one pipelined round trip after one backpressure check; their stream entry ids.

        Each entry is encoded once the gate has let the round trip through and goes to the shard
        of its :attr:`Entry.route`. Callers keep a round trip to about ``pipeline_size`` entries.
        """
        if not entries:
            return []
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
        entries = _entries(windows, ids, meta, per_entry)
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

    @_reloads_script
    def classify(
        self, windows: Iterable[np.ndarray], ids: Sequence[str] | None = None, *, timeout: float = 10.0,
        meta: Mapping[str, Any] | None = None,
    ) -> list[Result]:
        """Classify ``windows`` ([T, F] each) and wait for their results, returned in input order.

        Publishes one single-window entry per window (client ids: ``ids``, else the window's index)
        naming a fresh reply stream, reads that stream (``XREAD BLOCK``) until every window is
        answered or ``timeout`` seconds pass, then deletes it. Raises :class:`ClassifyError` naming
        the windows that timed out or were dead-lettered (with the results it did get). Applies
        backpressure once, before publishing.
        """
        call = _Call(self.keys, windows, ids, meta)
        if not call.entries:
            return []
        deadline = time.monotonic() + timeout
        self.gate()
        eids: list[Any] = []
        for lo in range(0, len(call.entries), self.pipeline_size):
            pipe = self.r.pipeline(transaction=False)
            for e in call.entries[lo: lo + self.pipeline_size]:
                self._add(pipe, call.sk, e, call.iid(e))
            eids += self._execute(pipe)
        call.published(eids)
        try:
            while not call.done and (block := _block_ms(deadline)) is not None:
                call.add(self.r.xread({call.key: call.last}, count=1000, block=block))
        finally:
            self.r.delete(call.key)
        return call.outcome()


class AsyncProducer:
    """:meth:`Producer.classify` on ``redis.asyncio`` (no backpressure gate)."""

    def __init__(self, r: redis.asyncio.Redis, keys: Keys, pipeline_size: int = 500,
                 idempotence: IdempotentWriter | None = None) -> None:
        self.r = r
        self.keys = keys
        self.pipeline_size = pipeline_size
        self.idempotence = idempotence

    async def classify(
        self, windows: Iterable[np.ndarray], ids: Sequence[str] | None = None, *, timeout: float = 10.0,
        meta: Mapping[str, Any] | None = None,
    ) -> list[Result]:
        """As :meth:`Producer.classify`, awaiting Redis instead of blocking the thread."""
        call = _Call(self.keys, windows, ids, meta)
        if not call.entries:
            return []
        deadline = time.monotonic() + timeout
        if self.idempotence is not None:
            await self.idempotence.aprepare(self.r)
        eids: list[Any] = []
        for lo in range(0, len(call.entries), self.pipeline_size):
            pipe = self.r.pipeline(transaction=False)
            for e in call.entries[lo: lo + self.pipeline_size]:
                _write(self.idempotence, pipe, call.sk, e.fields(), call.iid(e))
            eids += await pipe.execute()
        call.published(eids)
        try:
            while not call.done and (block := _block_ms(deadline)) is not None:
                call.add(await self.r.xread({call.key: call.last}, count=1000, block=block))
        finally:
            await self.r.delete(call.key)
        return call.outcome()


class ClassifyError(RuntimeError):
    """:meth:`Producer.classify` did not get a result for every window.

    ``timed_out``: indices of the windows with no answer before the timeout; ``dead``: index ->
    dead-letter reason of the windows the worker dead-lettered; ``results``: one item per window,
    the :class:`Result` it got or None; ``ids``: the windows' client ids.
    """

    def __init__(self, timed_out: list[int], dead: dict[int, str], results: list[Result | None],
                 ids: list[str]) -> None:
        self.timed_out, self.dead, self.results, self.ids = timed_out, dead, results, ids
        parts = []
        if timed_out:
            parts.append(f"{len(timed_out)} timed out: " + _names(ids[i] for i in timed_out))
        if dead:
            parts.append(f"{len(dead)} dead-lettered: " + _names(f"{ids[i]} ({r})" for i, r in sorted(dead.items())))
        super().__init__(f"classify: {len(results) - len(timed_out) - len(dead)} of {len(results)} windows answered; "
                         + "; ".join(parts))


def _names(items: Iterable[str], most: int = 20) -> str:
    names = list(items)
    return ", ".join(names[:most]) + (f", ... ({len(names) - most} more)" if len(names) > most else "")


class _Call:
    """One classify call: its reply stream, the input entries' fields, and the answers so far.

    Every window goes to one shard (the one the reply name's crc32 picks), so the call reads ONE
    reply stream with the input's hash tag (one Redis Cluster slot).
    """

    def __init__(self, keys: Keys, windows: Iterable[np.ndarray], ids: Sequence[str] | None,
                 meta: Mapping[str, Any] | None) -> None:
        xs = list(windows)
        self.ids = [str(i) for i in range(len(xs))] if ids is None else [str(c) for c in ids]
        if len(self.ids) != len(xs):
            raise ValueError(f"{len(self.ids)} ids for {len(xs)} windows")
        self.name = uuid.uuid4().hex
        self.sk: ShardKeys = keys.shard(zlib.crc32(self.name.encode()) % keys.shards)
        self.key = self.sk.reply(self.name)
        self.entries = [Entry(x, cid=c, meta=meta, reply=self.name) for x, c in zip(xs, self.ids)]
        self.index: dict[str, int] = {}
        self.results: list[Result | None] = [None] * len(xs)
        self.dead: dict[int, str] = {}
        self.answered = 0
        self.last = "0-0"

    def iid(self, e: Entry) -> str:
        """An input entry's idempotency id: the call's reply name and the window's id (unique to the call,
        so a later call reusing client ids is never taken for a retry of this one)."""
        return f"{self.name}:{e.cid}"

    def published(self, entry_ids: list[Any]) -> None:
        """The stream ids of the input entries (plain or idempotent write replies), in window order."""
        self.index = {_eid(eid): i for i, eid in enumerate(entry_ids)}

    def add(self, resp: Any) -> None:
        """An XREAD reply on the reply stream."""
        for _stream, items in resp or []:
            for eid, fields in items:
                self.last = as_str(eid)
                self._add(fields)

    def _add(self, fields: Fields) -> None:
        if b"dead.id" in fields:
            i = self.index.get(fields[b"dead.id"].decode())
            if i is not None and self.results[i] is None and i not in self.dead:
                self.dead[i] = fields.get(b"dead.reason", b"").decode()
                self.answered += 1
            return
        r = decode_result(fields)
        i = self.index.get(r.input_id)
        if i is not None and self.results[i] is None and i not in self.dead:
            self.results[i] = r
            self.answered += 1

    @property
    def done(self) -> bool:
        """Every window has its result or dead letter."""
        return self.answered >= len(self.results)

    def outcome(self) -> list[Result]:
        """The results in window order, or :class:`ClassifyError`."""
        timed_out = [i for i, r in enumerate(self.results) if r is None and i not in self.dead]
        if timed_out or self.dead:
            raise ClassifyError(timed_out, self.dead, self.results, self.ids)
        return [r for r in self.results if r is not None]


#: Longest single XREAD BLOCK of a classify call (short enough for any client socket timeout).
_BLOCK_MS = 1000


def _block_ms(deadline: float) -> int | None:
    left = deadline - time.monotonic()
    return None if left <= 0 else max(1, min(_BLOCK_MS, int(left * 1000)))


def _first_id(ids: Sequence[str | None] | None) -> str | None:
    return next((c for c in ids if c), None) if ids is not None else None


def group_windows(windows: Iterable[np.ndarray], per_entry: int) -> Iterator[list[np.ndarray]]:
    """Consecutive windows of equal shape in groups of up to ``per_entry`` ([T] becomes [T, 1])."""
    group: list[np.ndarray] = []
    shape: tuple[int, ...] | None = None
    for w in windows:
        arr = np.asarray(w)
        if arr.ndim == 1:
            arr = arr[:, None]
        if group and (arr.shape != shape or len(group) >= per_entry):
            yield group
            group = []
        group.append(arr)
        shape = arr.shape
    if group:
        yield group


def _entries(
    windows: Iterable[np.ndarray], ids: Sequence[str | None] | None, meta: Mapping[str, Any] | None, per_entry: int
) -> Iterator[Entry]:
    """The entries ``publish_many`` sends."""
    if per_entry == 1:
        for i, w in enumerate(windows):
            yield Entry(w, cid=ids[i] if ids is not None else None, meta=meta)
        return
    start = 0
    for group in group_windows(windows, per_entry):
        gids = ids[start : start + len(group)] if ids is not None else None
        if gids is not None and len(gids) != len(group):
            raise IndexError(f"fewer ids ({len(gids) + start}) than windows")
        start += len(group)
        yield Entry.of_windows(group, gids, meta)
