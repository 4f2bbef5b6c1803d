"""Multi-window entries through the real worker loop: one result entry per input entry, bad windows
dead-lettered without losing the others, batches bounded in windows."""

from pathlib import Path

import msgpack
import numpy as np
import redis

from producer.client import Producer
from producer.results import ResultsReader
from protocol.entries import encode_window, encode_windows_entry
from protocol.keys import Keys
from protocol.results import decode_any_result, decode_multi_result
from protocol.span import Span
from tests.helpers import make_loop, stream_entries
from worker.loop import WorkerLoop
from worker.types import PredictorDefaults


def _windows(n: int, t: int = 20, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, t, 1)).astype(np.float32)


def test_mixed_single_and_multi_entries_each_get_one_result(
    r: redis.Redis, redis_url: str, prefix: str, checkpoint_root: Path
) -> None:
    loop = make_loop(redis_url, prefix, checkpoint_root, max_batch=64)
    keys, sk = Keys(prefix, prefix), Keys(prefix, prefix).shard(0)
    prod = Producer(r, keys)
    xs = _windows(10)
    single = prod.publish(xs[0], id="one")
    multi = prod.publish_batch(xs[1:9], ids=[f"m{i}" for i in range(8)])
    bad = xs[1:5].copy()
    bad[2, 3, 0] = np.nan
    partial = r.xadd(sk.windows, encode_windows_entry(bad, cids=list("abcd"))).decode()
    stats = loop.run()
    assert stats.results == 1 + 8 + 3 and stats.dead == 1
    entries = dict(stream_entries(r, sk.results))
    assert len(entries) == 3  # one result entry per input entry
    by_input = {f[b"in"].decode(): f for f in entries.values()}
    assert set(by_input) == {single, multi, partial}
    alone = loop.models.current.predict(list(xs[1:9]))
    got = decode_multi_result(by_input[multi])
    assert [g.cid for g in got] == [f"m{i}" for i in range(8)] and all(g.status == "ok" for g in got)
    assert np.allclose([g.probs for g in got], alone, atol=1e-5)
    part = decode_multi_result(by_input[partial])
    assert [g.status for g in part] == ["ok", "ok", "dead", "ok"] and by_input[partial][b"status"] == b"partial"
    assert part[2].label == -1 and part[2].probs == []
    (dead,) = [f for _, f in stream_entries(r, sk.dead)]
    assert dead[b"dead.id"].decode() == partial and msgpack.unpackb(dead[b"dead.windows"]) == [2]
    assert dead[b"dead.reason"] == b"nonfinite"
    assert r.xpending(sk.windows, prefix)["pending"] == 0
    # The results reader yields one result per window of either form.
    assert len(ResultsReader(r, keys).collect(13, timeout_s=5)) == 13


class FailsOn(PredictorDefaults):
    """A predictor that raises when any window holds ``value`` (a poison window in a multi entry)."""

    def __init__(self, inner: object, value: float) -> None:
        self.inner, self.value = inner, value
        self.version, self.classes, self.n_features = inner.version, inner.classes, inner.n_features  # type: ignore[attr-defined]

    def predict(self, xs: list[np.ndarray]) -> np.ndarray:
        if any(float(x[0, 0]) == self.value for x in xs):
            raise FloatingPointError("poison window")
        out: np.ndarray = self.inner.predict(xs)  # type: ignore[attr-defined]
        return out


def test_a_window_the_model_fails_on_is_dead_and_the_others_answered(
    r: redis.Redis, redis_url: str, prefix: str, checkpoint_root: Path
) -> None:
    loop = make_loop(redis_url, prefix, checkpoint_root)
    loop.models.current = FailsOn(loop.models.current, 42.0)
    keys, sk = Keys(prefix, prefix), Keys(prefix, prefix).shard(0)
    xs = _windows(6)
    xs[4, 0, 0] = 42.0
    eid = Producer(r, keys).publish_batch(xs)
    loop.run()
    ((_, fields),) = stream_entries(r, sk.results)
    rows = decode_multi_result(fields)
    assert [g.status for g in rows] == ["ok"] * 4 + ["dead", "ok"] and rows[4].reason == "predict_failed"  # type: ignore[attr-defined]
    (dead,) = [f for _, f in stream_entries(r, sk.dead)]
    assert dead[b"dead.id"].decode() == eid and msgpack.unpackb(dead[b"dead.windows"]) == [4]


