"""Reading the results stream(s) through a consumer group, with acknowledgements.

For a downstream service that must handle every result (a database writer, an alerting job), run
by several replicas: each replica is one consumer of a named group on every shard's results stream,
Redis hands each entry to one of them, and an entry stays pending until the replica acknowledges it.

Guarantee: **at-least-once processing, each entry acknowledged once.** An entry is acknowledged only
after the caller is done with it (:meth:`GroupResultsReader.ack`, or :meth:`GroupResultsReader.iter`
when the caller asks for the next entry). An entry delivered but not acknowledged (the reader
crashed, or was killed between processing and acknowledging) is delivered again: to the same
consumer name when it restarts (its own pending entries are read first), or to another consumer
once it has been idle ``claim_idle_ms`` (``XAUTOCLAIM``). So an entry can be processed twice, never
lost while it is in the stream; make the processing idempotent (key it by :class:`EntryId`) for
exactly-once effects. Entries trimmed from the stream (``BIGRU_RESULTS_MAXLEN``) before the group
read them are lost to it.

Each poll reads, in this order: this consumer's own pending entries (once, after start: what a
previous run with the same consumer name left unacknowledged), then entries idle longer than
``claim_idle_ms`` at other consumers (``XAUTOCLAIM``, its cursor carried from poll to poll), then
new entries (``XREADGROUP ... >``). Acknowledgement is per result **entry**: a multi-window entry
gives one item with all its per-window results.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterable
from typing import Any, NamedTuple

import redis
import structlog

from producer.polling import drain
from protocol.keys import Keys
from protocol.outage import OutageBudget
from protocol.replies import as_str
from protocol.results import Result, decode_any_result
from protocol.wire import WireError

log = structlog.get_logger("producer.group_reader")


class EntryId(NamedTuple):
    """A result entry: its shard's results stream and its stream id (an id alone is unique only
    within its shard)."""

    stream: str
    id: str

    def __str__(self) -> str:
        return f"{self.stream}/{self.id}"


#: One delivered result entry: its id and its per-window results (one for a single-window entry).
Item = tuple[EntryId, list[Result]]


class GroupResultsReader:
    """A consumer ``consumer`` of the consumer group ``group`` on every shard's results stream.

    ``start`` is where a **new** group starts: ``"0"`` (default) the beginning of each stream (every
    result still in it), ``"$"`` only results added after the group is created. A group that already
    exists keeps its position (``start`` is ignored). ``claim_idle_ms`` (None: never claim) is how
    long an entry must sit unacknowledged at another consumer before this one takes it over; keep it
    well above the time one entry takes to process, or entries of a slow but alive reader are
    processed twice. Give each replica its own, stable consumer name: a restarted replica with the
    same name reads its own pending entries first.
    """

    def __init__(self, r: redis.Redis, keys: Keys, group: str, consumer: str, *, start: str = "0",
                 claim_idle_ms: int | None = 30_000, outage: OutageBudget | None = None) -> None:
        if start not in ("0", "$"):
            raise ValueError(f"start must be '0' or '$', not {start!r}")
        self.r = r
        self.outage = outage if outage is not None else OutageBudget.for_client(r)
        self.keys = keys
        self.group = group
        self.consumer = consumer
        self.start = start
        self.claim_idle_ms = claim_idle_ms
        self.streams = [sk.results for sk in keys.all_shards()]
        # own pending entries still to re-read, per stream: the id after which to read (None: done)
        self._own: dict[str, str | None] = {s: "0" for s in self.streams}
        self._claim_cursor = {s: "0-0" for s in self.streams}
        self._claim_due = {s: 0.0 for s in self.streams}  # monotonic time of the next claim sweep
        self._inflight: set[EntryId] = set()  # delivered to the caller, not yet acknowledged
        self._buffer: list[Item] = []  # delivered by Redis, not yet handed out by iter()
        self.outage.call(self.create_groups, operation="results")

    def create_groups(self) -> None:
        """``XGROUP CREATE <stream> <group> <start> MKSTREAM`` on every shard (an existing group is kept)."""
        for s in self.streams:
            try:
                self.r.xgroup_create(s, self.group, id=self.start, mkstream=True)
            except redis.ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise

    # --- reading -------------------------------------------------------------------------------

    def poll(self, count: int = 100, block_ms: int | None = None) -> list[Item]:
        """Up to about ``count`` result entries per shard, as (entry id, per-window results) items:
        own pending entries first, then ones claimed from idle consumers, then new ones (blocking up
        to ``block_ms`` for new ones when nothing else is there). Acknowledge each with :meth:`ack`
        when done with it. Items an earlier :meth:`iter` read but did not hand out come first.
        """
        if self._buffer:
            out, self._buffer = self._buffer, []
            return out
        # A read whose reply an outage lost left its entries pending here: re-read own pending ones after one.
        return self.outage.call(lambda: self._poll(count, block_ms), operation="results", on_retry=self._reread_own)

    def _reread_own(self) -> None:
        self._own = {s: "0" for s in self.streams}

    def _poll(self, count: int, block_ms: int | None) -> list[Item]:
        out = self._read_own(count)
        if not out:
            out = self._claim(count)
        if not out:
            out = self._read_new(count, None)
            if not out and block_ms is not None:
                out = self._read_new(count, max(1, block_ms // len(self.streams)))
        return out

    def _read_own(self, count: int) -> list[Item]:
        out: list[Item] = []
        for s, after in self._own.items():
            if after is None:
                continue
            resp = self._xreadgroup(s, after, count, None)
            if not resp:
                self._own[s] = None
                continue
            self._own[s] = as_str(resp[-1][0])
            out += self._decode(s, resp)
        return out

    def _claim(self, count: int) -> list[Item]:
        if self.claim_idle_ms is None:
            return []
        out: list[Item] = []
        now = time.monotonic()
        for s in self.streams:
            if self._claim_cursor[s] == "0-0" and now < self._claim_due[s]:
                continue
            reply = self.r.xautoclaim(s, self.group, self.consumer, self.claim_idle_ms,
                                      start_id=self._claim_cursor[s], count=count)
            cursor, entries = as_str(reply[0]), reply[1]
            self._claim_cursor[s] = cursor
            if cursor == "0-0":  # a full sweep done: the next one after a while
                self._claim_due[s] = now + min(self.claim_idle_ms, 1000) / 2000
            mine = [(eid, f) for eid, f in entries if EntryId(s, as_str(eid)) not in self._inflight]
            if mine:
                log.info("results_claimed", stream=s, group=self.group, consumer=self.consumer, entries=len(mine))
            out += self._decode(s, mine)
        return out

    def _read_new(self, count: int, block_ms: int | None) -> list[Item]:
        out: list[Item] = []
        for s in self.streams:
            out += self._decode(s, self._xreadgroup(s, ">", count, block_ms))
            if out and block_ms is not None:
                break
        return out

    def _xreadgroup(self, stream: str, after: str, count: int, block_ms: int | None) -> list[Any]:
        try:
            resp = self.r.xreadgroup(self.group, self.consumer, {stream: after}, count=count, block=block_ms)
        except redis.ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            log.warning("results_group_missing", stream=stream, group=self.group)  # the stream was deleted
            self.create_groups()
            resp = self.r.xreadgroup(self.group, self.consumer, {stream: after}, count=count, block=block_ms)
        return list(resp[0][1]) if resp else []

    def _decode(self, stream: str, entries: Iterable[tuple[Any, Any]]) -> list[Item]:
        """Items of the readable entries; entries that are gone (trimmed while pending) or malformed
        are acknowledged and skipped with a log event."""
        out: list[Item] = []
        skip: list[str] = []
        for raw_id, fields in entries:
            eid = EntryId(stream, as_str(raw_id))
            if not fields:
                log.warning("result_entry_gone", stream=stream, id=eid.id, group=self.group)
                skip.append(eid.id)
                continue
            try:
                results = decode_any_result(fields)
            except (WireError, ValueError, TypeError) as e:
                log.warning("result_entry_malformed", stream=stream, id=eid.id, group=self.group, error=str(e))
                skip.append(eid.id)
                continue
            self._inflight.add(eid)
            out.append((eid, results))
        if skip:
            self.r.xack(stream, self.group, *skip)
        return out

    # --- acknowledging -------------------------------------------------------------------------

    def ack(self, ids: Iterable[EntryId | str]) -> int:
        """Acknowledge result entries (``XACK`` per shard); returns how many Redis acknowledged (an
        entry already acknowledged counts 0). A plain id string is accepted with a single shard."""
        per: dict[str, list[str]] = {}
        for i in ids:
            if not isinstance(i, EntryId):
                if len(self.streams) != 1:
                    raise ValueError("with several shards, acknowledge EntryId values (stream, id)")
                i = EntryId(self.streams[0], i)
            per.setdefault(i.stream, []).append(i.id)
            self._inflight.discard(i)
        return sum(int(self.outage.call(lambda s=s, eids=eids: self.r.xack(s, self.group, *eids),  # type: ignore[misc]
                                        operation="results")) for s, eids in per.items())

    def iter(self, count: int | None = None, follow: bool = False, block_ms: int = 1000) -> Generator[Item, None, None]:
        """Yield (entry id, per-window results) items: all present ones (then stop), or keep following.

        An entry is acknowledged once the caller asks for the next one (the acknowledgements are sent
        together, before the next read from Redis and when the iteration ends), so an entry the caller
        was handling when it crashed is delivered again. ``count`` counts per-window results, rounded
        up to whole entries (the entry that reaches ``count`` is the last). When the caller stops
        early, the entry in hand stays unacknowledged and is handed out again by the next poll/iter,
        as are the ones read but not yet handed out (if the process ends instead, they stay pending at
        this consumer: delivered again when it restarts, or to another one after ``claim_idle_ms``).
        """
        done: list[EntryId] = []

        def ack_done() -> None:
            if done:
                self.ack(list(done))
                done.clear()

        def keep(rest: list[Item]) -> None:
            ack_done()
            self._buffer = rest + self._buffer

        return drain(self.poll, count=count, follow=follow, block_ms=block_ms, chunk=100, keep=keep,
                     weight=lambda item: len(item[1]), finished=lambda item: done.append(item[0]), before_poll=ack_done)
