"""Multi-window entries (protocol/entries.py, protocol/results.py): codec, errors, results, dead letters, the doc's hex."""

import re
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from protocol.entries import (
    MultiWindow,
    Window,
    decode_entries,
    decode_multi,
    decode_window,
    decode_windows,
    encode_window,
    encode_windows_entry,
    is_multi,
)
from protocol.results import (
    Result,
    WindowOutcome,
    WindowResult,
    decode_any_result,
    decode_multi_result,
    decode_result,
    encode_dead_windows,
    encode_multi_result,
    encode_result,
    entry_status,
)
from protocol.wire import Limits, WireError, x_ndim

ROOT = Path(__file__).resolve().parents[2]
F32 = np.float32


def _x(shape: list[Any], data: bytes, dtype: str = "float32") -> bytes:
    packed: bytes = msgpack.packb({"dtype": dtype, "shape": shape, "data": data})
    return packed


def _entry(**over: bytes) -> dict[bytes, bytes]:
    f = encode_windows_entry(np.zeros((2, 3, 1), F32), cids=["a", "b"], ts_us=1)
    f.update({k.encode(): v for k, v in over.items()})
    return f


def test_round_trip_preserves_windows_and_shared_fields() -> None:
    xs = np.random.default_rng(0).standard_normal((4, 7, 3)).astype(F32)
    f = encode_windows_entry(xs, cids=["a", None, "c", "d"], cid="E", ts_us=123, deadline_us=456, meta={"k": "v", "n": 2})
    assert list(f) == [b"v", b"x", b"ts", b"cid", b"dl", b"meta", b"cids"]
    m = decode_multi(f, Limits(), n_features=3)
    assert m.x.dtype == F32 and np.array_equal(m.x, xs)
    assert (m.n, m.cid, m.cids, m.ts_us, m.deadline_us, m.meta, m.bad) == (4, "E", ["a", "", "c", "d"], 123, 456, {"k": "v", "n": 2}, {})
    assert m.good == [0, 1, 2, 3]


def test_float64_and_2d_input_become_float32_with_one_feature() -> None:
    xs = np.arange(6, dtype=np.float64).reshape(2, 3)
    f = encode_windows_entry(xs, ts_us=1)
    assert msgpack.unpackb(f[b"x"])["dtype"] == "float64" and b"cids" not in f and b"cid" not in f
    m = decode_multi(f, Limits())
    assert m.x.shape == (2, 3, 1) and m.x.dtype == F32 and np.array_equal(m.x[:, :, 0], xs) and m.cids is None


def test_form_is_told_by_shape_length_for_any_key_order_and_header_width() -> None:
    data = np.zeros(6, F32).tobytes()
    reordered = msgpack.packb({"data": data, "shape": [2, 3, 1], "dtype": "float32"})
    wide_keys = b"\xde\x00\x03" + b"".join(  # map16 with str8 keys and an array16 shape
        b"\xd9" + bytes([len(k)]) + k + v
        for k, v in [(b"dtype", msgpack.packb("float32")), (b"shape", b"\xdc\x00\x03\x02\x03\x01"), (b"data", msgpack.packb(data))]
    )
    for raw in (reordered, wide_keys):
        assert x_ndim(raw) == 3
        m = decode_multi({b"v": b"1", b"x": raw, b"ts": b"1"}, Limits(), 1)
        assert m.x.shape == (2, 3, 1)
    assert x_ndim(encode_window(np.zeros((3, 1)), ts_us=1)[b"x"]) == 2
    for junk in (b"", b"\xc1", b"\x83\xa5dtype", b"\x81\x01\x02", b"\x91\x93"):
        assert x_ndim(junk) is None
    assert not is_multi({b"v": b"1"}) and is_multi(_entry())


def test_single_window_entries_keep_rejecting_a_3d_x_and_vice_versa() -> None:
    multi = _entry()
    with pytest.raises(WireError, match=r"bad_shape: shape must be \[T, F\] integers, got \[2, 3, 1\]"):
        decode_window(multi, Limits(), 1)
    single = encode_window(np.zeros((3, 1), F32), ts_us=1)
    with pytest.raises(WireError, match=r"bad_shape: shape must be \[N, T, F\] integers, got \[3, 1\]"):
        decode_multi(single, Limits(), 1)


def _cids(obj: object) -> bytes:
    packed: bytes = msgpack.packb(obj)
    return packed


