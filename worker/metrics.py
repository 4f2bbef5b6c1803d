"""Prometheus metrics of one worker replica.

One endpoint per replica: replica ``i`` serves ``/metrics`` on ``metrics_port + i`` from its own
registry (no shared multiprocess directory, so a replica killed with -9 simply disappears as a
target instead of leaving stale files behind, and the per-replica gauges stay exact). Every series
carries a ``worker`` label (the consumer name). Histograms use the same fixed buckets everywhere,
so they can be summed across replicas and hosts::

    histogram_quantile(0.99, sum by (le) (rate(bigru_e2e_seconds_bucket[1m])))

Stream-level gauges (``bigru_group_lag``, ``bigru_group_pending``, ``bigru_stream_length``) are
read from Redis at scrape time; every replica reports the same values, so aggregate them with
``max by (shard)``, never ``sum``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import redis
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from protocol.keys import Keys
from protocol.replies import group_info
from protocol.results import timing
from worker.breaker import STATES
from worker.counters import Observer
from worker.drift_report import DriftReport
from worker.types import Batch

#: Latency buckets in seconds (0.5 ms .. 30 s), shared by every latency histogram.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
#: Batch-size buckets in windows.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384, 65536)


class MetricsPortError(RuntimeError):
    """The metrics endpoint could not bind its port."""


class DriftGauges:
    """The Prometheus gauges of a replica's drift reports (labels: ``worker``, and ``feature`` index)."""

    def __init__(self, registry: CollectorRegistry, worker: str) -> None:
        self.worker = worker
        w = ["worker"]
        self.known = Gauge("bigru_drift_known", "1 when the served checkpoint carries drift statistics, 0 when "
                           "drift is unknown", w, registry=registry).labels(worker)
        self.windows = Gauge("bigru_drift_sample_windows", "Sampled windows in the rolling drift sample", w,
                             registry=registry).labels(worker)
        self._feature = Gauge("bigru_drift_feature_psi", "Population stability index of one input feature against "
                              "the training split (0.1 watch, 0.25 act)", ["worker", "feature"], registry=registry)
        self.prediction = Gauge("bigru_drift_prediction_psi", "PSI of the predicted-class distribution against the "
                                "model's predictions on its validation split", w, registry=registry).labels(worker)
        self.top_prob = Gauge("bigru_drift_top_prob_mean", "Mean top class probability of the sampled windows", w,
                              registry=registry).labels(worker)
        self.ref_top_prob = Gauge("bigru_drift_reference_top_prob", "Mean top class probability on the validation "
                                  "split (the checkpoint's)", w, registry=registry).labels(worker)
        self._features = 0

    def set(self, report: DriftReport) -> None:
        """Show ``report`` (an unknown or not yet full one clears the PSI series)."""
        self.known.set(1 if report.known else 0)
        self.windows.set(report.windows)
        psi = report.feature_psi
        for f in range(len(psi), self._features):
            self._feature.remove(self.worker, str(f))
        for f, v in enumerate(psi):
            self._feature.labels(self.worker, str(f)).set(v)
        self._features = len(psi)
        for gauge, value in ((self.prediction, report.prediction_psi), (self.top_prob, report.top_prob_mean),
                             (self.ref_top_prob, report.reference_top_prob)):
            gauge.set(float("nan") if value is None else value)


