"""Deferred publish replies and read-ahead: Redis works while the worker computes, nothing is lost."""

from pathlib import Path

import numpy as np
import redis

from producer.client import Producer
from producer.results import ResultsReader
from tests.helpers import make_loop
from worker import streams
from worker.keys import Keys
from worker.streams import Output, Publisher, ReadAhead
from worker.wire import Result, encode_result


def _setup(r: redis.Redis, prefix: str, n: int) -> tuple[Keys, list[streams.Entry]]:
    keys = Keys(prefix, prefix)
    Producer(r, keys).publish_many([np.zeros((20, 1), np.float32)] * n)
    streams.ensure_groups(r, keys)
    return keys, streams.read(r, keys, keys.shard(0), "c-0", n, None, False, 0)


def _outputs(entries: list[streams.Entry]) -> list[Output]:
    res = Result("", "", "ok", 0, "a", [1.0, 0.0], "v", "c-0", 0, 0, 0, 0, 0, 1)
    return [Output(e, "r", encode_result(res)) for e in entries]


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
    Publisher(r, keys, 1000, 1000).publish([Output(entries[0], "d", fields)])
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


def test_read_ahead_delivers_entries_with_fields(r: redis.Redis, prefix: str) -> None:
    keys = Keys(prefix, prefix)
    ids = Producer(r, keys).publish_many([np.full((3, 1), i, np.float32) for i in range(5)], ids=list("abcde"))
    streams.ensure_groups(r, keys)
    ra = ReadAhead(r, keys, "c-0")
    assert ra.take(1) == [] and not ra.pending
    ra.request(0, 3)
    assert ra.pending
    got = ra.take(42)
    assert [e.id for e in got] == ids[:3] and all(e.read_us == 42 for e in got)
    assert got[1].fields[b"cid"] == b"b"
    assert r.xpending(keys.shard(0).windows, prefix)["pending"] == 3
    ra.request(0, 10)
    assert [e.id for e in ra.take(0)] == ids[3:]
    ra.request(0, 10)
    assert ra.take(0) == []


def test_saturated_loop_reads_ahead_and_serves_each_window_once(
    r: redis.Redis, redis_url: str, prefix: str, checkpoint_root: Path
) -> None:
    loop = make_loop(redis_url, prefix, checkpoint_root, max_batch=16)
    requests = []
    real = loop.read_ahead.request
    loop.read_ahead.request = lambda shard, count: (requests.append(count), real(shard, count))  # type: ignore[method-assign]
    keys = Keys(prefix, prefix)
    ids = Producer(r, keys).publish_many([np.zeros((20, 1), np.float32)] * 100)
    stats = loop.run()
    assert stats.results == 100 and sum(stats.batch_sizes) == 100
    assert len(requests) >= 5
    results = ResultsReader(r, keys).collect(100, timeout_s=5)
    assert sorted(res.input_id for res in results) == sorted(ids)
    assert r.xpending(keys.shard(0).windows, prefix)["pending"] == 0


def test_stop_serves_the_batch_already_read_ahead(
    r: redis.Redis, redis_url: str, prefix: str, checkpoint_root: Path
) -> None:
    loop = make_loop(redis_url, prefix, checkpoint_root, max_batch=8, burst=False)
    keys = Keys(prefix, prefix)
    Producer(r, keys).publish_many([np.zeros((20, 1), np.float32)] * 40)
    streams.ensure_groups(r, keys)
    assert loop.step()
    assert loop.read_ahead.pending
    loop.stop.set()
    stats = loop.run()
    assert stats.results == 16  # the first batch and the one read ahead, nothing more
    assert r.xpending(keys.shard(0).windows, prefix)["pending"] == 0
    assert r.xlen(keys.shard(0).results) == 16
