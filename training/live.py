"""Served windows joined with their late labels, and the dataset files they land in (numpy only).

:class:`Retained` keeps served windows by ``cid`` within a time, count and byte bound (oldest first
out); :class:`Joiner` matches labels to them and says why a label cannot be used
(:data:`protocol.labels.REFUSAL_REASONS`); :func:`write_live` writes labelled windows as a pickle-free
``.npz`` that :func:`training.model.formats.load_npz` reads (``X`` ``[sum T_i, F]``, ``lengths``, ``y``,
``classes``; plus ``cids``, ``ts_ms``, ``models``) with a ``.json`` of its provenance (model versions,
time range); :func:`load_live` reads the newest of them back as one dataset.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from protocol.labels import Label
from training.model.data import Dataset
from training.model.formats import load_npz

#: Per retained window, what the bookkeeping costs beside its data (key, dict node, array header): bytes,
#: measured (results/continuous.md: about 480 bytes a [20, 1] float32 window, 80 of them data).
OVERHEAD_BYTES = 400


@dataclass(frozen=True)
class Served:
    """A served window: its data, when it was read (unix ms), the model version serving then."""

    x: np.ndarray
    ts_ms: int
    model: str

    @property
    def nbytes(self) -> int:
        """What it holds in memory, roughly (data plus :data:`OVERHEAD_BYTES`)."""
        return int(self.x.nbytes) + OVERHEAD_BYTES


class Retained:
    """Served windows by ``cid``, bounded by age (``retain_ms``), count and bytes; the oldest go first.

    Evicted cids are remembered (as many as are retained, at least 1 000) so a label for one is answered
    ``late``; an older one is answered ``unknown_cid``.
    """

    def __init__(self, retain_ms: int, max_windows: int, max_bytes: int) -> None:
        self.retain_ms, self.max_windows, self.max_bytes = retain_ms, max_windows, max_bytes
        self._items: OrderedDict[str, Served] = OrderedDict()
        self._gone: deque[str] = deque()
        self._gone_set: set[str] = set()
        self.bytes = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, cid: str) -> bool:
        return cid in self._items

    def add(self, cid: str, w: Served) -> None:
        """Keep ``w`` under ``cid`` (a cid seen again replaces the older window), then apply the bounds."""
        old = self._items.pop(cid, None)
        if old is not None:
            self.bytes -= old.nbytes
        self._items[cid] = w
        self.bytes += w.nbytes
        while len(self._items) > self.max_windows or self.bytes > self.max_bytes:
            self._evict()

    def expire(self, now_ms: int) -> None:
        """Drop windows older than ``retain_ms``."""
        while self._items and next(iter(self._items.values())).ts_ms < now_ms - self.retain_ms:
            self._evict()

    def _evict(self) -> None:
        cid, w = self._items.popitem(last=False)
        self.bytes -= w.nbytes
        self.evicted += 1
        self._gone.append(cid)
        self._gone_set.add(cid)
        while len(self._gone) > max(1000, len(self._items)):
            self._gone_set.discard(self._gone.popleft())

    def take(self, cid: str) -> Served | None:
        """Remove and return the window of ``cid`` (None when not retained)."""
        w = self._items.pop(cid, None)
        if w is not None:
            self.bytes -= w.nbytes
        return w

    @property
    def remembered(self) -> int:
        """Evicted cids remembered for ``late`` answers."""
        return len(self._gone)

    def was_evicted(self, cid: str) -> bool:
        """True when ``cid`` was retained once and has been evicted."""
        return cid in self._gone_set


@dataclass
class Joined:
    """A labelled window: the served window and its label's class index."""

    cid: str
    served: Served
    y: int


