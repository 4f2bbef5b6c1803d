"""Reading Redis replies the same way in every role: bytes to text, and a consumer group's state.

Clients here run with ``decode_responses=False`` (stream payloads are binary), so names, ids and
hash fields come back as bytes; these helpers turn them into text once, in one place.
"""

from __future__ import annotations

from typing import Any

import redis


def as_str(v: bytes | str) -> str:
    """``v`` as text: bytes decoded as UTF-8, a str unchanged."""
    return v.decode() if isinstance(v, bytes) else v


def group_info(r: redis.Redis, stream: str, group: str) -> dict[str, Any] | None:
    """The ``XINFO GROUPS`` entry of ``group`` on ``stream`` (``lag``, ``pending``,
    ``last-delivered-id``, ...), or None when the stream or the group does not exist yet.

    Other errors (a denied command, a key that is not a stream) propagate.
    """
    try:
        groups = r.xinfo_groups(stream)
    except redis.ResponseError as e:
        if "no such key" in str(e).lower():
            return None
        raise
    for g in groups:
        if as_str(g["name"]) == group:
            return dict(g)
    return None
