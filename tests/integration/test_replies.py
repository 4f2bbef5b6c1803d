"""Reply streams: an input entry's ``reply`` field, the worker writing each output there exactly once
(same publish script, same XACK gate), caps and expiry, and ``Producer.classify`` on top of them."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import redis
import redis.asyncio

from producer.cli import main as producer_main
from producer.client import AsyncProducer, ClassifyError, Producer
from protocol.entries import decode_multi, decode_window, encode_window, encode_windows_entry
from protocol.keys import Keys
from protocol.wire import Limits, WireError, decode_reply, reply_field
from tests.chaos_support import kill9_holding_batch, live, start_worker, stop, wait_until
from tests.helpers import make_loop, stream_entries
from worker.loop import WorkerLoop

ROOT = Path(__file__).resolve().parents[2]


def _windows(n: int, seed: int = 0) -> list[np.ndarray]:
    return list(np.random.default_rng(seed).standard_normal((n, 20, 1)).astype(np.float32))


def _publish(r: redis.Redis, keys: Keys, windows: list[np.ndarray], replies: Sequence[str | None]) -> list[str]:
    pipe = r.pipeline(transaction=False)
    for i, (x, name) in enumerate(zip(windows, replies)):
        pipe.xadd(keys.shard(0).windows, encode_window(x, cid=f"w{i}", reply=name))
    return [eid.decode() for eid in pipe.execute()]


def _input_id(fields: dict[bytes, bytes]) -> str:
    return (fields.get(b"dead.id") or fields[b"in"]).decode()


# -- wire and keys --------------------------------------------------------------------------------


def test_reply_key_shares_the_shard_hash_tag() -> None:
    assert Keys("bigru").shard(0).reply("job-42") == "{bigru}:reply:job-42"
    assert Keys("bigru", shards=4).shard(3).reply("a.b:c_d") == "{bigru:3}:reply:a.b:c_d"
    for bad in ("", "a b", "x" * 65, "é", "a{b}"):
        with pytest.raises(ValueError):
            Keys("bigru").shard(0).reply(bad)


def test_reply_field_decoding() -> None:
    x = np.zeros((3, 1), np.float32)
    assert decode_window(encode_window(x), Limits()).reply is None
    assert decode_window(encode_window(x, reply="job-42"), Limits()).reply == "job-42"
    multi = encode_windows_entry(np.zeros((2, 3, 1), np.float32))
    multi[b"reply"] = reply_field("m-1")
    assert decode_multi(multi, Limits()).reply == "m-1"
    for raw in (b"", b"a b", b"x" * 65, "é".encode(), b"\xff"):
        fields = {**encode_window(x), b"reply": raw}
        with pytest.raises(WireError) as e:
            decode_window(fields, Limits())
        assert e.value.reason == "bad_reply"
        with pytest.raises(WireError):
            decode_reply(fields)
    with pytest.raises(ValueError):
        encode_window(x, reply="no spaces")


def test_doc_example_is_byte_exact() -> None:
    text = (ROOT / "docs" / "wire-format.md").read_text()
    section = text[text.index("## Reply streams"):]
    blocks = dict(re.findall(r"<!-- example:(\w+) -->\s*```text\n(.*?)```", section, re.S))
    fields = encode_window(np.array([0.5, -1.0, 2.0], np.float32), cid="sensor-7", ts_us=1764230400000000,
                           reply="job-42")
    assert fields[b"reply"].hex() == blocks["reply"].strip()
    assert Keys("bigru").shard(0).reply("job-42").encode().hex() == blocks["reply_key"].strip()
    assert list(fields) == [b"v", b"x", b"ts", b"cid", b"reply"]


# -- the worker -----------------------------------------------------------------------------------


def test_replies_delivered_exactly_once(r: redis.Redis, redis_url: str, prefix: str, checkpoint_root: Path) -> None:
    keys = Keys(prefix, prefix)
    sk = keys.shard(0)
    xs = _windows(60)
    xs[7] = xs[7].copy()
    xs[7][3, 0] = np.nan  # dead-lettered: its dead letter goes to reply "a"
    replies: list[str | None] = ["a" if i % 3 == 0 or i == 7 else "b" if i % 3 == 1 else None for i in range(60)]
    ids = _publish(r, keys, xs, replies)
    bad = r.xadd(sk.windows, {**encode_window(xs[0]), b"reply": b"not valid!"}).decode()
    multi = encode_windows_entry(np.stack(xs[:4]), cids=["m0", "m1", "m2", "m3"])
    multi[b"reply"] = b"m"
    multi_id = r.xadd(sk.windows, multi).decode()
    make_loop(redis_url, prefix, checkpoint_root).run()

    got = {name: [_input_id(f) for _, f in stream_entries(r, sk.reply(name))] for name in ("a", "b", "m")}
    assert Counter(got["a"]) == Counter(i for i, n in zip(ids, replies) if n == "a")
    assert Counter(got["b"]) == Counter(i for i, n in zip(ids, replies) if n == "b")
    assert got["m"] == [multi_id]
    (dead_a,) = [f for _, f in stream_entries(r, sk.reply("a")) if b"dead.id" in f]
    assert dead_a[b"dead.id"].decode() == ids[7] and dead_a[b"dead.reason"] == b"nonfinite"
    # The shared streams get everything as before (results_shared defaults to true).
    results = [f[b"in"].decode() for _, f in stream_entries(r, sk.results)]
    dead = {f[b"dead.id"].decode(): f[b"dead.reason"] for _, f in stream_entries(r, sk.dead)}
    assert Counter(results) == Counter([i for j, i in enumerate(ids) if j != 7] + [multi_id])
    assert dead == {ids[7]: b"nonfinite", bad: b"bad_reply"}
    for name in ("a", "b", "m"):
        assert 0 < r.ttl(sk.reply(name)) <= 300


def test_results_shared_false_writes_only_to_the_reply_stream(
    r: redis.Redis, redis_url: str, prefix: str, checkpoint_root: Path
) -> None:
    keys = Keys(prefix, prefix)
    sk = keys.shard(0)
    xs = _windows(20)
    xs[1] = np.full((20, 1), np.nan, np.float32)
    replies: list[str | None] = ["solo" if i < 10 else None for i in range(20)]
    ids = _publish(r, keys, xs, replies)
    make_loop(redis_url, prefix, checkpoint_root, results_shared=False).run()
    assert Counter(_input_id(f) for _, f in stream_entries(r, sk.reply("solo"))) == Counter(ids[:10])
    assert Counter(f[b"in"].decode() for _, f in stream_entries(r, sk.results)) == Counter(ids[10:])
    assert r.xlen(sk.dead) == 0  # window 1's dead letter went only to its reply stream


def test_reply_streams_are_capped_and_expire(r: redis.Redis, redis_url: str, prefix: str, checkpoint_root: Path) -> None:
    keys = Keys(prefix, prefix)
    sk = keys.shard(0)
    n = 600
    _publish(r, keys, _windows(n), ["capped"] * n)
    make_loop(redis_url, prefix, checkpoint_root, reply_maxlen=10, reply_ttl_s=60).run()
    assert r.xlen(sk.results) == n
    # MAXLEN ~ trims whole radix-tree nodes (100 entries each by default): far below n, never below 10.
    assert 10 <= r.xlen(sk.reply("capped")) <= 200
    assert 0 < r.ttl(sk.reply("capped")) <= 60


def test_kill9_worker_mid_stream_each_reply_once(
    r: redis.Redis, prefix: str, worker_env: dict[str, str], tmp_path: Path
) -> None:
    keys = Keys(prefix, prefix)
    sk = keys.shard(0)
    env = {**worker_env, "BIGRU_CLAIM_IDLE_MS": "1000", "BIGRU_RECLAIM_INTERVAL_MS": "200",
           "BIGRU_HEARTBEAT_INTERVAL_S": "0.5", "BIGRU_MAX_BATCH": "32"}
    n = 4000
    names = [f"c{i % 8}" for i in range(n)]
    a = start_worker(env, "a", tmp_path / "a.log")
    b = None
    try:
        wait_until(lambda: live(r, keys, "a-0"), 90, "worker a to start")
        ids = []
        for lo in range(0, n, 500):
            ids += _publish(r, keys, _windows(500, seed=lo), names[lo: lo + 500])
        wait_until(lambda: r.xlen(sk.results) >= 300, 60, "300 results", interval=0.005)
        held = kill9_holding_batch(a, r, keys, "a-0")
        assert held
        b = start_worker(env, "b", tmp_path / "b.log")

        def replies() -> int:
            return sum(int(r.xlen(sk.reply(name))) for name in set(names))

        wait_until(lambda: replies() >= n, 180, f"{n} replies")
        time.sleep(0.5)  # let any duplicate surface
    finally:
        for p in (a, b):
            if p is not None:
                stop(p)
    for name in set(names):
        got = Counter(_input_id(f) for _, f in stream_entries(r, sk.reply(name)))
        expect = Counter(i for i, nm in zip(ids, names) if nm == name)
        assert got == expect, name
    assert Counter(f[b"in"].decode() for _, f in stream_entries(r, sk.results)) == Counter(ids)
    assert r.xpending(sk.windows, prefix)["pending"] == 0


# -- classify -------------------------------------------------------------------------------------


@pytest.fixture
def serving(redis_url: str, prefix: str, checkpoint_root: Path) -> Iterator[WorkerLoop]:
    """A real WorkerLoop serving in a thread until the test ends."""
    loop = make_loop(redis_url, prefix, checkpoint_root, burst=False, block_ms=50)
    t = threading.Thread(target=loop.run, daemon=True)
    t.start()
    yield loop
    loop.stop.set()
    t.join(30)


def test_classify_returns_results_in_order(r: redis.Redis, prefix: str, serving: WorkerLoop) -> None:
    keys = Keys(prefix, prefix)
    xs = _windows(40, seed=3)
    results = Producer(r, keys, pipeline_size=7).classify(xs, timeout=30)
    assert [res.cid for res in results] == [str(i) for i in range(40)]
    assert all(res.status == "ok" and len(res.probs) == 2 for res in results)
    named = Producer(r, keys).classify(xs[:3], [f"id-{i}" for i in range(3)], timeout=30)
    assert [res.cid for res in named] == ["id-0", "id-1", "id-2"]
    assert [res.label for res in named] == [res.label for res in results[:3]]
    assert not list(r.scan_iter(f"*{prefix}*:reply:*"))  # deleted after use
    assert Producer(r, keys).classify([], timeout=1) == []


def test_classify_times_out_without_a_worker(r: redis.Redis, prefix: str) -> None:
    keys = Keys(prefix, prefix)
    t0 = time.monotonic()
    with pytest.raises(ClassifyError) as e:
        Producer(r, keys).classify(_windows(3), timeout=0.3)
    assert time.monotonic() - t0 < 5
    assert e.value.timed_out == [0, 1, 2] and e.value.dead == {} and e.value.results == [None, None, None]
    assert "3 timed out: 0, 1, 2" in str(e.value)
    assert not list(r.scan_iter(f"*{prefix}*:reply:*"))


def test_classify_names_a_dead_lettered_window(r: redis.Redis, prefix: str, serving: WorkerLoop) -> None:
    keys = Keys(prefix, prefix)
    xs = _windows(5)
    xs[2] = np.full((20, 1), np.nan, np.float32)
    with pytest.raises(ClassifyError) as e:
        Producer(r, keys).classify(xs, ["a", "b", "c", "d", "e"], timeout=30)
    assert e.value.dead == {2: "nonfinite"} and e.value.timed_out == []
    assert [res.cid if res else None for res in e.value.results] == ["a", "b", None, "d", "e"]
    assert "dead-lettered: c (nonfinite)" in str(e.value)


def test_async_classify(redis_url: str, prefix: str, serving: WorkerLoop) -> None:
    keys = Keys(prefix, prefix)

    async def go() -> tuple[list[str], ClassifyError]:
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            prod = AsyncProducer(client, keys)
            ok = await prod.classify(_windows(12), timeout=30)
            with pytest.raises(ClassifyError) as e:
                await AsyncProducer(client, Keys(prefix + "-idle", prefix)).classify(_windows(2), timeout=0.2)
            return [res.cid for res in ok], e.value
        finally:
            await client.aclose()

    cids, err = asyncio.run(go())
    assert cids == [str(i) for i in range(12)]
    assert err.timed_out == [0, 1]


def test_cli_classify(redis_url: str, prefix: str, serving: WorkerLoop, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert producer_main(["--redis-url", redis_url, "--prefix", prefix, "classify", "synthetic", "--count", "5",
                          "--json"]) == 0
    # (the serving loop's log lines share stdout)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"')]
    assert [d["cid"] for d in lines] == ["0", "1", "2", "3", "4"] and all(d["status"] == "ok" for d in lines)
    assert producer_main(["--redis-url", redis_url, "--prefix", prefix, "classify", "synthetic", "--count", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in out if re.match(r"\d+ ", line)] == [["0", "ok"], ["1", "ok"]]


def test_classify_under_the_documented_acl_users(
    r: redis.Redis, redis_url: str, prefix: str, checkpoint_root: Path
) -> None:
    """The least-privilege worker may write, cap and expire reply streams; the producer may read and delete them."""
    import uuid

    from protocol.security import acl_rules

    users = {}
    for role in ("worker", "producer"):
        pw = uuid.uuid4().hex
        r.execute_command("ACL", "SETUSER", f"{prefix}-{role}", *acl_rules(role, prefix), f">{pw}")
        users[role] = redis.Redis.from_url(redis_url, username=f"{prefix}-{role}", password=pw)
    loop = make_loop(redis_url, prefix, checkpoint_root, client=users["worker"], burst=False, block_ms=50)
    t = threading.Thread(target=loop.run, daemon=True)
    t.start()
    try:
        results = Producer(users["producer"], Keys(prefix, prefix)).classify(_windows(6), timeout=30)
        assert [res.cid for res in results] == [str(i) for i in range(6)]
        assert t.is_alive()
    finally:
        loop.stop.set()
        t.join(30)
        for role, c in users.items():
            c.close()
            r.execute_command("ACL", "DELUSER", f"{prefix}-{role}")
