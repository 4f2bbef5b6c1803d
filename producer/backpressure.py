"""Producer backpressure: refuse (or wait) while the consumer group is too far behind.

The lag is the number of input entries the group has not yet delivered to any worker, summed over
shards, as reported by ``XINFO GROUPS`` (Redis >= 7). When Redis cannot compute it (entries were
deleted with XDEL after the group's position) it is counted with a bounded ``XRANGE``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

import redis

from protocol.keys import Keys, ShardKeys
from protocol.replies import as_str, group_info


class BackpressureError(RuntimeError):
    """The group's lag exceeds the configured limit; nothing was published."""

    def __init__(self, lag: int, limit: int, waited_s: float = 0.0) -> None:
        extra = f" after waiting {waited_s:.1f}s" if waited_s else ""
        super().__init__(f"consumer group lag {lag} exceeds max_lag {limit}{extra}; not published")
        self.lag = lag
        self.limit = limit
        self.published: list[str] = []  # ids published before the refusal (publish_many)


def group_lag(r: redis.Redis, keys: Keys, cap: int) -> int:
    """Entries not yet delivered to ``keys.group``, summed over shards (counted up to ``cap`` + 1
    per shard when Redis reports the lag as unknown)."""
    total = 0
    for sk in keys.all_shards():
        total += _shard_lag(r, keys.group, sk, cap)
    return total


def _shard_lag(r: redis.Redis, group: str, sk: ShardKeys, cap: int) -> int:
    g = group_info(r, sk.windows, group)
    if g is None:  # no stream (0) or workers not started yet: they will create the group at the stream's start
        return int(r.xlen(sk.windows))
    if g.get("lag") is not None:
        return int(g["lag"])
    after = "(" + as_str(g["last-delivered-id"])
    return len(r.xrange(sk.windows, min=after, max="+", count=cap + 1))


class Backpressure:
    """Gate called before each publish: raises :class:`BackpressureError` (``mode='refuse'``) or
    sleeps until the lag is back under the limit (``mode='block'``, at most ``block_timeout_s``).

    The lag is re-read at most every ``check_interval_s``, so the limit can be overshot by what one
    producer publishes in that interval (or in one ``publish_many`` chunk).
    """

    def __init__(
        self,
        r: redis.Redis,
        keys: Keys,
        max_lag: int,
        mode: Literal["refuse", "block"] = "refuse",
        *,
        block_timeout_s: float = 30.0,
        check_interval_s: float = 0.05,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.r = r
        self.keys = keys
        self.max_lag = max_lag
        self.mode = mode
        self.block_timeout_s = block_timeout_s
        self.check_interval_s = check_interval_s
        self.monotonic = monotonic
        self.sleep = sleep
        self._checked_at = float("-inf")
        self._lag = 0

    def lag(self, fresh: bool = False) -> int:
        """The group's lag, re-read when the cached value is older than ``check_interval_s``."""
        now = self.monotonic()
        if fresh or now - self._checked_at >= self.check_interval_s:
            self._lag = group_lag(self.r, self.keys, self.max_lag)
            self._checked_at = now
        return self._lag

    def wait(self) -> None:
        """Return when publishing is allowed; raise :class:`BackpressureError` otherwise."""
        lag = self.lag()
        if lag <= self.max_lag:
            return
        if self.mode == "refuse":
            raise BackpressureError(lag, self.max_lag)
        start = self.monotonic()
        delay = 0.01
        while True:
            waited = self.monotonic() - start
            if waited >= self.block_timeout_s:
                raise BackpressureError(lag, self.max_lag, waited)
            self.sleep(min(delay, max(0.0, self.block_timeout_s - waited)))
            delay = min(delay * 2, 0.5)
            lag = self.lag(fresh=True)
            if lag <= self.max_lag:
                return
