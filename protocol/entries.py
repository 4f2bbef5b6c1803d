"""Input entries of wire format v1, both forms: one window (``x`` ``[T, F]``) or N (``x`` ``[N, T, F]``).

Specified in ``docs/wire-format.md``. A single-window entry's fields:

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

A multi-window entry ("Multi-window entries" in the spec) has the same fields with ``x.shape``
``[N, T, F]`` and an optional ``cids`` field (msgpack array of N strings); ``ts``, ``dl``, ``meta`` and
``cid`` are shared by the entry. Entry-level problems raise :class:`~protocol.wire.WireError`;
NaN/inf windows of a multi-window entry are listed in :attr:`MultiWindow.bad`. The codec core
(version, dtypes, limits, ``x`` validation) is ``protocol.wire``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from protocol.span import Span, pack_spans, unpack_spans
from protocol.wire import (
    DTYPES,
    VERSION,
    Fields,
    Limits,
    WireError,
    check_version,
    decode_reply,
    int_field,
    now_us,
    pack,
    parse_ts,
    parse_x,
    reply_field,
    unpack_limited,
    x_ndim,
)


@dataclass(slots=True)
class Window:
    """A decoded input window."""

    x: np.ndarray  # [T, F] float32
    ts_us: int
    cid: str = ""
    deadline_us: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    reply: str | None = None  # reply stream name (the ``reply`` field)
    span: bytes = b""  # the ``span`` field, checked, echoed verbatim in the result (``protocol.span``)


@dataclass
class MultiWindow:
    """A decoded multi-window input entry.

    ``x`` is float32 ``[N, T, F]`` (read-only when the wire dtype was float32). Windows listed in
    ``bad`` (index -> reason, e.g. ``"nonfinite"``) must not be fed to the model; they still hold
    their decoded values.
    """

    x: np.ndarray
    ts_us: int
    cid: str = ""
    cids: list[str] | None = None
    deadline_us: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    bad: dict[int, str] = field(default_factory=dict)
    reply: str | None = None  # reply stream name (the ``reply`` field)
    spans: bytes = b""  # the ``spans`` field, checked, echoed verbatim in the result (``protocol.span``)

    @property
    def n(self) -> int:
        """Number of windows in the entry."""
        return int(self.x.shape[0])

    @property
    def good(self) -> list[int]:
        """Indices of the windows to predict (those not in ``bad``), ascending."""
        return [i for i in range(self.n) if i not in self.bad]


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
    return pack({"dtype": name, "shape": [int(arr.shape[0]), int(arr.shape[1])], "data": data})


def encode_window(
    x: np.ndarray,
    *,
    cid: str | None = None,
    ts_us: int | None = None,
    deadline_us: int | None = None,
    meta: Mapping[str, Any] | None = None,
    reply: str | None = None,
    span: Span | None = None,
) -> dict[bytes, bytes]:
    """Build the stream fields of an input entry (``reply``: the reply stream name; ``span``: the window's
    stream identity, :mod:`protocol.span`)."""
    fields = entry_fields(encode_array(x), cid=cid, ts_us=ts_us, deadline_us=deadline_us, meta=meta, reply=reply)
    if span is not None:
        fields[b"span"] = span.pack()
    return fields


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
        b"v": VERSION,
        b"x": x,
        b"ts": str(now_us() if ts_us is None else int(ts_us)).encode(),
    }
    if cid:
        fields[b"cid"] = cid.encode()
    if deadline_us is not None:
        fields[b"dl"] = str(int(deadline_us)).encode()
    if meta:
        fields[b"meta"] = pack(dict(meta))
    if reply is not None:
        fields[b"reply"] = reply_field(reply)
    return fields


def encode_windows_array(xs: np.ndarray) -> bytes:
    """Encode an ``[N, T, F]`` (or ``[N, T]``, treated as F=1) float array as a multi-window ``x``.

    dtype rules as :func:`protocol.wire.encode_array`: float64 and float16 are kept, anything else
    is sent as float32.
    """
    arr = np.asarray(xs)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise WireError("bad_shape", f"expected an [N, T, F] array, got shape {arr.shape}")
    if arr.shape[0] < 1:
        raise WireError("empty", "a multi-window entry needs at least one window")
    name = "float64" if arr.dtype == np.float64 else "float16" if arr.dtype == np.float16 else "float32"
    data = np.ascontiguousarray(arr, dtype=DTYPES[name]).tobytes()
    return pack({"dtype": name, "shape": [int(d) for d in arr.shape], "data": data})


def encode_windows_entry(
    xs: np.ndarray,
    *,
    cids: Sequence[str | None] | None = None,
    cid: str | None = None,
    ts_us: int | None = None,
    deadline_us: int | None = None,
    meta: Mapping[str, Any] | None = None,
    reply: str | None = None,
    spans: Sequence[Span] | None = None,
) -> dict[bytes, bytes]:
    """Build the stream fields of a multi-window input entry from ``xs`` ``[N, T, F]``.

    ``cids`` (one per window, ``None`` sent as ``""``) becomes the ``cids`` field; ``cid``,
    ``ts_us``, ``deadline_us`` and ``meta`` are shared by the entry. Fields are in the order
    ``v x ts cid dl meta reply cids spans`` (those present; ``spans``: one :class:`protocol.span.Span` per window).
    """
    n = int(np.shape(xs)[0])
    fields = entry_fields(encode_windows_array(xs), cid=cid, ts_us=ts_us, deadline_us=deadline_us, meta=meta,
                          reply=reply)
    if cids is not None:
        if len(cids) != n:
            raise WireError("bad_cids", f"{len(cids)} cids for {n} windows")
        fields[b"cids"] = pack([c or "" for c in cids])
    if spans is not None:
        if len(spans) != n:
            raise WireError("bad_span", f"{len(spans)} spans for {n} windows")
        fields[b"spans"] = pack_spans(spans)
    return fields


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
    per group; each window's ``x`` is a read-only view into its group's array. A plain entry (see
    :func:`_plain`) whose ``x`` has the same header bytes as the last fully checked one is not parsed
    again: it only has the header compared and its data sliced off, which decodes to exactly what
    the full check would (the header fixes dtype, shape and the data's length).
    """
    out: list[Window | WireError] = []
    groups: dict[tuple[str, int, int], list[int]] = {}
    datas: list[bytes] = []
    head, size, fast = b"", -1, ("", 0, 0)  # the header, length and group of the last checked x
    for fields in entries:
        x = fields.get(b"x")
        if x is not None and len(x) == size and x.startswith(head) and (plain := _plain(fields, limits)) is not None:
            out.append(plain)
            groups[fast].append(len(out) - 1)
            datas.append(x[len(head):])
            continue
        try:
            check_version(fields)
            if x is None:
                raise WireError("missing_field", "field 'x' is required")
            dtype, (t, f), data = parse_x(x, limits, n_features)
            one = _decode_fields(fields, limits)
            one.span = _span(fields, limits)
            out.append(one)
        except WireError as e:
            out.append(e)
            datas.append(b"")
            continue
        groups.setdefault((dtype, t, f), []).append(len(out) - 1)
        datas.append(data)
        if x.endswith(data):  # the data comes last: the bytes before it are the header of every such x
            head, size, fast = x[: len(x) - len(data)], len(x), (dtype, t, f)
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


