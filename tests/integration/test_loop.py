"""The real worker loop, driven in burst mode against the session's redis-server."""

from pathlib import Path

import msgpack
import numpy as np
import redis

from producer.client import Producer
from producer.results import ResultsReader
from protocol.entries import encode_window
from protocol.keys import Keys
from tests.helpers import make_loop, run_with_trickle, stream_entries


def test_batches_fill_up_to_max_batch(r: redis.Redis, redis_url: str, prefix: str, checkpoint_root: Path) -> None:
    loop = make_loop(redis_url, prefix, checkpoint_root, max_batch=16, max_wait_ms=50)
    keys = Keys(prefix, prefix)
    Producer(r, keys).publish_many([np.zeros((20, 1), np.float32)] * 40)
    stats = loop.run()
    assert stats.results == 40
    assert list(stats.batch_sizes) == [16, 16, 8]


def test_batch_closes_after_max_wait(r: redis.Redis, redis_url: str, prefix: str, checkpoint_root: Path) -> None:
    """With windows trickling in slower than max_wait, batches close on time, not on size."""
    loop = make_loop(redis_url, prefix, checkpoint_root, max_batch=64, batch_wait="fixed", max_wait_ms=20, burst_idle_ms=600)
    keys = Keys(prefix, prefix)
    stats = run_with_trickle(loop, Producer(redis.Redis.from_url(redis_url), keys), 6, 0.1)
    assert stats.results == 6
    assert max(stats.batch_sizes) <= 2  # 100 ms apart, 20 ms wait: never six in one batch
    waits = [res.wait_us for res in ResultsReader(r, keys).collect(6, timeout_s=5)]
    assert max(waits) < 200_000


def test_variable_length_windows_in_one_batch(r: redis.Redis, redis_url: str, prefix: str, checkpoint_root: Path) -> None:
    loop = make_loop(redis_url, prefix, checkpoint_root, max_batch=64)
    keys = Keys(prefix, prefix)
    rng = np.random.default_rng(3)
    windows = [rng.standard_normal((t, 1)).astype(np.float32) for t in (5, 20, 13, 40, 1)]
    ids = Producer(r, keys).publish_many(windows, ids=[f"c{i}" for i in range(5)])
    stats = loop.run()
    assert list(stats.batch_sizes) == [5]
    results = {res.input_id: res for res in ResultsReader(r, keys).collect(5)}
    assert set(results) == set(ids)
    # Each window's probabilities equal those of the window served alone (padding changes nothing).
    alone = loop.models.current.predict([windows[3]])[0]
    assert np.allclose(results[ids[3]].probs, alone, atol=1e-5)


def test_malformed_entry_dead_lettered_and_worker_keeps_serving(
    r: redis.Redis, redis_url: str, prefix: str, checkpoint_root: Path
) -> None:
    loop = make_loop(redis_url, prefix, checkpoint_root)
    keys = Keys(prefix, prefix)
    sk = keys.shard(0)
    prod = Producer(r, keys)
    good1 = prod.publish(np.zeros((20, 1), np.float32), id="g1")
    bad = r.xadd(sk.windows, {b"v": b"1", b"x": b"\xc1garbage", b"ts": b"1", b"cid": b"bad"}).decode()
    wrong_f = r.xadd(sk.windows, encode_window(np.zeros((20, 3), np.float32), cid="f3")).decode()
    good2 = prod.publish(np.ones((20, 1), np.float32), id="g2")
    stats = loop.run()
    assert stats.results == 2 and stats.dead == 2
    dead = {f[b"dead.id"].decode(): f for _, f in stream_entries(r, sk.dead)}
    assert set(dead) == {bad, wrong_f}
    assert dead[bad][b"dead.reason"] == b"bad_x" and dead[bad][b"cid"] == b"bad"
    assert dead[wrong_f][b"dead.reason"] == b"bad_features"
    assert {res.input_id for res in ResultsReader(r, keys).collect(2)} == {good1, good2}
    # Everything acknowledged: nothing pending in the group.
    assert r.xpending(sk.windows, prefix)["pending"] == 0


def test_expired_window_gets_expired_result(r: redis.Redis, redis_url: str, prefix: str, checkpoint_root: Path) -> None:
    loop = make_loop(redis_url, prefix, checkpoint_root)
    keys = Keys(prefix, prefix)
    Producer(r, keys).publish(np.zeros((20, 1), np.float32), id="late", deadline_us=1)
    loop.run()
    (res,) = ResultsReader(r, keys).collect(1)
    assert res.status == "expired" and res.label == -1 and res.cid == "late"


def test_forward_failure_isolated_to_one_window(r: redis.Redis, redis_url: str, prefix: str, checkpoint_root: Path) -> None:
    loop = make_loop(redis_url, prefix, checkpoint_root, max_batch=64)
    keys = Keys(prefix, prefix)
    inner = loop.models.current
    real_predict = inner.predict

    def predict(xs: list[np.ndarray]) -> np.ndarray:
        if any(float(x[0, 0]) == 42.0 for x in xs):
            raise RuntimeError("poison window")
        return real_predict(xs)

    inner.predict = predict  # type: ignore[method-assign]
    windows = [np.zeros((20, 1), np.float32) for _ in range(64)]
    windows[17] = np.full((20, 1), 42.0, np.float32)
    ids = Producer(r, keys).publish_many(windows)
    stats = loop.run()
    assert stats.results == 63 and stats.dead == 1
    (dead,) = [f for _, f in stream_entries(r, keys.shard(0).dead)]
    assert dead[b"dead.id"].decode() == ids[17] and dead[b"dead.reason"] == b"predict_failed"


def test_result_probabilities_match_model(r: redis.Redis, redis_url: str, prefix: str, checkpoint_root: Path) -> None:
    loop = make_loop(redis_url, prefix, checkpoint_root)
    keys = Keys(prefix, prefix)
    x = np.random.default_rng(0).standard_normal((20, 1)).astype(np.float32)
    Producer(r, keys).publish(x, id="one", meta={"label": "0"})
    loop.run()
    (res,) = ResultsReader(r, keys).collect(1)
    expect = loop.models.current.predict([x])[0]
    assert np.allclose(res.probs, expect, atol=1e-6) and res.label == int(np.argmax(expect))
    assert res.meta == {"label": "0"} and res.model == loop.models.current.version
    assert msgpack.unpackb(r.xrange(keys.shard(0).results)[0][1][b"probs"]) == res.probs
