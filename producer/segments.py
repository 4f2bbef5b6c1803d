"""Window results back into a timeline: per device, in sequence order, smoothed, as segments.

A :class:`Segmenter` takes per-window results carrying a span (:class:`protocol.span.Span`: device
key, ``seq``, event times of the window's first and last samples) in any order and returns
**segments** (device, label, start and end event time, mean confidence) as they close.

* **Order.** Results of one device may arrive out of order (several worker replicas). They wait in
  a reorder buffer until the next ``seq`` is there; when more than ``reorder`` later windows wait, the
  missing ones are skipped (a window that arrives after its turn is dropped, counted ``late``).
* **Smoothing.** The decision at a window is the argmax of the mean class probabilities of the last
  ``smooth`` windows; it is placed at the middle of those windows (their middle window's centre).
* **Hysteresis.** The label changes only after ``hold`` consecutive decisions agree on a new label, so
  one odd window does not flip it; the boundary is put between the last decision of the old label and
  the first of the new one where the old label's lead in the smoothed probabilities, interpolated
  linearly, crosses zero (half-way when both are saturated).
* **Breaks.** More than ``max_missing`` windows missing in a row (a gap in the device's data, a
  restart) closes the open segment at the end of the last window before it.
* **Ends.** A device's first segment starts at its first window's first sample; :meth:`Segmenter.flush`
  closes open segments at their last window's last sample (end of the results, or before a restart).

The state is plain data (:meth:`Segmenter.state` / :meth:`Segmenter.from_state`), so a reader can
store it atomically with its acknowledgements (``producer.segments_cli``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from protocol.results import Result

#: Defaults of the segmenter (and of ``bigru-producer segments``'s flags).
DEFAULT_SMOOTH, DEFAULT_HOLD, DEFAULT_REORDER, DEFAULT_MAX_MISSING = 3, 2, 16, 4


@dataclass(frozen=True)
class Vote:
    """One window's result reduced to what the segmenter needs."""

    key: str
    seq: int
    t0_us: int
    t1_us: int
    probs: tuple[float, ...]
    names: tuple[str, ...] = ()  # class names by label index, where known

    @property
    def centre_us(self) -> float:
        """The window's middle in event time."""
        return (self.t0_us + self.t1_us) / 2


def vote_of(r: Result) -> Vote | None:
    """The vote of a window result, None when it has no span or no probabilities (expired, dead)."""
    if r.span is None or r.status != "ok" or not r.probs:
        return None
    names = [""] * len(r.probs)
    if 0 <= r.label < len(names):
        names[r.label] = r.class_name
    return Vote(r.span.key, r.span.seq, r.span.t0_us, r.span.t1_us, tuple(float(p) for p in r.probs), tuple(names))


@dataclass(frozen=True)
class Segment:
    """A stretch of one device's event time with one label."""

    key: str
    label: str
    start_us: int
    end_us: int
    confidence: float  # mean, over its decisions, of the smoothed probability of its label
    windows: int  # decisions (windows) in it

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)


@dataclass
class _Open:
    label: int
    start_us: float
    last_time: float  # decision time of its newest decision
    conf_sum: float = 0.0
    n: int = 0
    last_mean: list[float] = field(default_factory=list)  # smoothed probabilities of its newest decision


@dataclass
class _Device:
    next_seq: int | None = None
    last_seq: int | None = None
    last_t1: int = 0
    pending: dict[int, Vote] = field(default_factory=dict)
    history: deque[Vote] = field(default_factory=deque)
    open: _Open | None = None
    cand: int = -1  # label of a possible change
    cand_n: int = 0
    cand_time: float = 0.0  # decision time of the change's first decision
    cand_conf: list[float] = field(default_factory=list)  # the change's decisions: smoothed prob of the new label
    cand_keep: list[float] = field(default_factory=list)  # ... and of the open segment's label
    prev_time: float = 0.0  # decision time of the decision before the change
    prev_mean: list[float] = field(default_factory=list)  # ... and its smoothed probabilities
    cand_mean: list[float] = field(default_factory=list)  # smoothed probabilities of the change's first decision


