"""Drift monitoring of what a replica serves, against the training statistics in its checkpoint
(:attr:`worker.types.Predictor.drift_reference`). What a reading says and how it is shown:
``worker.drift_report``; its Prometheus gauges: ``worker.metrics``.

One in ``sample_every`` windows that go through the model (counted across batches, taken in chunks
of up to :data:`SAMPLE_CHUNK` windows of one batch, spread over it) is binned per feature with the checkpoint's quantile edges (:class:`training.model.drift_ref.DriftReference`), together
with its predicted class and top probability. The last ``window`` sampled windows form the rolling
sample; every ``report_every`` sampled windows the monitor computes a :class:`DriftReport`: the PSI
of each feature against the training shares, the PSI of the predicted-class distribution against
the model's own predictions on its validation split, and the mean top probability.

It runs on the loop thread after a batch is published (while the next batch computes), and costs
one vectorised comparison per sampled batch. A checkpoint without statistics reports drift as
unknown. The conventional PSI reading: below 0.1 stable, 0.1 to 0.25 watch, above 0.25 act.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from training.model.drift_ref import BINS, EPS, DriftReference
from worker.config import Lifecycle
from worker.drift_report import PSI_ACT, PSI_WATCH, DriftReport, DriftSummary
from worker.types import Batch, Predictor

__all__ = ["PSI_ACT", "PSI_WATCH", "DriftMonitor", "DriftReport", "DriftSummary"]

#: A report needs at least this many sampled values per feature (or a full window): fewer are noise.
MIN_VALUES = 1000
#: The sample takes its windows in chunks of up to this many from one batch (one in ``sample_every``
#: windows overall): on a busy replica one batch in several pays the sampling, not every batch.
SAMPLE_CHUNK = 64
#: At most this many comparisons per sampled batch (timesteps x features x edges): long, wide windows
#: are thinned to every k-th timestep, so a batch of 10 000 x 1024 windows costs no more memory than this.
MAX_COMPARISONS = 4_000_000


@dataclass
class _Chunk:
    windows: int
    counts: np.ndarray  # [F, BINS]
    preds: np.ndarray  # [C]
    top_sum: float


class _Sample:
    """The rolling sample against one model version's statistics."""

    def __init__(self, ref: DriftReference) -> None:
        self.ref = ref
        f = ref.n_features
        self.edges = np.full((f, BINS - 1), np.inf)  # padded: a value is never >= inf
        self.expected = np.zeros((f, BINS))
        for i, (e, sh) in enumerate(zip(ref.edges, ref.shares)):
            self.edges[i, : len(e)] = e
            self.expected[i, : len(sh)] = sh
        self.offsets = (np.arange(f) * BINS)[None, :]
        self.total = _Chunk(0, np.zeros((f, BINS)), np.zeros(len(ref.pred_shares)), 0.0)
        self.chunks: deque[_Chunk] = deque()


