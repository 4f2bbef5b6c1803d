"""Overlap: publish replies read later, the next batch collected while the model computes; nothing is lost."""

import threading
import time
from pathlib import Path

import numpy as np
import redis

from producer.client import Producer
from producer.results import ResultsReader
from protocol.keys import Keys
from protocol.results import Result, encode_result
from tests.helpers import make_loop
from worker import reader
from worker.publisher import Publisher
from worker.types import Output, PredictorDefaults, flat


def _setup(r: redis.Redis, prefix: str, n: int) -> tuple[Keys, list[reader.Entry]]:
    keys = Keys(prefix, prefix)
    Producer(r, keys).publish_many([np.zeros((20, 1), np.float32)] * n)
    reader.ensure_groups(r, keys)
    return keys, reader.read(r, keys, keys.shard(0), "c-0", n, None, False, 0)


def _outputs(entries: list[reader.Entry]) -> list[Output]:
    res = Result("", "", "ok", 0, "a", [1.0, 0.0], "v", "c-0", 0, 0, 0, 0, 0, 1)
    return [Output(e, "r", flat(encode_result(res))) for e in entries]


def test_send_publishes_at_once_and_reports_on_the_next_call(r: redis.Redis, prefix: str) -> None:
    keys, entries = _setup(r, prefix, 10)
    sk = keys.shard(0)
    pub = Publisher(r, keys, 1000, 1000)
    assert pub.send(_outputs(entries[:6])) == []
    assert pub.send(_outputs(entries[6:])) == [(6, 6)]
    assert pub.collect() == [(4, 4)]
    assert r.xlen(sk.results) == 10 and r.xpending(sk.windows, prefix)["pending"] == 0
    # Acknowledged inputs publish nothing a second time.
    pub.send(_outputs(entries[:3]))
    assert pub.collect() == [(3, 0)] and r.xlen(sk.results) == 10


def test_publish_payload_keeps_binary_fields_and_order(r: redis.Redis, prefix: str) -> None:
    keys, entries = _setup(r, prefix, 1)
    fields = {b"z": b"\x00\xff" * 40, b"a": b"", b"m": bytes(range(256))}
    Publisher(r, keys, 1000, 1000).publish([Output(entries[0], "d", flat(fields))])
    ((_, got),) = r.xrange(keys.shard(0).dead)
    assert list(got.items()) == list(fields.items())


def test_reset_forgets_unanswered_sends_and_inputs_stay_pending(r: redis.Redis, prefix: str) -> None:
    keys, entries = _setup(r, prefix, 4)
    pub = Publisher(r, keys, 1000, 1000)
    pub.reset()  # nothing to forget
    pub.send(_outputs(entries))
    pub.reset()
    assert pub.collect() == []
    assert pub.send([]) == []


