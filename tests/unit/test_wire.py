import re
from pathlib import Path

import msgpack
import numpy as np
import pytest

from protocol.entries import decode_window, encode_window
from protocol.results import Result, decode_result, encode_dead, encode_result
from protocol.wire import Limits, WireError

ROOT = Path(__file__).resolve().parents[2]


def test_window_round_trip_preserves_values_and_metadata() -> None:
    x = np.random.default_rng(0).standard_normal((7, 3)).astype(np.float32)
    f = encode_window(x, cid="abc", ts_us=123, deadline_us=456, meta={"label": "1", "n": 2})
    w = decode_window(f, Limits(), n_features=3)
    assert np.array_equal(w.x, x)
    assert (w.cid, w.ts_us, w.deadline_us, w.meta) == ("abc", 123, 456, {"label": "1", "n": 2})


def test_float64_and_1d_input_decode_to_float32() -> None:
    x = np.arange(5, dtype=np.float64)
    w = decode_window(encode_window(x, ts_us=1), Limits())
    assert w.x.shape == (5, 1) and w.x.dtype == np.float32
    assert np.allclose(w.x[:, 0], x)


def test_array_bytes_are_little_endian_c_order() -> None:
    raw = encode_window(np.array([[1.0, 2.0]], dtype=np.float32), ts_us=0)[b"x"]
    obj = msgpack.unpackb(raw)
    assert obj["data"] == b"\x00\x00\x80\x3f\x00\x00\x00\x40"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({b"v": b"2", b"x": b"", b"ts": b"1"}, "bad_version"),
        ({b"v": b"1", b"ts": b"1"}, "missing_field"),
        ({b"v": b"1", b"x": b"\x85\xa5dtype", b"ts": b"1"}, "bad_x"),
        ({b"v": b"1", b"x": msgpack.packb({"dtype": "int8", "shape": [1, 1], "data": b"\x00"}), b"ts": b"1"}, "bad_dtype"),
        ({b"v": b"1", b"x": msgpack.packb({"dtype": "float32", "shape": [2, 1], "data": b"\x00" * 4}), b"ts": b"1"}, "bad_size"),
        ({b"v": b"1", b"x": msgpack.packb({"dtype": "float32", "shape": [0, 1], "data": b""}), b"ts": b"1"}, "empty"),
        ({b"v": b"1", b"x": msgpack.packb({"dtype": "float32", "shape": [1, 2], "data": b"\x00" * 8}), b"ts": b"1"}, "bad_features"),
        ({b"v": b"1", b"x": msgpack.packb({"dtype": "float32", "shape": [1, 1], "data": np.float32(np.nan).tobytes()}), b"ts": b"1"}, "nonfinite"),
        ({b"v": b"1", b"x": msgpack.packb(msgpack.ExtType(1, b"abc")), b"ts": b"1"}, "bad_x"),
        ({b"v": b"1", b"x": b"\x91" * 5000, b"ts": b"1"}, "bad_x"),
        ({b"v": b"1", b"x": b"\xdb\xff\xff\xff\xff", b"ts": b"1"}, "bad_x"),
        ({b"v": b"1", b"x": msgpack.packb({"dtype": "float32", "shape": [1, 1], "data": b"\x00" * 4}), b"ts": b"soon"}, "bad_field"),
    ],
)
def test_malformed_entries_raise_wire_error_with_reason(fields: dict[bytes, bytes], reason: str) -> None:
    with pytest.raises(WireError) as ei:
        decode_window(fields, Limits(), n_features=1)
    assert ei.value.reason == reason


def test_oversized_array_is_rejected_before_unpacking() -> None:
    big = encode_window(np.zeros((100, 100), np.float32), ts_us=1)
    with pytest.raises(WireError) as ei:
        decode_window(big, Limits(max_window_bytes=1000))
    assert ei.value.reason == "too_large"


def test_result_round_trip() -> None:
    r = Result("1-0", "c", "ok", 1, "b", [0.25, 0.75], "v1", "h-0", 1, 2, 3, 10, 99, 4, {"k": 1})
    assert decode_result(encode_result(r)) == r


def test_dead_letter_keeps_original_fields_and_truncates_huge_ones() -> None:
    d = encode_dead({b"x": b"a" * 100_000, b"cid": b"q"}, input_id="5-0", reason="too_large", detail="d", worker="w", deliveries=2)
    assert d[b"cid"] == b"q" and d[b"dead.reason"] == b"too_large" and d[b"dead.deliveries"] == b"2"
    assert d[b"x"].startswith(b"<truncated: 100000 bytes")


def _doc_example() -> dict[str, str]:
    text = (ROOT / "docs" / "wire-format.md").read_text()
    blocks = dict(re.findall(r"<!-- example:(\w+) -->\s*```text\n(.*?)```", text, re.S))
    return {k: "".join(v.split()) for k, v in blocks.items()}


def test_doc_hex_example_decodes_byte_for_byte() -> None:
    ex = _doc_example()
    x_bytes = bytes.fromhex(ex["x"])
    fields = {b"v": b"1", b"x": x_bytes, b"ts": ex["ts"].encode(), b"cid": ex["cid"].encode()}
    w = decode_window(fields, Limits(), n_features=1)
    assert np.array_equal(w.x[:, 0], np.array([0.5, -1.0, 2.0], dtype=np.float32))
    assert w.cid == "sensor-7" and w.ts_us == 1764230400000000
    # And our encoder produces exactly those bytes.
    assert encode_window(np.array([0.5, -1.0, 2.0], np.float32), cid="sensor-7", ts_us=1764230400000000)[b"x"] == x_bytes
    # The whole XADD command as RESP, as documented.
    resp = bytes.fromhex(ex["resp"])
    assert resp.startswith(b"*11\r\n$4\r\nXADD\r\n") and x_bytes in resp
