"""Publishing a trained checkpoint to the model registry: parse it into an entry, then register it.

The registry's Redis layout is ``protocol.registry``; this module adds what needs the checkpoint
format (torch), which the protocol layer must not import.
"""

from __future__ import annotations

import hashlib
import time

import redis

from protocol.keys import Keys
from protocol.registry import Entry, Pointer, RegistryError, publish
from training.model.checkpoint import CheckpointError, from_bytes


def entry_for(data: bytes, source: str = "") -> Entry:
    """Parse checkpoint bytes (fully: weights must fit the config) into a registry entry."""
    try:
        ckpt = from_bytes(data)
    except CheckpointError as e:
        raise RegistryError(f"not a valid checkpoint: {e}") from e
    if not ckpt.version:
        raise RegistryError("checkpoint has no version")
    params = sum(int(v.numel()) for v in ckpt.state_dict.values())
    return Entry(
        version=ckpt.version, sha256=hashlib.sha256(data).hexdigest(), size=len(data), created_at=ckpt.created_at,
        published_at=time.time(), input_dim=ckpt.input_dim, classes=list(ckpt.classes), config=ckpt.config.to_dict(),
        params=params, metrics=dict(ckpt.metrics), golden_size=0 if ckpt.golden_y is None else len(ckpt.golden_y),
        data_fingerprint=ckpt.data_fingerprint, wire_version=ckpt.wire_version, source=source,
    )


def publish_checkpoint(r: redis.Redis, keys: Keys, data: bytes, *, source: str = "", set_latest: bool = True,
                       notify: bool = True) -> tuple[Entry, Pointer | None]:
    """Parse checkpoint bytes (a corrupt file raises :class:`RegistryError`), register them, move
    ``latest`` to them (unless ``set_latest`` is false) and announce it (unless ``notify`` is false)."""
    return publish(r, keys, data, entry_for(data, source), set_latest=set_latest, notify=notify)
