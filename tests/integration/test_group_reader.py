"""``GroupResultsReader``: results through a consumer group, against the real redis-server.

The guarantee checked here: at-least-once processing with acknowledgements. Every result entry is
processed at least once and acknowledged exactly once (Redis acknowledges an entry only while it is
pending, so a second ``XACK`` counts 0); entries a killed reader processed but had not acknowledged
are delivered again (to another consumer after ``claim_idle_ms``, or to the same consumer name on
restart), and those are the only ones processed twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest
import redis

from producer import cli
from producer.group_reader import EntryId, GroupResultsReader
from protocol.keys import Keys
from protocol.results import Result, encode_result

ROOT = Path(__file__).resolve().parents[2]


def _result(cid: str) -> Result:
    return Result(input_id="1-0", cid=cid, status="ok", label=1, class_name="b", probs=[0.25, 0.75], model="m",
                  worker="w", queue_us=1, wait_us=2, infer_us=3, e2e_us=4, ts_us=5, batch=1)


def _write(r: redis.Redis, keys: Keys, n: int, first: int = 0) -> None:
    """``n`` single-window result entries with client ids ``c<i>``, spread over the shards."""
    pipe = r.pipeline(transaction=False)
    for i in range(first, first + n):
        pipe.xadd(keys.shard(i % keys.shards).results, encode_result(_result(f"c{i}")))
    pipe.execute()


def _multi(cids: list[str]) -> dict[bytes, bytes]:
    n = len(cids)
    p = msgpack.packb
    return {b"v": b"1", b"in": b"7-0", b"cid": b"", b"n": str(n).encode(), b"status": b"ok", b"cids": p(cids),
            b"statuses": p(["ok"] * n), b"labels": p([0] * n), b"classes": p(["a"] * n),
            b"probs": p([[1.0, 0.0]] * n), b"model": b"m", b"worker": b"w", b"queue_us": b"1", b"wait_us": b"2",
            b"infer_us": b"3", b"e2e_us": b"4", b"ts": b"5", b"batch": str(n).encode()}


def _pending(r: redis.Redis, keys: Keys, group: str) -> int:
    return sum(int(r.xpending(sk.results, group)["pending"]) for sk in keys.all_shards())


def _wait(cond: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def test_two_readers_share_the_results_none_lost_or_doubled(r: redis.Redis, redis_url: str, prefix: str) -> None:
    keys = Keys(prefix, prefix, 2)  # two shards: entry ids repeat across them, EntryId tells them apart
    n = 10_000
    _write(r, keys, n)
    got: dict[str, list[str]] = {"a": [], "b": []}
    acked = {"a": 0, "b": 0}

    def run(name: str) -> None:
        reader = GroupResultsReader(redis.Redis.from_url(redis_url), keys, "db-writer", name)
        idle = 0
        while idle < 5:
            items = reader.poll(count=50, block_ms=50)
            idle = 0 if items else idle + 1
            for _, results in items:
                got[name] += [res.cid for res in results]
            acked[name] += reader.ack(eid for eid, _ in items)

    threads = [threading.Thread(target=run, args=(name,)) for name in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    a, b = got["a"], got["b"]
    assert len(a) + len(b) == n and set(a) | set(b) == {f"c{i}" for i in range(n)}
    assert not set(a) & set(b)
    assert a and b  # both took a share
    assert acked["a"] + acked["b"] == n
    assert _pending(r, keys, "db-writer") == 0


def test_a_new_group_starts_at_the_beginning_or_with_dollar_at_the_end(r: redis.Redis, prefix: str) -> None:
    keys = Keys(prefix, prefix, 1)
    _write(r, keys, 3)
    old = GroupResultsReader(r, keys, "from-start", "x")
    new = GroupResultsReader(r, keys, "from-now", "x", start="$")
    _write(r, keys, 2, first=3)
    assert [res[1][0].cid for res in old.poll()] == ["c0", "c1", "c2", "c3", "c4"]
    assert [res[1][0].cid for res in new.poll()] == ["c3", "c4"]
    with pytest.raises(ValueError):
        GroupResultsReader(r, keys, "g", "x", start="5-0")


def test_multi_window_entries_are_acked_per_entry(r: redis.Redis, prefix: str) -> None:
    keys = Keys(prefix, prefix, 1)
    stream = keys.shard(0).results
    r.xadd(stream, _multi(["a0", "a1", "a2"]))
    r.xadd(stream, encode_result(_result("single")))
    r.xadd(stream, _multi(["b0", "b1"]))
    reader = GroupResultsReader(r, keys, "g", "w1")
    items = reader.poll()
    assert [[res.cid for res in results] for _, results in items] == [["a0", "a1", "a2"], ["single"], ["b0", "b1"]]
    assert _pending(r, keys, "g") == 3  # one pending entry per result entry, not per window
    assert reader.ack([items[0][0]]) == 1
    assert _pending(r, keys, "g") == 2
    assert reader.ack([items[0][0]]) == 0  # acknowledged once only
    assert reader.ack([eid.id for eid, _ in items[1:]]) == 2  # plain ids are fine with one shard
    assert _pending(r, keys, "g") == 0


def test_iter_acks_an_entry_when_the_next_one_is_asked_for(r: redis.Redis, prefix: str) -> None:
    keys = Keys(prefix, prefix, 1)
    stream = keys.shard(0).results
    r.xadd(stream, _multi(["a0", "a1"]))
    _write(r, keys, 3)
    reader = GroupResultsReader(r, keys, "g", "w1")
    it = reader.iter()
    eid, results = next(it)
    assert [res.cid for res in results] == ["a0", "a1"] and _pending(r, keys, "g") == 4
    next(it)
    it.close()  # stopped while handling c0: a0/a1 acknowledged, c0 not
    assert _pending(r, keys, "g") == 3
    assert [results[0].cid for _, results in reader.iter()] == ["c0", "c1", "c2"]  # c0 again, then the rest
    assert _pending(r, keys, "g") == 0
    # count counts windows, rounded up to whole entries
    r.xadd(stream, _multi(["d0", "d1", "d2"]))
    _write(r, keys, 1, first=9)
    assert [[x.cid for x in res] for _, res in reader.iter(count=2)] == [["d0", "d1", "d2"]]
    assert _pending(r, keys, "g") == 1


def test_malformed_and_trimmed_entries_are_acked_and_skipped(r: redis.Redis, prefix: str) -> None:
    keys = Keys(prefix, prefix, 1)
    stream = keys.shard(0).results
    _write(r, keys, 1)
    r.xadd(stream, {b"v": b"1", b"in": b"1-0", b"garbage": b"x"})
    r.xadd(stream, {**_multi(["a", "b"]), b"labels": b"\xc1"})
    _write(r, keys, 1, first=1)
    reader = GroupResultsReader(r, keys, "g", "w1")
    items = reader.poll()
    assert [results[0].cid for _, results in items] == ["c0", "c1"]
    assert _pending(r, keys, "g") == 2  # the two malformed ones are acknowledged already
    # an entry deleted (trimmed) while pending: the restarted consumer acknowledges it and goes on
    r.xdel(stream, items[0][0].id)
    again = GroupResultsReader(r, keys, "g", "w1").poll()
    assert [results[0].cid for _, results in again] == ["c1"]
    assert _pending(r, keys, "g") == 1


def test_a_restarted_reader_reads_its_own_pending_first(r: redis.Redis, redis_url: str, prefix: str) -> None:
    keys = Keys(prefix, prefix, 2)
    _write(r, keys, 6)
    first = GroupResultsReader(r, keys, "g", "w1", claim_idle_ms=None)
    taken = first.poll(count=2)  # 2 per shard, then "crash" without acknowledging
    assert len(taken) == 4
    _write(r, keys, 4, first=6)
    restarted = GroupResultsReader(redis.Redis.from_url(redis_url), keys, "g", "w1", claim_idle_ms=None)
    again = restarted.poll(count=2)
    assert [eid for eid, _ in again] == [eid for eid, _ in taken]  # its own pending entries, before any new one
    restarted.ack(eid for eid, _ in again)
    rest = restarted.poll(count=100)
    assert sorted(res[0].cid for _, res in rest) == sorted(f"c{i}" for i in range(4, 10))
    assert restarted.poll() == []


DRIVER = textwrap.dedent("""
    import sys, time, redis
    from producer.group_reader import GroupResultsReader
    from protocol.keys import Keys
    url, prefix, out, hold_after = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    reader = GroupResultsReader(redis.Redis.from_url(url), Keys(prefix, prefix, 2), "db-writer", "victim")
    batches = 0
    with open(out, "a") as f:
        while True:
            items = reader.poll(count=25, block_ms=100)
            if not items:
                continue
            for eid, results in items:
                f.write(f"P {eid} {results[0].cid}\\n")  # processed
                f.flush()
                time.sleep(0.0005)
            batches += 1
            if batches == hold_after:
                f.write("HOLD\\n")  # processed, not acknowledged: killed here
                f.flush()
                time.sleep(600)
            n = reader.ack(eid for eid, _ in items)
            assert n == len(items), (n, len(items))
            for eid, results in items:
                f.write(f"A {eid} {results[0].cid}\\n")
            f.flush()