def _plain(fields: Fields, limits: Limits) -> Window | None:
    """The window of a plain entry: the fields ``v`` (``1``), ``x``, ``ts`` (decimal) and perhaps a short ASCII
    ``cid``, nothing else (its ``x`` to be filled in); ``None`` for any other entry, which the full decoder
    then checks."""
    n = len(fields)
    cid = fields.get(b"cid", b"")
    ts = fields.get(b"ts")
    if (n != 3 + (b"cid" in fields) or ts is None or fields.get(b"v") != VERSION or not ts.isdigit() or len(ts) > 20
            or len(cid) > limits.max_cid_bytes or not cid.isascii()):
        return None
    return Window(_EMPTY, int(ts), cid.decode())


_EMPTY = np.zeros((0, 0), dtype=np.float32)


def _decode_fields(fields: Fields, limits: Limits) -> Window:
    """Every field but ``x`` (which ``decode_windows`` fills in)."""
    ts = parse_ts(fields)
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
        m = unpack_limited(fields[b"meta"], limits.max_meta_bytes, "meta")
        if not isinstance(m, dict) or not all(
            isinstance(v, (str, int, float, bool)) or v is None for v in m.values()
        ):
            raise WireError("bad_meta", "meta must be a map of string keys to scalars")
        meta = m
    return Window(x=_EMPTY, ts_us=ts, cid=cid, deadline_us=int_field(fields, b"dl", required=False), meta=meta,
                  reply=decode_reply(fields))


