"""Redis connections with jittered exponential backoff (redis-py's Retry), shared by all roles."""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ClusterDownError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

#: Errors that mean "Redis is unreachable right now", worth retrying after a backoff
#: (the cluster ones happen while a cluster fails over or migrates a slot).
TRANSIENT = (RedisConnectionError, RedisTimeoutError, ConnectionResetError, BrokenPipeError, ClusterDownError,
             TryAgainError)


def connect(url: str, *, retries: int = 3, socket_timeout: float | None = None, **kwargs: Any) -> redis.Redis:
    """A client for ``url`` (``redis://``, ``rediss://``, ``unix://``) that retries transient errors.

    ``redis+cluster://`` / ``rediss+cluster://`` URLs give a Redis Cluster client (see
    ``worker.cluster``); it offers the same commands for the single-slot keys this system uses.
    TLS options (``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``) may be passed through ``kwargs``
    or as URL query parameters.
    """
    from worker.cluster import connect_cluster, is_cluster_url

    retry = Retry(ExponentialWithJitterBackoff(cap=2.0, base=0.05), retries)
    if is_cluster_url(url):
        return connect_cluster(url, retry=retry, socket_timeout=socket_timeout, **kwargs)  # type: ignore[no-any-return]
    return redis.Redis.from_url(
        url,
        retry=retry,
        retry_on_error=list(TRANSIENT),
        socket_timeout=socket_timeout,
        socket_connect_timeout=5.0,
        health_check_interval=30,
        **kwargs,
    )


def redacted(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))
