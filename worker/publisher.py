"""The publish stage: results and dead letters written and their inputs acknowledged, atomically.

The script runs per shard; its reply is read on the next call, so Redis runs it while the worker
computes the next batch. An input whose script never ran stays pending and is read again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack
import redis
from redis.exceptions import NoScriptError

from protocol.cluster import is_cluster
from protocol.durability import Durability, ReplicaAckShort, execute, execute_on_nodes, wait_reply
from protocol.keys import Keys
from worker.config import Publishing, default
from worker.types import Output

# Each input's XACK return value gates its output XADDs: an entry that another consumer already
# acknowledged (after a reclaim) publishes nothing, so every input gets exactly one output (and, with
# a reply stream, exactly one reply). KEYS = input, results, dead, then the reply streams of the
# batch (one hash tag); ARGV = group, results maxlen, dead maxlen, one msgpack array of records,
# reply maxlen, reply ttl (s), results_shared ('1'|'0'). A record is [kind 'r'|'d', input id,
# [field, value, ...], dead fields or false, reply key index or 0]: a multi-window result with dead
# windows carries its dead letter (always written to the dead stream, never to the reply stream); a
# record naming reply key k (KEYS[3 + k]) also goes to that stream (capped, its expiry refreshed),
# and with results_shared '0' only there. The records are a single argument, so the client packs a
# batch in one C call instead of one protocol argument per field.
PUBLISH_LUA = """
local group = ARGV[1]
local records = cmsgpack.unpack(ARGV[4])
local shared = ARGV[7] == '1'
local published = 0
for i = 1, #records do
  local rec = records[i]
  if redis.call('XACK', KEYS[1], group, rec[2]) == 1 then
    local reply = nil
    if rec[5] and rec[5] > 0 then reply = KEYS[3 + rec[5]] end
    if shared or not reply then
      local target, maxlen = KEYS[2], ARGV[2]
      if rec[1] == 'd' then target, maxlen = KEYS[3], ARGV[3] end
      redis.call('XADD', target, 'MAXLEN', '~', maxlen, '*', unpack(rec[3]))
    end
    if rec[4] then redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', unpack(rec[4])) end
    if reply then
      redis.call('XADD', reply, 'MAXLEN', '~', ARGV[5], '*', unpack(rec[3]))
      redis.call('EXPIRE', reply, ARGV[6])
    end
    published = published + 1
  end
end
return published
"""


def own_connection(r: redis.Redis) -> Any:
    """A connection with ``r``'s settings that is not in its pool (for replies read later)."""
    pool = r.connection_pool
    return pool.connection_class(**pool.connection_kwargs)


