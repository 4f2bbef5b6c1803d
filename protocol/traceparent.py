"""W3C Trace Context ``traceparent`` values, as carried by the optional ``traceparent`` field of an
input entry (docs/wire-format.md, "Trace context"). No OpenTelemetry dependency.

``traceparent`` is ``<version>-<trace-id>-<parent-id>-<flags>``: 2, 32, 16 and 2 lowercase hex
digits (version ``00``: exactly 55 bytes). An all-zero trace or parent id, version ``ff``, or any
other form is invalid; a worker ignores an invalid value (the entry is served, nothing is traced).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_HEX = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_V00 = re.compile(rb"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
_ZERO_TRACE, _ZERO_SPAN = b"0" * 32, b"0" * 16
#: Length of a version-00 value.
LENGTH = 55


@dataclass(frozen=True)
class TraceParent:
    """A parsed ``traceparent``: ids as lowercase hex, ``flags`` as an int (bit 0: sampled)."""

    trace_id: str
    span_id: str
    flags: int

    @property
    def sampled(self) -> bool:
        """The caller recorded this trace."""
        return bool(self.flags & 1)

    def encode(self) -> bytes:
        """The version-00 field value."""
        return format_traceparent(int(self.trace_id, 16), int(self.span_id, 16), self.flags)


def format_traceparent(trace_id: int, span_id: int, flags: int) -> bytes:
    """The version-00 ``traceparent`` of integer ids (as OpenTelemetry holds them)."""
    return b"00-%032x-%016x-%02x" % (trace_id, span_id, flags & 0xFF)


def _groups(b: bytes) -> tuple[bytes, bytes, bytes] | None:
    """Trace id, parent id and flags of a valid value (hex), else None."""
    m = _HEX.match(b)
    if m is None:
        return None
    version, trace, span, flags = m.groups()
    if version == b"ff" or trace == _ZERO_TRACE or span == _ZERO_SPAN:
        return None
    if version == b"00" and len(b) != LENGTH:
        return None
    if version != b"00" and len(b) > LENGTH and b[LENGTH:LENGTH + 1] != b"-":
        return None
    return trace, span, flags


def trace_ids(raw: bytes) -> tuple[int, int, int] | None:
    """(trace id, parent id, flags) as ints of a valid value, else None (the rules of
    :func:`parse_traceparent`, without building a :class:`TraceParent`)."""
    if len(raw) == LENGTH and _V00.fullmatch(raw):  # the common case, without the groups
        trace, span = int(raw[3:35], 16), int(raw[36:52], 16)
        return (trace, span, int(raw[53:55], 16)) if trace and span else None
    g = _groups(raw)
    return None if g is None else (int(g[0], 16), int(g[1], 16), int(g[2], 16))


def parse_traceparent(raw: bytes | str | None) -> TraceParent | None:
    """The parsed value, or None when absent or invalid (a later version's extra fields are ignored,
    as the W3C specification asks)."""
    if raw is None:
        return None
    g = _groups(raw.encode() if isinstance(raw, str) else raw)
    return None if g is None else TraceParent(g[0].decode(), g[1].decode(), int(g[2], 16))