@pytest.mark.parametrize(
    ("over", "limits", "reason"),
    [
        ({"v": b"2"}, Limits(), "bad_version"),
        ({"x": b"\xc1"}, Limits(), "bad_x"),
        ({"x": _x([2, 3, 1], b"\x00" * 24) + b"\x00"}, Limits(), "bad_x"),
        ({"x": msgpack.packb({"dtype": "float32", "shape": [2, 3, 1]})}, Limits(), "bad_x"),
        ({"x": _x([2, 3, 1], b"\x00" * 6, "int8")}, Limits(), "bad_dtype"),
        ({"x": _x([2, 3, 1, 1], b"\x00" * 24)}, Limits(), "bad_shape"),
        ({"x": _x([2, 3.0, 1], b"\x00" * 24)}, Limits(), "bad_shape"),
        ({"x": _x([0, 3, 1], b"")}, Limits(), "empty"),
        ({"x": _x([2, 0, 1], b"")}, Limits(), "empty"),
        ({"x": _x([3, 3, 1], b"\x00" * 36)}, Limits(max_windows_per_entry=2), "too_many_windows"),
        ({"x": _x([2, 3, 1], b"\x00" * 24)}, Limits(max_length=2), "too_long"),
        ({"x": _x([2, 300, 1], b"\x00" * 2400)}, Limits(max_window_bytes=1000), "too_large"),
        ({"x": _x([2, 3, 2], b"\x00" * 48)}, Limits(), "bad_features"),
        ({"x": _x([2, 3, 1], b"\x00" * 20)}, Limits(), "bad_size"),
        ({"ts": b"soon"}, Limits(), "bad_field"),
        ({"dl": b"-"}, Limits(), "bad_field"),
        ({"cid": b"\xff"}, Limits(), "bad_cid"),
        ({"meta": msgpack.packb([1])}, Limits(), "bad_meta"),
        ({"cids": b"\xc1"}, Limits(), "bad_cids"),
        ({"cids": _cids(["a", "b"]) + b"\x00"}, Limits(), "bad_cids"),
        ({"cids": _cids({"a": "b"})}, Limits(), "bad_cids"),
        ({"cids": _cids(["a"])}, Limits(), "bad_cids"),
        ({"cids": _cids(["a", "b", "c"])}, Limits(), "bad_cids"),
        ({"cids": _cids(["a", 1])}, Limits(), "bad_cids"),
        ({"cids": _cids(["a", None])}, Limits(), "bad_cids"),
        ({"cids": msgpack.packb(["a", b"b"], use_bin_type=True)}, Limits(), "bad_cids"),
        ({"cids": _cids(["a", "x" * 9])}, Limits(max_cid_bytes=8), "bad_cids"),
        ({"cids": _cids(["a", "é" * 5])}, Limits(max_cid_bytes=8), "bad_cids"),  # 10 UTF-8 bytes
        ({"cids": b"\x92\xa1a\xa1\xff"}, Limits(), "bad_cids"),  # not UTF-8
    ],
)
def test_entry_level_errors_raise_with_their_reason(over: dict[str, bytes], limits: Limits, reason: str) -> None:
    with pytest.raises(WireError) as ei:
        decode_multi(_entry(**over), limits, n_features=1)
    assert ei.value.reason == reason
    got = decode_entries([_entry(**over)], limits, 1)[0]  # the same reason whichever form the entry looks like
    assert isinstance(got, WireError) and got.reason == reason


def test_missing_x_and_missing_ts() -> None:
    f = _entry()
    for key in (b"x", b"ts"):
        with pytest.raises(WireError) as ei:
            decode_multi({k: v for k, v in f.items() if k != key}, Limits(), 1)
        assert ei.value.reason == "missing_field"


def test_cids_at_the_limit_are_accepted() -> None:
    m = decode_multi(_entry(cids=_cids(["x" * 8, "é" * 4])), Limits(max_cid_bytes=8), 1)
    assert m.cids == ["x" * 8, "é" * 4]


def test_nonfinite_windows_are_listed_not_fatal() -> None:
    xs = np.ones((5, 4, 2), F32)
    xs[1, 2, 0] = np.nan
    xs[3, 0, 1] = -np.inf
    m = decode_multi(encode_windows_entry(xs, ts_us=1), Limits(), 2)
    assert m.bad == {1: "nonfinite", 3: "nonfinite"} and m.good == [0, 2, 4]
    assert np.array_equal(m.x[m.good], xs[[0, 2, 4]])
    f16 = encode_windows_entry(np.array([[[1.0]], [[np.inf]]], np.float16), ts_us=1)
    assert decode_multi(f16, Limits(), 1).bad == {1: "nonfinite"}
    assert decode_multi(encode_windows_entry(xs, ts_us=1), Limits(allow_nonfinite=True), 2).bad == {}


