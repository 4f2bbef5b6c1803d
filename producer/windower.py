"""Sliding windows cut from live samples, per device: the windowing model of docs/streams.md.

A :class:`Windower` takes samples (one or many at a time, one or many channels) per **key** (a
device id) with their event timestamps and returns the windows they complete: ``window`` samples
every ``hop`` samples. No Redis here (:mod:`producer.streaming` publishes the windows).

**Sample index.** A sample's index is its event time on the key's nominal grid,
``round(t_us / period_us)`` (or the index the caller gives). Windows start at indices that are
multiples of ``hop`` (absolute, not counted from the first sample seen), so a gateway that restarts
and replays recent samples cuts exactly the windows it cut before, with the same sequence numbers
``seq = start // hop`` and the same client ids ``<key>:<start>`` (the idempotent producer then drops
the replayed ones).

**Gaps.** A jump of up to ``max_gap`` missing samples is padded with missing values (NaN rows,
counted in ``padded``; the publisher fills them as training does, linearly in time); a longer jump
restarts the key's window (``restarts``): the samples before it that did not complete a window are
dropped, and the next window starts at the next multiple of ``hop`` at or after the jump.

**Late and duplicate samples.** A sample whose index is not after the key's last one is dropped
and counted (``late`` when earlier, ``duplicate`` when the same index); samples are not reordered.

**Quiet keys.** A key that sends nothing for ``idle_s`` of event time (measured against the newest
timestamp of any key, :meth:`Windower.expire`) is forgotten; its partial window is dropped, never
padded into a fake window (``partial_dropped`` counts the samples lost).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Default longest gap padded instead of restarting the window, as a share of the window (``window // 8``).
DEFAULT_MAX_GAP_DIVISOR = 8
#: Default event-time silence after which a key's partial window is dropped.
DEFAULT_IDLE_S = 30.0


class WindowerError(ValueError):
    """A bad windowing parameter or sample (named in the message)."""


@dataclass(frozen=True)
class WindowSpec:
    """How windows are cut: ``window`` samples every ``hop`` samples on a grid of ``period_us``."""

    window: int
    hop: int
    period_us: int
    max_gap: int | None = None  # None: window // DEFAULT_MAX_GAP_DIVISOR
    idle_s: float = DEFAULT_IDLE_S

    def __post_init__(self) -> None:
        if self.window < 1:
            raise WindowerError(f"window must be >= 1, got {self.window}")
        if not 1 <= self.hop <= self.window:
            raise WindowerError(f"hop must be between 1 and window ({self.window}), got {self.hop}")
        if self.period_us < 1:
            raise WindowerError(f"period_us must be >= 1, got {self.period_us}")
        if self.max_gap is None:
            object.__setattr__(self, "max_gap", self.window // DEFAULT_MAX_GAP_DIVISOR)
        if not 0 <= self.gap_limit < self.window:
            raise WindowerError(f"max_gap must be between 0 and window - 1 ({self.window - 1}), got {self.max_gap}")
        if self.idle_s <= 0:
            raise WindowerError(f"idle_s must be > 0, got {self.idle_s}")

    @property
    def gap_limit(self) -> int:
        """The longest gap (missing samples) padded."""
        return int(self.max_gap or 0)

    @classmethod
    def at_rate(cls, window: int, hop: int, rate_hz: float, max_gap: int | None = None,
                idle_s: float = DEFAULT_IDLE_S) -> WindowSpec:
        """The spec of a stream sampled at ``rate_hz``."""
        if rate_hz <= 0:
            raise WindowerError(f"rate must be > 0 Hz, got {rate_hz}")
        return cls(window, hop, round(1e6 / rate_hz), max_gap, idle_s)


@dataclass(frozen=True, eq=False)
class StreamWindow:
    """A window of one key: samples ``start`` .. ``start + window - 1``, event times ``t0_us`` .. ``t1_us``."""

    key: str
    seq: int
    start: int
    x: np.ndarray  # [window, F] float32, NaN where a sample was missing
    t0_us: int
    t1_us: int
    missing: int  # rows of x that are padding or NaN samples

    @property
    def cid(self) -> str:
        """The window's client id, deterministic from key and first sample index (the idempotency id)."""
        return f"{self.key}:{self.start}"


