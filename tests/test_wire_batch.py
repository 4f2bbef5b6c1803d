"""Batched decode/encode agree with the one-window functions, errors included."""

import numpy as np
import pytest

from protocol.wire import (
    Limits,
    Result,
    Window,
    WireError,
    decode_window,
    decode_windows,
    encode_result,
    encode_results,
    encode_window,
)


def _mixed_batch() -> list[dict[bytes, bytes]]:
    rng = np.random.default_rng(0)
    good = [encode_window(rng.standard_normal((t, 2)).astype(np.float32), cid=f"c{t}", ts_us=t) for t in (20, 20, 7)]
    f64 = encode_window(rng.standard_normal((20, 2)), ts_us=5, meta={"k": 1})
    nan = encode_window(np.full((20, 2), np.nan, np.float32), ts_us=6)
    inf16 = encode_window(np.array([[np.inf, 0]], dtype=np.float16), ts_us=7)
    wrong_f = encode_window(np.zeros((20, 3), np.float32), ts_us=8)
    garbage = {b"v": b"1", b"x": b"\xc1", b"ts": b"1"}
    no_ts = {k: v for k, v in encode_window(np.zeros((4, 2), np.float32)).items() if k != b"ts"}
    trailing = {**good[0], b"x": good[0][b"x"] + b"\x00"}
    return [good[0], nan, f64, garbage, good[1], inf16, wrong_f, no_ts, good[2], trailing]


def test_decode_windows_equals_decode_window_item_by_item() -> None:
    batch = _mixed_batch()
    got = decode_windows(batch, Limits(), n_features=2)
    assert len(got) == len(batch)
    for fields, item in zip(batch, got):
        try:
            want: Window | WireError = decode_window(fields, Limits(), n_features=2)
        except WireError as e:
            want = e
        if isinstance(want, WireError):
            assert isinstance(item, WireError) and (item.reason, item.detail) == (want.reason, want.detail)
        else:
            assert isinstance(item, Window)
            assert item.x.dtype == np.float32 and np.array_equal(item.x, want.x)
            assert (item.ts_us, item.cid, item.meta, item.deadline_us) == (want.ts_us, want.cid, want.meta, want.deadline_us)
    reasons = [g.reason if isinstance(g, WireError) else "ok" for g in got]
    assert reasons == ["ok", "nonfinite", "ok", "bad_x", "ok", "nonfinite", "bad_features", "missing_field", "ok", "bad_x"]


def test_decode_windows_allows_nonfinite_when_configured() -> None:
    got = decode_windows(_mixed_batch()[:2], Limits(allow_nonfinite=True), n_features=2)
    assert all(isinstance(g, Window) for g in got)


def test_decoded_windows_do_not_alias_each_other() -> None:
    xs = [np.full((3, 1), i, np.float32) for i in range(4)]
    got = decode_windows([encode_window(x, ts_us=1) for x in xs], Limits())
    assert [float(g.x[0, 0]) for g in got if isinstance(g, Window)] == [0, 1, 2, 3]


def test_decode_windows_of_nothing() -> None:
    assert decode_windows([], Limits()) == []


@pytest.mark.parametrize("meta", [{}, {"label": "1", "n": 3}])
def test_encode_results_is_byte_identical(meta: dict[str, object]) -> None:
    rs = [Result(f"{i}-0", f"c{i}", "ok", i % 2, "ab"[i % 2], [0.25, 0.75] if i % 2 else [0.9, 0.1], "v1", "w-0",
                 i, 2 * i, 33, 100 + i, 999, 3, meta) for i in range(3)]
    rs.append(Result("9-0", "", "expired", -1, "", [], "v1", "w-0", 1, 0, 0, 5, 6, 0))
    assert encode_results(rs) == [encode_result(r) for r in rs]
