"""A stream window's identity: the device key, its sequence number and the event time it covers.

Windows cut from a live sample stream (``producer.windower``) carry a :class:`Span` in the optional
input field ``span`` (a single-window entry) or ``spans`` (a multi-window entry: one per window); the
worker checks it and echoes the same bytes in the result (``span`` / ``spans``), so a reader of the
results can put a device's windows back in order. Specified in ``docs/wire-format.md`` ("Stream windows").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import msgpack

from protocol.wire import WireError, pack

#: Largest packed span accepted (bytes): a key of ``max_key_bytes`` plus three 64-bit integers and the map's framing.
SPAN_OVERHEAD = 48


@dataclass(frozen=True)
class Span:
    """``key``: the device (or any stream key); ``seq``: the window's number in that key's stream (0, 1, …);
    ``t0_us``/``t1_us``: the event times of the window's first and last samples (unix µs, or any clock the
    producer uses, as long as it only grows)."""

    key: str
    seq: int
    t0_us: int
    t1_us: int

    def as_map(self) -> dict[str, str | int]:
        """The msgpack map this span is sent as."""
        return {"key": self.key, "seq": self.seq, "t0": self.t0_us, "t1": self.t1_us}

    def pack(self) -> bytes:
        """The ``span`` field's bytes."""
        return pack(self.as_map())

    @classmethod
    def from_obj(cls, obj: object, max_key_bytes: int) -> Span:
        """A span from an unpacked msgpack map; raises :class:`~protocol.wire.WireError` ``bad_span``."""
        what = 'a span must be a map {"key": str, "seq": int >= 0, "t0": int, "t1": int >= t0}'
        if not isinstance(obj, dict) or set(obj) != {"key", "seq", "t0", "t1"}:
            raise WireError("bad_span", what)
        key, seq, t0, t1 = obj["key"], obj["seq"], obj["t0"], obj["t1"]
        if type(key) is not str or not all(type(v) is int for v in (seq, t0, t1)) or seq < 0 or t1 < t0:
            raise WireError("bad_span", what)
        if len(key.encode()) > max_key_bytes:
            raise WireError("bad_span", f"span key longer than {max_key_bytes} bytes")
        return cls(key, seq, t0, t1)

    @classmethod
    def unpack(cls, raw: bytes, max_key_bytes: int) -> Span:
        """Parse a ``span`` field (bounded: a hostile field raises ``bad_span``, never allocates much)."""
        return cls.from_obj(_unpack(raw, 1, max_key_bytes), max_key_bytes)


def pack_spans(spans: Sequence[Span]) -> bytes:
    """The ``spans`` field of a multi-window entry (one per window, in order)."""
    return pack([s.as_map() for s in spans])


def unpack_spans(raw: bytes, n: int, max_key_bytes: int) -> list[Span]:
    """Parse a ``spans`` field of ``n`` windows; raises ``bad_span``."""
    obj = _unpack(raw, n, max_key_bytes, array=True)
    if not isinstance(obj, list) or len(obj) != n:
        raise WireError("bad_span", f"spans must be an array of {n} spans")
    return [Span.from_obj(o, max_key_bytes) for o in obj]


def _unpack(raw: bytes, n: int, max_key_bytes: int, array: bool = False) -> object:
    if len(raw) > n * (max_key_bytes + SPAN_OVERHEAD) + 8:
        raise WireError("bad_span", f"span field of {len(raw)} bytes is larger than {n} span(s) can be")
    try:
        return msgpack.unpackb(raw, max_str_len=max_key_bytes, max_bin_len=0, max_array_len=n if array else 0,
                               max_map_len=4, max_ext_len=0, raw=False)
    except Exception as e:  # msgpack raises many unrelated types for hostile bytes
        raise WireError("bad_span", f"span field is not msgpack ({type(e).__name__}: {e})") from e
