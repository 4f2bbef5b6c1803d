"""Health: which replicas have a fresh heartbeat.

A replica writes its first heartbeat only after its model is loaded and warmed up, then refreshes
it every ``heartbeat_interval_s``; the key expires ``heartbeat_ttl_s`` after the last refresh.
A replica is therefore *ready* exactly while its heartbeat key exists.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from protocol.keys import Keys


def heartbeat(r: redis.Redis, keys: Keys, consumer: str) -> dict[str, Any] | None:
    """The heartbeat document of ``consumer``, or None when missing or expired."""
    raw = r.get(keys.heartbeat(consumer))
    return None if raw is None else dict(json.loads(raw))


def live_replicas(r: redis.Redis, keys: Keys, host: str | None = None) -> list[dict[str, Any]]:
    """Heartbeat documents of replicas whose heartbeat key has not expired (optionally one host's)."""
    out = []
    for consumer in r.hkeys(keys.workers):
        info = heartbeat(r, keys, consumer.decode())
        if info is not None and (host is None or info.get("host") == host):
            out.append(info)
    return out


def check(r: redis.Redis, keys: Keys, consumers: list[str]) -> tuple[bool, str]:
    """True when every consumer in ``consumers`` (this host's replicas) has a fresh heartbeat."""
    missing = [c for c in consumers if heartbeat(r, keys, c) is None]
    alive = len(consumers) - len(missing)
    msg = f"{alive}/{len(consumers)} replicas ready"
    if missing:
        msg += f"; missing or stale: {', '.join(missing)}"
    return not missing, msg
