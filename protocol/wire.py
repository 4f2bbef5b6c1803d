"""Wire format v1, its core: what every stream entry shares, and the bounded decoding of ``x``.

Specified for other languages in ``docs/wire-format.md``. Imports only numpy and msgpack so the
producer (which never imports torch) can use it. The entries themselves are in two modules on top
of this one: ``protocol.entries`` (input entries, single- and multi-window) and ``protocol.results``
(result entries of both forms, and dead letters).

Here: the version (``v`` is ASCII ``"1"``, checked by :func:`check_version`), the dtypes, the decoding
:class:`Limits` (declared in ``protocol.limits``), :class:`WireError`, bounded msgpack unpacking, the ``x`` field's validation
(:func:`parse_x`) and header scan (:func:`x_ndim`, :func:`x_windows`), the ``ts``/``dl`` integers
(:func:`int_field`, :func:`parse_ts`) and the ``reply`` field.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np

from protocol.keys import REPLY_NAME
from protocol.limits import Limits as Limits  # declared once there (numpy-free); decoded with here

WIRE_VERSION = 1


#: The ``v`` field of every entry this version writes and accepts.
VERSION = str(WIRE_VERSION).encode()


#: dtype names on the wire and their little-endian numpy equivalents.
DTYPES: dict[str, str] = {"float32": "<f4", "float64": "<f8", "float16": "<f2"}


Fields = Mapping[bytes, bytes]


class WireError(ValueError):
    """An entry does not follow the wire format; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def now_us() -> int:
    """Wall-clock time in unix microseconds (the wire's time unit)."""
    return time.time_ns() // 1000


def pack(obj: Any) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def check_version(fields: Fields) -> None:
    """:class:`WireError` ``bad_version`` unless the entry's ``v`` is this version's."""
    if fields.get(b"v") != VERSION:
        raise WireError("bad_version", f"wire version {fields.get(b'v')!r} unsupported, expected {WIRE_VERSION}")


def reply_field(name: str) -> bytes:
    """The ``reply`` field's value for reply stream ``name`` (ValueError when the name is invalid)."""
    if not REPLY_NAME.fullmatch(name):
        raise ValueError(f"bad reply name {name!r}: 1-64 characters of [A-Za-z0-9_.:-]")
    return name.encode("ascii")


def decode_reply(fields: Fields) -> str | None:
    """The entry's reply stream name, None without one; :class:`WireError` ``bad_reply`` when invalid."""
    raw = fields.get(b"reply")
    if raw is None:
        return None
    try:
        name = raw.decode("ascii") if len(raw) <= 64 else ""
    except UnicodeDecodeError:
        name = ""
    if not REPLY_NAME.fullmatch(name):
        raise WireError("bad_reply", "reply must be 1-64 ASCII characters of [A-Za-z0-9_.:-]")
    return name


def reply_or_none(fields: Fields) -> str | None:
    """:func:`decode_reply`, None for an invalid name too (where a dead letter needs its reply stream)."""
    try:
        return decode_reply(fields)
    except WireError:
        return None


def unpack_limited(raw: bytes, max_bytes: int, what: str) -> Any:
    # Explicit limits: no ext types, bounded bin/str/array/map sizes, and the C unpacker's
    # fixed nesting depth raises instead of recursing without bound. One C call per field.
    try:
        return msgpack.unpackb(
            raw,
            max_bin_len=max_bytes,
            max_str_len=max_bytes,
            max_array_len=64,
            max_map_len=64,
            max_ext_len=0,
            raw=False,
            strict_map_key=True,
        )
    except msgpack.ExtraData as e:
        raise WireError(f"bad_{what}", f"trailing data after {what}") from e
    except Exception as e:  # msgpack raises many unrelated types for hostile bytes
        raise WireError(f"bad_{what}", f"{what} is not valid msgpack within limits ({type(e).__name__}: {e})") from e


def int_field(fields: Fields, key: bytes, required: bool) -> int | None:
    raw = fields.get(key)
    if raw is None:
        if required:
            raise WireError("missing_field", f"field {key.decode()!r} is required")
        return None
    try:
        if len(raw) > 20:
            raise ValueError("too long")
        return int(raw)
    except ValueError as e:
        raise WireError("bad_field", f"field {key.decode()!r} must be an ASCII integer") from e


def parse_ts(fields: Fields) -> int:
    """The entry's ``ts`` (producer timestamp, unix µs): :class:`WireError` when missing or not an integer."""
    ts = int_field(fields, b"ts", required=True)
    assert ts is not None
    return ts


_X_KEYS = frozenset(("dtype", "shape", "data"))


_ITEMSIZE = {name: np.dtype(code).itemsize for name, code in DTYPES.items()}


