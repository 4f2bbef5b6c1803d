"""Publishing windows onto the input stream(s)."""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import redis

from producer.backpressure import Backpressure, BackpressureError
from producer.config import ProducerSettings
from worker.keys import Keys
from worker.wire import encode_window


class Producer:
    """Publishes windows (wire format v1) to the input stream, routing by id across shards.

    With a :class:`Backpressure` gate, every ``publish`` and every ``publish_many`` chunk first
    checks the consumer group's lag and raises :class:`BackpressureError` (or waits) when it is over
    the limit.
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

    def publish_many(
        self,
        windows: Iterable[np.ndarray],
        ids: Sequence[str | None] | None = None,
        *,
        meta: Mapping[str, Any] | None = None,
    ) -> list[str]:
        """Publish windows in pipelined round trips of ``pipeline_size``; returns entry ids in order.

        On backpressure refusal the :class:`BackpressureError` carries the ids already published
        (``err.published``); the remaining windows were not sent.
        """
        out: list[str] = []
        pipe = self.r.pipeline(transaction=False)
        n = 0
        try:
            for i, w in enumerate(windows):
                if n == 0:
                    self.gate()
                cid = ids[i] if ids is not None else None
                sk = self.keys.shard(self.shard_for(cid))
                pipe.xadd(sk.windows, encode_window(w, cid=cid, meta=meta))  # type: ignore[arg-type]
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
