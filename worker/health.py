"""Health: which replicas have a fresh heartbeat.

A replica writes its first heartbeat only after its model is loaded and warmed up, then refreshes
it every ``heartbeat_interval_s``; the key expires ``heartbeat_ttl_s`` after the last refresh.
A replica is therefore *ready* exactly while its heartbeat key exists and its breaker
(``worker.breaker``) is not open: a replica whose model is broken keeps its heartbeat (so status
shows why) and fails ``--check``.

This module is the one reader of the heartbeat (:class:`worker.heartbeat_record.HeartbeatRecord`, written by
``worker.liveness.Heartbeat``); ``worker.status`` reads it through :func:`beats`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import redis
from redis.exceptions import RedisClusterException, RedisError

from protocol.keys import Keys
from protocol.replies import as_str
from worker.heartbeat_record import HeartbeatRecord

if TYPE_CHECKING:
    from worker.config import WorkerSettings

#: Socket timeout of a probe's commands, sent once without the client's retries, so a probe answers
#: within the manifests' 3 s timeoutSeconds (connecting keeps the client's own 5 s connect timeout: an
#: unreachable Redis then fails the probe by its timeout, which the kubelet counts as a failure too).
PROBE_TIMEOUT_S = 2.0


def heartbeat(r: redis.Redis, keys: Keys, consumer: str) -> HeartbeatRecord | None:
    """The heartbeat of ``consumer``, or None when missing or expired."""
    raw = r.get(keys.heartbeat(consumer))
    return None if raw is None else HeartbeatRecord.from_json(raw)


def beats(r: redis.Redis, keys: Keys) -> dict[str, HeartbeatRecord]:
    """The last heartbeat of every replica in the workers hash (expired ones included), by consumer."""
    return {as_str(k): HeartbeatRecord.from_json(v) for k, v in r.hgetall(keys.workers).items()}


def live_replicas(r: redis.Redis, keys: Keys, host: str | None = None) -> list[HeartbeatRecord]:
    """Heartbeats of replicas whose heartbeat key has not expired (optionally one host's)."""
    out = []
    for consumer in r.hkeys(keys.workers):
        info = heartbeat(r, keys, consumer.decode())
        if info is not None and (host is None or info.host == host):
            out.append(info)
    return out


def check(r: redis.Redis, keys: Keys, consumers: list[str]) -> tuple[bool, str]:
    """True when every consumer in ``consumers`` (this host's replicas) has a fresh heartbeat and a
    breaker that is not open."""
    found = {c: heartbeat(r, keys, c) for c in consumers}
    missing = [c for c, hb in found.items() if hb is None]
    broken = {c: hb for c, hb in found.items() if hb is not None and hb.breaker == "open"}
    ready = len(consumers) - len(missing) - len(broken)
    msg = f"{ready}/{len(consumers)} replicas ready"
    if missing:
        msg += f"; missing or stale: {', '.join(missing)}"
    if broken:
        msg += "; breaker open (model failing): " + ", ".join(f"{c} ({hb.breaker_reason[:120]})" for c, hb in broken.items())
    return not missing and not broken, msg


def probe(settings: WorkerSettings, timeout_s: float = PROBE_TIMEOUT_S) -> tuple[bool, str]:
    """``bigru-worker --check``: :func:`check` for this configuration's replicas, one try, no retries.

    Imports only redis and the settings (no model runtime, no numpy), so it answers in a small
    fraction of a second (results/check_latency.md); a Redis that does not answer is a failed check.
    """
    try:
        r = settings.connect(retries=0, socket_timeout=timeout_s)
        try:
            return check(r, settings.keys, [settings.consumer_name(i) for i in range(settings.replicas)])
        finally:
            r.close()
    except (RedisError, RedisClusterException, OSError) as e:
        return False, f"redis unreachable: {e}"
