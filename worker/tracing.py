"""OpenTelemetry spans of the serving loop (the optional ``tracing`` extra; off by default).

With ``tracing`` on, the decode and encode stages are :class:`TracedStages`: decode notes each
entry's ``traceparent`` (protocol.traceparent) and the stage's times on a :class:`BatchTrace`,
encode adds the input's trace id to each result (field ``trace_id``). Once the batch is published
the trace records, after the fact and with the times measured, one span per batch — kind
``CONSUMER``, named ``process <stream>`` with the messaging semantic conventions' attributes
(``messaging.system``, ``messaging.operation.type``/``.name``, ``messaging.destination.name``,
``messaging.consumer.group.name``, ``messaging.client.id``, ``messaging.batch.message_count``) and a
link to each traced entry's context (one per distinct context) — and its children ``decode``, ``predict`` and ``publish``.
Recording after the fact keeps spans off the compute thread and out of the loop's control flow.

With tracing off nothing here is imported by the loop's hot path: the plain :class:`Stages` run and
the loop's only cost is one ``batch.trace is None`` test per batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import cache
from typing import Any

from protocol.traceparent import trace_ids
from worker.config import WorkerSettings
from worker.stages import Stages
from worker.types import Batch, Entry, Output, Predictor

#: The instrumentation scope's name.
SCOPE = "bigru_stream.worker"


class TracingError(RuntimeError):
    """Tracing was asked for and cannot run (the OpenTelemetry packages are missing)."""


@cache
def provider(exporter: str) -> Any:
    """The tracer provider for ``tracing_exporter``: ``global`` (the process's, e.g. set up by
    ``opentelemetry-instrument``), or an SDK provider exporting with ``otlp`` (OTLP/HTTP, configured
    by the ``OTEL_EXPORTER_OTLP_*`` variables), ``console``, or ``none`` (spans made, never exported)."""
    try:
        from opentelemetry import trace
    except ImportError as e:
        raise TracingError("tracing needs the OpenTelemetry API (pip install 'bigru-stream[tracing]')") from e
    if exporter == "global":
        return trace.get_tracer_provider()
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError as e:
        raise TracingError(f"tracing_exporter {exporter!r} needs the OpenTelemetry SDK "
                           "(pip install 'bigru-stream[tracing]')") from e
    prov = TracerProvider()
    if exporter == "console":
        prov.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as e:
            raise TracingError("tracing_exporter 'otlp' needs opentelemetry-exporter-otlp-proto-http") from e
        prov.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return prov


class BatchTracer:
    """Makes the spans of one replica's batches (see the module docstring)."""

    def __init__(self, tracer_provider: Any, group: str, consumer: str) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import Link, SpanContext, SpanKind, TraceFlags

        self._trace, self._link, self._ctx, self._flags = trace, Link, SpanContext, TraceFlags
        self._kind = SpanKind.CONSUMER
        self.tracer = tracer_provider.get_tracer(SCOPE)
        self.group, self.consumer = group, consumer

    def begin(self, batch: Batch, t0_ns: int, t1_ns: int, stream: Callable[[Entry], str]) -> BatchTrace:
        """The record of a decoded batch (decode ran from ``t0_ns`` to ``t1_ns``): each entry's raw
        ``traceparent``, checked only when the spans are recorded."""
        parents = {e.id: raw for e in batch.entries if (raw := e.fields.get(b"traceparent")) is not None}
        return BatchTrace(self, parents, t0_ns, t1_ns, stream(batch.entries[0]) if batch.entries else "")

    def record(self, rec: BatchTrace, batch: Batch, end_ns: int) -> None:
        """The batch's span and its children, with the measured times. Entries that share a context (a
        producer publishing many windows in one span) share one link; invalid values are left out."""
        links = [self._link(self._ctx(ids[0], ids[1], True, self._flags(ids[2]))) for ids in rec.contexts().values()]
        attrs = {
            "messaging.system": "redis", "messaging.operation.type": "process", "messaging.operation.name": "process",
            "messaging.destination.name": rec.stream, "messaging.consumer.group.name": self.group,
            "messaging.client.id": self.consumer, "messaging.batch.message_count": len(batch.entries),
            "bigru.batch.windows": len(batch.xs), "bigru.model.version": batch.model.version,
        }
        span = self.tracer.start_span(f"process {rec.stream}", kind=self._kind, links=links, attributes=attrs,
                                      start_time=rec.decode[0])
        if not span.is_recording():  # sampled out: no children, nothing to end
            return
        ctx = self._trace.set_span_in_context(span)
        predict0 = batch.batch_us * 1000
        for name, start, end in (("decode", *rec.decode), ("predict", predict0, predict0 + int(batch.infer_s * 1e9)),
                                 ("publish", rec.publish0, end_ns)):
            if start:
                self.tracer.start_span(name, context=ctx, start_time=start).end(end_time=max(start, end))
        span.end(end_time=max(end_ns, rec.decode[0]))


