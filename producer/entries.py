"""The producer's entries before encoding: one window or several of one shape, and how windows group."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from producer.tracing import current_traceparent
from protocol.entries import encode_window, encode_windows_entry
from protocol.span import Span

T = TypeVar("T")


@dataclass(frozen=True, eq=False)
class Entry:
    """One input-stream entry before encoding: a ``[T, F]`` window, or (``multi``) ``[N, T, F]`` windows.

    :meth:`Producer.publish_entries` encodes it, stamping its ``ts``, once the backpressure gate has
    let it through.
    """

    x: np.ndarray
    multi: bool = False
    cid: str | None = None
    cids: Sequence[str | None] | None = None
    deadline_us: int | None = None
    meta: Mapping[str, Any] | None = None
    reply: str | None = None  # reply stream name (single-window entries; see Producer.classify)
    span: Span | None = None  # a stream window's identity (single-window entries; producer.streaming)
    spans: Sequence[Span] | None = None  # one per window (multi-window entries)

    @classmethod
    def of_windows(
        cls, windows: Sequence[np.ndarray], ids: Sequence[str | None] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> Entry:
        """One window as a single-window entry (its id the ``cid``), or several windows of one shape as a
        multi-window entry (their ids its ``cids``, when any is set); ``meta`` is the entry's."""
        if len(windows) == 1:
            return cls(windows[0], cid=ids[0] if ids is not None else None, meta=meta)
        cids = list(ids) if ids is not None and any(ids) else None
        return cls(np.stack(windows), multi=True, cids=cids, meta=meta)

    @property
    def iid(self) -> str | None:
        """The idempotency id: ``cid``, else (multi-window) ``d:`` and a digest of ``cids``, else None."""
        if self.cid:
            return self.cid
        if self.cids and any(self.cids):
            return "d:" + hashlib.sha256("\x1f".join(c or "" for c in self.cids).encode()).hexdigest()[:32]
        return None

    @property
    def windows(self) -> int:
        """Windows the entry carries."""
        return int(self.x.shape[0]) if self.multi else 1

    @property
    def route(self) -> str | None:
        """The id that picks the shard: ``cid``, else the first non-empty of ``cids`` (None: round-robin)."""
        return self.cid or _first_id(self.cids)

    def fields(self) -> dict[bytes, bytes]:
        """The stream fields (wire format v1, ``ts`` stamped now)."""
        if self.multi:
            fields = encode_windows_entry(self.x, cids=self.cids, cid=self.cid, deadline_us=self.deadline_us,
                                          meta=self.meta, spans=self.spans)
        else:
            fields = encode_window(self.x, cid=self.cid, deadline_us=self.deadline_us, meta=self.meta,
                                   reply=self.reply, span=self.span)
        if (tp := current_traceparent()) is not None:  # the current OpenTelemetry span, when there is one
            fields[b"traceparent"] = tp
        return fields


def _first_id(ids: Sequence[str | None] | None) -> str | None:
    return next((c for c in ids if c), None) if ids is not None else None


def shape_runs(items: Iterable[T], per_entry: int, shape: Callable[[T], tuple[int, ...]]) -> Iterator[list[T]]:
    """Consecutive items of equal ``shape`` in groups of up to ``per_entry`` (the windows of one entry each)."""
    group: list[T] = []
    first: tuple[int, ...] | None = None
    for item in items:
        sh = shape(item)
        if group and (sh != first or len(group) >= per_entry):
            yield group
            group = []
        if not group:
            first = sh
        group.append(item)
    if group:
        yield group


def group_windows(windows: Iterable[np.ndarray], per_entry: int) -> Iterator[list[np.ndarray]]:
    """Consecutive windows of equal shape in groups of up to ``per_entry`` ([T] becomes [T, 1])."""
    arrays = (a[:, None] if a.ndim == 1 else a for a in map(np.asarray, windows))
    return shape_runs(arrays, per_entry, lambda a: a.shape)


def entries_of(
    windows: Iterable[np.ndarray], ids: Sequence[str | None] | None, meta: Mapping[str, Any] | None, per_entry: int
) -> Iterator[Entry]:
    """The entries ``Producer.publish_many`` sends."""
    if per_entry == 1:
        for i, w in enumerate(windows):
            yield Entry(w, cid=ids[i] if ids is not None else None, meta=meta)
        return
    start = 0
    for group in group_windows(windows, per_entry):
        gids = ids[start : start + len(group)] if ids is not None else None
        if gids is not None and len(gids) != len(group):
            raise IndexError(f"fewer ids ({len(gids) + start}) than windows")
        start += len(group)
        yield Entry.of_windows(group, gids, meta)
