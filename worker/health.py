"""Health check and status views built from heartbeats and stream/group info."""

from __future__ import annotations

import json
import socket
from typing import Any

import redis

from worker.keys import Keys


def live_replicas(r: redis.Redis, keys: Keys, host: str | None = None) -> list[dict[str, Any]]:
    """Heartbeat documents of replicas whose heartbeat key has not expired (optionally one host's)."""
    out = []
    for consumer in r.hkeys(keys.workers):
        name = consumer.decode()
        raw = r.get(keys.heartbeat(name))
        if raw is None:
            continue
        info = json.loads(raw)
        if host is None or info.get("host") == host:
            out.append(info)
    return out


def check(r: redis.Redis, keys: Keys, expected: int) -> tuple[bool, str]:
    """True when at least ``expected`` replicas on this host have a fresh heartbeat."""
    host = socket.gethostname()
    live = live_replicas(r, keys, host)
    ok = len(live) >= expected
    return ok, f"{len(live)}/{expected} replicas alive on {host}"


def status(r: redis.Redis, keys: Keys) -> dict[str, Any]:
    """Per-shard stream length, group lag and pending count, plus consumers and live replicas."""
    shards = []
    for sk in keys.all_shards():
        info: dict[str, Any] = {"shard": sk.shard, "stream": sk.windows, "length": r.xlen(sk.windows)}
        try:
            groups = {g["name"].decode(): g for g in r.xinfo_groups(sk.windows)}
        except redis.ResponseError:
            groups = {}
        g = groups.get(keys.group)
        if g:
            info["lag"] = g.get("lag")
            info["pending"] = g.get("pending")
            info["consumers"] = [
                {"name": c["name"].decode(), "pending": c["pending"], "idle_ms": c["idle"]}
                for c in r.xinfo_consumers(sk.windows, keys.group)
            ]
        info["results"] = r.xlen(sk.results)
        info["dead"] = r.xlen(sk.dead)
        shards.append(info)
    replicas = live_replicas(r, keys)
    return {"shards": shards, "replicas": replicas, "models": models(r, keys, replicas)}


def models(r: redis.Redis, keys: Keys, replicas: list[dict[str, Any]]) -> dict[str, Any]:
    """The registry's ``latest`` pointer and the version each live replica serves."""
    from training.registry import read_pointer

    ptr = read_pointer(r, keys)
    serving = {str(rep.get("consumer")): rep.get("model") for rep in replicas}
    latest = None if ptr is None else ptr.version
    return {"latest": latest, "latest_seq": None if ptr is None else ptr.seq, "serving": serving,
            "behind": sorted(c for c, v in serving.items() if latest is not None and v != latest)}
