"""Batched decode (protocol.wire) and the worker's batched encode agree with the one-window functions, errors included."""

import numpy as np
import pytest

from protocol.entries import Window, decode_window, decode_windows, encode_window
from protocol.results import Result, encode_result
from protocol.wire import Limits, WireError
from worker.stages import Stages
from worker.types import Entry, PredictorDefaults, flat


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


class _TwoClasses(PredictorDefaults):
    """A predictor stand-in: the encode stage only reads its version and classes."""

    version, classes, n_features = "v1", ["a", "b"], 1

    def predict(self, xs: list[np.ndarray]) -> np.ndarray:
        raise AssertionError("not called")


@pytest.mark.parametrize("meta", [{}, {"label": "1", "n": 3}])
def test_worker_encode_stage_is_byte_identical_to_encode_result(meta: dict[str, object]) -> None:
    """The worker encodes shared fields once per batch; each result must still equal :func:`encode_result`'s."""
    entries = [Entry(0, f"{i}-0", encode_window(np.zeros((3, 1), np.float32), cid=f"c{i}", ts_us=100 + i, meta=meta),
                     read_us=110 + i) for i in range(3)]
    stages = Stages("w-0", Limits(), max_deliveries=5, on_dead=lambda reason: None, now_us=lambda: 999)
    batch = stages.decode(entries, _TwoClasses())
    batch.probs = np.array([[0.9, 0.1], [0.25, 0.75], [0.4, 0.6]], np.float32)
    batch.batch_us, batch.infer_s = 120, 0.25
    outputs = stages.encode(batch)
    want = [Result(f"{i}-0", f"c{i}", "ok", label, "ab"[label], [float(p) for p in batch.probs[i]], "v1", "w-0",
                   queue_us=10, wait_us=10 - i, infer_us=250_000, e2e_us=899 - i, ts_us=999, batch=3, meta=meta)
            for i, label in enumerate([0, 1, 1])]
    assert [(o.entry, o.kind) for o in outputs] == [(e, "r") for e in entries]
    assert [o.as_dict() for o in outputs] == [encode_result(r) for r in want]
    assert [o.fields for o in outputs] == [flat(encode_result(r)) for r in want]  # same bytes, same order