def _span(fields: Fields, limits: Limits) -> bytes:
    raw = fields.get(b"span", b"")
    if raw:
        Span.unpack(raw, limits.max_cid_bytes)
    return raw


def is_multi(fields: Fields) -> bool:
    """Whether an input entry is a multi-window entry: its ``x.shape`` has 3 elements.

    Cheap (a few header bytes of ``x`` are read); the form is decided by the shape alone, so a
    ``cids`` field on a single-window entry is an unknown field and ignored.
    """
    raw = fields.get(b"x")
    return raw is not None and x_ndim(raw) == 3


def _decode_cids(raw: bytes | None, n: int, limits: Limits) -> list[str] | None:
    if raw is None:
        return None
    what = f"cids must be a msgpack array of {n} UTF-8 strings of at most {limits.max_cid_bytes} bytes"
    if len(raw) > n * (limits.max_cid_bytes + 5) + 5:
        raise WireError("bad_cids", f"{what}; the field has {len(raw)} bytes")
    try:
        obj = msgpack.unpackb(raw, max_str_len=limits.max_cid_bytes, max_bin_len=0, max_array_len=n,
                              max_map_len=0, max_ext_len=0, raw=False)
    except Exception as e:  # msgpack raises many unrelated types for hostile bytes
        raise WireError("bad_cids", f"{what} ({type(e).__name__}: {e})") from e
    if not isinstance(obj, list) or len(obj) != n or not all(type(c) is str for c in obj):
        raise WireError("bad_cids", what)
    return obj


def decode_multi(fields: Fields, limits: Limits, n_features: int | None = None) -> MultiWindow:
    """Decode and validate a multi-window input entry.

    Raises :class:`WireError` for entry-level problems (the reasons of single-window entries, plus
    ``too_many_windows`` and ``bad_cids``); windows with NaN/inf (unless ``limits.allow_nonfinite``)
    are listed in ``bad`` as ``"nonfinite"``.
    """
    check_version(fields)
    raw = fields.get(b"x")
    if raw is None:
        raise WireError("missing_field", "field 'x' is required")
    dtype, shape, data = parse_x(raw, limits, n_features, ndim=3)
    common = _decode_fields(fields, limits)
    cids = _decode_cids(fields.get(b"cids"), shape[0], limits)
    spans = fields.get(b"spans", b"")
    if spans:
        unpack_spans(spans, shape[0], limits.max_cid_bytes)
    arr = np.frombuffer(data, dtype=DTYPES[dtype]).reshape(shape)
    if arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    bad: dict[int, str] = {}
    if not limits.allow_nonfinite and not np.isfinite(arr).all():
        bad = {int(i): "nonfinite" for i in np.flatnonzero(~np.isfinite(arr).all(axis=(1, 2)))}
    return MultiWindow(x=arr, ts_us=common.ts_us, cid=common.cid, cids=cids, deadline_us=common.deadline_us,
                       meta=common.meta, bad=bad, reply=common.reply, spans=spans)


def decode_entries(
    entries: Sequence[Fields], limits: Limits, n_features: int | None = None
) -> list[Window | MultiWindow | WireError]:
    """Decode input entries of both forms: each item is a :class:`Window`, a :class:`MultiWindow`,
    or the :class:`WireError` its entry raised. Single-window entries go through
    :func:`protocol.wire.decode_windows` (batched), so they decode exactly as before."""
    kinds = [is_multi(f) for f in entries]
    if not any(kinds):
        return list(decode_windows(entries, limits, n_features))
    singles = iter(decode_windows([f for f, k in zip(entries, kinds) if not k], limits, n_features))
    out: list[Window | MultiWindow | WireError] = []
    for f, k in zip(entries, kinds):
        if not k:
            out.append(next(singles))
            continue
        try:
            out.append(decode_multi(f, limits, n_features))
        except WireError as e:
            out.append(e)
    return out
