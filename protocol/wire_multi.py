"""Multi-window entries (wire format v1, optional extension): one stream entry carrying N windows.

Specified in ``docs/wire-format.md`` ("Multi-window entries"): the fields of a single-window entry
(``protocol/wire.py``) with ``x.shape`` ``[N, T, F]`` and an optional ``cids`` field (msgpack array of
N strings); ``ts``, ``dl``, ``meta`` and ``cid`` are shared by the entry. Entry-level problems raise
:class:`~protocol.wire.WireError`; NaN/inf windows are listed in :attr:`MultiWindow.bad`. Each input
gets ONE result entry (:func:`encode_multi_result`), plus one dead-letter entry when some windows
are dead (:func:`encode_dead_windows`). Imports only numpy and msgpack, like ``protocol/wire.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgpack
import numpy as np

from protocol.wire import (
    DTYPES,
    WIRE_VERSION,
    Fields,
    Limits,
    Result,
    Window,
    WireError,
    _decode_fields,
    _pack,
    decode_result,
    decode_windows,
    encode_dead,
    entry_fields,
    parse_x,
)

#: Per-window statuses in a multi-window result.
STATUSES = ("ok", "dead", "expired")

_VERSION = str(WIRE_VERSION).encode()


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

    @property
    def n(self) -> int:
        """Number of windows in the entry."""
        return int(self.x.shape[0])

    @property
    def good(self) -> list[int]:
        """Indices of the windows to predict (those not in ``bad``), ascending."""
        return [i for i in range(self.n) if i not in self.bad]


# --- input entries -------------------------------------------------------------------------------


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
    return _pack({"dtype": name, "shape": [int(d) for d in arr.shape], "data": data})


def encode_windows_entry(
    xs: np.ndarray,
    *,
    cids: Sequence[str | None] | None = None,
    cid: str | None = None,
    ts_us: int | None = None,
    deadline_us: int | None = None,
    meta: Mapping[str, Any] | None = None,
    reply: str | None = None,
) -> dict[bytes, bytes]:
    """Build the stream fields of a multi-window input entry from ``xs`` ``[N, T, F]``.

    ``cids`` (one per window, ``None`` sent as ``""``) becomes the ``cids`` field; ``cid``,
    ``ts_us``, ``deadline_us`` and ``meta`` are shared by the entry. Fields are in the order
    ``v x ts cid dl meta reply cids`` (those present).
    """
    n = int(np.shape(xs)[0])
    fields = entry_fields(encode_windows_array(xs), cid=cid, ts_us=ts_us, deadline_us=deadline_us, meta=meta,
                          reply=reply)
    if cids is not None:
        if len(cids) != n:
            raise WireError("bad_cids", f"{len(cids)} cids for {n} windows")
        fields[b"cids"] = _pack([c or "" for c in cids])
    return fields


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
        if raw[:8] == _COMMON_HEAD and raw[15:21] == b"\xa5shape" and raw[21] == 0x93:
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
    if fields.get(b"v") != _VERSION:
        raise WireError("bad_version", f"wire version {fields.get(b'v')!r} unsupported, expected {WIRE_VERSION}")
    raw = fields.get(b"x")
    if raw is None:
        raise WireError("missing_field", "field 'x' is required")
    dtype, shape, data = parse_x(raw, limits, n_features, ndim=3)
    common = _decode_fields(fields, limits)
    cids = _decode_cids(fields.get(b"cids"), shape[0], limits)
    arr = np.frombuffer(data, dtype=DTYPES[dtype]).reshape(shape)
    if arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    bad: dict[int, str] = {}
    if not limits.allow_nonfinite and not np.isfinite(arr).all():
        bad = {int(i): "nonfinite" for i in np.flatnonzero(~np.isfinite(arr).all(axis=(1, 2)))}
    return MultiWindow(x=arr, ts_us=common.ts_us, cid=common.cid, cids=cids, deadline_us=common.deadline_us,
                       meta=common.meta, bad=bad, reply=common.reply)


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


# --- results -------------------------------------------------------------------------------------


class WindowOutcome(NamedTuple):
    """One window's row of a multi-window result. Non-ok rows are encoded with label -1, class
    ``""`` and no probs, whatever they hold; ``dead`` rows need a ``reason``."""

    status: str
    label: int = -1
    class_name: str = ""
    probs: Sequence[float] = ()
    reason: str = ""


@dataclass
class WindowResult(Result):
    """A :class:`Result` of one window of a multi-window entry: ``index`` in the entry and, for
    ``dead`` windows, the ``reason``."""

    index: int = 0
    reason: str = ""


def entry_status(statuses: Sequence[str]) -> str:
    """The result entry's ``status``: ``ok`` when every window is ok, ``expired`` when every
    window expired, else ``partial``."""
    if all(s == "ok" for s in statuses):
        return "ok"
    return "expired" if all(s == "expired" for s in statuses) else "partial"


def encode_multi_result(
    input_id: str,
    rows: Sequence[WindowOutcome],
    *,
    cid: str = "",
    cids: Sequence[str] | None = None,
    model: str,
    worker: str,
    queue_us: int,
    wait_us: int,
    infer_us: int,
    e2e_us: int,
    ts_us: int,
    batch: int,
    meta: Mapping[str, Any] | None = None,
) -> dict[bytes, bytes]:
    """Build the ONE result entry of a multi-window input: ``rows`` (one per window, in order)
    plus the values the entry's windows share. ``cid``/``cids`` are echoed from the input.

    Deterministic: field order ``v in cid n status [cids] statuses [reasons] labels classes probs
    model worker queue_us wait_us infer_us e2e_us ts batch [meta]``.
    """
    n = len(rows)
    if n == 0:
        raise ValueError("a multi-window result needs at least one row")
    if cids is not None and len(cids) != n:
        raise ValueError(f"{len(cids)} cids for {n} rows")
    statuses = [r.status for r in rows]
    for i, r in enumerate(rows):
        if r.status not in STATUSES:
            raise ValueError(f"row {i}: status {r.status!r} not one of {STATUSES}")
        if r.status == "dead" and not r.reason:
            raise ValueError(f"row {i}: a dead window needs a reason")
    ok = [s == "ok" for s in statuses]
    fields: dict[bytes, bytes] = {
        b"v": _VERSION,
        b"in": input_id.encode(),
        b"cid": cid.encode(),
        b"n": str(n).encode(),
        b"status": entry_status(statuses).encode(),
    }
    if cids is not None:
        fields[b"cids"] = _pack([str(c) for c in cids])
    fields[b"statuses"] = _pack(statuses)
    reasons = {i: r.reason for i, r in enumerate(rows) if r.status == "dead"}
    if reasons:
        fields[b"reasons"] = _pack(reasons)
    fields[b"labels"] = _pack([int(r.label) if k else -1 for r, k in zip(rows, ok)])
    fields[b"classes"] = _pack([r.class_name if k else "" for r, k in zip(rows, ok)])
    fields[b"probs"] = _pack([[float(p) for p in r.probs] if k else [] for r, k in zip(rows, ok)])
    for key, value in ((b"model", model), (b"worker", worker), (b"queue_us", queue_us), (b"wait_us", wait_us),
                       (b"infer_us", infer_us), (b"e2e_us", e2e_us), (b"ts", ts_us), (b"batch", batch)):
        fields[key] = str(value).encode()
    if meta:
        fields[b"meta"] = _pack(dict(meta))
    return fields


def is_multi_result(fields: Fields) -> bool:
    """Whether a result entry answers a multi-window input (it has the field ``n``)."""
    return b"n" in fields


def decode_multi_result(fields: Fields) -> list[Result]:
    """One :class:`WindowResult` per window of a multi-window result entry, in window order.

    Each has ``input_id`` = the input entry's id, ``cid`` = the window's ``cids`` entry when
    non-empty else the entry's ``cid``, and the window's status, label, class and probs; the
    shared fields (model, worker, timings, batch, meta) are repeated on every window.
    """
    try:
        n = int(fields[b"n"])
        statuses = msgpack.unpackb(fields[b"statuses"])
        labels = msgpack.unpackb(fields[b"labels"])
        classes = msgpack.unpackb(fields[b"classes"])
        probs = msgpack.unpackb(fields[b"probs"])
        cids = msgpack.unpackb(fields[b"cids"]) if b"cids" in fields else [""] * n
        reasons = msgpack.unpackb(fields[b"reasons"], strict_map_key=False) if b"reasons" in fields else {}
        if not all(isinstance(a, list) and len(a) == n for a in (statuses, labels, classes, probs, cids)):
            raise ValueError(f"statuses, labels, classes, probs and cids must be arrays of n={n}")
        if not isinstance(reasons, dict):
            raise TypeError("reasons must be a map")
        entry_cid = fields.get(b"cid", b"").decode()
        model, worker = fields[b"model"].decode(), fields[b"worker"].decode()
        queue_us, wait_us, infer_us = int(fields[b"queue_us"]), int(fields[b"wait_us"]), int(fields[b"infer_us"])
        e2e_us, ts_us, batch = int(fields[b"e2e_us"]), int(fields[b"ts"]), int(fields[b"batch"])
        meta = msgpack.unpackb(fields[b"meta"]) if b"meta" in fields else {}
        input_id = fields[b"in"].decode()
        return [
            WindowResult(input_id=input_id, cid=cids[i] or entry_cid, status=statuses[i], label=int(labels[i]),
                         class_name=classes[i], probs=list(probs[i]), model=model, worker=worker, queue_us=queue_us,
                         wait_us=wait_us, infer_us=infer_us, e2e_us=e2e_us, ts_us=ts_us, batch=batch,
                         meta=dict(meta), index=i, reason=reasons.get(i, ""))
            for i in range(n)
        ]
    except (KeyError, ValueError, TypeError, UnicodeDecodeError, msgpack.UnpackException) as e:
        raise WireError("bad_result", f"multi-window result entry malformed: {e}") from e


def decode_any_result(fields: Fields) -> list[Result]:
    """Per-window results of a result entry of either form (a single-window result: a list of one)."""
    return decode_multi_result(fields) if is_multi_result(fields) else [decode_result(fields)]


# --- dead letters --------------------------------------------------------------------------------


def encode_dead_windows(
    original: Fields,
    *,
    input_id: str,
    bad: Mapping[int, str],
    worker: str,
    deliveries: int,
    detail: str | None = None,
    max_field_bytes: int = 64 * 1024,
) -> dict[bytes, bytes]:
    """The dead-letter entry for the bad windows of a multi-window input whose other windows were
    answered: :func:`protocol.wire.encode_dead` of the original fields plus ``dead.windows``
    (msgpack array of the bad indices, ascending) and ``dead.reasons`` (msgpack map index ->
    reason). ``dead.reason`` is the reason the bad windows share, or ``mixed``.
    """
    if not bad:
        raise ValueError("no bad windows to dead-letter")
    idx = sorted(int(i) for i in bad)
    kinds = {bad[i] for i in idx}
    reason = next(iter(kinds)) if len(kinds) == 1 else "mixed"
    if detail is None:
        shown = ", ".join(f"{i}: {bad[i]}" for i in idx[:20])
        detail = f"{len(idx)} bad window(s) of a multi-window entry ({shown}{', ...' if len(idx) > 20 else ''})"
    fields = encode_dead(original, input_id=input_id, reason=reason, detail=detail, worker=worker,
                         deliveries=deliveries, max_field_bytes=max_field_bytes)
    fields[b"dead.windows"] = _pack(idx)
    fields[b"dead.reasons"] = _pack({i: bad[i] for i in idx})
    return fields