class Publisher:
    """Runs the atomic publish-and-acknowledge script, one call per shard.

    :meth:`publish` waits for Redis; :meth:`send` only writes the command on a connection of its
    own and collects the reply on the next call. With ``durability`` enabled a ``WAIT`` follows
    every script call on the same connection; a reply naming fewer replicas than asked goes to
    ``on_short`` (the inputs are acknowledged either way; nothing is retried).
    """

    def __init__(self, r: redis.Redis, keys: Keys, results_maxlen: int, dead_maxlen: int, *,
                 reply_maxlen: int = default("reply_maxlen"), reply_ttl_s: int = default("reply_ttl_s"),
                 results_shared: bool = default("results_shared"),
                 durability: Durability | None = None,
                 on_short: Callable[[ReplicaAckShort], None] | None = None) -> None:
        self.r = r
        self.keys = keys
        self.results_maxlen = results_maxlen
        self.dead_maxlen = dead_maxlen
        self.reply_maxlen = reply_maxlen
        self.reply_ttl_s = reply_ttl_s
        self.results_shared = results_shared
        self._script = r.register_script(PUBLISH_LUA)
        self._packer = msgpack.Packer(use_bin_type=False)  # Redis' cmsgpack predates the bin types
        self._conn: Any = None
        self._unread: list[int] = []  # outputs per sent script whose reply is not read yet
        self.durability = durability or Durability()
        self.on_short = on_short or (lambda short: None)
        self._node = "?"  # host:port of the own connection (named in shortfalls)

    @classmethod
    def from_settings(cls, r: redis.Redis, keys: Keys, settings: Publishing, *, durability: Durability | None = None,
                      on_short: Callable[[ReplicaAckShort], None] | None = None) -> Publisher:
        """A publisher writing where the :class:`~worker.config.Publishing` settings say."""
        return cls(r, keys, settings.results_maxlen, settings.dead_maxlen, reply_maxlen=settings.reply_maxlen,
                   reply_ttl_s=settings.reply_ttl_s, results_shared=settings.results_shared, durability=durability,
                   on_short=on_short)

    def _calls(self, outputs: list[Output]) -> list[tuple[list[str], list[Any], int]]:
        """Per shard: the script's KEYS (input, results, dead, reply streams...), ARGV and output count."""
        by_shard: dict[int, list[Output]] = {}
        for o in outputs:
            by_shard.setdefault(o.entry.shard, []).append(o)
        calls = []
        for shard, outs in by_shard.items():
            sk = self.keys.shard(shard)
            replies: dict[str, int] = {}
            records = []
            for o in outs:
                k = replies.setdefault(o.reply, len(replies) + 1) if o.reply else 0
                records.append([o.kind, o.entry.id, o.fields, o.dead or False, k])
            args = [self.keys.group, self.results_maxlen, self.dead_maxlen, self._packer.pack(records),
                    self.reply_maxlen, self.reply_ttl_s, "1" if self.results_shared else "0"]
            keys = [sk.windows, sk.results, sk.dead] + [sk.reply(name) for name in replies]
            calls.append((keys, args, len(outs)))
        return calls

    def publish(self, outputs: list[Output]) -> int:
        """Publish results/dead letters and XACK their inputs; returns how many were published."""
        published = 0
        for keys, args, _ in self._calls(outputs):
            if self.durability.enabled:
                published += self._publish_waiting(keys, args)
            else:
                published += int(self._script(keys=keys, args=args))
        return published

    def _publish_waiting(self, keys: list[str], args: list[Any]) -> int:
        """One script call and ``WAIT`` on the same connection (per node on a cluster); reloads the
        script once if the server lacks it (a promoted replica has an empty script cache)."""
        cmd = ("EVALSHA", self._script.sha, len(keys), *keys, *args)
        for attempt in (0, 1):
            try:
                if is_cluster(self.r):
                    out = execute_on_nodes(self.r, [(keys[0], cmd, {})], self.durability)
                else:
                    pipe = self.r.pipeline(transaction=False)
                    pipe.execute_command(*cmd)
                    out = execute(self.r, pipe, self.durability)
            except NoScriptError:
                if attempt:
                    raise
                self.r.script_load(PUBLISH_LUA)
                continue
            for short in out.short:
                self.on_short(short)
            return int(out.results[0])
        raise AssertionError("unreachable")

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
            self._node = f"{getattr(self._conn, 'host', 'unix')}:{getattr(self._conn, 'port', '')}"
        wait = self.durability
        try:
            for keys, args, n in self._calls(outputs):
                self._conn.send_command("EVALSHA", self._script.sha, len(keys), *keys, *args)
                if wait.enabled:  # counts this connection's writes, so it must follow them here
                    self._conn.send_command("WAIT", wait.replicas, wait.timeout_ms)
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
                published = self._read_one()
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

    def _read_one(self) -> int:
        """One script reply, and its ``WAIT`` reply (read even after an error reply, to stay in step)."""
        try:
            reply: Any = self._conn.read_response()
        except redis.ResponseError as e:
            reply = e
        if self.durability.enabled:
            for short in wait_reply(self._node, self.durability.replicas, self._conn.read_response()):
                self.on_short(short)
        if isinstance(reply, Exception):
            raise reply
        return int(reply)

    def reset(self) -> None:
        """Drop the connection and forget unanswered sends (their inputs stay pending)."""
        self._unread.clear()
        if self._conn is not None:
            self._conn.disconnect()
            self._conn = None
