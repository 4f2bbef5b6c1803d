"""The producer's side of trace context: the current OpenTelemetry span as a ``traceparent`` field.

When the OpenTelemetry API is installed (the ``tracing`` extra) and a span is current where a window
is published, the entry carries that span's context (docs/wire-format.md, "Trace context"). Without
the API, or without a current span, nothing is added and the cost is one function call.
"""

from __future__ import annotations

from collections.abc import Callable

from protocol.traceparent import format_traceparent


def _none() -> bytes | None:
    return None


def _otel() -> Callable[[], bytes | None]:
    try:
        from opentelemetry import trace
    except ImportError:
        return _none

    def current() -> bytes | None:
        ctx = trace.get_current_span().get_span_context()
        if not ctx.is_valid:
            return None
        return format_traceparent(ctx.trace_id, ctx.span_id, int(ctx.trace_flags))

    return current


#: The ``traceparent`` of the current span, or None (chosen once, when this module is imported).
current_traceparent: Callable[[], bytes | None] = _otel()
