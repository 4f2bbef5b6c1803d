"""Waiting for replicas: ``WAIT`` after a client's writes, on the connection that made them.

Redis replicates asynchronously: a write a master acknowledged can be lost if the master dies
before its replicas have it and a replica is promoted. ``WAIT n timeout`` blocks until ``n``
replicas acknowledged every write *this connection* made so far (or the timeout passed) and
returns how many did. It must follow the writes on the same connection, and it is not allowed in
a Lua script, so:

* single Redis: ``WAIT`` is appended to the writes' pipeline (:func:`execute`);
* Redis Cluster: the writes are grouped by the node serving their slot and sent, with ``WAIT``
  last, on a non-transactional pipeline of that node's own client (:func:`execute_on_nodes`).
  ``MOVED``/``CLUSTERDOWN``/``TRYAGAIN``/``READONLY`` replies and connection errors (a failover)
  refresh the topology and resend the writes that did not succeed. A write whose reply was lost
  with its connection is resent too, so it may be applied twice (a second stream entry for an
  ``XADD``; the publish script's ``XACK`` gate makes a resent publish a no-op).

Fewer replicas than asked is not an error here: the caller gets :class:`ReplicaAckShort` and
decides (the producer raises :class:`ReplicaAckError`, the worker logs and counts it).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    MovedError,
    ReadOnlyError,
    TryAgainError,
)

from protocol.cluster import is_cluster
from protocol.redisconn import TRANSIENT, RedisConnSettings

#: Error replies that mean "the slot is served elsewhere now, or soon": refresh and resend.
REDIRECTS = (MovedError, AskError, ClusterDownError, TryAgainError, ReadOnlyError, BusyLoadingError)


@dataclass(frozen=True)
class Durability:
    """How many replicas must acknowledge a write before it counts (``replicas`` 0: don't wait)."""

    replicas: int = RedisConnSettings.model_fields["wait_replicas"].default
    timeout_ms: int = RedisConnSettings.model_fields["wait_timeout_ms"].default
    retries: int = 8  # cluster: resends after a redirect or a connection error (backoff 50 ms doubling to 1 s)

    @property
    def enabled(self) -> bool:
        """True when writes wait for replicas."""
        return self.replicas > 0


@dataclass(frozen=True)
class ReplicaAckShort:
    """``WAIT`` on ``node`` returned ``acked`` replicas, fewer than the ``asked``."""

    node: str
    asked: int
    acked: int


class ReplicaAckError(redis.RedisError):
    """Writes were applied but fewer replicas than asked acknowledged them within the timeout.

    The writes may or may not survive a failover. ``results`` holds every write's reply (e.g. the
    stream entry ids), ``short`` the nodes that fell short. Retrying is safe only if the writes are
    idempotent (entries with ids a reader deduplicates on).
    """

    def __init__(self, results: list[Any], short: list[ReplicaAckShort]) -> None:
        self.results = results
        self.short = short
        self.published: list[Any] = []  # set by callers that sent earlier batches (Producer.publish_many)
        self.acked = min(s.acked for s in short)
        self.asked = short[0].asked
        nodes = ", ".join(f"{s.node}: {s.acked}" for s in short)
        super().__init__(f"only {self.acked} of {self.asked} replicas acknowledged {len(results)} writes ({nodes})")


@dataclass(frozen=True)
class Outcome:
    """The writes' replies in order, and the nodes whose ``WAIT`` fell short."""

    results: list[Any]
    short: list[ReplicaAckShort]

    def check(self) -> list[Any]:
        """The replies, or :class:`ReplicaAckError` when a node fell short."""
        if self.short:
            raise ReplicaAckError(self.results, self.short)
        return self.results


def wait_reply(node: str, asked: int, reply: Any) -> list[ReplicaAckShort]:
    """The shortfall named by one ``WAIT`` reply (empty when enough replicas acknowledged)."""
    if isinstance(reply, Exception):
        raise reply
    acked = int(reply)
    return [ReplicaAckShort(node, asked, acked)] if acked < asked else []


def queued(pipe: Any) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """The ``(args, options)`` of the commands queued on a cluster pipeline (redis-py keeps them in
    its execution strategy since 6.x; ``command_stack`` before)."""
    strategy = getattr(pipe, "_execution_strategy", None)
    stack = strategy.command_queue if strategy is not None else pipe.command_stack
    return [(tuple(c.args), dict(c.options)) for c in stack]


def command_key(args: Sequence[Any]) -> Any:
    """The key that routes a queued command: the first key of ``EVAL``/``EVALSHA`` (after the script
    and the key count; the idempotent write), else the first argument (``XADD``)."""
    name = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
    return args[3] if name.upper() in ("EVAL", "EVALSHA") else args[1]


def execute(r: Any, pipe: Any, d: Durability) -> Outcome:
    """Run a non-transactional pipeline of single-key writes made on ``r``, then ``WAIT`` for ``d.replicas``.

    Without waiting it is ``pipe.execute()``. On a cluster client the queued commands (key =
    first argument) are taken off the pipeline and sent per node (:func:`execute_on_nodes`).
    """
    if not d.enabled:
        return Outcome(pipe.execute(), [])
    if is_cluster(r):
        commands = queued(pipe)
        pipe.reset()
        return execute_on_nodes(r, [(command_key(args), args, opts) for args, opts in commands], d)
    pipe.execute_command("WAIT", d.replicas, d.timeout_ms)
    *results, acked = pipe.execute()
    return Outcome(results, wait_reply(_name(r), d.replicas, acked))


def execute_on_nodes(rc: Any, commands: Sequence[tuple[Any, tuple[Any, ...], dict[str, Any]]],
                     d: Durability) -> Outcome:
    """Send ``(key, args, options)`` commands to the nodes serving their keys, each node's batch
    followed by ``WAIT`` on the same connection; resend what a failover redirected or cut off.

    Raises the last redirect/connection error when ``d.retries`` resends did not get through, and
    the first other error reply (e.g. ``NOSCRIPT``) as it is.
    """
    results: list[Any] = [None] * len(commands)
    todo = list(range(len(commands)))
    short: list[ReplicaAckShort] = []
    delay = 0.05
    for attempt in range(d.retries + 1):
        failed, last = _send_round(rc, commands, todo, d, results, short)
        if not failed:
            return Outcome(results, short)
        if attempt == d.retries:
            raise last  # type: ignore[misc]
        todo = failed
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
        _refresh(rc)
    raise AssertionError("unreachable")


def _send_round(rc: Any, commands: Sequence[tuple[Any, tuple[Any, ...], dict[str, Any]]], todo: list[int],
                d: Durability, results: list[Any], short: list[ReplicaAckShort]) -> tuple[list[int], Exception | None]:
    """One pass over the nodes; fills ``results``/``short``; returns the indices to resend and the last error."""
    by_node: dict[str, tuple[Any, list[int]]] = {}
    failed: list[int] = []
    last: Exception | None = None
    for i in todo:
        try:
            node = rc.get_node_from_key(commands[i][0])
        except redis.RedisError as e:  # slot not covered while the cluster fails over
            failed.append(i)
            last = e
            continue
        by_node.setdefault(node.name, (node, []))[1].append(i)
    for name, (node, idxs) in by_node.items():
        try:
            pipe = rc.get_redis_connection(node).pipeline(transaction=False)
            for i in idxs:
                _, args, opts = commands[i]
                pipe.execute_command(*args, **opts)
            pipe.execute_command("WAIT", d.replicas, d.timeout_ms)
            *replies, acked = pipe.execute(raise_on_error=False)
        except TRANSIENT as e:  # the node is gone: its replies (and whether it applied them) are unknown
            failed += idxs
            last = e
            continue
        applied = 0
        for i, reply in zip(idxs, replies):
            if isinstance(reply, REDIRECTS):
                failed.append(i)
                last = reply
            elif isinstance(reply, Exception):
                raise reply
            else:
                results[i] = reply
                applied += 1
        if applied:  # WAIT answers for this connection's writes; none applied: nothing to wait for
            short += wait_reply(name, d.replicas, acked)
    return failed, last


def _refresh(rc: Any) -> None:
    """Re-read the cluster topology (best effort: a node may still be down)."""
    try:
        rc.nodes_manager.initialize()
    except redis.RedisError:
        pass


def _name(r: Any) -> str:
    kw = getattr(getattr(r, "connection_pool", None), "connection_kwargs", {})
    return f"{kw.get('host', kw.get('path', '?'))}:{kw.get('port', '')}"
