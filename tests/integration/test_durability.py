"""WAIT after writes on a single Redis with one replica: producer and publisher (protocol.durability)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from bench.harness import LocalRedis
from producer.client import Producer
from protocol.durability import Durability, ReplicaAckError, ReplicaAckShort
from protocol.keys import Keys
from tests.chaos_support import wait_until
from worker.publisher import Publisher
from worker.types import Entry, Output


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[LocalRedis, LocalRedis]]:
    """A master and one replica linked to it."""
    with LocalRedis() as master, LocalRedis() as replica:
        replica.client().replicaof("127.0.0.1", master.port)
        wait_until(lambda: master.client().info("replication").get("slave0", {}).get("state") == "online", 20,
                   "the replica link")
        yield master, replica


def _xs(n: int) -> list[np.ndarray]:
    return [np.zeros((20, 1), np.float32)] * n


def test_producer_waits_for_the_replica(pair: tuple[LocalRedis, LocalRedis], prefix: str) -> None:
    master, replica = pair
    keys = Keys(prefix, prefix)
    prod = Producer(master.client(), keys, pipeline_size=10, durability=Durability(1, 1000))
    ids = prod.publish_many(_xs(25))
    one = prod.publish(_xs(1)[0])
    # WAIT returned 1 for every round trip: the replica holds them when publish returns.
    assert replica.client().xlen(keys.shard(0).windows) == len(ids) + 1 == 26 and one


def test_fewer_replicas_than_asked_raises_naming_the_count(pair: tuple[LocalRedis, LocalRedis], prefix: str) -> None:
    master, _ = pair
    keys = Keys(prefix, prefix)
    prod = Producer(master.client(), keys, pipeline_size=10, durability=Durability(2, 50))
    with pytest.raises(ReplicaAckError, match="only 1 of 2 replicas") as err:
        prod.publish_many(_xs(15))
    # The first chunk's ids: written (the error says how many replicas have them), not retried.
    assert err.value.acked == 1 and len(err.value.results) == 10 and err.value.published == err.value.results
    assert master.client().xlen(keys.shard(0).windows) == 10


@pytest.mark.parametrize("pipelined", [True, False], ids=["send", "publish"])
def test_publisher_reports_a_short_wait_and_keeps_publishing(pair: tuple[LocalRedis, LocalRedis], prefix: str,
                                                              pipelined: bool) -> None:
    master, replica = pair
    r = master.client()
    keys = Keys(prefix, prefix)
    sk = keys.shard(0)
    r.xgroup_create(sk.windows, keys.group, id="0", mkstream=True)
    ids = [r.xadd(sk.windows, {"x": b"1"}).decode() for _ in range(4)]
    r.xreadgroup(keys.group, "c", {sk.windows: ">"})
    shorts: list[ReplicaAckShort] = []
    pub = Publisher(r, keys, 1000, 1000, durability=Durability(2, 50), on_short=shorts.append)
    outs = [Output(Entry(0, i, {}, 0), "r", [b"in", i.encode()]) for i in ids]
    if pipelined:
        assert pub.send(outs[:2]) == []
        assert pub.send(outs[2:]) == [(2, 2)]
        assert pub.collect() == [(2, 2)]
    else:
        assert pub.publish(outs) == 4
    assert shorts and all(s.asked == 2 and s.acked == 1 for s in shorts)
    ok = Publisher(r, keys, 1000, 1000, durability=Durability(1, 1000), on_short=shorts.append)
    n = len(shorts)
    assert ok.publish(outs) == 0 and len(shorts) == n  # already acknowledged; the replica answered
    assert replica.client().xlen(sk.results) == 4
