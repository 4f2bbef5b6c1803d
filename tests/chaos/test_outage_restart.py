"""Riding out a Redis outage (issue 19), the chaos part: the producer CLI and a results reader through a
kill -9 and restart of a real redis-server (and past the budget), classify calls through one. The budget's logic and the lost-reply
retries are in tests/integration/test_outage.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import redis
from structlog.testing import capture_logs

from bench.harness import LocalRedis
from producer.client import Producer
from producer.results import ResultsReader
from protocol.keys import Keys
from protocol.outage import OutageBudget
from protocol.redisconn import connect
from protocol.results import Result, encode_result
from tests.chaos_support import live, start_worker, stop, wait_until
from tests.helpers import stream_entries

W = np.zeros((20, 1), np.float32)

# --- kill -9 of a real redis-server mid-publish --------------------------------------------------

N = 20_000
RATE = 2000

def _producer_cmd(url: str, prefix: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "producer.cli", "--redis-url", url, "--prefix", prefix, "publish",
            "--source", "synthetic", "--count", str(N), "--rate", str(RATE), *extra]


def _audit(r: redis.Redis, keys: Keys) -> dict[str, int]:
    sk = keys.shard(0)
    results = stream_entries(r, sk.results)
    cids = Counter(f[b"cid"].decode() for _, f in results)
    return {"windows_in": int(r.xlen(sk.windows)), "results": len(results), "distinct_cids": len(cids),
            "duplicate_results": sum(c - 1 for c in cids.values()), "dead": int(r.xlen(sk.dead))}


@pytest.mark.chaos
@pytest.mark.slow
@pytest.mark.parametrize(("outage_s", "producer_id"), [(1.5, "outage-test"), (10.0, "outage-test"), (1.5, None)],
                         ids=["1.5s-idempotent", "10s-idempotent", "1.5s-plain"])
def test_the_producer_cli_and_a_reader_ride_out_a_redis_restart(
    prefix: str, worker_env: dict[str, str], tmp_path: Path, outage_s: float, producer_id: str | None
) -> None:
    """20 000 windows at 2 000/s, redis-server (AOF always) killed -9 4 s in and restarted ``outage_s``
    later: every window gets a result, the producer exits 0, ``results --follow`` reads them all. With
    a producer id exactly one each; without one a chunk in flight at the kill may be written twice
    (counted, and recorded with ``BIGRU_OUTAGE_RESULTS``)."""
    srv = LocalRedis(args=["--appendonly", "yes", "--appendfsync", "always"]).start()
    keys = Keys(prefix, prefix)
    env = {**worker_env, "BIGRU_REDIS_URL": srv.url, "BIGRU_PRODUCER_OUTAGE_S": "60"}
    worker = start_worker(env, "a", tmp_path / "a.log")
    prod_log, reader_log = tmp_path / "producer.err", tmp_path / "reader.err"
    try:
        admin = srv.client()
        wait_until(lambda: live(admin, keys, "a-0"), 90, "the worker to start")
        with open(prod_log, "wb") as perr, open(reader_log, "wb") as rerr:
            reader = subprocess.Popen([sys.executable, "-m", "producer.cli", "--redis-url", srv.url, "--prefix", prefix,
                                       "results", "--follow", "--json", "--count", str(N if producer_id else N - 1)],
                                      env=env, stdout=subprocess.PIPE, stderr=rerr)
            lines: list[bytes] = []
            pump = threading.Thread(target=lambda: lines.extend(reader.stdout or []), daemon=True)
            pump.start()
            extra = ("--producer-id", producer_id) if producer_id else ()
            producer = subprocess.Popen(_producer_cmd(srv.url, prefix, *extra),
                                        env=env, stdout=subprocess.PIPE, stderr=perr)
            time.sleep(4.0)
            srv.kill()
            t_kill = time.monotonic()
            time.sleep(outage_s)
            srv.start()
            out, _ = producer.communicate(timeout=120)
            rc = producer.returncode
            reader.wait(timeout=120)
            pump.join(10)
        audit = _audit(admin, keys)
        summary = json.loads(out.decode().strip().splitlines()[-1])
        events = [json.loads(ln).get("event") for ln in prod_log.read_text().splitlines() if ln.startswith("{")]
        figures = {"outage_s": outage_s, "producer_id": producer_id, "producer_rc": rc, "reader_rc": reader.returncode, "reader_lines": len(lines),
                   "published": summary["published"], "seconds": summary["seconds"], **audit,
                   "outage_started_logs": events.count("redis_outage_started"),
                   "outage_ended_logs": events.count("redis_outage_ended"),
                   "restart_to_end_s": round(time.monotonic() - t_kill - outage_s, 1)}
        print("OUTAGE_FIGURES", json.dumps(figures))
        if os.environ.get("BIGRU_OUTAGE_RESULTS"):
            with open(os.environ["BIGRU_OUTAGE_RESULTS"], "a") as f:
                f.write(json.dumps(figures) + "\n")
        assert rc == 0 and summary["published"] == N, prod_log.read_text()[-2000:]
        assert audit["distinct_cids"] == N and audit["dead"] == 0  # nothing lost (acknowledged input is trimmed)
        assert audit["results"] == N + audit["duplicate_results"]
        if producer_id:
            assert audit["duplicate_results"] == 0
        assert reader.returncode == 0 and len(lines) == (N if producer_id else N - 1)
        assert events.count("redis_outage_started") == events.count("redis_outage_ended") == 1
        assert worker.poll() is None, "the worker died instead of riding out the outage"
    finally:
        stop(worker)
        srv.stop()
        shutil.rmtree(srv.dir, ignore_errors=True)


@pytest.mark.chaos
def test_an_outage_longer_than_the_budget_exits_4_with_one_line(prefix: str, worker_env: dict[str, str]) -> None:
    srv = LocalRedis().start()
    env = {**worker_env, "BIGRU_REDIS_URL": srv.url, "BIGRU_PRODUCER_OUTAGE_S": "2"}
    try:
        producer = subprocess.Popen(_producer_cmd(srv.url, prefix), env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
        time.sleep(1.5)
        srv.kill()
        t_kill = time.monotonic()
        out, err = producer.communicate(timeout=60)
        took = time.monotonic() - t_kill
    finally:
        srv.stop()
        shutil.rmtree(srv.dir, ignore_errors=True)
    text = err.decode()
    lines = [ln for ln in text.splitlines() if not ln.startswith("{")]  # the rest are JSON log events
    assert producer.returncode == 4, text[-2000:]
    assert "Traceback" not in text and len(lines) == 1, text[-2000:]
    (line,) = lines
    assert line.startswith("bigru-producer: Redis at ") and srv.url in line and "unreachable for 2." in line
    assert "windows were published before" in line
    assert 2.0 <= took < 20.0
    assert out == b""  # no summary of a publish that did not finish


def test_results_reader_rides_out_a_restart(prefix: str) -> None:
    """The library reader (``results --follow`` uses it) keeps its position across a restart."""
    srv = LocalRedis(args=["--appendonly", "yes", "--appendfsync", "always"]).start()
    keys = Keys(prefix, prefix)
    try:
        admin = srv.client()
        for i in range(5):
            admin.xadd(keys.shard(0).results, encode_result(Result(
                input_id=f"0-{i + 1}", cid=f"c{i}", status="ok", label=0, class_name="a", probs=[1.0], model="m",
                worker="w", queue_us=0, wait_us=0, infer_us=0, e2e_us=0, ts_us=0, batch=1)))
        reader = ResultsReader(connect(srv.url, retries=0), keys, outage=OutageBudget(30))
        assert [res.cid for res in reader.iter(count=3)] == ["c0", "c1", "c2"]
        srv.kill()
        threading.Timer(1.0, srv.start).start()
        got = [res.cid for res in reader.iter(count=2, follow=True)]
        assert got == ["c3", "c4"]
    finally:
        time.sleep(1.2)
        srv.stop()
        shutil.rmtree(srv.dir, ignore_errors=True)


@pytest.mark.chaos
def test_classify_and_async_classify_ride_out_a_restart(prefix: str, worker_env: dict[str, str],
                                                       tmp_path: Path) -> None:
    """Redis is down when the call starts and back 1.5 s later: both calls return every result."""
    import asyncio

    import redis.asyncio

    from producer.classify import AsyncProducer

    srv = LocalRedis(args=["--appendonly", "yes", "--appendfsync", "always"]).start()
    keys = Keys(prefix, prefix)
    worker = start_worker({**worker_env, "BIGRU_REDIS_URL": srv.url}, "c", tmp_path / "c.log")
    xs = list(np.random.default_rng(0).standard_normal((50, 20, 1)).astype(np.float32))
    try:
        wait_until(lambda: live(srv.client(), keys, "c-0"), 90, "the worker to start")
        prod = Producer(connect(srv.url, retries=0), keys, outage=OutageBudget(30))
        srv.kill()
        threading.Timer(1.5, srv.start).start()
        with capture_logs() as logs:
            got = prod.classify(xs, timeout=60)
        assert [res.cid for res in got] == [str(i) for i in range(50)]
        assert [e["event"] for e in logs if e["event"].startswith("redis_outage")] == [
            "redis_outage_started", "redis_outage_ended"]

        async def async_call() -> list[str]:
            ar = redis.asyncio.Redis.from_url(srv.url)
            try:
                res = await AsyncProducer(ar, keys, outage=OutageBudget(30)).classify(xs, timeout=60)
            finally:
                await ar.aclose()
            return [x.cid for x in res]

        time.sleep(1.0)  # let the first restart settle before the second kill
        srv.kill()
        threading.Timer(1.5, srv.start).start()
        assert asyncio.run(async_call()) == [str(i) for i in range(50)]
    finally:
        time.sleep(1.6)
        stop(worker)
        srv.stop()
        shutil.rmtree(srv.dir, ignore_errors=True)