class DriftMonitor:
    """The rolling sample of one replica and its reports (see the module docstring)."""

    def __init__(self, sample_every: int, window: int, on_report: Callable[[DriftReport], None],
                 report_every: int = 64) -> None:
        self.sample_every = sample_every
        self.window = window
        self.report_every = report_every
        self.on_report = on_report
        self.report: DriftReport | None = None
        self._owed = 0.0  # windows the sample is owed (one per sample_every served)
        self._version: str | None = None
        self._sample: _Sample | None = None
        self._since_report = 0

    @classmethod
    def from_settings(cls, settings: Lifecycle, on_report: Callable[[DriftReport], None]) -> DriftMonitor:
        """The monitor the :class:`~worker.config.Lifecycle` settings ask for (``drift_sample_every`` 0: off)."""
        return cls(settings.drift_sample_every, settings.drift_window, on_report)

    @property
    def enabled(self) -> bool:
        """False when sampling is off (``sample_every`` 0)."""
        return self.sample_every > 0

    def summary(self) -> DriftSummary | None:
        """What the heartbeat carries, once a report exists."""
        rep = self.report
        return None if rep is None else rep.summary()

    def _switch(self, model: Predictor) -> None:
        """A new model version: start a new sample against its statistics."""
        ref = model.drift_reference
        self._version, self._sample = model.version, None if ref is None else _Sample(ref)
        self._since_report = 0
        if ref is None:
            self._publish(DriftReport(model.version, known=False))

    def on_published(self, batch: Batch) -> None:
        """Sample the windows of a published batch (a listener of ``worker.events.Listeners``)."""
        n = len(batch.xs)
        if not self.enabled or not n or batch.probs is None:
            return
        if batch.model.version != self._version:  # a new model: unknown drift shows at once
            self._switch(batch.model)
        if self._sample is None:
            return
        self._owed += n / self.sample_every
        if self._owed < min(n, SAMPLE_CHUNK):
            return
        m = min(n, int(self._owed))
        self._owed -= m
        idx = list(range(0, n, n // m))[:m]
        if batch.failed:
            idx = [i for i in idx if i not in batch.failed]
        if idx:
            self._add(self._sample, batch, idx)

    def _add(self, sample: _Sample, batch: Batch, idx: list[int]) -> None:
        edges = sample.edges
        x = np.concatenate([batch.xs[i] for i in idx]).astype(np.float64, copy=False)  # [sum T, F]
        if x.shape[1] != edges.shape[0]:
            return
        x = x[:: max(1, -(-x.size * edges.shape[1] // MAX_COMPARISONS))]
        bins = (x[:, :, None] >= edges[None, :, :]).sum(axis=2)  # = searchsorted(edges, v, 'right')
        flat = (bins + sample.offsets)[~np.isnan(x)]
        counts = np.bincount(flat, minlength=edges.shape[0] * BINS).reshape(-1, BINS).astype(np.float64)
        assert batch.probs is not None
        probs = batch.probs[idx]
        c = sample.total.preds.size
        preds = np.bincount(probs.argmax(axis=1), minlength=c)[:c].astype(np.float64)
        self._push(sample, _Chunk(len(idx), counts, preds, float(probs.max(axis=1).sum())))
        self._since_report += len(idx)
        if self._since_report >= self.report_every:
            self._since_report = 0
            self._publish(self._compute(sample))

    def _push(self, sample: _Sample, chunk: _Chunk) -> None:
        s, chunks = sample.total, sample.chunks
        chunks.append(chunk)
        s.windows += chunk.windows
        s.counts += chunk.counts
        s.preds += chunk.preds
        s.top_sum += chunk.top_sum
        while s.windows - chunks[0].windows >= self.window:
            old = chunks.popleft()
            s.windows -= old.windows
            s.counts -= old.counts
            s.preds -= old.preds
            s.top_sum -= old.top_sum

    def _compute(self, sample: _Sample) -> DriftReport:
        ref, s = sample.ref, sample.total
        assert self._version is not None
        totals = s.counts.sum(axis=1, keepdims=True)
        if s.windows < self.window and totals.min() < MIN_VALUES:
            return DriftReport(self._version, True, s.windows, reference_top_prob=ref.top_prob_mean)
        actual = np.maximum(s.counts / np.maximum(totals, 1), EPS)
        expected = np.maximum(sample.expected, EPS)
        feature_psi = np.sum((actual - expected) * np.log(actual / expected), axis=1)
        pred_actual = np.maximum(s.preds / max(s.preds.sum(), 1), EPS)
        pred_expected = np.maximum(ref.pred_shares, EPS)
        pred_psi = float(np.sum((pred_actual - pred_expected) * np.log(pred_actual / pred_expected)))
        return DriftReport(self._version, True, s.windows, [float(v) for v in feature_psi], pred_psi,
                           s.top_sum / max(s.windows, 1), ref.top_prob_mean)

    def _publish(self, report: DriftReport) -> None:
        self.report = report
        self.on_report(report)
