"""The stream-window extension (``span`` / ``spans``): round trips, bad fields, the echo in results."""

from typing import Any

import msgpack
import numpy as np
import pytest

from protocol.entries import decode_entries, decode_multi, decode_window, encode_window, encode_windows_entry
from protocol.results import Result, WindowOutcome, decode_any_result, decode_result, encode_multi_result, encode_result
from protocol.span import Span
from protocol.wire import Limits, WireError

X = np.zeros((4, 2), dtype=np.float32)


def _result(span: Span | None = None) -> Result:
    return Result(input_id="1-0", cid="a", status="ok", label=1, class_name="b", probs=[0.2, 0.8], model="m1",
                  worker="w1", queue_us=1, wait_us=1, infer_us=10, e2e_us=2, ts_us=20, batch=1, span=span)


def test_single_window_span_round_trips_and_is_kept_verbatim() -> None:
    s = Span("dev-7", 3, 1_000, 2_000)
    f = encode_window(X, cid="a", ts_us=5, span=s)
    w = decode_window(f, Limits(), 2)
    assert w.span == f[b"span"] and Span.unpack(w.span, 256) == s
    res = encode_result(_result(span=Span.unpack(w.span, 256)))
    assert list(res)[-1] == b"span" and res[b"span"] == w.span and decode_result(res).span == s


def test_entries_without_span_are_byte_identical_to_before() -> None:
    assert b"span" not in encode_window(X, cid="a", ts_us=5)
    res = encode_result(_result())
    assert b"span" not in res and decode_result(res).span is None


def test_multi_window_spans_echo_per_window() -> None:
    spans = [Span("d", i, 10 * i, 10 * i + 9) for i in range(3)]
    f = encode_windows_entry(np.zeros((3, 4, 2), dtype=np.float32), spans=spans, ts_us=1)
    mw = decode_multi(f, Limits(), 2)
    fields = encode_multi_result("1-0", [WindowOutcome("ok", 0, "a", [1.0])] * 3, model="m", worker="w",
                                 queue_us=0, wait_us=0, infer_us=0, e2e_us=0, ts_us=0, batch=3, spans=mw.spans)
    assert [r.span for r in decode_any_result(fields)] == spans


@pytest.mark.parametrize("span", [
    b"\xc1",  # not msgpack
    msgpack.packb({"key": "d", "seq": 1, "t0": 1}),  # a key missing
    msgpack.packb({"key": "d", "seq": -1, "t0": 1, "t1": 2}),
    msgpack.packb({"key": "d", "seq": 1, "t0": 3, "t1": 2}),
    msgpack.packb({"key": 5, "seq": 1, "t0": 1, "t1": 2}),
    msgpack.packb({"key": "x" * 300, "seq": 1, "t0": 1, "t1": 2}),
    msgpack.packb({"key": "d", "seq": 1.5, "t0": 1, "t1": 2}),
    b"\x91" * 10_000,  # deep nesting, far over the size bound
])
def test_bad_span_is_a_wire_error_naming_span(span: bytes) -> None:
    f = encode_window(X, ts_us=1)
    f[b"span"] = span
    out: list[Any] = decode_entries([f], Limits(), 2)
    assert isinstance(out[0], WireError) and out[0].reason == "bad_span"


def test_spans_of_the_wrong_count_are_bad_span() -> None:
    f = encode_windows_entry(np.zeros((2, 4, 2), dtype=np.float32), ts_us=1)
    f[b"spans"] = msgpack.packb([Span("d", 0, 0, 1).as_map()])
    with pytest.raises(WireError, match="spans") as e:
        decode_multi(f, Limits(), 2)
    assert e.value.reason == "bad_span"
    with pytest.raises(WireError):
        encode_windows_entry(np.zeros((2, 4, 2), dtype=np.float32), spans=[Span("d", 0, 0, 1)])
