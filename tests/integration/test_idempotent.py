"""Idempotent publishing against real redis-servers: a write whose reply is lost and that redis-py
re-sends adds one entry, not two (docs/reliability.md, "Idempotent publishing").

The native path (``XADD … IDMP``, Redis >= 8.6) cannot run here (redis-server 7.0): its detection
and command construction are checked against the real 7.0 server, which detection sends down the
script path.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import numpy as np
import pytest
import redis
import redis.asyncio

from bench.harness import LocalCluster, LocalRedis
from producer.client import AsyncProducer, Entry, Producer
from producer.config import ProducerSettings
from protocol.durability import Durability
from protocol.idempotent import (
    IdempotentWriter,
    detect_mode,
    entry_id,
    mode_from_docs,
    mode_from_version,
    native_xadd_args,
    needs_config,
    xcfgset_args,
)
from protocol.keys import Keys
from protocol.redisconn import connect
from tests.dropproxy import DropReplyProxy
from tests.helpers import stream_entries

W = np.zeros((20, 1), np.float32)


@pytest.fixture
def proxy(redis_server: LocalRedis) -> Iterator[DropReplyProxy]:
    """A reply-dropping proxy in front of the session's redis-server."""
    with DropReplyProxy(redis_server.port) as p:
        yield p


def _producer(url: str, keys: Keys, producer_id: str | None, window_s: int = 60) -> Producer:
    """A producer on ``url`` with the project's retrying client (redis-py re-sends after a drop)."""
    idem = IdempotentWriter(keys, producer_id, window_s) if producer_id else None
    return Producer(connect(url), keys, idempotence=idem)


# --- the lost reply -----------------------------------------------------------------------------


def test_lost_reply_retried_adds_one_entry_and_returns_its_id(r: redis.Redis, proxy: DropReplyProxy,
                                                              prefix: str) -> None:
    keys = Keys(prefix, prefix)
    prod = _producer(proxy.url, keys, "p1")
    proxy.arm(b"EVALSHA")
    eid = prod.publish(W, "w-1")
    assert proxy.dropped == 1  # the first reply was lost; redis-py reconnected and re-sent
    entries = stream_entries(r, keys.shard(0).windows)
    assert [e[0] for e in entries] == [eid]
    assert entries[0][1][b"cid"] == b"w-1"


def test_without_idempotence_the_retry_adds_a_second_entry(r: redis.Redis, proxy: DropReplyProxy,
                                                           prefix: str) -> None:
    """The problem being solved: a plain XADD whose reply is lost is served twice."""
    keys = Keys(prefix, prefix)
    prod = _producer(proxy.url, keys, None)
    proxy.arm(b"XADD")
    eid = prod.publish(W, "w-1")
    assert proxy.dropped == 1
    entries = stream_entries(r, keys.shard(0).windows)
    assert len(entries) == 2 and entries[-1][0] == eid
    assert {e[1][b"cid"] for e in entries} == {b"w-1"}


@pytest.mark.parametrize("idempotent", [True, False], ids=["idempotent", "plain-control"])
def test_pipelined_publish_many_with_a_lost_reply(r: redis.Redis, proxy: DropReplyProxy, prefix: str,
                                                  idempotent: bool) -> None:
    n = 300
    keys = Keys(prefix, prefix)
    prod = _producer(proxy.url, keys, "p1" if idempotent else None)
    prod.publish(W, "warm-up")  # connect (and load the script) before arming
    proxy.arm(b"EVALSHA" if idempotent else b"XADD")
    ids = prod.publish_many([W] * n, [f"w-{i}" for i in range(n)])
    assert proxy.dropped == 1
    entries = stream_entries(r, keys.shard(0).windows)[1:]
    assert len(ids) == n
    if idempotent:
        assert [e[0] for e in entries] == ids
        assert [e[1][b"cid"].decode() for e in entries] == [f"w-{i}" for i in range(n)]
    else:
        assert len(entries) > n  # what reached the server before the drop is there twice


