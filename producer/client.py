"""Publishing windows onto the input stream(s)."""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from producer.backpressure import Backpressure, BackpressureError
from producer.config import ProducerSettings
from protocol.keys import Keys
from protocol.replies import as_str
from protocol.wire import encode_window
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
    def route(self) -> str | None:
        """The id that picks the shard: ``cid``, else the first non-empty of ``cids`` (None: round-robin)."""
        return self.cid or _first_id(self.cids)

    def fields(self) -> dict[bytes, bytes]:
        """The stream fields (wire format v1, ``ts`` stamped now)."""
        if self.multi:
            return encode_windows_entry(self.x, cids=self.cids, cid=self.cid, deadline_us=self.deadline_us,
                                        meta=self.meta)
        return encode_window(self.x, cid=self.cid, deadline_us=self.deadline_us, meta=self.meta)


class Producer:
    """Publishes windows (wire format v1) to the input stream, routing by id across shards.

    Every publishing method goes through :meth:`publish_entries`: one backpressure check, then one
    pipelined round trip. With a :class:`Backpressure` gate, every ``publish``/``publish_batch`` and
    every ``publish_many`` chunk first checks the consumer group's lag and raises
    :class:`BackpressureError` (or waits) when it is over the limit. The lag counts stream entries,
    so a multi-window entry counts once.
    """

    def __init__(
        self, r: redis.Redis, keys: Keys, pipeline_size: int = 500, backpressure: Backpressure | None = None
    ) -> None:
        self.r = r
        self.keys = keys
        self.pipeline_size = pipeline_size
        self.backpressure = backpressure
        self._rr = itertools.count()

    @classmethod
    def from_settings(cls, s: ProducerSettings, r: redis.Redis | None = None) -> Producer:
        """A producer configured by ``s`` (connecting with its credentials/TLS unless ``r`` is given)."""
        r = r if r is not None else s.connect()
        gate = None
        if s.max_lag > 0:
            gate = Backpressure(r, s.keys, s.max_lag, s.backpressure, block_timeout_s=s.backpressure_timeout_s,
                                check_interval_s=s.lag_check_interval_ms / 1000)
        return cls(r, s.keys, s.pipeline_size, gate)

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
        """
        if not entries:
            return []
        self.gate()
        if len(entries) == 1:
            (e,) = entries
            return [as_str(self.r.xadd(self._stream(e), e.fields()))]
        pipe = self.r.pipeline(transaction=False)
        for e in entries:
            pipe.xadd(self._stream(e), e.fields())
        return [as_str(eid) for eid in pipe.execute()]

    def _stream(self, e: Entry) -> str:
        return self.keys.shard(self.shard_for(e.route)).windows

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
        (``err.published``); the remaining windows were not sent.
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
        return out


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