class BatchTrace:
    """What tracing keeps about one batch between decode and publish."""

    def __init__(self, tracer: BatchTracer, parents: dict[str, bytes], t0_ns: int, t1_ns: int,
                 stream: str) -> None:
        self.tracer, self.parents, self.stream = tracer, parents, stream
        self.decode = (t0_ns, t1_ns)
        self.publish0 = 0
        self._contexts: dict[bytes, tuple[int, int, int]] | None = None

    def tag(self, outputs: list[Output], t0_ns: int) -> None:
        """Encoding began at ``t0_ns``: add each traced input's trace id to its result."""
        self.publish0 = t0_ns
        if not self.parents:
            return
        valid = self.contexts()
        for o in outputs:
            raw = self.parents.get(o.entry.id) if o.kind == "r" else None
            if raw is not None and raw in valid:
                o.fields += (b"trace_id", raw[3:35])

    def contexts(self) -> dict[bytes, tuple[int, int, int]]:
        """The distinct valid ``traceparent`` values of the batch and their ids (computed once)."""
        if self._contexts is None:
            self._contexts = {raw: ids for raw in set(self.parents.values()) if (ids := trace_ids(raw)) is not None}
        return self._contexts

    def end(self, batch: Batch) -> None:
        """The batch is published: record its spans."""
        self.tracer.record(self, batch, time.time_ns())


class TracedStages(Stages):
    """:class:`Stages` that time decode and encode for :class:`BatchTracer` (see the module docstring)."""

    def __init__(self, tracer: BatchTracer, stream: Callable[[Entry], str], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tracer, self.stream = tracer, stream

    def decode(self, entries: list[Entry], model: Predictor) -> Batch:
        """Decode, and begin the batch's trace record."""
        t0 = time.time_ns()
        batch = super().decode(entries, model)
        batch.trace = self.tracer.begin(batch, t0, time.time_ns(), self.stream)
        return batch

    def encode(self, batch: Batch) -> list[Output]:
        """Encode, adding trace ids to the results of traced inputs."""
        t0 = time.time_ns()
        out = super().encode(batch)
        if isinstance(batch.trace, BatchTrace):
            batch.trace.tag(out, t0)
        return out


class TraceEnd:
    """Records a published batch's spans (a listener of ``worker.events.Listeners``, added with ``tracing`` on)."""

    def on_published(self, batch: Batch) -> None:
        """End ``batch``'s trace, when it has one."""
        if batch.trace is not None:
            batch.trace.end(batch)


def traced_stages(settings: WorkerSettings, consumer: str, *args: Any) -> TracedStages:
    """:class:`TracedStages` for a replica (``args``: the rest of :class:`Stages`' arguments); raises
    :class:`TracingError` when the OpenTelemetry packages ``tracing_exporter`` needs are missing."""
    keys = settings.keys
    tracer = BatchTracer(provider(settings.tracing_exporter), keys.group, consumer)
    return TracedStages(tracer, lambda e: keys.shard(e.shard).windows, consumer, *args)
