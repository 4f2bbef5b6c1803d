"""Wire format v1: the stream entries producers, workers and result consumers exchange.

Specified for other languages in ``docs/wire-format.md``. Imports only numpy and msgpack so the
producer (which never imports torch) can use it.

An input entry is a Redis stream entry whose fields are:

========  ========================================================================
``v``     format version, ASCII ``"1"``
``x``     msgpack map ``{"dtype": str, "shape": [T, F], "data": bin}``; ``data`` is the
          array, C order, little-endian
``ts``    producer timestamp, unix microseconds, ASCII decimal
``cid``   optional client id (UTF-8) echoed in the result
``dl``    optional deadline, unix microseconds, ASCII decimal
``meta``  optional msgpack map of string keys to scalar values, echoed in the result
``reply`` optional reply stream name (ASCII ``[A-Za-z0-9_.:-]``, <= 64): the output also goes to
          ``{<tag>}:reply:<name>``
========  ========================================================================

An entry whose ``x`` has shape ``[N, T, F]`` carries N windows: see ``protocol/wire_multi.py``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from protocol.keys import REPLY_NAME

WIRE_VERSION = 1

#: dtype names on the wire and their little-endian numpy equivalents.
DTYPES: dict[str, str] = {"float32": "<f4", "float64": "<f8", "float16": "<f2"}

Fields = Mapping[bytes, bytes]


class WireError(ValueError):
    """An entry does not follow the wire format; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Limits:
    """Bounds applied while decoding, so hostile input cannot exhaust a worker."""

    max_window_bytes: int = 4 * 1024 * 1024
    max_length: int = 10_000
    max_features: int = 1024
    max_meta_bytes: int = 4096
    max_cid_bytes: int = 256
    allow_nonfinite: bool = False
    max_windows_per_entry: int = 4096  # multi-window entries (protocol/wire_multi.py)


@dataclass
class Window:
    """A decoded input window."""

    x: np.ndarray  # [T, F] float32
    ts_us: int
    cid: str = ""
    deadline_us: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    reply: str | None = None  # reply stream name (the ``reply`` field)


@dataclass
class Result:
    """One classification result, as published on the results stream."""

    input_id: str
    cid: str
    status: str  # "ok" or "expired"
    label: int
    class_name: str
    probs: list[float]
    model: str
    worker: str
    queue_us: int
    wait_us: int
    infer_us: int
    e2e_us: int
    ts_us: int
    batch: int
    meta: dict[str, Any] = field(default_factory=dict)


def now_us() -> int:
    """Wall-clock time in unix microseconds (the wire's time unit)."""
    return time.time_ns() // 1000


def _pack(obj: Any) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def encode_array(x: np.ndarray) -> bytes:
    """Encode a [T, F] (or [T], treated as F=1) float array as the ``x`` field."""
    arr = np.asarray(x)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise WireError("bad_shape", f"expected a [T, F] array, got shape {arr.shape}")
    if arr.dtype == np.float64:
        name = "float64"
    elif arr.dtype == np.float16:
        name = "float16"
    else:
        name = "float32"
    data = np.ascontiguousarray(arr, dtype=DTYPES[name]).tobytes()
    return _pack({"dtype": name, "shape": [int(arr.shape[0]), int(arr.shape[1])], "data": data})


def encode_window(
    x: np.ndarray,
    *,
    cid: str | None = None,
    ts_us: int | None = None,
    deadline_us: int | None = None,
    meta: Mapping[str, Any] | None = None,
    reply: str | None = None,
) -> dict[bytes, bytes]:
    """Build the stream fields of an input entry (``reply``: the reply stream name)."""
    return entry_fields(encode_array(x), cid=cid, ts_us=ts_us, deadline_us=deadline_us, meta=meta, reply=reply)


def entry_fields(
    x: bytes,
    *,
    cid: str | None = None,
    ts_us: int | None = None,
    deadline_us: int | None = None,
    meta: Mapping[str, Any] | None = None,
    reply: str | None = None,
) -> dict[bytes, bytes]:
    """The fields both entry forms share, in the order ``v x ts cid dl meta reply``, around an
    encoded ``x`` (one window, or N for a multi-window entry)."""
    fields: dict[bytes, bytes] = {
        b"v": str(WIRE_VERSION).encode(),
        b"x": x,
        b"ts": str(now_us() if ts_us is None else int(ts_us)).encode(),
    }
    if cid:
        fields[b"cid"] = cid.encode()
    if deadline_us is not None:
        fields[b"dl"] = str(int(deadline_us)).encode()
    if meta:
        fields[b"meta"] = _pack(dict(meta))
    if reply is not None:
        fields[b"reply"] = reply_field(reply)
    return fields


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


