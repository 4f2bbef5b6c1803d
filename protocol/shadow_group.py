"""The shadow pool's consumer group on the input streams: created when a shadow starts, ended on promotion.

Shared by the worker (``bigru-worker --shadow-version``, ``promote``, ``shadow-stop``) and the training
module's promotion judge (``bigru-train watch``), so both end a shadow the same way.
"""

from __future__ import annotations

import redis

from protocol.keys import Keys


def create_group(r: redis.Redis, keys: Keys, start: str) -> None:
    """Create ``keys.group`` on every shard's input stream at ``start`` (an existing group keeps its place)."""
    for sk in keys.all_shards():
        try:
            r.xgroup_create(sk.windows, keys.group, id=start, mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise


def end_shadow(r: redis.Redis, keys: Keys) -> int:
    """Destroy the shadow group on every shard (so it no longer holds back input trimming) and drop the
    shadow heartbeats; returns the number of groups destroyed. The shadow results stay for ``compare``."""
    shadow = keys.as_shadow()
    n = 0
    for sk in shadow.all_shards():
        try:
            n += int(r.xgroup_destroy(sk.windows, shadow.group))
        except redis.ResponseError as e:
            msg = str(e).lower()
            if "no such key" not in msg and "requires the key to exist" not in msg:  # no stream: no group
                raise
    r.delete(shadow.workers)
    return n