def test_windows_without_cid_are_covered_against_the_clients_own_retry(
        r: redis.Redis, proxy: DropReplyProxy, prefix: str) -> None:
    keys = Keys(prefix, prefix)
    prod = _producer(proxy.url, keys, "p1")
    prod.publish(W)
    proxy.arm(b"EVALSHA")
    ids = prod.publish_many([W] * 5)
    assert proxy.dropped == 1
    assert [e[0] for e in stream_entries(r, keys.shard(0).windows)][1:] == ids


# --- the window, producers, entry kinds ---------------------------------------------------------


def test_same_cid_within_the_window_returns_the_first_id_and_after_it_is_a_new_entry(
        r: redis.Redis, redis_url: str, prefix: str) -> None:
    keys = Keys(prefix, prefix)
    prod = _producer(redis_url, keys, "p1", window_s=1)
    first = prod.publish(W, "a")
    assert prod.publish(W, "a") == first
    assert r.ttl(keys.shard(0).idmp("p1", "a")) in (0, 1)
    time.sleep(1.2)
    again = prod.publish(W, "a")
    assert again != first
    assert [e[0] for e in stream_entries(r, keys.shard(0).windows)] == [first, again]


def test_one_call_per_shard_keeps_order_and_repeats_within_it(r: redis.Redis, redis_url: str, prefix: str) -> None:
    """publish_many's writes of a shard go as one script call: ids come back in input order, a cid
    repeated inside the call gets the first one's id, and one already written before too."""
    keys = Keys(prefix, prefix, shards=3)
    prod = _producer(redis_url, keys, "p1")
    early = prod.publish(W, "c5")
    cids = [f"c{i}" for i in range(10)] + ["c3", "c5"]
    ids = prod.publish_many([W] * len(cids), cids)
    assert ids[5] == ids[11] == early and ids[3] == ids[10]
    assert sum(r.xlen(sk.windows) for sk in keys.all_shards()) == 10  # (ids repeat across shard streams)
    by_cid = {f[b"cid"].decode(): i.decode() for sk in keys.all_shards() for i, f in r.xrange(sk.windows)}
    assert [by_cid[c] for c in cids] == ids


def test_producers_with_the_same_cid_are_independent(r: redis.Redis, redis_url: str, prefix: str) -> None:
    keys = Keys(prefix, prefix)
    a, b = _producer(redis_url, keys, "p-a"), _producer(redis_url, keys, "p-b")
    ida, idb = a.publish(W, "same"), b.publish(W, "same")
    assert ida != idb and a.publish(W, "same") == ida
    assert r.xlen(keys.shard(0).windows) == 2


def test_multi_window_entries_key_on_their_cid_or_the_digest_of_their_cids(
        r: redis.Redis, redis_url: str, prefix: str) -> None:
    keys = Keys(prefix, prefix)
    prod = _producer(redis_url, keys, "p1")
    xs = np.zeros((4, 20, 1), np.float32)
    by_cids = prod.publish_batch(xs, ["a", "b", "c", "d"])
    assert prod.publish_batch(xs, ["a", "b", "c", "d"]) == by_cids
    assert prod.publish_batch(xs, ["a", "b", "c", "e"]) != by_cids
    by_cid = prod.publish_batch(xs, ["a", "b", "c", "d"], cid="batch-1")
    assert by_cid != by_cids and prod.publish_batch(xs, cid="batch-1") == by_cid
    assert Entry(xs, multi=True, cids=["a", None]).iid == Entry(xs, multi=True, cids=["a", None]).iid
    assert Entry(xs, multi=True).iid is None and Entry(W, cid="x").iid == "x"
    assert r.xlen(keys.shard(0).windows) == 3


