"""Publishing the windows a :class:`~producer.windower.Windower` cuts, through the normal producer.

Every window goes out through :meth:`producer.client.Producer.publish_entries` (backpressure, the
outage budget, idempotent writes, durability and the current trace context, as any other entry) with
its stream identity, a :class:`protocol.span.Span` (key, ``seq``, first and last sample times), in
the ``span`` field (``spans`` for a multi-window entry; docs/wire-format.md, "Stream windows").

Missing rows (padding of short gaps, NaN samples) are filled before sending exactly as training
fills them (:func:`training.model.data.fill_missing`: linear in time, carried at the ends), so the
worker's default input check (finite values only) accepts the window.

**Replays.** A window's client id is ``<key>:<first sample index>`` and is its idempotency id, so a
gateway that restarts and replays recent samples publishes no window twice when the producer is
idempotent (``producer_id`` set, the replay within ``idempotency_window_s``). With ``per_entry`` > 1 the
windows of one key are packed by sequence block (``seq // per_entry``): a block is sent when its last
window is cut, when the key's next window falls in a later block, or on :meth:`StreamPublisher.flush`; a
replay that starts inside a block that was already sent whole sends that block's replayed windows
again (as a smaller entry): replay-exactness is per window with ``per_entry`` 1, per complete block
otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog

from producer.client import Producer
from producer.entries import Entry
from producer.windower import StreamWindow, Windower
from protocol.span import Span
from training.model.data import fill_missing

log = structlog.get_logger("producer.streaming")

#: One sample batch of a key: (key, event times [n] µs, values [n, F]).
Samples = tuple[str, np.ndarray, np.ndarray]


def span_of(w: StreamWindow) -> Span:
    """The wire span of a window."""
    return Span(w.key, w.seq, w.t0_us, w.t1_us)


def window_values(w: StreamWindow) -> np.ndarray:
    """The values sent for ``w``: float32, missing rows filled as training fills them."""
    return fill_missing(w.x).astype(np.float32) if w.missing else w.x


@dataclass
class PublishedCounts:
    """What a :class:`StreamPublisher` sent."""

    windows: int = 0
    entries: int = 0
    round_trips: int = 0


class StreamPublisher:
    """Pushes samples into ``windower`` and publishes every window they complete through ``producer``.

    ``per_entry`` 1: one single-window entry per window; > 1: a key's windows packed by sequence block
    (module docstring). ``meta`` goes with every entry. ``expire_every_s`` (wall seconds): how often
    quiet keys are forgotten (:meth:`Windower.expire`).
    """

    def __init__(self, producer: Producer, windower: Windower, *, per_entry: int = 1,
                 meta: Mapping[str, Any] | None = None, expire_every_s: float = 1.0) -> None:
        if per_entry < 1:
            raise ValueError(f"per_entry must be >= 1, got {per_entry}")
        self.producer = producer
        self.windower = windower
        self.per_entry = per_entry
        self.meta = meta
        self.counts = PublishedCounts()
        self._blocks: dict[str, list[StreamWindow]] = {}  # per key: the windows of its open block
        self._expire_every_s = expire_every_s
        self._next_expire = time.monotonic() + expire_every_s

    def push(self, key: str, t_us: int | np.ndarray, values: np.ndarray | float) -> list[StreamWindow]:
        """Add samples of one key (see :meth:`Windower.push`) and publish the windows they complete."""
        return self.push_many([(key, np.atleast_1d(np.asarray(t_us, np.int64)),
                                np.asarray(values, np.float32).reshape(np.size(t_us), -1))])

    def push_many(self, batches: Iterable[Samples]) -> list[StreamWindow]:
        """Add sample batches of any keys, then publish every window they completed in pipelined round
        trips of up to ``pipeline_size`` entries (one backpressure check each). Returns the windows cut."""
        cut: list[StreamWindow] = []
        for key, t, v in batches:
            cut += self.windower.push(key, t, v)
        self._send(self._entries(cut))
        if time.monotonic() >= self._next_expire:
            self._next_expire = time.monotonic() + self._expire_every_s
            for key in self.windower.expire():
                self._send(self._close_block(key))
                log.info("stream_key_expired", key=key)
        return cut

    def flush(self) -> None:
        """Send every open block (``per_entry`` > 1)."""
        self._send([e for key in list(self._blocks) for e in self._close_block(key)])

    def close(self) -> None:
        """End of the stream: send open blocks, drop every partial window (counted by the windower)."""
        self.flush()
        self.windower.close()

    def _entries(self, windows: Sequence[StreamWindow]) -> list[Entry]:
        if self.per_entry == 1:
            return [Entry(window_values(w), cid=w.cid, span=span_of(w), meta=self.meta) for w in windows]
        out: list[Entry] = []
        for w in windows:
            block = self._blocks.get(w.key)
            if block and block[0].seq // self.per_entry != w.seq // self.per_entry:
                out += self._close_block(w.key)
            self._blocks.setdefault(w.key, []).append(w)
            if w.seq % self.per_entry == self.per_entry - 1:
                out += self._close_block(w.key)
        return out

    def _close_block(self, key: str) -> list[Entry]:
        block = self._blocks.pop(key, None)
        if not block:
            return []
        if len(block) == 1:
            w = block[0]
            return [Entry(window_values(w), cid=w.cid, span=span_of(w), meta=self.meta)]
        return [Entry(np.stack([window_values(w) for w in block]), multi=True, cids=[w.cid for w in block],
                      spans=[span_of(w) for w in block], meta=self.meta)]

    def _send(self, entries: list[Entry]) -> None:
        size = self.producer.pipeline_size
        for lo in range(0, len(entries), size):
            chunk = entries[lo: lo + size]
            self.producer.publish_entries(chunk)
            self.counts.round_trips += 1
            self.counts.entries += len(chunk)
            self.counts.windows += sum(e.windows for e in chunk)
