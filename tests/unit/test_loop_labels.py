"""Labels' bad inputs (protocol.labels, the CLI's line parser) and the recorder's join (training.live)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from producer.labels import Sent
from producer.labels_cli import _pairs
from protocol.labels import REFUSAL_REASONS, Label, LabelError, check, decode_label, encode_label, refusal_fields
from training.live import Joiner, Retained, Served, load_live, write_live
from training.model.formats import load_npz

CLASSES = ["a", "b"]


def test_label_round_trip() -> None:
    f = encode_label("w-1", "b", ts_us=123, src="op-1", classes=CLASSES)
    assert decode_label(f) == Label("w-1", "b", 123, "op-1")


@pytest.mark.parametrize(("cid", "label", "src", "reason"), [
    ("", "a", "", "malformed"), ("x" * 257, "a", "", "malformed"), ("w", "", "", "malformed"),
    ("w", "c", "", "bad_class"), ("w", "a", "bad src!", "malformed"),
])
def test_bad_labels_are_refused_before_writing(cid: str, label: str, src: str, reason: str) -> None:
    with pytest.raises(LabelError) as e:
        check(cid, label, CLASSES, src)
    assert e.value.reason == reason and reason in REFUSAL_REASONS


@pytest.mark.parametrize("fields", [
    {b"cid": b"w", b"label": b"a", b"ts": b"1"},  # no version
    {b"v": b"1", b"label": b"a", b"ts": b"1"},  # no cid
    {b"v": b"1", b"cid": b"\xff", b"label": b"a", b"ts": b"1"},  # not UTF-8
    {b"v": b"1", b"cid": b"w", b"label": b"a", b"ts": b"-3"},  # bad ts
])
def test_malformed_entries(fields: dict[bytes, bytes]) -> None:
    with pytest.raises(LabelError, match="malformed"):
        decode_label(fields)


def test_refusal_keeps_the_label_and_names_the_reason() -> None:
    out = refusal_fields({b"v": b"1", b"cid": b"w", b"label": b"a", b"ts": b"1", b"junk": b"x"}, "late", "gone")
    assert out[b"reason"] == b"late" and out[b"cid"] == b"w" and b"junk" not in out


def test_cli_lines_bad_line_is_answered_and_others_kept() -> None:
    items = list(_pairs(io.StringIO("w-1\ta\n# comment\n\nw-2,b\nnot-a-pair\nw,3,a\n")))
    assert items[0] == ("w-1", "a") and items[1] == ("w-2", "b")
    assert isinstance(items[2], Sent) and items[2].reason == "malformed"
    assert items[3] == ("w,3", "a")  # the label is after the last comma


def _served(ts: int, t: int = 5) -> Served:
    return Served(np.full((t, 1), ts, dtype=np.float32), ts, "v1")


def test_join_each_label_once_with_its_answer() -> None:
    store = Retained(retain_ms=10_000, max_windows=3, max_bytes=10**9)
    j = Joiner(store, CLASSES, wait_ms=1_000)
    for i in range(4):  # w0 is evicted by the count bound
        store.add(f"w{i}", _served(i))
    assert len(store) == 3 and store.evicted == 1
    got = j.label(Label("w1", "b", 0), 0)
    assert [(g.cid, g.y) for g in got] == [("w1", 1)] and "w1" not in store
    assert j.label(Label("w1", "b", 0), 0) == []  # duplicate
    assert j.label(Label("w1", "a", 0), 0) == []  # conflict
    assert j.label(Label("w0", "a", 0), 0) == []  # late: evicted
    assert j.label(Label("w2", "z", 0), 0) == []  # bad class
    assert j.label(Label("w9", "a", 0), 0) == []  # waits for its window
    store.add("w9", _served(9))
    assert [g.cid for g in j.window_arrived("w9")] == ["w9"]
    assert j.label(Label("w8", "a", 0), 0) == []
    j.expire(999)
    assert j.waiting == 1
    j.expire(1_000)
    assert [r for _, r, _ in j.refused] == ["duplicate", "conflict", "late", "bad_class", "unknown_cid"]


def test_retained_bounds_by_time_and_bytes() -> None:
    store = Retained(retain_ms=100, max_windows=1000, max_bytes=3 * _served(0).nbytes)
    for i in range(5):
        store.add(f"w{i}", _served(i * 40))
    assert len(store) == 3 and store.bytes <= store.max_bytes
    store.expire(now_ms=250)  # keeps ts >= 150: w4 (160)
    assert len(store) == 1 and "w4" in store and store.was_evicted("w0")


def test_live_files_are_read_by_the_trainer(tmp_path: object) -> None:
    store = Retained(10**9, 100, 10**9)
    j = Joiner(store, CLASSES, 0)
    joined = []
    for i in range(6):
        store.add(f"w{i}", _served(100 + i, t=3 + i % 2))
        joined += j.label(Label(f"w{i}", CLASSES[i % 2], 0), 0)
    path = write_live(str(tmp_path), joined, CLASSES)
    ds = load_npz(str(path), allow_pickle=False)
    assert len(ds) == 6 and ds.classes == CLASSES and ds.y.tolist() == [0, 1, 0, 1, 0, 1]
    assert [len(x) for x in ds.X] == [3, 4, 3, 4, 3, 4] and float(ds.X[5][0, 0]) == 105
    prov = path.with_suffix(".json").read_text()
    assert '"from_ms": 100' in prov and '"to_ms": 105' in prov and '"models": ["v1"]' in prov
    assert len(load_live(str(tmp_path), CLASSES, 4) or []) == 4
    assert load_live(str(tmp_path), ["x", "y"], 4) is None