@dataclass
class Joiner:
    """Matches labels with retained windows; labels may arrive before their window (they wait ``wait_ms``).

    :meth:`label` and :meth:`window_arrived` return the joined windows; :attr:`refused` collects
    ``(label, reason, detail)`` for every label that cannot be used (each label exactly once: joined or refused).
    """

    store: Retained
    classes: list[str]
    wait_ms: int
    refused: list[tuple[Label, str, str]] = field(default_factory=list)
    _pending: OrderedDict[str, tuple[Label, int]] = field(default_factory=OrderedDict)
    _labelled: OrderedDict[str, str] = field(default_factory=OrderedDict)

    def label(self, lab: Label, now_ms: int) -> list[Joined]:
        """Handle one label."""
        if lab.label not in self.classes:
            self.refused.append((lab, "bad_class", f"{lab.label!r} is not one of {self.classes}"))
            return []
        first = self._labelled.get(lab.cid) or (self._pending[lab.cid][0].label if lab.cid in self._pending else None)
        if first is not None:
            reason = "duplicate" if first == lab.label else "conflict"
            self.refused.append((lab, reason, f"cid {lab.cid!r} already labelled {first!r}"))
            return []
        if lab.cid in self.store:
            return [self._join(lab)]
        if self.store.was_evicted(lab.cid):
            self.refused.append((lab, "late", f"the window of cid {lab.cid!r} is no longer retained"))
            return []
        self._pending[lab.cid] = (lab, now_ms + self.wait_ms)
        return []

    def window_arrived(self, cid: str) -> list[Joined]:
        """A window was just retained: join it with a label waiting for it."""
        waiting = self._pending.pop(cid, None)
        return [self._join(waiting[0])] if waiting is not None and cid in self.store else []

    def expire(self, now_ms: int) -> None:
        """Refuse waiting labels past their wait as ``unknown_cid``."""
        while self._pending and next(iter(self._pending.values()))[1] <= now_ms:
            _, (lab, _) = self._pending.popitem(last=False)
            self.refused.append((lab, "unknown_cid", f"no window with cid {lab.cid!r} within {self.wait_ms} ms"))

    @property
    def waiting(self) -> int:
        """Labels waiting for their window."""
        return len(self._pending)

    def _join(self, lab: Label) -> Joined:
        served = self.store.take(lab.cid)
        assert served is not None
        self._labelled[lab.cid] = lab.label
        while len(self._labelled) > self.store.max_windows:
            self._labelled.popitem(last=False)
        return Joined(lab.cid, served, self.classes.index(lab.label))


def write_live(folder: str | Path, joined: Sequence[Joined], classes: Sequence[str]) -> Path:
    """Write ``joined`` as ``live-<first ms>-<last ms>-<n>.npz`` (atomically) with its provenance ``.json``."""
    if not joined:
        raise ValueError("no labelled windows to write")
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    ts = np.array([j.served.ts_ms for j in joined], dtype=np.int64)
    y = np.array([j.y for j in joined], dtype=np.int64)
    name = f"live-{int(ts.min())}-{int(ts.max())}-{len(joined)}"
    xs = [j.served.x for j in joined]
    arrays = {"X": np.concatenate(xs).astype(np.float32), "lengths": np.array([len(x) for x in xs], dtype=np.int64),
              "y": y, "classes": np.array(list(classes)),
              "cids": np.array([j.cid for j in joined]), "ts_ms": ts,
              "models": np.array([j.served.model for j in joined])}
    tmp = d / f".{name}.tmp.npz"
    np.savez(tmp, **arrays)  # type: ignore[arg-type]
    models = sorted({j.served.model for j in joined})
    prov = {"windows": len(joined), "from_ms": int(ts.min()), "to_ms": int(ts.max()), "models": models,
            "classes": list(classes), "class_counts": np.bincount(y, minlength=len(classes)).tolist()}
    (d / f"{name}.json").write_text(json.dumps(prov) + "\n")
    os.replace(tmp, d / f"{name}.npz")
    return d / f"{name}.npz"


def load_live(folder: str | Path, classes: Sequence[str], max_windows: int) -> Dataset | None:
    """The newest ``max_windows`` labelled live windows under ``folder`` as one dataset (None when there are none)."""
    files = sorted(Path(folder).glob("live-*.npz"), key=lambda p: int(p.name.split("-")[2]), reverse=True)
    parts: list[Dataset] = []
    n = 0
    for f in files:
        ds = load_npz(str(f), allow_pickle=False)
        if list(ds.classes) != list(classes):
            continue
        parts.append(ds)
        n += len(ds)
        if n >= max_windows:
            break
    if not parts:
        return None
    out = parts[-1]
    for p in reversed(parts[:-1]):
        out = out.concat(p)
    keep = np.arange(max(0, len(out) - max_windows), len(out))
    res = out.subset(keep)
    res.name = "live"
    return res
