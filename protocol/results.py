"""Result entries of wire format v1 (both forms) and dead letters.

Specified in ``docs/wire-format.md``. A single-window input gets one result entry
(:func:`encode_result`); a multi-window input gets ONE result entry for its N windows
(:func:`encode_multi_result`), plus one dead letter when some windows are dead
(:func:`encode_dead_windows`). Both forms end with the same fields, :data:`SHARED_FIELDS`, encoded
by :func:`shared_fields` alone; their latencies come from :func:`timing` alone. The worker encodes
a batch's single-window results with ``protocol.result_batch`` (from arrays, byte-identical to
:func:`encode_result`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgpack

from protocol.limits import DEAD_FIELD_BYTES
from protocol.span import Span, unpack_spans
from protocol.wire import VERSION, Fields, WireError, now_us, pack


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
    span: Span | None = None  # the window's stream identity, echoed from the input (``protocol.span``)


#: The fields every result entry ends with (both forms), in this order; ``meta`` follows when the input had one,
#: then ``span`` (``spans`` for a multi-window result) when the input had it.
SHARED_FIELDS = (b"model", b"worker", b"queue_us", b"wait_us", b"infer_us", b"e2e_us", b"ts", b"batch")
#: A single-window result's fields, in order: its own, then :data:`SHARED_FIELDS`.
RESULT_FIELDS = (b"v", b"in", b"cid", b"status", b"label", b"class", b"probs", *SHARED_FIELDS)


class Timing(NamedTuple):
    """A result's latencies (µs), publish time and batch size: the values of ``queue_us`` … ``batch``."""

    queue_us: int
    wait_us: int
    infer_us: int
    e2e_us: int
    ts_us: int
    batch: int


def timing(ts_us: int, read_us: int, batch_us: int, pub_us: int, infer_us: int, batch: int) -> Timing:
    """The latency formulas, in one place: ``queue`` = read - enqueued (``ts``), ``wait`` = forward pass
    began - read, ``e2e`` = published - enqueued, each at least 0; ``infer_us`` and ``batch`` as given."""
    return Timing(max(0, read_us - ts_us), max(0, batch_us - read_us), infer_us, max(0, pub_us - ts_us), pub_us, batch)


def shared_fields(model: str, worker: str, t: Timing) -> dict[bytes, bytes]:
    """The :data:`SHARED_FIELDS` of a result, encoded, in order."""
    return dict(zip(SHARED_FIELDS, (model.encode(), worker.encode(), str(t.queue_us).encode(),
                                    str(t.wait_us).encode(), str(t.infer_us).encode(), str(t.e2e_us).encode(),
                                    str(t.ts_us).encode(), str(t.batch).encode())))


def encode_result(r: Result) -> dict[bytes, bytes]:
    """Build the stream fields of a result entry."""
    fields = {
        b"v": VERSION,
        b"in": r.input_id.encode(),
        b"cid": r.cid.encode(),
        b"status": r.status.encode(),
        b"label": str(r.label).encode(),
        b"class": r.class_name.encode(),
        b"probs": pack([float(p) for p in r.probs]),
        **shared_fields(r.model, r.worker, Timing(r.queue_us, r.wait_us, r.infer_us, r.e2e_us, r.ts_us, r.batch)),
    }
    if r.meta:
        fields[b"meta"] = pack(r.meta)
    if r.span is not None:
        fields[b"span"] = r.span.pack()
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
            span=Span.unpack(fields[b"span"], MAX_SPAN_KEY) if b"span" in fields else None,
        )
    except (KeyError, ValueError, TypeError, msgpack.UnpackException) as e:
        raise WireError("bad_result", f"result entry malformed: {e}") from e


#: A reader's bound on an echoed span's key (workers check theirs against ``max_cid_bytes``, 256 by default).
MAX_SPAN_KEY = 4096

#: Per-window statuses in a multi-window result.
STATUSES = ("ok", "dead", "expired")


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
    spans: bytes = b"",
) -> dict[bytes, bytes]:
    """Build the ONE result entry of a multi-window input: ``rows`` (one per window, in order)
    plus the values the entry's windows share. ``cid``/``cids`` are echoed from the input.

    Deterministic: field order ``v in cid n status [cids] statuses [reasons] labels classes probs
    model worker queue_us wait_us infer_us e2e_us ts batch [meta] [spans]``; ``spans`` is the input's
    checked ``spans`` field, echoed.
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
        b"v": VERSION,
        b"in": input_id.encode(),
        b"cid": cid.encode(),
        b"n": str(n).encode(),
        b"status": entry_status(statuses).encode(),
    }
    if cids is not None:
        fields[b"cids"] = pack([str(c) for c in cids])
    fields[b"statuses"] = pack(statuses)
    reasons = {i: r.reason for i, r in enumerate(rows) if r.status == "dead"}
    if reasons:
        fields[b"reasons"] = pack(reasons)
    fields[b"labels"] = pack([int(r.label) if k else -1 for r, k in zip(rows, ok)])
    fields[b"classes"] = pack([r.class_name if k else "" for r, k in zip(rows, ok)])
    fields[b"probs"] = pack([[float(p) for p in r.probs] if k else [] for r, k in zip(rows, ok)])
    fields.update(shared_fields(model, worker, Timing(queue_us, wait_us, infer_us, e2e_us, ts_us, batch)))
    if meta:
        fields[b"meta"] = pack(dict(meta))
    if spans:
        fields[b"spans"] = spans
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
        spans: list[Span | None] = (list(unpack_spans(fields[b"spans"], n, MAX_SPAN_KEY)) if b"spans" in fields
                                    else [None] * n)
        return [
            WindowResult(input_id=input_id, cid=cids[i] or entry_cid, status=statuses[i], label=int(labels[i]),
                         class_name=classes[i], probs=list(probs[i]), model=model, worker=worker, queue_us=queue_us,
                         wait_us=wait_us, infer_us=infer_us, e2e_us=e2e_us, ts_us=ts_us, batch=batch,
                         meta=dict(meta), span=spans[i], index=i, reason=reasons.get(i, ""))
            for i in range(n)
        ]
    except (KeyError, ValueError, TypeError, UnicodeDecodeError, msgpack.UnpackException) as e:
        raise WireError("bad_result", f"multi-window result entry malformed: {e}") from e


def decode_any_result(fields: Fields) -> list[Result]:
    """Per-window results of a result entry of either form (a single-window result: a list of one)."""
    return decode_multi_result(fields) if is_multi_result(fields) else [decode_result(fields)]


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
    max_field_bytes: int = DEAD_FIELD_BYTES,
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


def encode_dead_windows(
    original: Fields,
    *,
    input_id: str,
    bad: Mapping[int, str],
    worker: str,
    deliveries: int,
    detail: str | None = None,
    max_field_bytes: int = DEAD_FIELD_BYTES,
) -> dict[bytes, bytes]:
    """The dead-letter entry for the bad windows of a multi-window input whose other windows were
    answered: :func:`encode_dead` of the original fields plus ``dead.windows``
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
    fields[b"dead.windows"] = pack(idx)
    fields[b"dead.reasons"] = pack({i: bad[i] for i in idx})
    return fields
