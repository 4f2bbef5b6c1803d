"""Continuous streams end to end on a real redis-server: samples of two devices (with a short gap, a long
gap and a gateway restart that replays samples) -> windows with spans -> a worker -> results ->
segments through a consumer group, exactly once across a crashed segments reader."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import redis

from producer import cli
from producer.client import Producer
from producer.group_reader import GroupResultsReader
from producer.results import ResultsReader
from producer.segments import Segmenter
from producer.segments_cli import GroupSegments
from producer.streaming import StreamPublisher
from producer.windower import Windower, WindowSpec, expected_windows
from protocol.entries import decode_window
from protocol.idempotent import IdempotentWriter
from protocol.keys import Keys
from protocol.wire import Limits
from training.model.recording import Recording, save_recording_csv

RATE_HZ = 10
SPEC = WindowSpec.at_rate(20, 5, RATE_HZ, max_gap=2)


def _device_indices() -> dict[str, np.ndarray]:
    """Sample indices per device: dev-a has a 2-sample gap (padded), dev-b a 30-sample gap (a restart)."""
    a = np.r_[np.arange(0, 100), np.arange(102, 240)]
    b = np.r_[np.arange(3, 120), np.arange(150, 260)]
    return {"dev-a": a, "dev-b": b}


def _values(idx: np.ndarray) -> np.ndarray:
    """The synthetic task's classes in blocks of 80 samples: class 0 ~ N(0.5, 1), class 1 ~ N(-0.5, 1.2)."""
    rng = np.random.default_rng(int(idx[0]) + len(idx))
    cls = (idx // 80) % 2
    return np.where(cls == 0, rng.normal(0.5, 1.0, len(idx)), rng.normal(-0.5, 1.2, len(idx))).astype(np.float32)[:, None]


def _stream(r: redis.Redis, keys: Keys, indices: dict[str, np.ndarray], lo: float, hi: float) -> StreamPublisher:
    """Push the share [lo, hi) of every device's samples, interleaved, through a fresh gateway."""
    producer = Producer(r, keys, idempotence=IdempotentWriter(keys, "gateway-1", 600))
    pub = StreamPublisher(producer, Windower(SPEC))
    parts = {d: idx[int(lo * len(idx)): int(hi * len(idx))] for d, idx in indices.items()}
    for step in range(0, max(len(p) for p in parts.values()), 7):
        pub.push_many([(d, p[step: step + 7] * SPEC.period_us, _values(p)[step: step + 7])
                       for d, p in parts.items() if len(p[step: step + 7])])
    pub.close()
    return pub


def test_stream_through_a_worker_to_segments_exactly_once(r: redis.Redis, prefix: str, worker_env: dict[str, str],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    keys = Keys(prefix, prefix)
    indices = _device_indices()
    before = _stream(r, keys, indices, 0.0, 0.6)
    replay = _stream(r, keys, indices, 0.45, 1.0)  # the gateway restarts and replays from 45 % on
    expected = sum(expected_windows(idx, SPEC) for idx in indices.values())
    assert before.counts.windows + replay.counts.windows >= expected + 3  # the replayed windows were sent again ...
    assert r.xlen(keys.shard(0).windows) == expected  # ... and the idempotent producer dropped them

    out = subprocess.run([sys.executable, "-m", "worker.cli", "--burst"], env=worker_env, capture_output=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    results = ResultsReader(r, keys).collect(expected, timeout_s=10)
    assert len(results) == expected and all(res.span is not None for res in results)
    spans = {(res.span.key, res.span.seq) for res in results if res.span is not None}
    assert len(spans) == expected
    assert {res.cid for res in results} == {f"{k}:{s * SPEC.hop}" for k, s in spans}
    capsys.readouterr()
    assert cli.main(["--redis-url", worker_env["BIGRU_REDIS_URL"], "--prefix", prefix, "results", "--json",
                     "--count", "2"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [set(x["span"]) for x in lines] == [{"key", "seq", "t0", "t1"}] * 2

    plain = Segmenter()
    want = plain.add_results(results) + plain.flush()
    assert {s.key for s in want} == {"dev-a", "dev-b"}

    # a segments reader that crashes after reading but before committing, then restarts with its name
    crashed = GroupSegments(r, keys, "seg", "c1", Segmenter())
    first = crashed.reader.poll(count=30)
    assert first
    for _, res in first:
        crashed.segmenter.add_results(res)  # processed, never committed
    again = GroupSegments(r, keys, "seg", "c1", Segmenter())
    got = []
    while items := again.reader.poll(count=30):
        got += again.step(items)
    got += again.finish()
    assert sorted(got, key=lambda s: (s.key, s.start_us)) == sorted(want, key=lambda s: (s.key, s.start_us))
    stream = r.xrange(keys.segments)
    assert len(stream) == len(want)
    assert GroupResultsReader(r, keys, "seg", "c1").poll(count=10) == []  # every result entry acknowledged
    by_dev: dict[str, list[tuple[int, int]]] = {}
    for _, f in stream:
        by_dev.setdefault(f[b"key"].decode(), []).append((int(f[b"start_us"]), int(f[b"end_us"])))
    for spans_ in by_dev.values():
        assert all(a[1] <= b[0] for a, b in zip(spans_, spans_[1:]))  # in order, not overlapping


def test_stream_cli_publishes_every_window_once_with_spans(r: redis.Redis, redis_url: str, prefix: str,
                                                           tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    indices = _device_indices()
    t = np.concatenate([i * SPEC.period_us for i in indices.values()])
    dev = np.concatenate([[d] * len(i) for d, i in indices.items()]).astype(object)
    x = np.concatenate([_values(i) for i in indices.values()])
    path = tmp_path / "rec.csv"
    save_recording_csv(Recording(t, x, dev, None, [], ["v"], "rec"), path)
    argv = ["--redis-url", redis_url, "--prefix", prefix, "stream", "--source", str(path), "--window", "20",
            "--hop", "5", "--max-gap", "2", "--speed", "0", "--chunk", "50", "--producer-id", "cli-1"]
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    expected = sum(expected_windows(idx, SPEC) for idx in indices.values())
    assert summary["published"] == summary["windows"] == expected
    assert (summary["padded"], summary["restarts"]) == (2, 1)
    assert cli.main(argv) == 0  # the same recording again: every window's id was seen
    keys = Keys(prefix, prefix)
    entries = r.xrange(keys.shard(0).windows)
    assert len(entries) == expected
    spans = [decode_window(f, Limits()) for _, f in entries]
    assert all(w.span for w in spans)
    assert cli.main(["--redis-url", redis_url, "--prefix", prefix, "stream", "--source", str(path),
                     "--window", "20", "--hop", "30"]) == 2
    assert "hop" in capsys.readouterr().err


def test_stream_from_standard_input_pushes_samples_as_they_come(r: redis.Redis, worker_env: dict[str, str],
                                                                 prefix: str) -> None:
    lines = ["device,v"] + [f"{'a' if i % 2 else 'b'},{i}" for i in range(40)]  # 20 samples each, no time column
    out = subprocess.run([sys.executable, "-m", "producer.cli", "stream", "--source", "-", "--window", "8", "--hop",
                          "4", "--rate-hz", "10"], input="\n".join(lines).encode(), env=worker_env,
                         capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr.decode()
    summary = json.loads(out.stdout)
    assert summary["samples"] == 40 and summary["published"] == 2 * 4  # windows at 0, 4, 8, 12 per device
    assert summary["partial_dropped"] == 0 and r.xlen(Keys(prefix, prefix).shard(0).windows) == 8
    bad = subprocess.run([sys.executable, "-m", "producer.cli", "stream", "--source", "-", "--window", "8", "--hop",
                          "4"], input=b"v\n1\n", env=worker_env, capture_output=True, timeout=60)
    assert bad.returncode == 2 and b"--rate-hz" in bad.stderr
