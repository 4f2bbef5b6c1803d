"""Redis Cluster support: cluster URLs, the cluster client, shard assignment and shard placement.

A logical stream is split into ``shards`` shard streams (see :class:`protocol.keys.Keys`); the
input, results and dead-letter streams of one shard share a hash tag, so every command the
system sends touches one slot (the publish script's three keys included). Cluster mode is
chosen by the URL scheme: ``redis+cluster://host:port`` (``rediss+cluster://`` for TLS) names any
node of the cluster; the client discovers the others and follows MOVED/ASK redirections.
"""

from __future__ import annotations

from typing import Any

from redis.cluster import RedisCluster

from protocol.keys import Keys

#: URL schemes that select cluster mode, and the plain scheme each stands for.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


class ShardSpecError(ValueError):
    """A shard subset such as ``"0,2-3"`` does not parse or names shards that do not exist."""


def is_cluster_url(url: str) -> bool:
    """True when ``url`` selects Redis Cluster mode (``redis+cluster://`` or ``rediss+cluster://``)."""
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


def plain_url(url: str) -> str:
    """``url`` with a cluster scheme replaced by the plain one (``redis+cluster://`` -> ``redis://``)."""
    scheme, sep, rest = url.partition("://")
    return f"{CLUSTER_SCHEMES.get(scheme.lower(), scheme)}{sep}{rest}"


def connect_cluster(url: str, *, retry: Any, socket_timeout: float | None, **kwargs: Any) -> RedisCluster:
    """A :class:`RedisCluster` client for a ``redis+cluster://`` URL.

    ``retry`` covers both a node's transient errors and cluster-level redirections/reinitialisation.
    """
    return RedisCluster.from_url(
        plain_url(url),
        retry=retry,
        socket_timeout=socket_timeout,
        socket_connect_timeout=5.0,
        **kwargs,
    )


def is_cluster(r: Any) -> bool:
    """True when ``r`` is a cluster client."""
    return isinstance(r, RedisCluster)


def parse_shards(spec: str | None, shards: int) -> list[int]:
    """The shards a worker consumes: ``None``/``""``/``"all"`` for all, else e.g. ``"0,2-3"``."""
    if spec is None or spec.strip().lower() in ("", "all"):
        return list(range(shards))
    out: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-", 1))
                chosen = range(lo, hi + 1)
            else:
                chosen = range(int(part), int(part) + 1)
        except ValueError as e:
            raise ShardSpecError(f"bad shard list {spec!r}: expected e.g. '0,2-3'") from e
        if not chosen or min(chosen) < 0 or max(chosen) >= shards:
            raise ShardSpecError(f"shard list {spec!r} names shards outside 0..{shards - 1}")
        out.update(chosen)
    return sorted(out)


def shard_nodes(r: Any, keys: Keys) -> dict[int, str]:
    """``host:port`` of the node serving each shard (empty for a single Redis)."""
    if not is_cluster(r):
        return {}
    out = {}
    for sk in keys.all_shards():
        node = r.get_node_from_key(sk.windows)
        out[sk.shard] = f"{node.host}:{node.port}"
    return out