@dataclass
class SegmenterCounts:
    """What a segmenter did."""

    windows: int = 0
    late: int = 0
    skipped: int = 0  # windows never seen, passed over by the reorder buffer
    segments: int = 0


class Segmenter:
    """Turns per-window results into per-device segments (module docstring)."""

    def __init__(self, smooth: int = DEFAULT_SMOOTH, hold: int = DEFAULT_HOLD, reorder: int = DEFAULT_REORDER,
                 max_missing: int = DEFAULT_MAX_MISSING) -> None:
        if smooth < 1 or hold < 1 or reorder < 0 or max_missing < 0:
            raise ValueError(f"smooth ({smooth}) and hold ({hold}) must be >= 1, reorder ({reorder}) and "
                             f"max_missing ({max_missing}) >= 0")
        self.smooth, self.hold, self.reorder, self.max_missing = smooth, hold, reorder, max_missing
        self.counts = SegmenterCounts()
        self.names: dict[int, str] = {}
        self._dev: dict[str, _Device] = {}

    def add_results(self, results: list[Result]) -> list[Segment]:
        """Feed window results (those without a span, or not ``ok``, are ignored); the segments closed."""
        out: list[Segment] = []
        for r in results:
            if (v := vote_of(r)) is not None:
                out += self.add(v)
        return out

    def add(self, v: Vote) -> list[Segment]:
        """Feed one window's vote; the segments it closed."""
        for i, n in enumerate(v.names):
            if n:
                self.names[i] = n
        d = self._dev.setdefault(v.key, _Device())
        if (d.next_seq is not None and v.seq < d.next_seq) or v.seq in d.pending:
            self.counts.late += 1
            return []
        d.pending[v.seq] = v
        return self._release(v.key, d, final=False)

    def flush(self, key: str | None = None) -> list[Segment]:
        """Process every waiting window and close the open segments (of ``key``, or of every device)."""
        out: list[Segment] = []
        for k in [key] if key is not None else list(self._dev):
            d = self._dev.get(k)
            if d is None:
                continue
            out += self._release(k, d, final=True)
            out += self._close(k, d, d.last_t1)
            self._dev[k] = _Device(next_seq=d.next_seq)
        return out

    # --- ordering ------------------------------------------------------------------------------

    def _release(self, key: str, d: _Device, final: bool) -> list[Segment]:
        out: list[Segment] = []
        while d.pending:
            if d.next_seq is None or d.next_seq not in d.pending:
                if not final and len(d.pending) <= self.reorder:
                    break
                first = min(d.pending)
                if d.next_seq is not None:
                    self.counts.skipped += first - d.next_seq
                d.next_seq = first
            v = d.pending.pop(d.next_seq)
            d.next_seq += 1
            out += self._decide(key, d, v)
        return out

    # --- smoothing and hysteresis --------------------------------------------------------------

    def _decide(self, key: str, d: _Device, v: Vote) -> list[Segment]:
        out: list[Segment] = []
        self.counts.windows += 1
        if d.last_seq is not None and v.seq - d.last_seq - 1 > self.max_missing:
            out += self._close(key, d, d.last_t1)
            d.history.clear()
        d.last_seq, d.last_t1 = v.seq, v.t1_us
        d.history.append(v)
        if len(d.history) > self.smooth:
            d.history.popleft()
        mean = np.mean([h.probs for h in d.history], axis=0)
        label = int(np.argmax(mean))
        conf = float(mean[label])
        when = d.history[len(d.history) // 2].centre_us
        if d.open is None:
            d.open = _Open(label, float(d.history[0].t0_us), when, conf, 1, mean.tolist())
            d.cand, d.cand_n = -1, 0
            return out
        o = d.open
        if label == o.label:  # a change that did not hold: its decisions stay in the open segment
            o.conf_sum += conf + sum(d.cand_keep)
            o.n += 1 + len(d.cand_keep)
            o.last_time, o.last_mean = when, mean.tolist()
            d.cand, d.cand_n, d.cand_conf, d.cand_keep = -1, 0, [], []
            return out
        if label != d.cand:
            o.conf_sum += sum(d.cand_keep)
            o.n += len(d.cand_keep)
            d.cand, d.cand_n, d.cand_time, d.cand_conf, d.cand_keep = label, 0, when, [], []
            d.prev_time, d.prev_mean, d.cand_mean = o.last_time, o.last_mean, mean.tolist()
        d.cand_n += 1
        d.cand_conf.append(conf)
        d.cand_keep.append(float(mean[o.label]))
        if d.cand_n >= self.hold:
            boundary = self._boundary(d, o.label, label)
            new_conf = d.cand_conf
            d.cand_keep = []  # the change held: its decisions are the new segment's
            out += self._close(key, d, boundary)
            d.open = _Open(label, boundary, when, sum(new_conf), len(new_conf), mean.tolist())
            d.cand, d.cand_n, d.cand_conf, d.cand_keep = -1, 0, [], []
        return out

    @staticmethod
    def _boundary(d: _Device, old: int, new: int) -> float:
        """Where the old label's lead over the new one crosses zero, interpolated linearly between the last
        decision of the old label and the first of the new (half-way when the probabilities are saturated)."""
        lead_a = d.prev_mean[old] - d.prev_mean[new] if d.prev_mean else 1.0
        lead_b = d.cand_mean[old] - d.cand_mean[new] if d.cand_mean else -1.0
        frac = lead_a / (lead_a - lead_b) if lead_a > 0 > lead_b or (lead_a > 0 and lead_b == 0) else 0.5
        return d.prev_time + min(1.0, max(0.0, frac)) * (d.cand_time - d.prev_time)

    def _close(self, key: str, d: _Device, end_us: float) -> list[Segment]:
        o, d.open = d.open, None
        if o is not None:
            o.conf_sum += sum(d.cand_keep)
            o.n += len(d.cand_keep)
        d.cand, d.cand_n, d.cand_conf, d.cand_keep = -1, 0, [], []
        if o is None:
            return []
        self.counts.segments += 1
        return [Segment(key, self.names.get(o.label, str(o.label)), int(round(o.start_us)), int(round(end_us)),
                        round(o.conf_sum / max(1, o.n), 4), o.n)]

    # --- state ---------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The segmenter's whole state as JSON-ready data (see :meth:`from_state`)."""
        def dev(d: _Device) -> dict[str, Any]:
            out = asdict(d)
            out["pending"] = [asdict(v) for v in d.pending.values()]
            out["history"] = [asdict(v) for v in d.history]
            return out

        return {"params": [self.smooth, self.hold, self.reorder, self.max_missing], "counts": asdict(self.counts),
                "names": {str(k): v for k, v in self.names.items()}, "devices": {k: dev(d) for k, d in self._dev.items()}}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Segmenter:
        """A segmenter continuing from :meth:`state`'s data."""
        seg = cls(*state["params"])
        seg.counts = SegmenterCounts(**state["counts"])
        seg.names = {int(k): v for k, v in state["names"].items()}

        def vote(v: dict[str, Any]) -> Vote:
            return Vote(v["key"], v["seq"], v["t0_us"], v["t1_us"], tuple(v["probs"]), tuple(v["names"]))

        for k, raw in state["devices"].items():
            raw = dict(raw)
            raw["pending"] = {v["seq"]: vote(v) for v in raw["pending"]}
            raw["history"] = deque(vote(v) for v in raw["history"])
            raw["open"] = _Open(**raw["open"]) if raw["open"] else None
            seg._dev[k] = _Device(**raw)
        return seg
