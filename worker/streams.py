"""Redis stream operations of a worker: group setup, reads, reclaims and the atomic publish."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import msgpack
import redis

from worker.keys import Keys, ShardKeys

# Each input's XACK return value gates its output XADD: an entry that another consumer already
# acknowledged (after a reclaim) publishes nothing, so every input gets exactly one output.
# KEYS = input, results, dead (one hash tag); ARGV = group, results maxlen, dead maxlen, and one
# msgpack array of records [kind 'r'|'d', input id, [field, value, ...]]: a single argument, so the
# client packs a batch in one C call instead of one protocol argument per field.
PUBLISH_LUA = """
local group = ARGV[1]
local records = cmsgpack.unpack(ARGV[4])
local published = 0
for i = 1, #records do
  local rec = records[i]
  if redis.call('XACK', KEYS[1], group, rec[2]) == 1 then
    local target, maxlen = KEYS[2], ARGV[2]
    if rec[1] == 'd' then target, maxlen = KEYS[3], ARGV[3] end
    redis.call('XADD', target, 'MAXLEN', '~', maxlen, '*', unpack(rec[3]))
    published = published + 1
  end
end
return published
"""


@dataclass
class Entry:
    """A stream entry read by this worker."""

    shard: int
    id: str
    fields: dict[bytes, bytes]
    read_us: int
    deliveries: int = 1


@dataclass
class Output:
    """What to publish for one input: a result (``kind='r'``) or a dead letter (``kind='d'``)."""

    entry: Entry
    kind: str
    fields: dict[bytes, bytes]


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
        out.append(Entry(shard, eid.decode() if isinstance(eid, bytes) else eid, fields, read_us))
    return out


def read(
    r: redis.Redis,
    keys: Keys,
    sk: ShardKeys,
    consumer: str,
    count: int,
    block_ms: int | None,
    pending: bool,
    read_us: int | Callable[[], int],
) -> list[Entry]:
    """XREADGROUP from one shard: new entries (``>``), or this consumer's own pending ones (``0``).

    ``read_us`` stamps the entries; pass a clock function to stamp them when the reply arrives
    (a blocking read may wait long for its first entry).
    """
    resp = r.xreadgroup(keys.group, consumer, {sk.windows: "0" if pending else ">"}, count=count, block=block_ms)
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
    nxt = resp[0].decode() if isinstance(resp[0], bytes) else str(resp[0])
    deleted = [d.decode() if isinstance(d, bytes) else d for d in (resp[2] if len(resp) > 2 else [])]
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


def own_connection(r: redis.Redis) -> Any:
    """A connection with ``r``'s settings that is not in its pool (for replies read later)."""
    pool = r.connection_pool
    return pool.connection_class(**pool.connection_kwargs)


def _raw_entries(shard: int, resp: Any, read_us: int) -> list[Entry]:
    """Entries of a raw (un-callbacked) XREADGROUP reply, RESP2 or RESP3."""
    if not resp:
        return []
    streams_ = list(resp.values()) if isinstance(resp, dict) else [s[1] for s in resp]
    out = []
    for raw in streams_:
        for eid, flat in raw:
            if flat is None:
                continue
            it = iter(flat)
            out.append(Entry(shard, eid.decode() if isinstance(eid, bytes) else eid, dict(zip(it, it)), read_us))
    return out


class ReadAhead:
    """One outstanding non-blocking XREADGROUP whose reply is read later.

    While a full batch computes, the next one is already requested, so Redis serves it in
    parallel and the worker does not wait for the round trip. Entries it delivers are pending
    for this consumer like any others read.
    """

    def __init__(self, r: redis.Redis, keys: Keys, consumer: str) -> None:
        self.r = r
        self.keys = keys
        self.consumer = consumer
        self._conn: Any = None
        self._shard: int | None = None

    @property
    def pending(self) -> bool:
        """Whether a request is outstanding."""
        return self._shard is not None

    def request(self, shard: int, count: int) -> None:
        """Ask for up to ``count`` new entries of ``shard`` without waiting for them.

        A no-op on a Redis Cluster client, which routes per command and has no single pool.
        """
        if self._shard is not None or not hasattr(self.r, "connection_pool"):
            return
        if self._conn is None:
            self._conn = own_connection(self.r)
        try:
            self._conn.send_command(
                "XREADGROUP", "GROUP", self.keys.group, self.consumer, "COUNT", count,
                "STREAMS", self.keys.shard(shard).windows, ">",
            )
        except BaseException:
            self.reset()
            raise
        self._shard = shard

    def take(self, read_us: int) -> list[Entry]:
        """The entries of the outstanding request (empty when there is none)."""
        if self._shard is None:
            return []
        shard, self._shard = self._shard, None
        try:
            return _raw_entries(shard, self._conn.read_response(), read_us)
        except redis.ResponseError:
            raise
        except BaseException:
            self.reset()
            raise

    def reset(self) -> None:
        """Drop the connection and any outstanding request (its entries stay pending)."""
        self._shard = None
        if self._conn is not None:
            self._conn.disconnect()
            self._conn = None


