"""Riding out a Redis outage: a client call retried with backoff for a bounded time.

A client (producer, results reader) wraps each round trip in :meth:`OutageBudget.call`. When the
call fails with a transient error (:data:`protocol.redisconn.TRANSIENT`: connection refused or
reset, a timeout, a cluster failing over), it is run again after a jittered exponential backoff
until it succeeds or the outage has lasted ``budget_s`` seconds; then :class:`RedisOutageError`
is raised, chained from the last error. One ``redis_outage_started`` warning is logged when an
outage begins and one ``redis_outage_ended`` info line when the first call after it succeeds (its
duration, the retries and the windows that were held back), however many calls it spans.

What a retry means for duplicates (docs/reliability.md, "Riding out an outage"): a write whose
reply was lost may have landed. With a producer id the retried write is idempotent and returns the
first entry's id; without one it may add the entry a second time, and only then.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis
import redis.asyncio
import redis.cluster
import structlog
from redis.backoff import ExponentialWithJitterBackoff

from protocol.redisconn import TRANSIENT, redacted

_T = TypeVar("_T")

#: Default longest outage a client rides out (``BIGRU_PRODUCER_OUTAGE_S``).
DEFAULT_OUTAGE_S = 60.0


class RedisOutageError(ConnectionError):
    """Redis stayed unreachable for longer than the outage budget.

    ``url``: the Redis URL (password redacted); ``seconds``: how long the outage had lasted;
    ``operation``: what was being done (``publish``, ``classify``, ``results``). Nothing of the
    failed call is known to have landed, except what the caller was told before it.
    """

    def __init__(self, url: str, seconds: float, operation: str) -> None:
        self.url, self.seconds, self.operation = url, seconds, operation
        super().__init__(f"Redis at {url} unreachable for {seconds:.1f} s ({operation}); giving up")


@dataclass
class OutageBudget:
    """Retries calls through outages of up to ``budget_s`` seconds each (0: never retry).

    ``clock`` and ``sleep`` are injectable so unit tests drive the real logic without waiting.
    One budget serves one client: its state (when the current outage began) spans calls.
    """

    budget_s: float = DEFAULT_OUTAGE_S
    url: str = ""
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    backoff: ExponentialWithJitterBackoff = field(
        default_factory=lambda: ExponentialWithJitterBackoff(cap=2.0, base=0.1))
    since: float | None = None  # when the current outage began (clock time); None: Redis is reachable
    retries: int = 0  # failed attempts in the current outage
    held: int = 0  # windows the calls in this outage held back (the most any one of them held)

    def __post_init__(self) -> None:
        self.url = redacted(self.url)
        self.log = structlog.get_logger("bigru.outage")

    @classmethod
    def for_client(cls, r: Any, budget_s: float = DEFAULT_OUTAGE_S) -> OutageBudget:
        """A budget naming ``r``'s server (host:port, or the socket path) in its messages."""
        return cls(budget_s, url=describe(r))

    def call(self, fn: Callable[[], _T], *, operation: str, windows: int = 0,
             on_retry: Callable[[], None] | None = None) -> _T:
        """``fn()``, retried through an outage (see the module docstring); ``windows``: what it carries;
        ``on_retry``: run before each retry (e.g. to forget what a lost reply may have changed)."""
        while True:
            try:
                out = fn()
            except TRANSIENT as err:
                self.sleep(self._failed(err, operation, windows))
                if on_retry is not None:
                    on_retry()
                continue
            self._succeeded()
            return out

    async def acall(self, fn: Callable[[], Awaitable[_T]], *, operation: str, windows: int = 0) -> _T:
        """As :meth:`call` for a coroutine function, sleeping with ``asyncio.sleep``."""
        while True:
            try:
                out = await fn()
            except TRANSIENT as err:
                await asyncio.sleep(self._failed(err, operation, windows))
                continue
            self._succeeded()
            return out

    def _failed(self, err: BaseException, operation: str, windows: int) -> float:
        """Record a failed attempt; the seconds to wait before the next (or raise past the budget)."""
        now = self.clock()
        if self.since is None:
            self.since, self.retries, self.held = now, 0, 0
            self.log.warning("redis_outage_started", url=self.url, operation=operation,
                             error=f"{type(err).__name__}: {err}", budget_s=self.budget_s)
        self.retries += 1
        self.held = max(self.held, windows)
        elapsed = now - self.since
        if elapsed >= self.budget_s:
            self.since = None
            self.log.error("redis_outage_budget_spent", url=self.url, operation=operation,
                           outage_s=round(elapsed, 3), retries=self.retries, windows_held=self.held)
            raise RedisOutageError(self.url, elapsed, operation) from err
        wait: float = self.backoff.compute(self.retries)
        return max(0.0, min(wait, self.budget_s - elapsed))

    def _succeeded(self) -> None:
        if self.since is None:
            return
        self.log.info("redis_outage_ended", url=self.url, outage_s=round(self.clock() - self.since, 3),
                      retries=self.retries, windows_held=self.held)
        self.since = None


def describe(r: Any) -> str:
    """Where a redis-py client connects, for messages: ``redis://host:port/db``, ``unix://path``, or a
    cluster's first startup node (never credentials)."""
    if isinstance(r, redis.cluster.RedisCluster | redis.asyncio.RedisCluster):
        node = r.get_default_node() or (r.get_nodes() or [None])[0]
        return "redis+cluster://" + (f"{node.host}:{node.port}" if node is not None else "?")
    if isinstance(r, redis.Redis | redis.asyncio.Redis):
        kw = r.connection_pool.connection_kwargs
        if "path" in kw:
            return f"unix://{kw['path']}"
        return f"redis://{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"
    return type(r).__name__
