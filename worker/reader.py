"""The collect stage: reading input entries from the shard streams through the consumer group.

Order of preference on every call: this consumer's own pending entries (after a start or an
outage), entries idle too long at other consumers (XAUTOCLAIM), then new entries. While the model
computes the previous batch, the collector sleeps until it is done and then reads everything that
arrived meanwhile in one round (continuous batching without polling: Redis, which every replica
shares, and the CPU the model computes on see no empty reads); while the model is idle it hands over
whatever it has once the batch-wait policy allows (one sleep to its deadline, then one read).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis
import structlog

from protocol.keys import Keys, ShardKeys
from protocol.replies import as_str
from protocol.wire import WireError, parse_ts, x_windows
from worker.batching import BatchWait
from worker.types import Entry

#: While the model computes, the collector sleeps on the compute thread's result, waking this often only
#: to see a stop (a finished batch wakes it at once).
STOP_CHECK_S = 0.05


def ensure_groups(r: redis.Redis, keys: Keys) -> None:
    """Create every shard's consumer group (from the stream's start, creating the stream)."""
    for sk in keys.all_shards():
        try:
            r.xgroup_create(sk.windows, keys.group, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise


def _entries(shard: int, raw: Sequence[Any], read_us: int) -> list[Entry]:
    out = []
    for eid, fields in raw:
        if fields is None:  # deleted while pending (Redis < 7 reports these inline)
            continue
        x = fields.get(b"x")
        out.append(Entry(shard, as_str(eid), fields, read_us, 1,
                         sum(map(len, fields)) + sum(map(len, fields.values())), 1 if x is None else x_windows(x)))
    return out


def read(
    r: redis.Redis, keys: Keys, sk: ShardKeys, consumer: str, count: int, block_ms: int | None, pending: bool,
    read_us: int | Callable[[], int], after: str = "0",
) -> list[Entry]:
    """XREADGROUP from one shard: new entries (``>``), or this consumer's own pending ones after ``after``.

    ``read_us`` stamps the entries; pass a clock function to stamp them when the reply arrives
    (a blocking read may wait long for its first entry).
    """
    resp = r.xreadgroup(keys.group, consumer, {sk.windows: after if pending else ">"}, count=count, block=block_ms)
    if not resp:
        return []
    return _entries(sk.shard, resp[0][1], read_us() if callable(read_us) else read_us)


def autoclaim(
    r: redis.Redis, keys: Keys, sk: ShardKeys, consumer: str, min_idle_ms: int, count: int, read_us: int,
    cursor: str = "0-0",
) -> tuple[list[Entry], list[str], str]:
    """Claim entries idle longer than ``min_idle_ms`` from any consumer, scanning the group's pending
    list from ``cursor``; returns (entries, deleted ids, next cursor).

    XAUTOCLAIM inspects at most ``10 * count`` pending entries per call, so callers must carry the
    cursor forward: restarting at ``0-0`` every time would never reach idle entries behind a long
    run of fresh ones.
    """
    resp = r.xautoclaim(sk.windows, keys.group, consumer, min_idle_ms, cursor, count=count)
    nxt = as_str(resp[0])
    deleted = [as_str(d) for d in (resp[2] if len(resp) > 2 else [])]
    return _entries(sk.shard, resp[1], read_us), deleted, nxt


def delivery_counts(r: redis.Redis, keys: Keys, entries: list[Entry]) -> None:
    """Fill ``Entry.deliveries`` from XPENDING (one pipelined round trip)."""
    if not entries:
        return
    pipe = r.pipeline(transaction=False)
    for e in entries:
        pipe.xpending_range(keys.shard(e.shard).windows, keys.group, min=e.id, max=e.id, count=1)
    for e, rows in zip(entries, pipe.execute()):
        if rows:
            e.deliveries = int(rows[0]["times_delivered"])


def refresh_claims(r: redis.Redis, keys: Keys, consumer: str, entries: list[Entry], min_idle_ms: int) -> None:
    """Reset the idle time of in-flight entries so a slow batch is not reclaimed by another consumer."""
    by_shard: dict[int, list[str]] = {}
    for e in entries:
        by_shard.setdefault(e.shard, []).append(e.id)
    for shard, ids in by_shard.items():
        r.xclaim(keys.shard(shard).windows, keys.group, consumer, min_idle_ms, ids, justid=True)


def enqueued_us(entry: Entry) -> int:
    """When a window entered the stream: its ``ts`` field (read by the wire's one ``ts`` parser), else
    the entry id's millisecond part (a missing or malformed ``ts`` is the decode stage's to report)."""
    try:
        return parse_ts(entry.fields)
    except WireError:
        return int(entry.id.split("-", 1)[0]) * 1000


@dataclass
class ReadPlan:
    """What the collector reads and how long it blocks (from the worker settings)."""

    shards: list[ShardKeys]
    max_batch: int
    block_ms: int
    burst: bool
    claim_idle_ms: int
    reclaim_interval_ms: int
    max_batch_bytes: int = 1 << 62
    entry_bytes: int = 1  # the largest entry expected (``max_window_bytes``): a read asks for room / this


class ModelBusy(Protocol):
    """How the collector sees the model: batches in flight, busy or not, a way to wait until idle."""

    @property
    def inflight(self) -> int:
        """Batches handed to the model and not yet published."""
        ...

    def busy(self) -> bool:
        """Whether a batch is being computed."""
        ...

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the model to become idle; True when it is."""
        ...