def _unpack_limited(raw: bytes, max_bytes: int, what: str) -> Any:
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


def _int_field(fields: Fields, key: bytes, required: bool) -> int | None:
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


_X_KEYS = frozenset(("dtype", "shape", "data"))
_ITEMSIZE = {name: np.dtype(code).itemsize for name, code in DTYPES.items()}


def parse_x(raw: bytes, limits: Limits, n_features: int | None, ndim: int = 2) -> tuple[str, tuple[int, ...], bytes]:
    """Validate an ``x`` field without building the array: (dtype, shape, data).

    ``ndim`` 2: one window, shape ``[T, F]``; 3: a multi-window entry, ``[N, T, F]`` (see
    ``protocol/wire_multi.py``). Each form rejects the other's shape with ``bad_shape``.
    """
    if len(raw) > limits.max_window_bytes + 256:
        raise WireError("too_large", f"x is {len(raw)} bytes, limit {limits.max_window_bytes}")
    obj = _unpack_limited(raw, limits.max_window_bytes, "x")
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


def decode_window(fields: Fields, limits: Limits, n_features: int | None = None) -> Window:
    """Decode and validate an input entry; raises :class:`WireError` with a reason."""
    w = decode_windows([fields], limits, n_features)[0]
    if isinstance(w, WireError):
        raise w
    return w


_NONFINITE = "window contains NaN or infinity"


def decode_windows(entries: Sequence[Fields], limits: Limits, n_features: int | None = None) -> list[Window | WireError]:
    """:func:`decode_window` for many entries: each item is the window or the error it raised.

    Windows of the same dtype and shape are converted and checked for NaN/inf with one numpy call
    per group; each window's ``x`` is a read-only view into its group's array.
    """
    out: list[Window | WireError] = []
    groups: dict[tuple[str, int, int], list[int]] = {}
    datas: list[bytes] = []
    for fields in entries:
        try:
            if fields.get(b"v") != _VERSION:
                raise WireError("bad_version", f"wire version {fields.get(b'v')!r} unsupported, expected {WIRE_VERSION}")
            raw = fields.get(b"x")
            if raw is None:
                raise WireError("missing_field", "field 'x' is required")
            dtype, (t, f), data = parse_x(raw, limits, n_features)
            out.append(_decode_fields(fields, limits))
        except WireError as e:
            out.append(e)
            datas.append(b"")
            continue
        groups.setdefault((dtype, t, f), []).append(len(out) - 1)
        datas.append(data)
    for (dtype, t, f), idx in groups.items():
        arr = np.frombuffer(b"".join([datas[i] for i in idx]), dtype=DTYPES[dtype]).reshape(len(idx), t, f)
        if arr.dtype != np.float32:
            arr = arr.astype(np.float32)
        ok = None
        if not limits.allow_nonfinite and not np.isfinite(arr).all():
            ok = np.isfinite(arr).all(axis=(1, 2)).tolist()
        for j, i in enumerate(idx):
            w = out[i]
            assert isinstance(w, Window)
            if ok is None or ok[j]:
                w.x = arr[j]
            else:
                out[i] = WireError("nonfinite", _NONFINITE)
    return out


_VERSION = str(WIRE_VERSION).encode()
_EMPTY = np.zeros((0, 0), dtype=np.float32)