def test_an_expired_multi_entry_gets_an_expired_result(
    r: redis.Redis, redis_url: str, prefix: str, checkpoint_root: Path
) -> None:
    loop = make_loop(redis_url, prefix, checkpoint_root)
    keys, sk = Keys(prefix, prefix), Keys(prefix, prefix).shard(0)
    Producer(r, keys).publish_batch(_windows(3), deadline_us=1)
    stats = loop.run()
    ((_, fields),) = stream_entries(r, sk.results)
    assert fields[b"status"] == b"expired" and [g.status for g in decode_multi_result(fields)] == ["expired"] * 3
    assert stats.expired == 3 and stats.windows == 0


def _loop_counting_passes(redis_url: str, prefix: str, checkpoint_root: Path) -> tuple[WorkerLoop, list[int]]:
    """A max_batch=64 loop whose model records the windows of each forward pass."""
    loop = make_loop(redis_url, prefix, checkpoint_root, max_batch=64)
    passes: list[int] = []
    inner = loop.models.current
    loop.models.current = FailsOn(inner, 1e9)
    loop.models.current.predict = lambda xs: (passes.append(len(xs)), inner.predict(xs))[1]  # type: ignore[method-assign, func-returns-value]
    return loop, passes


def test_max_batch_bounds_windows_not_entries(
    r: redis.Redis, redis_url: str, prefix: str, checkpoint_root: Path
) -> None:
    """64 entries of 16 windows: the collector counts windows from the entries' headers, so every
    batch (and forward pass) holds 64 windows, the first one included (issue 19: it held 1024)."""
    loop, sizes = _loop_counting_passes(redis_url, prefix, checkpoint_root)
    keys = Keys(prefix, prefix)
    Producer(r, keys).publish_many(list(_windows(2048)), per_entry=16)
    stats = loop.run()
    assert stats.windows == 2048 and max(sizes) == 64
    assert set(stats.batch_sizes) == {64}


def test_max_batch_holds_for_a_mix_of_1_7_and_64_window_entries(
    r: redis.Redis, redis_url: str, prefix: str, checkpoint_root: Path
) -> None:
    """Entries of 64, 7 and 1 windows (and one of 100) published before the worker starts: no forward
    pass and no reported ``batch`` exceeds ``max_batch``; the 100-window entry is served alone."""
    loop, passes = _loop_counting_passes(redis_url, prefix, checkpoint_root)
    keys = Keys(prefix, prefix)
    prod = Producer(r, keys)
    xs = _windows(64, seed=1)
    for i in range(20):
        prod.publish_batch(xs, ids=[f"a{i}-{j}" for j in range(64)])
        prod.publish_batch(xs[:7], ids=[f"b{i}-{j}" for j in range(7)])
        prod.publish(xs[0], id=f"c{i}")
    big = prod.publish_batch(_windows(100, seed=2))
    stats = loop.run()
    assert stats.windows == 20 * 72 + 100 and stats.results == 20 * 72 + 100
    assert max(passes) == 64 and max(stats.batch_sizes) == 64
    results = stream_entries(r, keys.shard(0).results)
    assert len(results) == 61
    reported = {f[b"in"].decode(): int(f[b"batch"]) for _, f in results}
    assert max(reported.values()) == 64 and min(reported.values()) >= 1
    assert reported[big] == 64  # in passes of 64 + 36, alone in its batch


def test_stream_window_spans_are_echoed_by_the_real_loop(
    r: redis.Redis, redis_url: str, prefix: str, checkpoint_root: Path
) -> None:
    loop = make_loop(redis_url, prefix, checkpoint_root, max_batch=64)
    sk = Keys(prefix, prefix).shard(0)
    xs = _windows(4)
    spans = [Span("dev-1", i, 1_000 * i, 1_000 * i + 900) for i in range(4)]
    one = r.xadd(sk.windows, encode_window(xs[0], span=spans[0])).decode()
    many = r.xadd(sk.windows, encode_windows_entry(xs, spans=spans)).decode()
    bad = encode_window(xs[0])
    bad[b"span"] = msgpack.packb({"key": "dev-1", "seq": -1, "t0": 0, "t1": 0})
    r.xadd(sk.windows, bad)
    stats = loop.run()
    assert stats.results == 5 and stats.dead == 1
    by_input = {f[b"in"].decode(): f for _, f in stream_entries(r, sk.results)}
    assert decode_any_result(by_input[one])[0].span == spans[0]
    assert [w.span for w in decode_any_result(by_input[many])] == spans
    (dead,) = [f for _, f in stream_entries(r, sk.dead)]
    assert dead[b"dead.reason"] == b"bad_span"
