"""Label entries: the true class of a served window, sent later (``{bigru}:labels``; docs/wire-format.md#labels).

A label entry's fields (all ASCII/UTF-8 text):

=========  ========================================================================
``v``      format version, ``"1"``
``cid``    the served window's client id (its ``cid``, or its ``cids`` element), 1 to 256 UTF-8 bytes
``label``  the true class **name** (as in the model's ``classes``), 1 to 256 UTF-8 bytes
``ts``     when the label was sent, unix microseconds, ASCII decimal
``src``    optional: who labelled it (1 to 64 of ``[A-Za-z0-9_.:-]``)
=========  ========================================================================

The recorder answers every label it cannot use on ``{bigru}:labels:refused`` with the label's fields
and ``reason`` (:data:`REFUSAL_REASONS`); the sender refuses malformed labels and labels outside the
model's classes before anything is written (:class:`LabelError`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from protocol.keys import REPLY_NAME

VERSION = "1"
MAX_CID_BYTES = 256
MAX_LABEL_BYTES = 256

#: Why the recorder could not use a label (the ``reason`` field of ``{bigru}:labels:refused``).
REFUSAL_REASONS: dict[str, str] = {
    "malformed": "the entry is not a valid label entry (missing or bad field)",
    "bad_class": "the label is not one of the serving model's classes",
    "unknown_cid": "no retained window has this cid, and none arrived within the label wait",
    "late": "the window was served but no longer retained (past the retention time or size)",
    "duplicate": "the window already has this label (the first one counts)",
    "conflict": "the window already has another label (the first one counts)",
}


class LabelError(ValueError):
    """A label cannot be sent or read; ``reason`` is one of :data:`REFUSAL_REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class Label:
    """One label: the window's ``cid``, its true class name, when it was sent (unix µs), who sent it."""

    cid: str
    label: str
    ts_us: int
    src: str = ""


def _text(fields: Mapping[bytes, bytes], name: str, limit: int) -> str:
    raw = fields.get(name.encode())
    if raw is None:
        raise LabelError("malformed", f"missing field {name!r}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LabelError("malformed", f"field {name!r} is not UTF-8") from e
    if not text or len(raw) > limit:
        raise LabelError("malformed", f"field {name!r} must be 1 to {limit} UTF-8 bytes")
    return text


def check(cid: str, label: str, classes: Sequence[str] | None = None, src: str = "") -> None:
    """Raise :class:`LabelError` unless ``cid``/``label``/``src`` are well formed and ``label`` is in ``classes``."""
    for name, value, limit in (("cid", cid, MAX_CID_BYTES), ("label", label, MAX_LABEL_BYTES)):
        if not isinstance(value, str) or not value or len(value.encode()) > limit:
            raise LabelError("malformed", f"{name} must be 1 to {limit} UTF-8 bytes, got {value!r}")
    if src and not REPLY_NAME.fullmatch(src):
        raise LabelError("malformed", f"src {src!r}: 1-64 characters of [A-Za-z0-9_.:-]")
    if classes is not None and label not in classes:
        raise LabelError("bad_class", f"label {label!r} of cid {cid!r} is not one of the model's classes {list(classes)}")


def encode_label(cid: str, label: str, ts_us: int | None = None, src: str = "",
                 classes: Sequence[str] | None = None) -> dict[bytes, bytes]:
    """The fields of a label entry (checked with :func:`check`)."""
    check(cid, label, classes, src)
    fields = {b"v": VERSION.encode(), b"cid": cid.encode(), b"label": label.encode(),
              b"ts": str(time.time_ns() // 1000 if ts_us is None else ts_us).encode()}
    if src:
        fields[b"src"] = src.encode()
    return fields


def decode_label(fields: Mapping[bytes, bytes]) -> Label:
    """A :class:`Label` from an entry's fields; :class:`LabelError` (``malformed``) when they are not one."""
    if fields.get(b"v") != VERSION.encode():
        raise LabelError("malformed", f"version {fields.get(b'v')!r}, expected {VERSION!r}")
    cid = _text(fields, "cid", MAX_CID_BYTES)
    label = _text(fields, "label", MAX_LABEL_BYTES)
    ts_raw = fields.get(b"ts", b"")
    if not ts_raw.isdigit():
        raise LabelError("malformed", f"ts {ts_raw!r} is not unix microseconds")
    src = fields.get(b"src", b"").decode("utf-8", "replace")
    return Label(cid, label, int(ts_raw), src)


def refusal_fields(fields: Mapping[bytes, bytes], reason: str, detail: str) -> dict[bytes, bytes]:
    """A ``{bigru}:labels:refused`` entry: the label's own fields, ``reason`` and ``detail`` (≤ 500 chars)."""
    out = {k: v for k, v in fields.items() if k in (b"v", b"cid", b"label", b"ts", b"src")}
    out[b"reason"] = reason.encode()
    out[b"detail"] = detail[:500].encode()
    return out
