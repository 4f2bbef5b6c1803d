"""Periodic housekeeping a replica does between batches: trim the input stream without losing
anything, and remove consumers that crashed and hold nothing.

Both run as server-side Lua scripts so that what they check and what they change happen atomically
(a consumer cannot read new entries between "has no pending entries" and its deletion; no group can
advance between computing the trim point and trimming). Each script touches one key, so it is
valid on a Redis Cluster.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
import structlog

from protocol.keys import Keys
from protocol.replies import as_str
from worker.config import Claiming

# Redis 7.0 has no ACKED trimming (that is 8.2's XTRIM ... ACKED), so compute the oldest entry any
# group still needs: the group's oldest pending id, or the first id after its last-delivered id.
# Everything below the minimum over all groups has been delivered and acknowledged by every group.
# Trimming at that minimum is what keeps XINFO GROUPS `lag` exact, the number KEDA's scaler reads:
# Redis reports lag as nil once an entry after a group's last-delivered id is gone, and KEDA reads nil
# as 0. So no entry after any group's last-delivered id is ever removed (nor any pending one), and the
# script also returns the groups whose lag the server cannot report (something else deleted entries,
# or a group was set to an arbitrary id), for the caller to log.
# Returns {minid, trimmed, {groups with a nil lag}} or false when there is no stream or no group.
TRIM_LUA = """
local groups = redis.pcall('XINFO', 'GROUPS', KEYS[1])
if groups['err'] then
  if string.find(groups['err'], 'no such key') then return false end
  return redis.error_reply(groups['err'])
end
if #groups == 0 then return false end
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function less(a, b)
  local ams, aseq = parse(a)
  local bms, bseq = parse(b)
  return ams < bms or (ams == bms and aseq < bseq)
end
local minid = nil
local unknown = {}
for _, g in ipairs(groups) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  if not info['lag'] then table.insert(unknown, info['name']) end
  local ms, seq = parse(info['last-delivered-id'])
  local keep = info['last-delivered-id']
  if seq < 9007199254740991 then keep = string.format('%d-%d', ms, seq + 1) end
  if info['pending'] > 0 then
    local oldest = redis.call('XPENDING', KEYS[1], info['name'])[2]
    if less(oldest, keep) then keep = oldest end
  end
  if minid == nil or less(keep, minid) then minid = keep end
end
return {minid, redis.call('XTRIM', KEYS[1], 'MINID', minid), unknown}
"""

# Delete a consumer only if it has no pending entries (otherwise they would become unclaimable).
# KEYS = input stream; ARGV = group, consumer. Returns 1 if deleted, 0 if kept.
DELETE_IDLE_CONSUMER_LUA = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


@dataclass
class MaintenanceReport:
    """What one maintenance pass did."""

    trimmed: int = 0
    trimmed_to: dict[int, str] = field(default_factory=dict)
    reaped: list[str] = field(default_factory=list)
    #: shard -> groups on its input stream whose XINFO GROUPS lag is nil (an autoscaler reading it sees 0)
    lag_unknown: dict[int, list[str]] = field(default_factory=dict)


class Maintenance:
    """Input trimming and consumer reaping for one replica, run at most every ``interval_s``."""

    def __init__(
        self,
        r: redis.Redis,
        keys: Keys,
        consumer: str,
        *,
        interval_s: float,
        trim: bool,
        reap_idle_ms: int,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.r = r
        self.keys = keys
        self.consumer = consumer
        self.interval_s = interval_s
        self.trim_enabled = trim
        self.reap_idle_ms = reap_idle_ms
        self.monotonic = monotonic
        self.log = structlog.get_logger("worker").bind(consumer=consumer)
        self._trim = r.register_script(TRIM_LUA)
        self._delete = r.register_script(DELETE_IDLE_CONSUMER_LUA)
        self._next = monotonic()  # first pass on the first step: a restarted replica cleans up at once

    @classmethod
    def from_settings(cls, r: redis.Redis, keys: Keys, consumer: str, settings: Claiming,
                      monotonic: Callable[[], float] = time.monotonic) -> Maintenance:
        """The maintenance of ``consumer`` as its :class:`~worker.config.Claiming` settings configure it."""
        return cls(r, keys, consumer, interval_s=settings.maintenance_interval_ms / 1000, trim=settings.trim_input,
                   reap_idle_ms=settings.reap_idle_ms, monotonic=monotonic)

    def maybe_run(self) -> MaintenanceReport | None:
        """Run a pass if one is due (``interval_s`` of 0 disables maintenance)."""
        if self.interval_s <= 0 or self.monotonic() < self._next:
            return None
        self._next = self.monotonic() + self.interval_s
        return self.run_once()

    def run_once(self) -> MaintenanceReport:
        """Trim every shard's input stream (if enabled) and reap dead consumers now."""
        rep = MaintenanceReport()
        for sk in self.keys.all_shards():
            if self.trim_enabled:
                out = self._trim(keys=[sk.windows])
                if out:
                    minid, n, unknown = out
                    rep.trimmed += int(n)
                    rep.trimmed_to[sk.shard] = as_str(minid)
                    if unknown:
                        rep.lag_unknown[sk.shard] = [as_str(g) for g in unknown]
                        self.log.error("group_lag_unknown", shard=sk.shard, stream=sk.windows,
                                       groups=rep.lag_unknown[sk.shard],
                                       hint="entries after a group's position were deleted: XINFO GROUPS lag is nil "
                                       "(KEDA reads 0); the group's pending count and XLEN still show the backlog")
            rep.reaped += self.reap(sk.windows)
        if rep.trimmed or rep.reaped:
            self.log.info("maintenance", trimmed=rep.trimmed, trimmed_to=rep.trimmed_to, reaped=rep.reaped)
        return rep

    def reap(self, stream: str) -> list[str]:
        """Delete consumers idle longer than ``reap_idle_ms`` with no pending entries and no heartbeat."""
        try:
            consumers = self.r.xinfo_consumers(stream, self.keys.group)
        except redis.ResponseError:  # no stream or group yet
            return []
        reaped = []
        for c in consumers:
            name = as_str(c["name"])
            if name == self.consumer or int(c["pending"]) > 0 or int(c["idle"]) < self.reap_idle_ms:
                continue
            if self.r.exists(self.keys.heartbeat(name)):
                continue
            if self.delete_if_idle(stream, name):
                self.r.hdel(self.keys.workers, name)
                reaped.append(name)
        return reaped

    def delete_if_idle(self, stream: str, consumer: str) -> bool:
        """Atomically delete ``consumer`` from ``stream``'s group if it has no pending entries."""
        return bool(self._delete(keys=[stream], args=[self.keys.group, consumer]))
