"""The decoding bounds of wire format v1 (:class:`Limits`) and the dead-letter field cap, declared once.

Pure Python (no numpy): the worker's settings take their defaults from here (``worker.config``) without
loading the codec, and ``protocol.wire`` decodes with them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEAD_FIELD_BYTES", "Limits"]

#: A dead letter keeps original fields up to this size; larger ones are replaced by a note
#: (``protocol.results.encode_dead``), unless the entry passed validation (``worker.stages``).
DEAD_FIELD_BYTES = 64 * 1024


@dataclass(frozen=True)
class Limits:
    """Bounds applied while decoding, so hostile input cannot exhaust a worker."""

    max_window_bytes: int = 4 * 1024 * 1024
    max_length: int = 10_000
    max_features: int = 1024
    max_meta_bytes: int = 4096
    max_cid_bytes: int = 256
    allow_nonfinite: bool = False
    max_windows_per_entry: int = 4096  # multi-window entries (protocol.entries)
