"""Producer and results reader with multi-window entries, against a real redis-server."""

from __future__ import annotations

import json
import time
import zlib
from typing import Any

import msgpack
import numpy as np
import pytest
import redis

from producer.backpressure import Backpressure, BackpressureError
from producer.cli import main as cli_main
from producer.client import Producer
from producer.results import ResultsReader
from protocol.entries import decode_multi, decode_window, encode_window, is_multi
from protocol.keys import Keys
from protocol.results import Result, WindowOutcome, encode_multi_result, encode_result
from protocol.wire import Limits
from worker import reader


def _ws(t: int, n: int, start: int = 0) -> list[np.ndarray]:
    return [np.full((t, 1), start + i, np.float32) for i in range(n)]


def _entries(r: redis.Redis, keys: Keys, shard: int = 0) -> list[tuple[str, dict[bytes, bytes]]]:
    return [(i.decode(), f) for i, f in r.xrange(keys.shard(shard).windows)]


def test_publish_batch_is_one_entry_carrying_every_window(r: redis.Redis, prefix: str) -> None:
    keys = Keys(prefix, prefix)
    xs = np.random.default_rng(0).standard_normal((5, 20, 1)).astype(np.float32)
    eid = Producer(r, keys).publish_batch(xs, ids=[f"c{i}" for i in range(5)], deadline_us=99, meta={"k": 1})
    [(got_id, fields)] = _entries(r, keys)
    assert got_id == eid and is_multi(fields)
    m = decode_multi(fields, Limits(), 1)
    assert np.array_equal(m.x, xs) and m.cids == [f"c{i}" for i in range(5)]
    assert (m.deadline_us, m.meta, m.bad) == (99, {"k": 1}, {})


def test_publish_many_packs_consecutive_equal_shapes(r: redis.Redis, prefix: str) -> None:
    keys = Keys(prefix, prefix)
    windows = _ws(20, 7) + _ws(10, 2, start=7) + [np.full(20, 9, np.float32)] + _ws(20, 1, start=10)
    ids = [f"w{i}" for i in range(11)]
    out = Producer(r, keys).publish_many(windows, ids=ids, meta={"src": "t"}, per_entry=3)
    entries = _entries(r, keys)
    assert out == [e for e, _ in entries]
    # 7 x T20 -> 3, 3, 1; 2 x T10 -> 2; the [T] window and the next [T, 1] one have the same shape -> 2.
    shapes = [msgpack.unpackb(f[b"x"])["shape"] for _, f in entries]
    assert shapes == [[3, 20, 1], [3, 20, 1], [20, 1], [2, 10, 1], [2, 20, 1]]
    lone = decode_window(entries[2][1], Limits(), 1)
    assert lone.cid == "w6" and lone.meta == {"src": "t"} and float(lone.x[0, 0]) == 6
    decoded = [decode_multi(f, Limits(), 1) for i, (_, f) in enumerate(entries) if i != 2]
    assert [m.cids for m in decoded] == [["w0", "w1", "w2"], ["w3", "w4", "w5"], ["w7", "w8"], ["w9", "w10"]]
    assert [float(v) for m in decoded for v in m.x[:, 0, 0]] == [0, 1, 2, 3, 4, 5, 7, 8, 9, 10]
    assert all(m.meta == {"src": "t"} for m in decoded)


def test_publish_many_per_entry_1_is_unchanged(r: redis.Redis, prefix: str) -> None:
    keys = Keys(prefix, prefix)
    ws = _ws(4, 3)
    Producer(r, keys).publish_many(ws, ids=["a", None, "c"], meta={"k": 1})
    entries = _entries(r, keys)
    want = [encode_window(w, cid=c, meta={"k": 1}) for w, c in zip(ws, ["a", None, "c"])]
    assert [{k: v for k, v in f.items() if k != b"ts"} for _, f in entries] == [
        {k: v for k, v in f.items() if k != b"ts"} for f in want]


def test_without_ids_no_cids_field_and_bad_per_entry(r: redis.Redis, prefix: str) -> None:
    keys = Keys(prefix, prefix)
    p = Producer(r, keys)
    assert len(p.publish_many(_ws(4, 4), per_entry=4)) == 1
    [(_, f)] = _entries(r, keys)
    assert b"cids" not in f and decode_multi(f, Limits(), 1).n == 4
    with pytest.raises(ValueError):
        p.publish_many(_ws(4, 4), per_entry=0)
    with pytest.raises(IndexError):
        p.publish_many(_ws(4, 4), ids=["a", "b"], per_entry=3)


def test_entries_are_routed_by_their_first_id(r: redis.Redis, prefix: str) -> None:
    keys = Keys(prefix, prefix, shards=4)
    ids = [f"dev-{i}" for i in range(40)]
    Producer(r, keys).publish_many(_ws(5, 40), ids=ids, per_entry=4)
    seen = []
    for s in range(4):
        for _, f in _entries(r, keys, s):
            cids = decode_multi(f, Limits(), 1).cids
            assert cids is not None and zlib.crc32(cids[0].encode()) % 4 == s
            seen += cids
    assert sorted(seen) == sorted(ids)
    Producer(r, keys).publish_batch(np.zeros((2, 5, 1), np.float32), ids=["dev-0", "dev-1"], cid="dev-3")
    shard = zlib.crc32(b"dev-3") % 4
    assert decode_multi(_entries(r, keys, shard)[-1][1], Limits(), 1).cid == "dev-3"  # routed by cid


