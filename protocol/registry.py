"""The model registry in Redis: checkpoint bytes, one entry per version, a ``latest`` pointer, events.

Layout (key names from :class:`protocol.keys.Keys`)::

    models                 hash   version -> entry JSON (sha256, size, config summary, metrics, ...)
    model:<version>        string the checkpoint file's bytes (a few hundred KB)
    model:latest           hash   version, seq, action (published|promoted), ts
    model:events           stream published / promoted / refused announcements
    model-refusals:<ver>   hash   consumer -> JSON note of why it refused that version

Writes go blob -> entry -> pointer -> announcement, so whoever sees the pointer finds the entry and the
bytes. The pointer moves in one Lua call on one key, which bumps ``seq``; workers compare ``seq`` to
know that the pointer moved even when it moved back to an older version (``promote``).

This module never parses a checkpoint (that is ``training.publish``), so it imports neither torch nor
any role package: workers, status views and the training CLI all use it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from protocol.keys import Keys
from protocol.replies import as_str

EVENTS_MAXLEN = 10_000

_MOVE_POINTER = """
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'action', ARGV[2], 'ts', ARGV[3])
return seq
"""


class RegistryError(Exception):
    """A registry operation cannot be done (unknown version, conflicting bytes, corrupt blob)."""


class IntegrityError(RegistryError):
    """Stored checkpoint bytes do not match the sha256 recorded for them."""


@dataclass(frozen=True)
class Pointer:
    """Where ``latest`` points: the version, the move counter and the kind of the last move."""

    version: str
    seq: int
    action: str
    ts: float = 0.0


@dataclass
class Entry:
    """The registry's description of one published version."""

    version: str
    sha256: str
    size: int
    created_at: str
    published_at: float
    input_dim: int
    classes: list[str]
    config: dict[str, Any]
    params: int
    metrics: dict[str, Any] = field(default_factory=dict)
    golden_size: int = 0
    data_fingerprint: str = ""
    wire_version: int = 1
    source: str = ""

    def to_json(self) -> str:
        """The JSON stored in the ``models`` hash."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Entry:
        """Inverse of :meth:`to_json` (unknown fields are ignored, for forward compatibility)."""
        d = json.loads(raw)
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def announce(r: redis.Redis, keys: Keys, event: str, version: str, **fields: Any) -> str:
    """Append an event to the announcement stream; returns its id."""
    doc = {"event": event, "version": version, "ts": repr(time.time()), **{k: str(v) for k, v in fields.items()}}
    return as_str(r.xadd(keys.model_events, doc, maxlen=EVENTS_MAXLEN, approximate=True))


def _move(r: redis.Redis, keys: Keys, version: str, action: str) -> Pointer:
    ts = time.time()
    seq = int(r.eval(_MOVE_POINTER, 1, keys.model_latest, version, action, repr(ts)))
    return Pointer(version, seq, action, ts)


def register(r: redis.Redis, keys: Keys, data: bytes, entry: Entry) -> bool:
    """Store bytes and entry; returns False when the version was already registered with the same bytes."""
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        raise RegistryError(f"{entry.version}: bytes do not match the entry's sha256")
    existing = get_entry(r, keys, entry.version)
    if existing is not None and r.exists(keys.model_blob(entry.version)):
        if existing.sha256 != entry.sha256:
            raise RegistryError(
                f"version {entry.version} is already registered with sha256 {existing.sha256[:12]}…, not {entry.sha256[:12]}…"
            )
        return False
    r.set(keys.model_blob(entry.version), data)
    r.hset(keys.models, entry.version, entry.to_json())
    return True


def publish(r: redis.Redis, keys: Keys, data: bytes, entry: Entry, *, set_latest: bool = True,
            notify: bool = True) -> tuple[Entry, Pointer | None]:
    """Register checkpoint bytes with their ``entry``, move ``latest`` to them and announce it.

    ``training.publish.publish_checkpoint`` parses the bytes into the entry first (so a corrupt file
    is rejected before anything is written). ``notify=False`` skips the announcement (workers then
    find the version by their periodic check).
    """
    register(r, keys, data, entry)
    if not set_latest:
        return entry, None
    ptr = _move(r, keys, entry.version, "published")
    if notify:
        announce(r, keys, "published", entry.version, seq=ptr.seq, sha256=entry.sha256)
    return entry, ptr


def promote(r: redis.Redis, keys: Keys, version: str, *, notify: bool = True) -> Pointer:
    """Move ``latest`` to any registered ``version`` (also backwards: rollback); workers follow."""
    if get_entry(r, keys, version) is None or not r.exists(keys.model_blob(version)):
        known = ", ".join(sorted(as_str(v) for v in r.hkeys(keys.models))[-5:]) or "none"
        raise RegistryError(f"version {version!r} is not registered (latest registered: {known})")
    ptr = _move(r, keys, version, "promoted")
    if notify:
        announce(r, keys, "promoted", version, seq=ptr.seq)
    return ptr


def read_pointer(r: redis.Redis, keys: Keys) -> Pointer | None:
    """Where ``latest`` points, or None before the first publish."""
    raw = r.hgetall(keys.model_latest)
    if not raw or b"version" not in raw:
        return None
    return Pointer(as_str(raw[b"version"]), int(raw.get(b"seq", 0)), as_str(raw.get(b"action", b"")), float(raw.get(b"ts", 0)))


def get_entry(r: redis.Redis, keys: Keys, version: str) -> Entry | None:
    """The registry entry of ``version``, or None."""
    raw = r.hget(keys.models, version)
    return None if raw is None else Entry.from_json(raw)


def entries(r: redis.Redis, keys: Keys) -> list[Entry]:
    """Every registered version, oldest first."""
    return sorted((Entry.from_json(v) for v in r.hvals(keys.models)), key=lambda e: e.version)


def fetch(r: redis.Redis, keys: Keys, version: str) -> tuple[Entry, bytes]:
    """Entry and checkpoint bytes of ``version``, verified against the entry's sha256."""
    entry = get_entry(r, keys, version)
    data = r.get(keys.model_blob(version))
    if entry is None or data is None:
        raise RegistryError(f"version {version!r} is not registered")
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.sha256:
        raise IntegrityError(f"{version}: sha256 {digest[:12]}… of {len(data)} bytes does not match the registry's "
                            f"{entry.sha256[:12]}… ({entry.size} bytes)")
    return entry, data


def note_refusal(r: redis.Redis, keys: Keys, version: str, consumer: str, reason: str, detail: str) -> None:
    """Record (and announce) that ``consumer`` refused to serve ``version``."""
    doc = json.dumps({"reason": reason, "detail": detail[:500], "ts": time.time()})
    r.hset(keys.model_refusals(version), consumer, doc)
    announce(r, keys, "refused", version, consumer=consumer, reason=reason)


def refusals(r: redis.Redis, keys: Keys, version: str) -> dict[str, dict[str, Any]]:
    """consumer -> refusal note for ``version``."""
    return {as_str(k): json.loads(v) for k, v in r.hgetall(keys.model_refusals(version)).items()}