def test_settings_turn_it_on(r: redis.Redis, redis_url: str, prefix: str) -> None:
    off = Producer.from_settings(ProducerSettings(redis_url=redis_url, prefix=prefix))
    assert off.idempotence is None
    s = ProducerSettings(redis_url=redis_url, prefix=prefix, producer_id="prod-1", idempotency_window_s=30)
    prod = Producer.from_settings(s)
    assert prod.idempotence is not None and prod.idempotence.window_s == 30
    assert prod.publish(W, "a") == prod.publish(W, "a")
    assert r.ttl(s.keys.shard(0).idmp("prod-1", "a")) > 25
    with pytest.raises(ValueError):
        ProducerSettings(producer_id="has space")


def test_script_missing_after_a_flush_is_reloaded(r: redis.Redis, redis_url: str, prefix: str) -> None:
    keys = Keys(prefix, prefix)
    prod = _producer(redis_url, keys, "p1")
    first = prod.publish_many([W] * 3, ["a", "b", "c"])
    r.script_flush()
    assert prod.publish_many([W] * 4, ["a", "b", "c", "d"])[:3] == first
    assert r.xlen(keys.shard(0).windows) == 4
    r.script_flush()
    with pytest.raises(Exception, match="timed out"):  # classify reloads it too (not NoScriptError)
        prod.classify([W], ["z"], timeout=0.05)
    assert r.xlen(keys.shard(0).windows) == 5


def test_classify_writes_are_idempotent_per_call(r: redis.Redis, redis_url: str, prefix: str) -> None:
    """classify keys its writes on the call's reply name, so two calls with the same ids both publish."""
    keys = Keys(prefix, prefix)
    prod = _producer(redis_url, keys, "p1")
    for _ in range(2):
        with pytest.raises(Exception, match="timed out"):
            prod.classify([W, W], ["a", "b"], timeout=0.05)
    aprod = AsyncProducer(redis.asyncio.Redis.from_url(redis_url), keys,
                          idempotence=IdempotentWriter(keys, "p1", 60))
    with pytest.raises(Exception, match="timed out"):
        asyncio.run(aprod.classify([W], ["a"], timeout=0.05))
    assert r.xlen(keys.shard(0).windows) == 5
    assert len(r.keys(f"{{{prefix}}}:idmp:p1:*")) == 5


# --- the native path: detection and commands (Redis 8.6 is not available here) -----------------


def test_detection_on_this_server_says_script(r: redis.Redis) -> None:
    assert r.info("server")["redis_version"].startswith("7.")
    assert mode_from_docs(r.execute_command("COMMAND DOCS", "XADD")) == "script"
    assert detect_mode(r) == "script"


def test_detection_falls_back_to_the_version_and_then_to_the_script(r: redis.Redis, redis_server: LocalRedis,
                                                                    prefix: str) -> None:
    user = f"{prefix}-detect"
    try:
        r.execute_command("ACL", "SETUSER", user, "on", ">pw", "-@all", "+info")  # no COMMAND DOCS
        assert detect_mode(redis.Redis(port=redis_server.port, username=user, password="pw")) == "script"
        r.execute_command("ACL", "SETUSER", user, "-info")  # nothing at all
        assert detect_mode(redis.Redis(port=redis_server.port, username=user, password="pw")) == "script"
    finally:
        r.execute_command("ACL", "DELUSER", user)


def test_mode_from_docs_and_version() -> None:
    # The shape of Redis 8.6's COMMAND DOCS XADD (abridged): the IDMP block is a token among the arguments.
    docs86 = {b"xadd": {b"summary": b"Appends a new message to a stream.", b"arguments": [
        {b"name": b"key", b"type": b"key"},
        {b"name": b"idmp", b"type": b"oneof", b"arguments": [
            {b"name": b"idmpauto-with-pid", b"type": b"block", b"arguments": [
                {b"name": b"idmpauto-token", b"token": b"IDMPAUTO"}, {b"name": b"pid"}]},
            {b"name": b"idmp-with-pid-iid", b"type": b"block", b"arguments": [
                {b"name": b"idmp-token", b"token": b"IDMP"}, {b"name": b"pid"}, {b"name": b"iid"}]}]}]}}
    assert mode_from_docs(docs86) == "native"
    assert mode_from_docs([b"xadd", [b"summary", b"x", b"arguments", [[b"token", b"IDMP"]]]]) == "native"
    assert mode_from_docs({}) is None and mode_from_docs([]) is None
    assert [mode_from_version(v) for v in ("7.0.15", "8.2.3", "8.4.0", "8.6.0", "8.10.1", "9.0", "junk")] == \
        ["script", "script", "script", "native", "native", "native", "script"]


