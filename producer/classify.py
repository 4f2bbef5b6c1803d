"""Request/response over a reply stream: one classify call's bookkeeping, its error, and the async client."""

from __future__ import annotations

import time
import uuid
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import redis.asyncio

from producer.entries import Entry
from producer.writes import entry_id as _eid
from producer.writes import write as _write
from protocol.idempotent import IdempotentWriter
from protocol.keys import Keys, ShardKeys
from protocol.outage import OutageBudget
from protocol.replies import as_str
from protocol.results import Result, decode_result
from protocol.wire import Fields


class AsyncProducer:
    """:meth:`Producer.classify` on ``redis.asyncio`` (no backpressure gate); rides out a Redis outage
    of up to ``outage`` (default 60 s) like :class:`~producer.client.Producer`."""

    def __init__(self, r: redis.asyncio.Redis, keys: Keys, pipeline_size: int = 500,
                 idempotence: IdempotentWriter | None = None, outage: OutageBudget | None = None) -> None:
        self.r = r
        self.keys = keys
        self.pipeline_size = pipeline_size
        self.idempotence = idempotence
        self.outage = outage if outage is not None else OutageBudget.for_client(r)

    async def classify(
        self, windows: Iterable[np.ndarray], ids: Sequence[str] | None = None, *, timeout: float = 10.0,
        meta: Mapping[str, Any] | None = None,
    ) -> list[Result]:
        """As :meth:`Producer.classify`, awaiting Redis instead of blocking the thread."""
        call = Call(self.keys, windows, ids, meta)
        if not call.entries:
            return []
        deadline = time.monotonic() + timeout
        eids: list[Any] = []
        for lo in range(0, len(call.entries), self.pipeline_size):
            chunk = call.entries[lo: lo + self.pipeline_size]
            eids += await self.outage.acall(lambda chunk=chunk: self._publish(call, chunk),  # type: ignore[misc]
                                            operation="classify", windows=len(chunk))
        call.published(eids)
        try:
            while not call.done and (block := block_ms(deadline)) is not None:
                call.add(await self.outage.acall(lambda block=block: self.r.xread(  # type: ignore[misc]
                    {call.key: call.last}, count=1000, block=block), operation="classify"))
        finally:
            await self.outage.acall(lambda: self.r.delete(call.key), operation="classify")
        return call.outcome()

    async def _publish(self, call: Call, chunk: Sequence[Entry]) -> list[Any]:
        try:
            return await self._publish_once(call, chunk)
        except redis.exceptions.NoScriptError:  # the server lost its script cache (a restart): load it again
            if self.idempotence is None:
                raise
            self.idempotence.forget_script()
            return await self._publish_once(call, chunk)

    async def _publish_once(self, call: Call, chunk: Sequence[Entry]) -> list[Any]:
        if self.idempotence is not None:
            await self.idempotence.aprepare(self.r)
        pipe = self.r.pipeline(transaction=False)
        for e in chunk:
            _write(self.idempotence, pipe, call.sk, e.fields(), call.iid(e))
        return list(await pipe.execute())


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


class Call:
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


def block_ms(deadline: float) -> int | None:
    left = deadline - time.monotonic()
    return None if left <= 0 else max(1, min(_BLOCK_MS, int(left * 1000)))