class WorkerMetrics(Observer):
    """The :class:`~worker.counters.Observer` feeding Prometheus histograms, counters and gauges (drift's
    among them, :class:`DriftGauges`); every event reaches it through ``worker.counters.Counters``."""

    def __init__(self, worker: str, registry: CollectorRegistry | None = None) -> None:
        self.worker = worker
        self.registry = registry or CollectorRegistry()
        reg, w = self.registry, ["worker"]

        def hist(name: str, doc: str, buckets: tuple[float, ...]) -> Any:
            return Histogram(name, doc, w, buckets=buckets, registry=reg).labels(worker)

        def count(name: str, doc: str) -> Any:
            return Counter(name, doc, w, registry=reg).labels(worker)

        self.e2e = hist("bigru_e2e_seconds", "Producer timestamp to result published, per window", LATENCY_BUCKETS)
        self.queue = hist("bigru_queue_seconds", "Producer timestamp to read by a worker, per window", LATENCY_BUCKETS)
        self.wait = hist("bigru_batch_wait_seconds", "Read to batch start (waiting for the batch to fill)", LATENCY_BUCKETS)
        self.infer = hist("bigru_inference_seconds", "Forward pass of one batch", LATENCY_BUCKETS)
        self.batch_size = hist("bigru_batch_size", "Windows per forward pass", BATCH_BUCKETS)
        self.served = count("bigru_windows_served", "Windows classified and published")
        self.expired = count("bigru_windows_expired", "Windows whose deadline passed before batching")
        self.reclaimed_total = count("bigru_windows_reclaimed", "Entries claimed from other (dead or stuck) consumers")
        self.duplicates_total = count("bigru_duplicates_suppressed", "Outputs not published: input acknowledged elsewhere")
        self.batches = count("bigru_batches", "Batches processed")
        self.replica_ack_short_total = count(
            "bigru_replica_ack_short", "Publishes whose WAIT got fewer replica acknowledgements than wait_replicas")
        self._dead = Counter("bigru_dead_letters", "Entries dead-lettered, by reason", ["worker", "reason"], registry=reg)
        self._reloads = Counter("bigru_model_reloads", "Model reloads, by outcome", ["worker", "outcome"], registry=reg)
        for outcome in ("accepted", "refused"):
            self._reloads.labels(worker, outcome)
        self._model = Gauge("bigru_model_info", "1 for the model version this replica serves", ["worker", "version"],
                            registry=reg)
        self.ready_gauge = Gauge("bigru_ready", "1 once the model is loaded and warmed up", w, registry=reg).labels(worker)
        self.last_batch = Gauge("bigru_last_batch_timestamp_seconds", "Unix time of the last batch", w,
                                registry=reg).labels(worker)
        self.breaker_state = Gauge("bigru_breaker_state", "Model breaker: 0 closed, 1 open (taking no work), "
                                   "2 probing (half-open)", w, registry=reg).labels(worker)
        self.breaker_trips = count("bigru_breaker_trips", "Times the breaker opened (the model failed systemically)")
        self._trips = 0
        self._version: str | None = None
        self.drift_gauges = DriftGauges(reg, worker)

    # -- Observer hooks -------------------------------------------------------------------------

    def batch(self, batch: Batch) -> None:
        """Record one published batch."""
        self.batches.inc()
        self.last_batch.set(time.time())
        if batch.expired:
            self.expired.inc(batch.expired)
        if not batch.served:
            return
        self.served.inc(batch.served)
        self.infer.observe(batch.infer_s)
        self.batch_size.observe(batch.pass_windows)
        pub, start = batch.pub_us, batch.batch_us
        stamps = [(e, w.ts_us, 1) for e, w in batch.items] + [(g.entry, g.mw.ts_us, len(g.good)) for g in batch.groups]
        for e, ts, windows in stamps:  # a multi-window entry's windows share their timings
            t = timing(ts, e.read_us, start, pub, 0, 0)
            for _ in range(windows):
                self.e2e.observe(t.e2e_us / 1e6)
                self.queue.observe(t.queue_us / 1e6)
                self.wait.observe(t.wait_us / 1e6)
        if batch.model.version != self._version:
            self.model_version(batch.model.version)

    def dead(self, reason: str) -> None:
        """Count one dead-lettered entry."""
        self._dead.labels(self.worker, reason).inc()

    def reclaimed(self, n: int) -> None:
        """Count entries claimed from other consumers."""
        self.reclaimed_total.inc(n)

    def duplicates(self, n: int) -> None:
        """Count outputs suppressed because their input was acknowledged elsewhere."""
        self.duplicates_total.inc(n)

    def replica_ack_short(self) -> None:
        """Count a publish whose ``WAIT`` fell short of ``wait_replicas``."""
        self.replica_ack_short_total.inc()

    def model_version(self, version: str) -> None:
        """Mark ``version`` as the served model (and the replica as ready)."""
        if version != self._version:
            if self._version is not None:
                self._model.remove(self.worker, self._version)
            self._model.labels(self.worker, version).set(1)
            self._version = version
        self.ready_gauge.set(1)

    def breaker(self, state: str, trips: int) -> None:
        """The breaker's state and trip count."""
        self.breaker_state.set(STATES.index(state))
        if trips > self._trips:
            self.breaker_trips.inc(trips - self._trips)
            self._trips = trips

    def drift(self, report: DriftReport) -> None:
        """Show a drift reading."""
        self.drift_gauges.set(report)

    def reload(self, accepted: bool, version: str) -> None:
        """Count a reload attempt; an accepted one also switches the served version."""
        self._reloads.labels(self.worker, "accepted" if accepted else "refused").inc()
        if accepted:
            self.model_version(version)


class StreamCollector(Collector):
    """Scrape-time gauges of the shard streams: length, consumer-group lag and pending entries."""

    def __init__(self, r: redis.Redis, keys: Keys) -> None:
        self.r = r
        self.keys = keys
        self.log = structlog.get_logger("metrics")

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Query every shard; a shard Redis cannot answer for is left out of this scrape."""
        length = GaugeMetricFamily("bigru_stream_length", "Entries in the shard's input stream", labels=["shard"])
        lag = GaugeMetricFamily("bigru_group_lag", "Entries not yet delivered to the consumer group", labels=["shard"])
        pending = GaugeMetricFamily("bigru_group_pending", "Entries delivered but not acknowledged", labels=["shard"])
        up = GaugeMetricFamily("bigru_redis_up", "1 when Redis answered this scrape's stream queries")
        ok = 1
        for sk in self.keys.all_shards():
            label = [str(sk.shard)]
            try:
                n = self.r.xlen(sk.windows)
                g = group_info(self.r, sk.windows, self.keys.group)
            except redis.RedisError as err:
                ok = 0
                self.log.warning("metrics_stream_query_failed", shard=sk.shard, error=str(err))
                continue
            length.add_metric(label, n)
            if g is None:
                continue
            if g.get("lag") is not None:  # None when Redis cannot tell (entries deleted mid-stream)
                lag.add_metric(label, g["lag"])
            pending.add_metric(label, g["pending"])
        up.add_metric([], ok)
        yield from (length, lag, pending, up)


def start_metrics(
    port: int | None, addr: str, replica: int, worker: str, stream_client: redis.Redis | None, keys: Keys
) -> Observer:
    """A :class:`WorkerMetrics` served on ``port + replica``; a no-op :class:`Observer` when ``port`` is off.

    The scrape-time stream gauges use ``stream_client`` (None leaves them out), a client of its own
    so scrapes never share a connection with the serving loop.
    """
    if not port:
        return Observer()
    metrics = WorkerMetrics(worker)
    if stream_client is not None:
        metrics.registry.register(StreamCollector(stream_client, keys))
    try:
        start_http_server(port + replica, addr=addr, registry=metrics.registry)
    except OSError as e:
        raise MetricsPortError(f"metrics_port: cannot listen on {addr}:{port + replica} ({e})") from e
    structlog.get_logger("metrics").info("metrics_listening", addr=addr, port=port + replica, worker=worker)
    return metrics