def test_decode_entries_mixes_forms_in_order_and_singles_decode_as_before() -> None:
    single = encode_window(np.full((3, 1), 7, F32), cid="s", ts_us=1)
    nan_single = encode_window(np.full((3, 1), np.nan, F32), ts_us=1)
    entries = [single, _entry(), {b"v": b"1"}, _entry(v=b"9"), nan_single, single]
    got = decode_entries(entries, Limits(), 1)
    assert [type(g).__name__ for g in got] == ["Window", "MultiWindow", "WireError", "WireError", "WireError", "Window"]
    assert isinstance(got[1], MultiWindow) and got[1].cids == ["a", "b"]
    assert [g.reason for g in got if isinstance(g, WireError)] == ["missing_field", "bad_version", "nonfinite"]
    singles = decode_windows([single, nan_single], Limits(), 1)
    assert isinstance(got[0], Window) and isinstance(singles[0], Window) and np.array_equal(got[0].x, singles[0].x)
    plain = decode_entries([single, single], Limits(), 1)
    assert all(isinstance(g, Window) and g.cid == "s" for g in plain)


def test_encoder_refuses_what_the_decoder_would() -> None:
    with pytest.raises(WireError, match="bad_cids"):
        encode_windows_entry(np.zeros((2, 3, 1)), cids=["a"])
    with pytest.raises(WireError, match="empty"):
        encode_windows_entry(np.zeros((0, 3, 1)))
    with pytest.raises(WireError, match="bad_shape"):
        encode_windows_entry(np.zeros((2, 3, 1, 1)))


_SHARED: dict[str, Any] = {"model": "v1", "worker": "w-0", "queue_us": 1, "wait_us": 2, "infer_us": 3, "e2e_us": 4, "ts_us": 5, "batch": 6}


def test_result_round_trip_one_result_per_window() -> None:
    rows = [WindowOutcome("ok", 1, "b", [0.25, 0.75]), WindowOutcome("dead", 1, "b", [0.5], reason="nonfinite"),
            WindowOutcome("ok", np.int64(0), "a", np.array([0.9, 0.1]))]  # type: ignore[arg-type]
    f = encode_multi_result("7-0", rows, cid="E", cids=["x", "", "z"], meta={"k": 1}, **_SHARED)
    assert f == encode_multi_result("7-0", rows, cid="E", cids=["x", "", "z"], meta={"k": 1}, **_SHARED)
    assert list(f) == [b"v", b"in", b"cid", b"n", b"status", b"cids", b"statuses", b"reasons", b"labels", b"classes",
                       b"probs", b"model", b"worker", b"queue_us", b"wait_us", b"infer_us", b"e2e_us", b"ts", b"batch", b"meta"]
    assert (f[b"n"], f[b"status"]) == (b"3", b"partial")
    got = decode_multi_result(f)
    assert all(isinstance(g, WindowResult) for g in got)
    assert [(g.input_id, g.cid, g.status, g.label, g.class_name, g.probs) for g in got] == [
        ("7-0", "x", "ok", 1, "b", [0.25, 0.75]), ("7-0", "E", "dead", -1, "", []), ("7-0", "z", "ok", 0, "a", [0.9, 0.1])]
    assert [(g.index, g.reason) for g in got] == [(0, ""), (1, "nonfinite"), (2, "")]  # type: ignore[attr-defined]
    assert all((g.model, g.batch, g.ts_us, g.meta) == ("v1", 6, 5, {"k": 1}) for g in got)
    assert decode_any_result(f) == got


def test_result_without_cids_or_dead_windows_and_entry_status() -> None:
    f = encode_multi_result("8-0", [WindowOutcome("expired")] * 2, cid="E", **_SHARED)
    assert b"cids" not in f and b"reasons" not in f and f[b"status"] == b"expired"
    assert [(g.cid, g.status, g.label) for g in decode_multi_result(f)] == [("E", "expired", -1)] * 2
    assert entry_status(["ok", "ok"]) == "ok"
    assert entry_status(["ok", "dead"]) == "partial" and entry_status(["dead", "dead"]) == "partial"
    assert entry_status(["dead", "expired"]) == "partial" and entry_status(["expired"]) == "expired"


@pytest.mark.parametrize(
    ("rows", "cids"),
    [([], None), ([WindowOutcome("fine")], None), ([WindowOutcome("dead")], None), ([WindowOutcome("ok", 0)], ["a", "b"])],
)
def test_result_encoder_refuses_inconsistent_rows(rows: list[WindowOutcome], cids: list[str] | None) -> None:
    with pytest.raises(ValueError):
        encode_multi_result("1-0", rows, cids=cids, **_SHARED)


