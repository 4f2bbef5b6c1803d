"""Giving freed memory back to the operating system (glibc), so a replica's RSS follows what it holds.

A hot reload builds the new model on the checker thread while the old one still serves, then drops
the old one. glibc keeps what was freed in its heaps (one per thread that allocated), so without
help RSS stays at the two-model peak and creeps up with every reload. ``malloc_trim(0)`` returns
the free pages of every heap; a replica calls :func:`release` once the old model's last batch is
published. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache
from typing import Any

import structlog


@cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def release() -> bool:
    """Return free heap pages to the OS (``malloc_trim(0)``); True when glibc did release some."""
    libc = _libc()
    if libc is None:
        return False
    released = bool(libc.malloc_trim(0))
    structlog.get_logger("worker").debug("memory_released", released=released)
    return released