class SlowModel(PredictorDefaults):
    """Wraps a predictor: each forward pass takes ``delay_s`` and records its span and thread."""

    def __init__(self, inner: object, delay_s: float) -> None:
        self.inner, self.delay_s = inner, delay_s
        self.version, self.classes, self.n_features = inner.version, inner.classes, inner.n_features  # type: ignore[attr-defined]
        self.spans: list[tuple[int, int]] = []
        self.threads: set[str] = set()

    def predict(self, xs: list[np.ndarray]) -> np.ndarray:
        t0 = time.time_ns() // 1000
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay_s)
        out: np.ndarray = self.inner.predict(xs)  # type: ignore[attr-defined]
        self.spans.append((t0, time.time_ns() // 1000))
        return out


def _trickle(prod: Producer, n: int, gap_s: float) -> threading.Thread:
    def run() -> None:
        for i in range(n):
            prod.publish(np.zeros((20, 1), np.float32), id=f"t{i}")
            time.sleep(gap_s)

    t = threading.Thread(target=run)
    t.start()
    return t


def test_next_batch_is_read_while_the_model_computes(
    r: redis.Redis, redis_url: str, prefix: str, checkpoint_root: Path
) -> None:
    """Continuous batching: windows arriving during a 30 ms forward pass are read during it, form
    the next batch (never waiting while the model is idle), and every window is served once."""
    loop = make_loop(redis_url, prefix, checkpoint_root, max_batch=64, burst_idle_ms=300)
    model = SlowModel(loop.models.current, 0.03)
    loop.models.current = model
    keys = Keys(prefix, prefix)
    t = _trickle(Producer(redis.Redis.from_url(redis_url), keys), 60, 0.002)
    stats = loop.run()
    t.join()
    assert stats.results == 60 and max(stats.batch_sizes) > 1
    assert model.threads == {"compute_0"}  # the forward pass ran off the loop thread
    results = ResultsReader(r, keys).collect(60, timeout_s=5)
    assert sorted(res.cid for res in results) == sorted(f"t{i}" for i in range(60))
    # An entry of a later batch was read before the previous batch's forward pass ended.
    read_at = {res.cid: res.ts_us - res.e2e_us + res.queue_us for res in results}
    first_batch_end = model.spans[0][1]
    later = [res for res in results if res.ts_us > first_batch_end + 1000]
    assert any(read_at[res.cid] < first_batch_end for res in later)
    assert r.xpending(keys.shard(0).windows, prefix)["pending"] == 0


def test_without_overlap_the_model_runs_on_the_loop_thread(
    r: redis.Redis, redis_url: str, prefix: str, checkpoint_root: Path
) -> None:
    loop = make_loop(redis_url, prefix, checkpoint_root, max_batch=16, overlap=False)
    model = SlowModel(loop.models.current, 0.0)
    loop.models.current = model
    keys = Keys(prefix, prefix)
    Producer(r, keys).publish_many([np.zeros((20, 1), np.float32)] * 40)
    stats = loop.run()
    assert list(stats.batch_sizes) == [16, 16, 8]
    assert model.threads == {threading.current_thread().name}


def test_stop_serves_the_batch_in_flight(
    r: redis.Redis, redis_url: str, prefix: str, checkpoint_root: Path
) -> None:
    loop = make_loop(redis_url, prefix, checkpoint_root, max_batch=8, burst=False)
    loop.models.current = SlowModel(loop.models.current, 0.3)
    keys = Keys(prefix, prefix)
    Producer(r, keys).publish_many([np.zeros((20, 1), np.float32)] * 40)
    reader.ensure_groups(r, keys)
    assert loop.step()
    assert loop.compute.inflight == 1 and r.xlen(keys.shard(0).results) == 0  # computing, not yet published
    loop.stop.set()
    stats = loop.run()
    assert stats.results == 8  # the batch in flight, nothing more
    assert r.xpending(keys.shard(0).windows, prefix)["pending"] == 0
    assert r.xlen(keys.shard(0).results) == 8


def test_a_lone_window_is_published_at_once_not_after_the_next_block(
    r: redis.Redis, redis_url: str, prefix: str, checkpoint_root: Path
) -> None:
    """A computed batch is never held while the collector blocks for new entries (block_ms 3 s)."""
    keys = Keys(prefix, prefix)
    reader.ensure_groups(r, keys)
    for overlap in (True, False):
        loop = make_loop(redis_url, prefix, checkpoint_root, burst=False, block_ms=3000, overlap=overlap)
        t = threading.Thread(target=loop.run, daemon=True)
        t.start()
        try:
            time.sleep(0.3)  # the loop is blocking on an empty stream
            t0 = time.monotonic()
            Producer(r, keys).publish(np.zeros((20, 1), np.float32), id=f"lone-{overlap}")
            got = ResultsReader(r, keys).collect(2 if not overlap else 1, timeout_s=2.5)
            assert any(res.cid == f"lone-{overlap}" for res in got)
            assert time.monotonic() - t0 < 1.0, f"overlap={overlap}: result held back"
        finally:
            loop.stop.set()
            t.join(5)