def test_decode_any_result_of_a_single_result_and_malformed_multi() -> None:
    r = Result("1-0", "c", "ok", 1, "b", [0.25, 0.75], "v1", "h-0", 1, 2, 3, 10, 99, 4)
    assert decode_any_result(encode_result(r)) == [r] == [decode_result(encode_result(r))]
    f = encode_multi_result("1-0", [WindowOutcome("ok", 0, "a", [1.0])] * 2, **_SHARED)
    for bad in ({b"n": b"3"}, {b"labels": msgpack.packb([0])}, {b"probs": b"\xc1"}, {b"reasons": msgpack.packb([1])}):
        with pytest.raises(WireError) as ei:
            decode_any_result({**f, **bad})
        assert ei.value.reason == "bad_result"


def test_dead_letter_of_bad_windows_lists_them() -> None:
    orig = _entry()
    d = encode_dead_windows(orig, input_id="3-0", bad={3: "predict_failed", 1: "nonfinite"}, worker="w", deliveries=1)
    assert {k: d[k] for k in orig} == orig
    assert msgpack.unpackb(d[b"dead.windows"]) == [1, 3] and d[b"dead.reason"] == b"mixed"
    assert msgpack.unpackb(d[b"dead.reasons"], strict_map_key=False) == {1: "nonfinite", 3: "predict_failed"}
    assert d[b"dead.id"] == b"3-0" and b"1: nonfinite" in d[b"dead.detail"]
    same = encode_dead_windows(orig, input_id="3-0", bad={2: "nonfinite"}, worker="w", deliveries=1, detail="d")
    assert (same[b"dead.reason"], same[b"dead.detail"], same[b"dead.windows"]) == (b"nonfinite", b"d", b"\x91\x02")
    with pytest.raises(ValueError):
        encode_dead_windows(orig, input_id="3-0", bad={}, worker="w", deliveries=1)


def _doc_example() -> dict[str, str]:
    text = (ROOT / "docs" / "wire-format.md").read_text()
    blocks = dict(re.findall(r"<!-- example:(\w+) -->\s*```text\n(.*?)```", text, re.S))
    return {k: "".join(v.split()) for k, v in blocks.items()}


def test_doc_multi_window_example_byte_for_byte() -> None:
    ex = _doc_example()
    xs = np.array([[0.5, -1.0, 2.0], [1.0, np.nan, -2.0]], F32)[:, :, None]
    f = encode_windows_entry(xs, cids=["sensor-7", "sensor-8"], ts_us=int(ex["ts"]))
    assert f[b"x"] == bytes.fromhex(ex["multi_x"]) and len(f[b"x"]) == 56
    assert f[b"cids"] == bytes.fromhex(ex["multi_cids"])
    doc_fields = {b"v": b"1", b"x": bytes.fromhex(ex["multi_x"]), b"ts": ex["ts"].encode(), b"cids": bytes.fromhex(ex["multi_cids"])}
    m = decode_multi(doc_fields, Limits(), n_features=1)
    assert m.bad == {1: "nonfinite"} and m.cids == ["sensor-7", "sensor-8"]
    assert np.array_equal(m.x[0, :, 0], [0.5, -1.0, 2.0]) and np.isnan(m.x[1, 1, 0])
    rows = [WindowOutcome("ok", 0, "a", [0.75, 0.25]), WindowOutcome("dead", reason="nonfinite")]
    res = encode_multi_result("1764230400000-0", rows, cids=m.cids, **_SHARED)
    for key in ("statuses", "reasons", "labels", "classes", "probs"):
        assert res[key.encode()] == bytes.fromhex(ex[f"multi_{key}"]), key
    assert (res[b"n"], res[b"status"], res[b"cids"]) == (b"2", b"partial", f[b"cids"])
    got = decode_multi_result(res)
    assert [(g.cid, g.label, g.probs) for g in got] == [("sensor-7", 0, [0.75, 0.25]), ("sensor-8", -1, [])]
    dead = encode_dead_windows(doc_fields, input_id="1764230400000-0", bad=m.bad, worker="w", deliveries=1)
    assert dead[b"dead.windows"] == bytes.fromhex(ex["multi_dead_windows"]) and dead[b"dead.reason"] == b"nonfinite"


def test_x_windows_counts_the_windows_of_an_entry_from_its_headers() -> None:
    """The collector's window count (issue 19's batch bound) reads N without decoding ``data``."""
    from protocol.entries import encode_array, encode_windows_array
    from protocol.wire import x_windows

    for n in (1, 7, 64, 127, 128, 300, 70_000):
        assert x_windows(encode_windows_array(np.zeros((n, 2, 1), np.float32))) == n
    assert x_windows(encode_array(np.zeros((20, 1), np.float32))) == 1  # a single-window entry
    general = msgpack.packb({"shape": [5, 2, 1], "dtype": "float32", "data": bytes(40)})  # other key order
    assert x_windows(general) == 5
    assert x_windows(b"\x00garbage") == 1 and x_windows(b"") == 1