def _decode_fields(fields: Fields, limits: Limits) -> Window:
    """Every field but ``x`` (which ``decode_windows`` fills in)."""
    ts = _int_field(fields, b"ts", required=True)
    assert ts is not None
    cid_raw = fields.get(b"cid", b"")
    if len(cid_raw) > limits.max_cid_bytes:
        raise WireError("bad_cid", f"cid longer than {limits.max_cid_bytes} bytes")
    try:
        cid = cid_raw.decode()
    except UnicodeDecodeError as e:
        raise WireError("bad_cid", "cid is not UTF-8") from e
    meta: dict[str, Any] = {}
    if b"meta" in fields:
        if len(fields[b"meta"]) > limits.max_meta_bytes:
            raise WireError("bad_meta", f"meta larger than {limits.max_meta_bytes} bytes")
        m = _unpack_limited(fields[b"meta"], limits.max_meta_bytes, "meta")
        if not isinstance(m, dict) or not all(
            isinstance(v, (str, int, float, bool)) or v is None for v in m.values()
        ):
            raise WireError("bad_meta", "meta must be a map of string keys to scalars")
        meta = m
    return Window(x=_EMPTY, ts_us=ts, cid=cid, deadline_us=_int_field(fields, b"dl", required=False), meta=meta,
                  reply=decode_reply(fields))


def encode_result(r: Result) -> dict[bytes, bytes]:
    """Build the stream fields of a result entry."""
    fields = {
        b"v": str(WIRE_VERSION).encode(),
        b"in": r.input_id.encode(),
        b"cid": r.cid.encode(),
        b"status": r.status.encode(),
        b"label": str(r.label).encode(),
        b"class": r.class_name.encode(),
        b"probs": _pack([float(p) for p in r.probs]),
        b"model": r.model.encode(),
        b"worker": r.worker.encode(),
        b"queue_us": str(r.queue_us).encode(),
        b"wait_us": str(r.wait_us).encode(),
        b"infer_us": str(r.infer_us).encode(),
        b"e2e_us": str(r.e2e_us).encode(),
        b"ts": str(r.ts_us).encode(),
        b"batch": str(r.batch).encode(),
    }
    if r.meta:
        fields[b"meta"] = _pack(r.meta)
    return fields


def decode_result(fields: Fields) -> Result:
    """Parse a result entry's fields."""
    try:
        return Result(
            input_id=fields[b"in"].decode(),
            cid=fields.get(b"cid", b"").decode(),
            status=fields[b"status"].decode(),
            label=int(fields[b"label"]),
            class_name=fields[b"class"].decode(),
            probs=list(msgpack.unpackb(fields[b"probs"])),
            model=fields[b"model"].decode(),
            worker=fields[b"worker"].decode(),
            queue_us=int(fields[b"queue_us"]),
            wait_us=int(fields[b"wait_us"]),
            infer_us=int(fields[b"infer_us"]),
            e2e_us=int(fields[b"e2e_us"]),
            ts_us=int(fields[b"ts"]),
            batch=int(fields[b"batch"]),
            meta=msgpack.unpackb(fields[b"meta"]) if b"meta" in fields else {},
        )
    except (KeyError, ValueError, TypeError, msgpack.UnpackException) as e:
        raise WireError("bad_result", f"result entry malformed: {e}") from e


#: Prefix of the fields a worker adds to a dead-letter entry (the original fields are kept).
DEAD_PREFIX = b"dead."
#: How a dead letter's note for an original field too large to copy begins.
TRUNCATED_PREFIX = b"<truncated: "


def is_truncated(value: bytes) -> bool:
    """Whether a dead letter's field is the note :func:`encode_dead` leaves for a field it did not copy."""
    return value.startswith(TRUNCATED_PREFIX) and value.endswith(b">") and len(value) < 128


def encode_dead(
    original: Fields,
    *,
    input_id: str,
    reason: str,
    detail: str,
    worker: str,
    deliveries: int,
    max_field_bytes: int = 64 * 1024,
) -> dict[bytes, bytes]:
    """Build a dead-letter entry: the original fields plus ``dead.*`` fields.

    Original fields larger than ``max_field_bytes`` are replaced by a note so that a hostile
    100 MB field is not copied around; the note gives its size and a hex prefix.
    """
    fields: dict[bytes, bytes] = {}
    for k, v in original.items():
        if k.startswith(DEAD_PREFIX):
            continue
        if len(v) > max_field_bytes:
            fields[k] = TRUNCATED_PREFIX + f"{len(v)} bytes, starts {v[:16].hex()}>".encode()
        else:
            fields[k] = v
    fields.update(
        {
            b"dead.id": input_id.encode(),
            b"dead.reason": reason.encode(),
            b"dead.detail": detail[:1000].encode(),
            b"dead.worker": worker.encode(),
            b"dead.deliveries": str(deliveries).encode(),
            b"dead.ts": str(now_us()).encode(),
        }
    )
    return fields
