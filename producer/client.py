"""Publishing windows onto the input stream(s)."""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import redis

from producer.backpressure import Backpressure, BackpressureError
from producer.config import ProducerSettings
from protocol.keys import Keys
from protocol.wire import encode_window
from protocol.wire_multi import encode_windows_entry


class Producer:
    """Publishes windows (wire format v1) to the input stream, routing by id across shards.

    With a :class:`Backpressure` gate, every ``publish``/``publish_batch`` and every ``publish_many``
    chunk first checks the consumer group's lag and raises :class:`BackpressureError` (or waits)
    when it is over the limit. The lag counts stream entries, so a multi-window entry counts once.
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

    def publish(
        self,
        window: np.ndarray,
        id: str | None = None,
        *,
        deadline_us: int | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> str:
        """Publish one [T, F] window; returns the stream entry id."""
        self.gate()
        sk = self.keys.shard(self.shard_for(id))
        eid = self.r.xadd(sk.windows, encode_window(window, cid=id, deadline_us=deadline_us, meta=meta))  # type: ignore[arg-type]
        return eid.decode() if isinstance(eid, bytes) else str(eid)

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
        fields = encode_windows_entry(xs, cids=ids, cid=cid, deadline_us=deadline_us, meta=meta)
        self.gate()
        sk = self.keys.shard(self.shard_for(cid or _first_id(ids)))
        eid = self.r.xadd(sk.windows, fields)  # type: ignore[arg-type]
        return eid.decode() if isinstance(eid, bytes) else str(eid)

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
        pipe = self.r.pipeline(transaction=False)
        n = 0
        try:
            for cid, fields in _entries(windows, ids, meta, per_entry):
                if n == 0:
                    self.gate()
                sk = self.keys.shard(self.shard_for(cid))
                pipe.xadd(sk.windows, fields)  # type: ignore[arg-type]
                n += 1
                if n >= self.pipeline_size:
                    out += [e.decode() for e in pipe.execute()]
                    n = 0
        except BackpressureError as err:
            err.published = out
            raise
        if n:
            out += [e.decode() for e in pipe.execute()]
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
) -> Iterator[tuple[str | None, dict[bytes, bytes]]]:
    """(routing id, stream fields) of each entry ``publish_many`` sends."""
    if per_entry == 1:
        for i, w in enumerate(windows):
            cid = ids[i] if ids is not None else None
            yield cid, encode_window(w, cid=cid, meta=meta)
        return
    start = 0
    for group in group_windows(windows, per_entry):
        gids = ids[start : start + len(group)] if ids is not None else None
        if gids is not None and len(gids) != len(group):
            raise IndexError(f"fewer ids ({len(gids) + start}) than windows")
        start += len(group)
        if len(group) == 1:
            cid = gids[0] if gids is not None else None
            yield cid, encode_window(group[0], cid=cid, meta=meta)
        else:
            cids = list(gids) if gids is not None and any(gids) else None
            yield _first_id(cids), encode_windows_entry(np.stack(group), cids=cids, meta=meta)
