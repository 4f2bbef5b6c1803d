"""Sending the true labels of served windows (``Producer.label``, ``bigru-producer label``).

Each label is checked before anything is written (:func:`protocol.labels.check`): a malformed one, or
one outside the serving model's classes (the registry's ``latest`` entry, when there is one), is
refused with :class:`~protocol.labels.LabelError` and the others still go out, in one pipelined round
trip. What the recorder later cannot use (an unknown or late ``cid``, a duplicate) is answered on
``{bigru}:labels:refused`` (docs/wire-format.md#labels).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import redis

from protocol import registry
from protocol.keys import Keys
from protocol.labels import LabelError, encode_label
from protocol.replies import as_str

#: The labels stream keeps about this many entries (the recorder reads them within seconds).
LABELS_MAXLEN = 1_000_000


@dataclass(frozen=True)
class Sent:
    """The answer for one label: its stream id, or the reason it was refused."""

    cid: str
    label: str
    id: str | None = None
    reason: str | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        """True when the label was written."""
        return self.id is not None


def model_classes(r: redis.Redis, keys: Keys) -> list[str] | None:
    """The classes of the registry's ``latest`` version, or None without a registry."""
    ptr = registry.read_pointer(r, keys)
    entry = registry.get_entry(r, keys, ptr.version) if ptr is not None else None
    return list(entry.classes) if entry is not None else None


def send_labels(r: redis.Redis, keys: Keys, labels: Iterable[tuple[str, str]], src: str = "",
                classes: Sequence[str] | None = None) -> list[Sent]:
    """Write ``(cid, label)`` pairs to the labels stream; one :class:`Sent` per pair, in order.

    ``label`` may be a class name or, when ``classes`` are known, its index as decimal text.
    ``classes`` defaults to :func:`model_classes`.
    """
    classes = model_classes(r, keys) if classes is None else classes
    out: list[Sent] = []
    pipe = r.pipeline(transaction=False)
    for cid, label in labels:
        if classes is not None and label not in classes and label.isdigit() and int(label) < len(classes):
            label = classes[int(label)]
        try:
            fields = encode_label(cid, label, src=src, classes=classes)
        except LabelError as e:
            out.append(Sent(cid, label, reason=e.reason, detail=str(e)))
            continue
        pipe.xadd(keys.labels, fields, maxlen=LABELS_MAXLEN, approximate=True)
        out.append(Sent(cid, label))
    ids = iter([as_str(i) for i in pipe.execute()] if len(pipe) else [])
    return [s if s.reason else Sent(s.cid, s.label, id=next(ids)) for s in out]