class Collector:
    """The collect stage of one replica (see the module docstring)."""

    def __init__(
        self, r: redis.Redis, keys: Keys, consumer: str, plan: ReadPlan, policy: BatchWait,
        monotonic: Callable[[], float], now_us: Callable[[], int], stop: threading.Event,
        on_reclaimed: Callable[[int], None] = lambda n: None,
    ) -> None:
        self.r, self.keys, self.consumer, self.plan, self.policy = r, keys, consumer, plan, policy
        self.monotonic, self.now_us, self.stop, self.on_reclaimed = monotonic, now_us, stop, on_reclaimed
        self.log = structlog.get_logger("worker").bind(consumer=consumer)
        self.pending_phase = True
        self._pending_after: dict[int, str] = {}  # own pending entries already read in this pending phase
        self._claim_cursor: dict[int, str] = {}
        self._next_reclaim = 0.0
        self._rr = 0
        self.entry_windows = 1.0  # windows per entry in the last read (multi-window entries hold many)
        # Bytes one entry may take: ``entry_bytes``, or more after an oversized entry was seen (decays back).
        self.unit = plan.entry_bytes
        # Entries read (so pending to this consumer) past a batch's ``max_batch`` windows: the next batch's start.
        self._carry: list[Entry] = []

    def want(self, batch: list[Entry]) -> int:
        """How many more entries to read into ``batch``: ``max_batch`` windows and ``max_batch_bytes`` allow.

        The windows left are divided by the windows per entry of the last read (an entry may hold
        many); a read that overshoots is cut by :meth:`bound`. A read asks for at most the bytes left
        divided by the largest entry expected, so a flood of maximum-size entries fills a batch up to
        the byte budget, not ``max_batch`` times the largest entry. An empty batch always takes at
        least one entry.
        """
        room = self.plan.max_batch_bytes - sum(e.size for e in batch)
        windows_left = self.plan.max_batch - sum(e.windows for e in batch)
        n = min(int(windows_left // self.entry_windows), room // self.unit)
        return max(n, 0 if batch else 1)

    def bound(self, batch: list[Entry]) -> list[Entry]:
        """The longest head of ``batch`` within ``max_batch`` windows (at least its first entry, which
        may hold more and is then served alone); the rest is carried over to the next batch."""
        total = 0
        for i, e in enumerate(batch):
            total += e.windows
            if total > self.plan.max_batch and i > 0:
                self._carry = batch[i:] + self._carry
                return batch[:i]
        return batch

    def _observe_sizes(self, got: list[Entry]) -> None:
        self._observe_windows(got)
        biggest = max((e.size for e in got), default=0)
        if biggest > self.unit:
            self.unit = biggest  # an oversized (hostile) entry: expect more like it for a while
        elif self.unit > self.plan.entry_bytes:
            self.unit = max(self.plan.entry_bytes, self.unit // 2)

    def restart(self) -> None:
        """After an outage, a lost group or an open breaker: re-read this consumer's own pending entries first
        (carried-over entries are among them)."""
        self.pending_phase = True
        self._pending_after.clear()
        self._carry.clear()

    def _read(self, sk: ShardKeys, count: int, block_ms: int | None = None, pending: bool = False) -> list[Entry]:
        if count <= 0:  # COUNT 0 would mean "no limit" to Redis
            return []
        got = read(self.r, self.keys, sk, self.consumer, count, block_ms, pending,
                   self.now_us if block_ms else self.now_us(), self._pending_after.get(sk.shard, "0"))
        if got:
            self._observe_sizes(got)
        return got

    def _observe_windows(self, got: list[Entry]) -> None:
        if got:
            self.entry_windows = max(1.0, sum(e.windows for e in got) / len(got))

    def _next_shard(self) -> ShardKeys:
        sk = self.plan.shards[self._rr % len(self.plan.shards)]
        self._rr += 1
        return sk

    def collect(self, model: ModelBusy) -> list[Entry] | None:
        """Entries of up to ``max_batch`` windows (or one larger entry alone); ``[]`` when none came;
        ``None`` in burst mode once drained."""
        got = self._collect(model)
        return None if got is None else self.bound(got)

    def _collect(self, model: ModelBusy) -> list[Entry] | None:
        if self._carry:
            carried, self._carry = self._carry, []
            return self._fill(carried, model) if self.want(carried) else carried
        got = self._own_pending() or self._reclaim_due()
        if got:
            return got
        p = self.plan
        batch: list[Entry] = []
        for sk in p.shards:  # non-blocking pass over every shard
            batch += self._read(sk, self.want(batch))
            if not self.want(batch):
                return batch
        if not batch:
            if model.inflight:  # never block while a batch waits to be published
                batch = self._after_compute(model)
            else:
                batch = self._block_for_first()
                if not batch:
                    if not p.burst:
                        return []
                    # Drained: before exiting, take over whatever crashed consumers left idle (a
                    # second pass in case the first one started mid-stream at the saved cursor).
                    return self.reclaim() or self.reclaim() or None
            if not batch:
                return []
        return self._fill(batch, model)

    def _own_pending(self) -> list[Entry]:
        if not self.pending_phase:
            return []
        for sk in self.plan.shards:
            got = self._read(sk, self.want([]), pending=True)
            if got:  # the next pending read starts after these (still pending while they compute)
                self._pending_after[sk.shard] = got[-1].id
                delivery_counts(self.r, self.keys, got)
                return got
        self.pending_phase = False
        return []

    def _reclaim_due(self) -> list[Entry]:
        return self.reclaim() if self.monotonic() >= self._next_reclaim else []

    def _wait_for_model(self, model: ModelBusy) -> None:
        """Sleep until the model has computed what it holds (woken by the compute thread, not by polling;
        in slices of :data:`STOP_CHECK_S` only so that a stop is seen)."""
        while not model.wait_idle(STOP_CHECK_S) and not self.stop.is_set():
            pass

    def _after_compute(self, model: ModelBusy) -> list[Entry]:
        """Nothing in hand and the model busy: wait for it, then read once what arrived meanwhile."""
        self._wait_for_model(model)
        return self._read_round(self.want([]))

    def _block_for_first(self) -> list[Entry]:
        p = self.plan
        block = p.block_ms
        if len(p.shards) == 1:
            return self._read(p.shards[0], self.want([]), block_ms=block)
        deadline = self.monotonic() + block / 1000
        while self.monotonic() < deadline and not self.stop.is_set():
            got = self._read(self._next_shard(), self.want([]), block_ms=10)
            if got:
                return got
        return []

    def _fill(self, batch: list[Entry], model: ModelBusy) -> list[Entry]:
        """Grow the batch: while the model is busy, wait for it and then read once; once it is idle, as long as
        the policy allows (one sleep to the policy's deadline, then one read). No read finds the model busy
        and comes back for more, so no wake-up finds nothing to do."""
        start = self.monotonic()
        oldest_age_s = max(0.0, (self.now_us() - enqueued_us(batch[0])) / 1e6)
        waited = False
        while (want := self.want(batch)) and not self.stop.is_set():
            if model.busy():
                self._wait_for_model(model)
            elif waited:
                break
            else:
                remaining = self.policy.fill_deadline(start, oldest_age_s, len(batch)) - self.monotonic()
                if remaining <= 0:
                    break
                self.stop.wait(remaining)
                waited = True
            batch += self._read_round(want)
        return batch

    def _read_round(self, want: int) -> list[Entry]:
        """One read per shard, round robin from the next, until ``want`` entries came or every shard was asked."""
        got: list[Entry] = []
        for _ in range(len(self.plan.shards)):
            got += self._read(self._next_shard(), want - len(got))
            if len(got) >= want:
                break
        return got

    def reclaim(self) -> list[Entry]:
        """Claim entries idle longer than ``claim_idle_ms`` from other consumers (XAUTOCLAIM)."""
        p = self.plan
        self._next_reclaim = self.monotonic() + p.reclaim_interval_ms / 1000
        for sk in p.shards:
            got, deleted, self._claim_cursor[sk.shard] = autoclaim(
                self.r, self.keys, sk, self.consumer, p.claim_idle_ms, self.want([]), self.now_us(),
                self._claim_cursor.get(sk.shard, "0-0"),
            )
            if deleted:
                self.log.warning("reclaim_deleted_entries", shard=sk.shard, ids=deleted[:10], count=len(deleted))
            if got:
                self._observe_sizes(got)
                delivery_counts(self.r, self.keys, got)
                self.on_reclaimed(len(got))
                self.log.info("reclaimed", shard=sk.shard, count=len(got))
                return got
        return []