class Publisher:
    """Runs the atomic publish-and-acknowledge script, one call per shard.

    :meth:`publish` waits for Redis; :meth:`send` only writes the command on a connection of its
    own and collects the reply on the next call, so Redis runs the script while the worker
    computes the next batch. An input whose script never ran stays pending and is read again.
    """

    def __init__(self, r: redis.Redis, keys: Keys, results_maxlen: int, dead_maxlen: int) -> None:
        self.r = r
        self.keys = keys
        self.results_maxlen = results_maxlen
        self.dead_maxlen = dead_maxlen
        self._script = r.register_script(PUBLISH_LUA)
        self._conn: Any = None
        self._unread: list[int] = []  # outputs per sent script whose reply is not read yet

    def _calls(self, outputs: list[Output]) -> list[tuple[ShardKeys, list[Any], int]]:
        by_shard: dict[int, list[Output]] = {}
        for o in outputs:
            by_shard.setdefault(o.entry.shard, []).append(o)
        calls = []
        packer = msgpack.Packer(use_bin_type=False)  # Redis' cmsgpack predates the bin types
        for shard, outs in by_shard.items():
            records = [[o.kind, o.entry.id, list(chain.from_iterable(o.fields.items()))] for o in outs]
            args = [self.keys.group, self.results_maxlen, self.dead_maxlen, packer.pack(records)]
            calls.append((self.keys.shard(shard), args, len(outs)))
        return calls

    def publish(self, outputs: list[Output], client: redis.Redis | None = None) -> int:
        """Publish results/dead letters and XACK their inputs; returns how many were published."""
        published = 0
        for sk, args, _ in self._calls(outputs):
            published += int(self._script(keys=[sk.windows, sk.results, sk.dead], args=args, client=client))
        return published

    def send(self, outputs: list[Output]) -> list[tuple[int, int]]:
        """Publish without waiting; returns ``(outputs, published)`` of earlier sends now answered.

        On a Redis Cluster client (no single connection pool) this publishes synchronously.
        """
        done = self.collect()
        if not outputs:
            return done
        if not hasattr(self.r, "connection_pool"):
            return done + [(len(outputs), self.publish(outputs))]
        if self._conn is None:
            # EVALSHA (what the worker's ACL user may run), so load the script first; after a
            # Redis restart the cache is empty again and collect() reports that as an outage.
            self.r.script_load(PUBLISH_LUA)
            self._conn = own_connection(self.r)
        try:
            for sk, args, n in self._calls(outputs):
                self._conn.send_command("EVALSHA", self._script.sha, 3, sk.windows, sk.results, sk.dead, *args)
                self._unread.append(n)
        except BaseException:
            self.reset()
            raise
        return done

    def collect(self) -> list[tuple[int, int]]:
        """Read the replies of every earlier :meth:`send`."""
        done = []
        try:
            while self._unread:
                published = int(self._conn.read_response())
                done.append((self._unread.pop(0), published))
        except redis.ResponseError as e:
            if "NOSCRIPT" in str(e):
                # The server lost its script cache (restart): these inputs were not acknowledged
                # and stay pending; treat it like an outage so the loop re-reads its pending list.
                self.reset()
                raise redis.ConnectionError("publish script missing on the server (restarted?)") from e
            self._unread.pop(0)
            raise
        except BaseException:
            self.reset()
            raise
        return done

    def reset(self) -> None:
        """Drop the connection and forget unanswered sends (their inputs stay pending)."""
        self._unread.clear()
        if self._conn is not None:
            self._conn.disconnect()
            self._conn = None
