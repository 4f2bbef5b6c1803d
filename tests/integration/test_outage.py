"""Riding out a Redis outage (issue 19): the budget's logic on a fake clock, what a retry means for
duplicates (both ways, through a reply-dropping proxy), and the producer CLI and a results reader
through a kill -9 and restart of a real redis-server (and past the budget)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import redis
from structlog.testing import capture_logs

from bench.harness import LocalRedis
from producer.client import Producer
from protocol.idempotent import IdempotentWriter
from protocol.keys import Keys
from protocol.outage import OutageBudget, RedisOutageError
from protocol.redisconn import connect
from tests.dropproxy import DropReplyProxy
from tests.helpers import stream_entries

W = np.zeros((20, 1), np.float32)


class FakeClock:
    """A clock that moves only when the budget sleeps."""

    def __init__(self) -> None:
        self.t = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.t += s


def _flaky(failures: int) -> tuple[list[int], object]:
    calls: list[int] = []

    def fn() -> str:
        calls.append(1)
        if len(calls) <= failures:
            raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")
        return "ok"

    return calls, fn


# --- the budget (no Redis) -----------------------------------------------------------------------


def test_an_outage_within_the_budget_is_retried_with_one_log_line_at_each_end() -> None:
    clock = FakeClock()
    budget = OutageBudget(60, url="redis://u:secret@h:1/0", clock=clock, sleep=clock.sleep)
    calls, fn = _flaky(5)
    with capture_logs() as logs:
        assert budget.call(fn, operation="publish", windows=500) == "ok"  # type: ignore[arg-type]
        assert budget.call(fn, operation="publish", windows=500) == "ok"  # type: ignore[arg-type]
    assert len(calls) == 7 and len(clock.slept) == 5
    assert all(0 <= s <= 2.0 for s in clock.slept)  # jittered exponential backoff, capped at 2 s
    events = [e["event"] for e in logs]
    assert events == ["redis_outage_started", "redis_outage_ended"]
    ended = logs[1]
    assert ended["retries"] == 5 and ended["windows_held"] == 500
    assert ended["outage_s"] == pytest.approx(sum(clock.slept), abs=1e-3)
    assert "secret" not in json.dumps(logs, default=str) and "***" in logs[0]["url"]


def test_past_the_budget_one_typed_error_chained_from_the_last_failure() -> None:
    clock = FakeClock()
    budget = OutageBudget(5, url="redis://h:1/0", clock=clock, sleep=clock.sleep)
    calls, fn = _flaky(10_000)
    with pytest.raises(RedisOutageError) as ei:
        budget.call(fn, operation="publish")  # type: ignore[arg-type]
    err = ei.value
    assert isinstance(err.__cause__, redis.ConnectionError)
    assert err.seconds >= 5 and err.url == "redis://h:1/0" and err.operation == "publish"
    assert "redis://h:1/0" in str(err) and "unreachable for 5." in str(err)
    assert clock.t - 100.0 <= 5.0 + 1e-9  # never slept past the budget
    # The next call starts a new outage with a full budget.
    calls2, fn2 = _flaky(2)
    assert budget.call(fn2, operation="publish") == "ok"  # type: ignore[arg-type]


def test_a_zero_budget_fails_at_the_first_error_and_other_errors_pass_through() -> None:
    clock = FakeClock()
    budget = OutageBudget(0, clock=clock, sleep=clock.sleep)
    _, fn = _flaky(1)
    with pytest.raises(RedisOutageError):
        budget.call(fn, operation="publish")  # type: ignore[arg-type]

    def bad() -> None:
        raise redis.ResponseError("WRONGTYPE")

    with pytest.raises(redis.ResponseError):
        OutageBudget(60, clock=clock, sleep=clock.sleep).call(bad, operation="publish")


# --- what a retry means for duplicates -----------------------------------------------------------


@pytest.mark.parametrize("producer_id", ["p1", None], ids=["idempotent", "plain"])
def test_a_write_retried_by_the_budget_after_a_lost_reply(redis_server: LocalRedis, r: redis.Redis, prefix: str,
                                                          producer_id: str | None) -> None:
    """redis-py's own retries off (``retries=0``): the outage budget re-sends the write. With a producer
    id it lands once and returns the first id; without one it lands twice, and only then."""
    keys = Keys(prefix, prefix)
    with DropReplyProxy(redis_server.port) as proxy:
        idem = IdempotentWriter(keys, producer_id, 60) if producer_id else None
        prod = Producer(connect(proxy.url, retries=0), keys, idempotence=idem, outage=OutageBudget(10))
        prod.publish(W, "warm-up")
        proxy.arm(b"EVALSHA" if producer_id else b"XADD")
        with capture_logs() as logs:
            ids = prod.publish_many([W] * 50, [f"w-{i}" for i in range(50)])
        assert proxy.dropped == 1
    assert [e["event"] for e in logs if e["event"].startswith("redis_outage")] == [
        "redis_outage_started", "redis_outage_ended"]
    entries = stream_entries(r, keys.shard(0).windows)[1:]
    cids = Counter(f[b"cid"].decode() for _, f in entries)
    assert len(ids) == 50 and set(cids) == {f"w-{i}" for i in range(50)}
    if producer_id:
        assert len(entries) == 50 and [e[0] for e in entries] == ids
    else:
        # What reached the server before the drop was written twice (all of the pipeline, or the part
        # sent before the drop when the pipeline spans several TCP segments, as on a loaded machine).
        assert 50 < len(entries) <= 100 and max(cids.values()) == 2
