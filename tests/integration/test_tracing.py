"""Trace context from producer to result: the ``traceparent`` field (byte-exact as documented), the
producer filling it from the current OpenTelemetry span, and the worker's batch spans recorded with
the SDK's in-memory exporter against a real Redis."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from producer.client import Producer
from protocol.entries import encode_window
from protocol.keys import Keys
from protocol.traceparent import LENGTH, TraceParent, format_traceparent, parse_traceparent
from tests.conftest import ROOT
from tests.helpers import make_loop, stream_entries
from worker.stages import Stages
from worker.tracing import TracedStages

trace = pytest.importorskip("opentelemetry.trace")
sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

EXAMPLE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _doc_examples() -> dict[str, bytes]:
    text = (ROOT / "docs" / "wire-format.md").read_text()
    blocks = dict(re.findall(r"<!-- example:(\w+) -->\s*```text\n(.*?)```", text, re.S))
    return {k: bytes.fromhex("".join(blocks[k].split())) for k in ("traceparent", "traceparent_resp")}


@pytest.mark.parametrize("raw, ok", [
    (EXAMPLE, True),
    (EXAMPLE.upper(), False),  # uppercase hex is invalid
    ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", False),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", False),
    ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", False),
    (EXAMPLE + "-extra", False),  # version 00 is exactly 55 bytes
    ("01" + EXAMPLE[2:] + "-future", True),  # a later version's extra fields are ignored
    ("01" + EXAMPLE[2:] + "x", False),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", False),
    ("", False),
])
def test_traceparent_parsing_follows_the_w3c_rules(raw: str, ok: bool) -> None:
    tp = parse_traceparent(raw)
    assert (tp is not None) is ok
    if ok:
        assert tp == TraceParent("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 1) and tp.sampled


def test_wire_doc_example_is_byte_exact() -> None:
    ex = _doc_examples()
    assert ex["traceparent"] == EXAMPLE.encode() and len(ex["traceparent"]) == LENGTH
    assert format_traceparent(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, 1) == ex["traceparent"]
    f = encode_window(np.array([0.5, -1.0, 2.0], np.float32), cid="sensor-7", ts_us=1764230400000000)
    args = [b"XADD", b"{bigru}:windows", b"*", b"v", f[b"v"], b"x", f[b"x"], b"ts", f[b"ts"], b"cid", f[b"cid"],
            b"traceparent", ex["traceparent"]]
    resp = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
    assert resp == ex["traceparent_resp"]


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """The process's SDK tracer provider (set once) exporting into memory."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, sdk_trace.TracerProvider):
        provider = sdk_trace.TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()


def test_producer_fills_traceparent_from_the_current_span(
        r: redis.Redis, prefix: str, spans: InMemorySpanExporter) -> None:
    keys = Keys(prefix, prefix)
    prod = Producer(r, keys)
    tracer = trace.get_tracer("test")
    prod.publish(np.zeros((5, 1), np.float32), "untraced")
    with tracer.start_as_current_span("send") as span:
        prod.publish(np.zeros((5, 1), np.float32), "traced")
        prod.publish_batch(np.zeros((2, 5, 1), np.float32), ["m0", "m1"])
        ctx = span.get_span_context()
    (_, plain), (_, single), (_, multi) = stream_entries(r, keys.shard(0).windows)
    assert b"traceparent" not in plain
    want = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}".encode()
    assert single[b"traceparent"] == want and multi[b"traceparent"] == want


def test_worker_records_a_consumer_span_per_batch_linked_to_each_window(
        redis_url: str, prefix: str, checkpoint_root: Path, spans: InMemorySpanExporter) -> None:
    r = redis.Redis.from_url(redis_url)
    keys = Keys(prefix, prefix)
    prod = Producer(r, keys)
    tracer = trace.get_tracer("test")
    contexts = []
    for i in range(3):
        with tracer.start_as_current_span(f"send-{i}") as span:
            prod.publish(np.full((20, 1), 0.1 * i, np.float32), f"t{i}")
            contexts.append(span.get_span_context())
    prod.publish(np.zeros((20, 1), np.float32), "plain")
    r.xadd(keys.shard(0).windows, {**encode_window(np.zeros((20, 1), np.float32), cid="bad"),
                                   b"traceparent": b"not-a-traceparent"})  # served, not traced
    spans.clear()
    loop = make_loop(redis_url, prefix, checkpoint_root, consumer="tr-0", tracing=True, tracing_exporter="global",
                     max_batch=64)
    assert isinstance(loop.stages, TracedStages)
    stats = loop.run()
    assert stats.results == 5
    done = spans.get_finished_spans()
    batches = [s for s in done if s.kind == trace.SpanKind.CONSUMER]
    assert len(batches) == stats.batches >= 1
    b = batches[0]
    assert b.name == f"process {keys.shard(0).windows}"
    counts = [dict(s.attributes or {}).get("messaging.batch.message_count") for s in batches]
    assert all(isinstance(n, int) for n in counts)
    assert sum(n for n in counts if isinstance(n, int)) == 5
    attrs = dict(b.attributes or {})
    assert attrs["messaging.operation.type"] == "process"
    assert attrs["messaging.destination.name"] == keys.shard(0).windows
    assert attrs["messaging.consumer.group.name"] == prefix
    linked = {(link.context.trace_id, link.context.span_id) for s in batches for link in s.links}
    assert linked == {(c.trace_id, c.span_id) for c in contexts}
    children = [s for s in done if s.parent is not None and s.parent.span_id in {x.context.span_id for x in batches}]
    assert {s.name for s in children} == {"decode", "predict", "publish"}
    for c in children:
        assert c.parent is not None
        parent = next(x for x in batches if x.context.span_id == c.parent.span_id)
        times = [parent.start_time, c.start_time, c.end_time, parent.end_time]
        assert None not in times and times == sorted(times)  # type: ignore[type-var]
    results = {f[b"cid"].decode(): f for _, f in stream_entries(r, keys.shard(0).results)}
    for i, c in enumerate(contexts):
        assert results[f"t{i}"][b"trace_id"] == f"{c.trace_id:032x}".encode()
    assert b"trace_id" not in results["plain"] and b"trace_id" not in results["bad"]


def test_tracing_off_uses_the_plain_stages_and_adds_nothing(
        redis_url: str, prefix: str, checkpoint_root: Path, spans: InMemorySpanExporter) -> None:
    r = redis.Redis.from_url(redis_url)
    keys = Keys(prefix, prefix)
    with trace.get_tracer("test").start_as_current_span("send"):
        Producer(r, keys).publish(np.zeros((20, 1), np.float32), "t")
    spans.clear()
    loop = make_loop(redis_url, prefix, checkpoint_root, consumer="off-0")
    assert type(loop.stages) is Stages
    loop.run()
    assert not [s for s in spans.get_finished_spans() if s.kind == trace.SpanKind.CONSUMER]
    ((_, f),) = stream_entries(r, keys.shard(0).results)
    assert b"trace_id" not in f
