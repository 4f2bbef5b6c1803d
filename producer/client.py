"""Publishing windows onto the input stream(s)."""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import redis

from worker.keys import Keys
from worker.wire import encode_window


class Producer:
    """Publishes windows (wire format v1) to the input stream, routing by id across shards."""

    def __init__(self, r: redis.Redis, keys: Keys, pipeline_size: int = 500) -> None:
        self.r = r
        self.keys = keys
        self.pipeline_size = pipeline_size
        self._rr = itertools.count()

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
        """Publish windows in pipelined round trips of ``pipeline_size``; returns entry ids in order."""
        out: list[str] = []
        pipe = self.r.pipeline(transaction=False)
        n = 0
        for i, w in enumerate(windows):
            cid = ids[i] if ids is not None else None
            sk = self.keys.shard(self.shard_for(cid))
            pipe.xadd(sk.windows, encode_window(w, cid=cid, meta=meta))  # type: ignore[arg-type]
            n += 1
            if n >= self.pipeline_size:
                out += [e.decode() for e in pipe.execute()]
                n = 0
        if n:
            out += [e.decode() for e in pipe.execute()]
        return out