@dataclass
class WindowerCounts:
    """What a windower did with its samples."""

    samples: int = 0
    windows: int = 0
    late: int = 0
    duplicate: int = 0
    padded: int = 0
    restarts: int = 0
    partial_dropped: int = 0
    keys_expired: int = 0


@dataclass(eq=False)
class _Key:
    """The ring buffer of one key: row ``i % window`` holds sample ``i``."""

    buf: np.ndarray
    times: np.ndarray
    start: int = 0  # first index of the current contiguous run
    last: int = -1  # index of the newest sample (-1: none yet)
    emitted: int = -1  # last index of the newest window cut
    last_t_us: int = 0


@dataclass(eq=False)
class Windower:
    """Cuts windows per key (see the module docstring for the model)."""

    spec: WindowSpec
    features: int | None = None
    counts: WindowerCounts = field(default_factory=WindowerCounts)

    def __post_init__(self) -> None:
        self._keys: dict[str, _Key] = {}
        self.watermark_us = 0  # newest event time seen, any key

    @property
    def keys(self) -> list[str]:
        """The keys with live buffers."""
        return list(self._keys)

    def index_of(self, t_us: np.ndarray) -> np.ndarray:
        """Sample indices of event times (µs) on the nominal grid."""
        return np.rint(np.asarray(t_us, dtype=np.float64) / self.spec.period_us).astype(np.int64)

    def push(self, key: str, t_us: int | np.ndarray, values: np.ndarray | float,
             index: np.ndarray | int | None = None) -> list[StreamWindow]:
        """Add samples of ``key`` and return the windows they complete, oldest first.

        ``t_us`` a scalar: ``values`` is one sample (``[F]`` or a scalar). ``t_us`` an array ``[n]``:
        ``values`` is ``[n, F]`` (or ``[n]`` for one channel). ``index`` overrides the sample indices
        derived from the timestamps.
        """
        t = np.atleast_1d(np.asarray(t_us, dtype=np.int64))
        v = np.asarray(values, dtype=np.float32)
        if np.ndim(t_us) == 0:
            v = v.reshape(1, -1)
        elif v.ndim == 1:
            v = v[:, None]
        if v.ndim != 2 or v.shape[0] != t.shape[0]:
            raise WindowerError(f"{key}: {t.shape[0]} timestamps but values of shape {np.shape(values)}")
        if self.features is None:
            self.features = int(v.shape[1])
        elif v.shape[1] != self.features:
            raise WindowerError(f"{key}: {v.shape[1]} channels, the stream has {self.features}")
        idx = self.index_of(t) if index is None else np.atleast_1d(np.asarray(index, dtype=np.int64))
        if idx.shape != t.shape:
            raise WindowerError(f"{key}: {idx.shape[0]} indices for {t.shape[0]} samples")
        if not len(t):
            return []
        self.counts.samples += len(t)
        self.watermark_us = max(self.watermark_us, int(t.max()))
        k = self._keys.get(key)
        if k is None:
            w = self.spec.window
            k = self._keys[key] = _Key(np.full((w, self.features), np.nan, np.float32), np.zeros(w, np.int64))
        out: list[StreamWindow] = []
        breaks = np.flatnonzero(np.diff(idx) != 1) + 1  # where a contiguous run of indices ends
        lo = 0
        for hi in [*breaks.tolist(), len(idx)]:
            self._run(key, k, idx[lo:hi], t[lo:hi], v[lo:hi], out)
            lo = hi
        k.last_t_us = max(k.last_t_us, int(t.max()))
        return out

    def _run(self, key: str, k: _Key, idx: np.ndarray, t: np.ndarray, v: np.ndarray, out: list[StreamWindow]) -> None:
        """Add a run of consecutive indices (after dropping its late/duplicate head)."""
        if k.last >= 0 and idx[0] <= k.last:
            stale = int(np.count_nonzero(idx <= k.last))
            dup = int(np.count_nonzero(idx == k.last))
            self.counts.duplicate += dup
            self.counts.late += stale - dup
            idx, t, v = idx[stale:], t[stale:], v[stale:]
            if not len(idx):
                return
        first = int(idx[0])
        if k.last < 0:
            k.start = first
        else:
            gap = first - k.last - 1
            if gap > self.spec.gap_limit:
                self.counts.restarts += 1
                k.start = first
            elif gap > 0:
                self.counts.padded += gap
                pad_idx = np.arange(k.last + 1, first, dtype=np.int64)
                self._write(key, k, k.last + 1, pad_idx * self.spec.period_us,
                            np.full((gap, v.shape[1]), np.nan, np.float32), out)
        self._write(key, k, first, t, v, out)

    def _write(self, key: str, k: _Key, a: int, t: np.ndarray, v: np.ndarray, out: list[StreamWindow]) -> None:
        """Write samples ``a`` .. ``a + len(t) - 1`` into the ring, cutting each window they complete."""
        w, hop = self.spec.window, self.spec.hop
        j, n = 0, len(t)
        while j < n:
            cur = a + j
            end = max(cur, k.start + w - 1)  # first index that can end a window
            if (r := (end - w + 1) % hop) != 0:
                end += hop - r
            stop = min(n, j + (end - cur) + 1)
            lo = max(j, stop - w)  # only the newest `window` rows survive in the ring
            pos = np.arange(a + lo, a + stop, dtype=np.int64) % w
            k.buf[pos] = v[lo:stop]
            k.times[pos] = t[lo:stop]
            k.last = a + stop - 1
            if k.last == end:
                out.append(self._cut(key, k, end))
            j = stop

    def _cut(self, key: str, k: _Key, end: int) -> StreamWindow:
        w = self.spec.window
        s = end - w + 1
        p = s % w
        x = np.concatenate([k.buf[p:], k.buf[:p]]) if p else k.buf.copy()
        times = np.concatenate([k.times[p:], k.times[:p]]) if p else k.times
        k.emitted = end
        self.counts.windows += 1
        missing = int(np.count_nonzero(np.isnan(x).any(axis=1)))
        return StreamWindow(key, s // self.spec.hop, s, x, int(times[0]), int(times[-1]), missing)

    def expire(self, now_us: int | None = None) -> list[str]:
        """Forget keys quiet for ``idle_s`` of event time before ``now_us`` (default: the newest timestamp
        seen); their partial windows are dropped and counted. Returns the keys forgotten."""
        now = self.watermark_us if now_us is None else now_us
        cutoff = now - int(self.spec.idle_s * 1e6)
        gone = [key for key, k in self._keys.items() if k.last_t_us < cutoff]
        for key in gone:
            self.drop(key)
        return gone

    def drop(self, key: str) -> int:
        """Forget ``key`` (its partial window dropped, counted); the samples dropped."""
        k = self._keys.pop(key, None)
        if k is None:
            return 0
        lost = max(0, k.last - max(k.emitted, k.start - 1))
        self.counts.partial_dropped += lost
        self.counts.keys_expired += 1
        return lost

    def close(self) -> int:
        """Forget every key (end of the stream); the samples of partial windows dropped."""
        return sum(self.drop(key) for key in list(self._keys))


def expected_windows(indices: np.ndarray, spec: WindowSpec) -> int:
    """How many windows the model of this module cuts from one key's sample ``indices`` arriving in order
    (late and duplicate ones ignored): runs joined over gaps of up to ``max_gap``, one window per
    hop-aligned start whose whole window lies in a run. The benchmark's and the tests' reference count."""
    idx = np.asarray(indices, dtype=np.int64)
    if not len(idx):
        return 0
    keep = idx > np.maximum.accumulate(np.concatenate([[idx[0] - 1], idx[:-1]]))
    idx = idx[keep]
    cut = np.flatnonzero(np.diff(idx) - 1 > spec.gap_limit) + 1
    total = 0
    for run in np.split(idx, cut):
        first, last = int(run[0]), int(run[-1])
        s0 = -(-first // spec.hop) * spec.hop
        if last - spec.window + 1 >= s0:
            total += (last - spec.window + 1 - s0) // spec.hop + 1
    return total