def test_native_commands_are_built_as_documented(r: redis.Redis, prefix: str) -> None:
    keys = Keys(prefix, prefix, shards=2)
    sk = keys.shard(1)
    fields = {b"v": b"1", b"x": b"..."}
    assert native_xadd_args(sk.windows, "p1", "w-1", fields) == \
        ["XADD", sk.windows, "IDMP", "p1", "w-1", "*", b"v", b"1", b"x", b"..."]
    assert xcfgset_args(sk.windows, 300) == ["XCFGSET", sk.windows, "IDMP-DURATION", 300, "IDMP-MAXSIZE", 10_000]
    assert needs_config({"length": 0}, 300)  # 8.6 before XCFGSET, or a server without the fields
    assert not needs_config({"idmp-duration": 300, "idmp-maxsize": 10_000}, 300)
    assert needs_config({"idmp-duration": 100, "idmp-maxsize": 100}, 300)
    w = IdempotentWriter(keys, "p1", 300, mode="native")
    pipe = r.pipeline(transaction=False)
    w.add(pipe, sk, fields, "w-1")
    assert list(pipe.command_stack[0][0]) == native_xadd_args(sk.windows, "p1", "w-1", fields)
    with pytest.raises(redis.ResponseError):  # 7.0 does not know IDMP
        pipe.execute()
    assert entry_id(b"1-0") == ("1-0", None) and entry_id([b"1-0", 1]) == ("1-0", True)


# --- Redis Cluster ------------------------------------------------------------------------------


@pytest.mark.parametrize("replicas", [0, 1], ids=["plain", "wait-replicas"])
def test_cluster_several_shards(replicas: int) -> None:
    """Idempotent writes route by their stream key on a cluster, also through the per-node WAIT path."""
    keys = Keys("idc", "idc", shards=6)
    with LocalCluster(3, replicas=replicas) as cluster:
        rc = connect(cluster.url)
        prod = Producer(rc, keys, idempotence=IdempotentWriter(keys, "p1", 60),
                        durability=Durability(replicas, 2000))
        cids = [f"w-{i}" for i in range(120)]
        ids = prod.publish_many([W] * 120, cids)
        assert prod.idempotence is not None and prod.idempotence.mode == "script"
        assert prod.publish_many([W] * 120, cids) == ids
        per_shard = [rc.xlen(sk.windows) for sk in keys.all_shards()]
        assert sum(per_shard) == 120 and all(per_shard)
        by_cid = {f[b"cid"].decode(): i.decode() for sk in keys.all_shards() for i, f in rc.xrange(sk.windows)}
        assert [by_cid[c] for c in cids] == ids
        rc.close()


def test_cli_publish_twice_with_a_producer_id_adds_each_window_once(r: redis.Redis, redis_url: str,
                                                                    prefix: str) -> None:
    from producer.cli import main

    args = ["--redis-url", redis_url, "--prefix", prefix, "publish", "--count", "50", "--producer-id", "cli-1",
            "--idempotency-window-s", "60"]
    assert main(args) == 0 and main(args) == 0
    assert r.xlen(Keys(prefix, prefix).shard(0).windows) == 50
    assert main(args[:-4]) == 0  # without a producer id: a second copy
    assert r.xlen(Keys(prefix, prefix).shard(0).windows) == 100
