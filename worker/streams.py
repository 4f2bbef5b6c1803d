"""Redis stream operations of a worker: group setup, reads, reclaims and the atomic publish."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from worker.keys import Keys, ShardKeys

# Each input's XACK return value gates its output XADD: an entry that another consumer already
# acknowledged (after a reclaim) publishes nothing, so every input gets exactly one output.
# KEYS = input, results, dead (one hash tag); ARGV = group, results maxlen, dead maxlen, then
# records of (kind 'r'|'d', input id, n, n field/value items).
PUBLISH_LUA = """
local group = ARGV[1]
local published = 0
local i = 4
while i <= #ARGV do
  local kind = ARGV[i]
  local id = ARGV[i + 1]
  local n = tonumber(ARGV[i + 2])
  if redis.call('XACK', KEYS[1], group, id) == 1 then
    local target, maxlen = KEYS[2], ARGV[2]
    if kind == 'd' then target, maxlen = KEYS[3], ARGV[3] end
    local args = {target, 'MAXLEN', '~', maxlen, '*'}
    for j = 1, n do args[5 + j] = ARGV[i + 2 + j] end
    redis.call('XADD', unpack(args))
    published = published + 1
  end
  i = i + 3 + n
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
    r: redis.Redis, keys: Keys, sk: ShardKeys, consumer: str, count: int, block_ms: int | None, pending: bool, read_us: int
) -> list[Entry]:
    """XREADGROUP from one shard: new entries (``>``), or this consumer's own pending ones (``0``)."""
    resp = r.xreadgroup(keys.group, consumer, {sk.windows: "0" if pending else ">"}, count=count, block=block_ms)
    if not resp:
        return []
    return _entries(sk.shard, resp[0][1], read_us)


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


class Publisher:
    """Runs the atomic publish-and-acknowledge script, one call per shard."""

    def __init__(self, r: redis.Redis, keys: Keys, results_maxlen: int, dead_maxlen: int) -> None:
        self.keys = keys
        self.results_maxlen = results_maxlen
        self.dead_maxlen = dead_maxlen
        self._script = r.register_script(PUBLISH_LUA)

    def publish(self, outputs: list[Output], client: redis.Redis | None = None) -> int:
        """Publish results/dead letters and XACK their inputs; returns how many were published."""
        by_shard: dict[int, list[Output]] = {}
        for o in outputs:
            by_shard.setdefault(o.entry.shard, []).append(o)
        published = 0
        for shard, outs in by_shard.items():
            sk = self.keys.shard(shard)
            args: list[Any] = [self.keys.group, self.results_maxlen, self.dead_maxlen]
            for o in outs:
                args += [o.kind, o.entry.id, 2 * len(o.fields)]
                for k, v in o.fields.items():
                    args += [k, v]
            published += int(self._script(keys=[sk.windows, sk.results, sk.dead], args=args, client=client))
        return published