""")


def test_a_reader_killed_mid_stream_loses_nothing(r: redis.Redis, redis_url: str, prefix: str, tmp_path: Path) -> None:
    keys = Keys(prefix, prefix, 2)
    n = 3000
    _write(r, keys, n)
    log = tmp_path / "victim.log"
    GroupResultsReader(r, keys, "db-writer", "survivor", claim_idle_ms=300)  # the group exists from here on
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, redis_url, prefix, str(log), "8"], env=env)
    survivor = GroupResultsReader(redis.Redis.from_url(redis_url), keys, "db-writer", "survivor", claim_idle_ms=300)
    processed: list[str] = []
    acked = 0

    def step(count: int = 25) -> int:
        nonlocal acked
        items = survivor.poll(count=count, block_ms=50)
        processed.extend(results[0].cid for _, results in items)
        acked += survivor.ack(eid for eid, _ in items)
        return len(items)

    def slow_step() -> bool:  # slower than the victim, so the victim reaches its 8th batch mid-stream
        step(5)
        time.sleep(0.01)
        return True

    try:
        assert _wait(lambda: log.exists() and "A " in log.read_text(), timeout=60)  # the victim is reading
        assert _wait(lambda: slow_step() and "HOLD" in log.read_text(), timeout=60)  # both are reading
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream, with a batch processed but not acknowledged
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _wait(lambda: step() >= 0 and _pending(r, keys, "db-writer") == 0 and _all_seen(log, processed, n),
                 timeout=60)
    lines = [ln.split() for ln in log.read_text().splitlines() if ln != "HOLD"]
    v_processed = [ln[2] for ln in lines if ln[0] == "P"]
    v_acked = {ln[2] for ln in lines if ln[0] == "A"}
    unacked = set(v_processed) - v_acked
    assert 0 < len(unacked) <= 2 * 25  # the held batch (up to 25 per shard)
    assert unacked <= set(processed)  # processed but not acknowledged by the victim: delivered again
    assert set(processed) & set(v_processed) == unacked  # and only those are processed twice
    assert not v_acked & set(processed)  # acknowledged ones never again
    assert len(processed) == len(set(processed)) and len(v_processed) == len(set(v_processed))
    assert set(processed) | set(v_processed) == {f"c{i}" for i in range(n)}  # none lost
    assert acked + len(v_acked) == n  # each acknowledged exactly once
    assert _pending(r, keys, "db-writer") == 0
    info = {c["name"].decode(): c for sk in keys.all_shards() for c in r.xinfo_consumers(sk.results, "db-writer")}
    assert set(info) == {"victim", "survivor"}


def _all_seen(log: Path, processed: list[str], n: int) -> bool:
    victim = {ln.split()[2] for ln in log.read_text().splitlines() if ln.startswith("A ")}
    return len(victim | set(processed)) == n


def test_cli_group_mode_prints_and_acks(r: redis.Redis, redis_url: str, prefix: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    keys = Keys(prefix, prefix, 1)
    r.xadd(keys.shard(0).results, _multi(["m0", "m1"]))
    _write(r, keys, 4)
    base = ["--redis-url", redis_url, "--prefix", prefix, "results", "--json", "--group", "alerts"]
    assert cli.main([*base, "--consumer", "c1", "--count", "3"]) == 0
    assert [json.loads(ln)["cid"] for ln in capsys.readouterr().out.splitlines()] == ["m0", "m1", "c0"]
    assert _pending(r, keys, "alerts") == 1  # c1 was read (3 entries for 3 windows), not printed: pending at c1
    time.sleep(0.15)
    assert cli.main([*base, "--consumer", "c2", "--claim-idle-ms", "100"]) == 0  # claims c1 from c1, then the rest
    assert [json.loads(ln)["cid"] for ln in capsys.readouterr().out.splitlines()] == ["c1", "c2", "c3"]
    assert _pending(r, keys, "alerts") == 0
    assert cli.main(["--redis-url", redis_url, "--prefix", prefix, "results", "--consumer", "x"]) == 2
    assert EntryId("s", "1-0").id == "1-0"