def parse_x(raw: bytes, limits: Limits, n_features: int | None, ndim: int = 2) -> tuple[str, tuple[int, ...], bytes]:
    """Validate an ``x`` field without building the array: (dtype, shape, data).

    ``ndim`` 2: one window, shape ``[T, F]``; 3: a multi-window entry, ``[N, T, F]`` (see
    ``protocol.entries``). Each form rejects the other's shape with ``bad_shape``.
    """
    if len(raw) > limits.max_window_bytes + 256:
        raise WireError("too_large", f"x is {len(raw)} bytes, limit {limits.max_window_bytes}")
    obj = unpack_limited(raw, limits.max_window_bytes, "x")
    if not isinstance(obj, dict) or obj.keys() != _X_KEYS:
        raise WireError("bad_x", "x must be a map with exactly the keys dtype, shape, data")
    dtype, shape, data = obj["dtype"], obj["shape"], obj["data"]
    if not isinstance(dtype, str) or dtype not in DTYPES:  # an array or map is unhashable: test the type first
        raise WireError("bad_dtype", f"dtype {dtype!r} not one of {sorted(DTYPES)}")
    if (not isinstance(shape, list) or len(shape) != ndim or type(shape[0]) is not int or type(shape[1]) is not int
            or (ndim == 3 and type(shape[2]) is not int)):
        dims = "[T, F]" if ndim == 2 else "[N, T, F]"
        raise WireError("bad_shape", f"shape must be {dims} integers, got {shape!r}")
    t, f = shape[-2:]
    n = shape[0] if ndim == 3 else 1
    if ndim == 3 and n < 1:
        raise WireError("empty", f"shape {shape} has no windows")
    if t < 1 or f < 1:
        raise WireError("empty", f"shape {shape} has no timesteps or no features")
    if n > limits.max_windows_per_entry:
        raise WireError("too_many_windows", f"N={n} exceeds max_windows_per_entry {limits.max_windows_per_entry}")
    if t > limits.max_length:
        raise WireError("too_long", f"T={t} exceeds max_length {limits.max_length}")
    if f > limits.max_features or (n_features is not None and f != n_features):
        raise WireError("bad_features", f"F={f}, the model expects {n_features}")
    if not isinstance(data, bytes):
        raise WireError("bad_x", "data must be msgpack bin")
    if len(data) != n * t * f * _ITEMSIZE[dtype]:
        raise WireError("bad_size", f"data has {len(data)} bytes, shape {shape} of {dtype} needs {n * t * f * _ITEMSIZE[dtype]}")
    return dtype, tuple(shape), data


_COMMON_HEAD = b"\x83\xa5dtype\xa7"  # {"dtype": <7-byte str>, ...


_STR_BIN_WIDTH = {0xD9: 1, 0xDA: 2, 0xDB: 4, 0xC4: 1, 0xC5: 2, 0xC6: 4}


def _str_or_bin(raw: bytes, i: int) -> tuple[int, int]:
    """(start, end) of the msgpack str/bin payload whose header is at ``raw[i]`` (KeyError if neither)."""
    c = raw[i]
    if 0xA0 <= c <= 0xBF:
        return i + 1, i + 1 + (c & 0x1F)
    start = i + 1 + _STR_BIN_WIDTH[c]
    return start, start + int.from_bytes(raw[i + 1 : start], "big")


def x_ndim(raw: bytes) -> int | None:
    """Length of the ``shape`` array of an ``x`` field, read from its msgpack headers without
    unpacking (or copying) ``data``; ``None`` when ``x`` is not a map of str keys to str/bin
    values that this scanner follows (the full decoder then says what is wrong)."""
    try:
        if raw[:8] == _COMMON_HEAD and raw[15:21] == b"\xa5shape" and 0x90 <= raw[21] <= 0x9F:
            return raw[21] & 0x0F  # fast path: the key order and dtype length every encoder here uses
        c = raw[0]
        if 0x80 <= c <= 0x8F:
            n, i = c & 0x0F, 1
        elif c == 0xDE:
            n, i = int.from_bytes(raw[1:3], "big"), 3
        else:
            return None
        for _ in range(min(n, 3)):  # a valid x has exactly 3 keys
            s, e = _str_or_bin(raw, i)
            c = raw[e]
            if e - s == 5 and raw[s:e] == b"shape":
                if 0x90 <= c <= 0x9F:
                    return c & 0x0F
                return int.from_bytes(raw[e + 1 : e + 3], "big") if c == 0xDC else None
            _, i = _str_or_bin(raw, e)
        return None
    except (IndexError, KeyError):
        return None


def _msgpack_uint(raw: bytes, i: int) -> int | None:
    """The non-negative msgpack integer at ``raw[i]`` (fixint or uint 8/16/32), else ``None``."""
    c = raw[i]
    if c <= 0x7F:
        return c
    width = {0xCC: 1, 0xCD: 2, 0xCE: 4}.get(c)
    return None if width is None else int.from_bytes(raw[i + 1 : i + 1 + width], "big")


def x_windows(raw: bytes) -> int:
    """Windows an ``x`` field holds, from its msgpack headers: ``N`` of an ``[N, T, F]`` shape, else 1.

    For the batch bound only (the reader counts windows before decoding); a field this scanner
    does not follow counts 1 and the full decoder says what is wrong with it.
    """
    try:
        if raw[:8] == _COMMON_HEAD and raw[15:21] == b"\xa5shape":
            if raw[21] == 0x92:  # [T, F]: one window (the common case, decided by one byte)
                return 1
            if raw[21] == 0x93:
                n = _msgpack_uint(raw, 22)
                return n if n and n > 0 else 1
        if x_ndim(raw) != 3:
            return 1
        i = raw.index(b"\xa5shape") + 6  # the general path: after the key, a 3-element array header
        if raw[i] != 0x93:
            return 1
        n = _msgpack_uint(raw, i + 1)
        return n if n and n > 0 else 1
    except (IndexError, ValueError):
        return 1