def test_backpressure_counts_entries(r: redis.Redis, prefix: str) -> None:
    keys = Keys(prefix, prefix)
    reader.ensure_groups(r, keys)
    gated = Producer(r, keys, pipeline_size=2, backpressure=Backpressure(r, keys, max_lag=5, check_interval_s=0))
    with pytest.raises(BackpressureError) as ei:
        gated.publish_many(_ws(5, 40), per_entry=4)
    # 10 entries of 4 windows; chunks of 2 entries start at lag 0, 2, 4; the fourth sees 6 > 5.
    assert len(ei.value.published) == 6 and r.xlen(keys.shard(0).windows) == 6 and ei.value.lag == 6


_SHARED: dict[str, Any] = {"model": "v1", "worker": "w-0", "queue_us": 1, "wait_us": 2, "infer_us": 3, "e2e_us": 4, "ts_us": 5, "batch": 6}


def _publish_results(r: redis.Redis, keys: Keys) -> None:
    sk = keys.shard(0)
    r.xadd(sk.results, encode_result(Result("1-0", "s", "ok", 1, "b", [0.1, 0.9], **_SHARED)))
    rows = [WindowOutcome("ok", 0, "a", [0.9, 0.1]), WindowOutcome("dead", reason="nonfinite"),
            WindowOutcome("ok", 1, "b", [0.2, 0.8]), WindowOutcome("ok", 0, "a", [1.0, 0.0])]
    r.xadd(sk.results, encode_multi_result("2-0", rows, cids=["m0", "m1", "m2", "m3"], **_SHARED))
    r.xadd(sk.results, encode_result(Result("3-0", "t", "ok", 0, "a", [0.6, 0.4], **_SHARED)))


def test_results_reader_yields_one_result_per_window(r: redis.Redis, prefix: str) -> None:
    keys = Keys(prefix, prefix)
    _publish_results(r, keys)
    got = ResultsReader(r, keys).collect(6, timeout_s=5)
    assert [(g.input_id, g.cid, g.status) for g in got] == [
        ("1-0", "s", "ok"), ("2-0", "m0", "ok"), ("2-0", "m1", "dead"), ("2-0", "m2", "ok"), ("2-0", "m3", "ok"),
        ("3-0", "t", "ok")]
    polled = ResultsReader(r, keys).poll()
    assert len(polled) == 6 and len({sid for sid, _ in polled}) == 3


def test_results_reader_iter_keeps_windows_past_count(r: redis.Redis, prefix: str) -> None:
    keys = Keys(prefix, prefix)
    _publish_results(r, keys)
    reader = ResultsReader(r, keys)
    assert [g.cid for g in reader.iter(count=3)] == ["s", "m0", "m1"]
    it = reader.iter()
    assert next(it).cid == "m2"
    it.close()  # the caller stops early: the rest stays for the next read
    assert [g.cid for g in reader.iter()] == ["m3", "t"]
    assert list(reader.iter()) == []


def test_cli_results_json_has_per_window_lines(r: redis.Redis, redis_url: str, prefix: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    _publish_results(r, Keys(prefix, prefix))
    assert cli_main(["--redis-url", redis_url, "--prefix", prefix, "results", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(d["cid"], d.get("index"), d.get("reason")) for d in lines] == [
        ("s", None, None), ("m0", 0, ""), ("m1", 1, "nonfinite"), ("m2", 2, ""), ("m3", 3, ""), ("t", None, None)]
    # The wire's field names (docs/wire-format.md), not the Python attribute names.
    wire = {"in", "cid", "status", "label", "class", "probs", "model", "worker", "queue_us", "wait_us", "infer_us",
            "e2e_us", "ts", "batch", "meta"}
    assert set(lines[0]) == wire and set(lines[1]) == wire | {"index", "reason"}
    assert lines[2]["class"] == "" and lines[2]["label"] == -1 and lines[2]["probs"] == []


def test_cli_publish_per_entry(r: redis.Redis, redis_url: str, prefix: str, capsys: pytest.CaptureFixture[str]) -> None:
    keys = Keys(prefix, prefix)
    base = ["--redis-url", redis_url, "--prefix", prefix, "publish", "--count", "10", "--length", "8"]
    assert cli_main([*base, "--per-entry", "4"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["published"], doc["entries"]) == (10, 3)
    entries = _entries(r, keys)
    decoded = [decode_multi(f, Limits(), 1) for _, f in entries]
    assert [m.n for m in decoded] == [4, 4, 2]
    assert [c for m in decoded for c in m.cids or []] == [f"w-{i}" for i in range(10)]
    assert cli_main([*base, "--per-entry", "0"]) == 2


def test_cli_publish_rate_counts_windows(r: redis.Redis, redis_url: str, prefix: str, capsys: pytest.CaptureFixture[str]) -> None:
    # 20 windows at 100 windows/s in entries of 5: entries are due at 0, 50, 100, 150 ms.
    t0 = time.monotonic()
    assert cli_main(["--redis-url", redis_url, "--prefix", prefix, "publish", "--count", "20", "--rate", "100",
                     "--per-entry", "5"]) == 0
    elapsed = time.monotonic() - t0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["published"], doc["entries"]) == (20, 4) and r.xlen(Keys(prefix, prefix).shard(0).windows) == 4
    assert 0.14 <= elapsed < 5
