"""One failover run: a master of a 3-master + 3-replica cluster is killed mid-stream.

A producer thread publishes windows with client ids (``cid``) at a steady rate while two
``bigru-worker`` processes serve them; the master serving shard 0 is ``kill -9``ed and its
replica promoted. Nothing is restarted. The oracle counts by ``cid`` (entry ids are per shard and
a stream entry may be lost in the failover): *lost* = accepted cids with no result, *duplicates* =
surplus results for any cid. ``tests/test_failover.py`` asserts on it; ``scripts/failover.py``
repeats it with and without waiting for replicas and writes the figures.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import redis
from redis.exceptions import RedisClusterException

from producer.client import Producer
from protocol.cluster import shard_nodes
from protocol.durability import Durability, ReplicaAckError
from protocol.keys import Keys
from protocol.redisconn import TRANSIENT, connect
from protocol.wire import decode_result, now_us
from scripts.localcluster import LocalCluster

ROOT = Path(__file__).resolve().parents[1]
SHARDS = 6
#: What the producer thread may see during a failover (and keeps going after).
PRODUCER_ERRORS = (*TRANSIENT, redis.ResponseError, RedisClusterException)


@dataclass
class FailoverFigures:
    """What one run measured."""

    wait_replicas: int
    accepted: int = 0  # cids whose publish returned ids (with waiting: the replicas acknowledged them)
    short_acked: int = 0  # cids written but whose WAIT fell short (ReplicaAckError)
    failed_chunks: int = 0  # publish calls that raised a connection/cluster error (not accepted)
    results: int = 0  # result entries read for accepted cids
    lost: int = 0  # accepted cids with no result
    duplicates: int = 0  # surplus results, any cid
    recovery_s: float = 0.0  # kill -> first result published after the kill on a shard the killed master served
    promoted_s: float = 0.0  # kill -> a replica serves the slot and the cluster is ok
    rejoined_s: float = 0.0  # kill -> the killed node restarted and linked as the new master's replica
    all_served_s: float = 0.0  # kill -> every accepted cid has a result
    killed_shards: list[int] = field(default_factory=list)
    workers_alive: bool = False  # the same two worker processes ran from start to end
    worker_ack_short: int = 0  # replica_ack_short events in the workers' logs
    rate_per_s: float = 0.0  # producer's target rate
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready figures."""
        return asdict(self)


class ResultsByCid:
    """Reads every shard's results stream (through the cluster client), counting results per cid."""

    def __init__(self, r: Any, keys: Keys) -> None:
        self.r, self.keys = r, keys
        self.pos = {sk.results: "0-0" for sk in keys.all_shards()}
        self.shard_of = {sk.results: sk.shard for sk in keys.all_shards()}
        self.count: Counter[str] = Counter()
        self.first_after: dict[int, int] = {}  # shard -> earliest result ts_us seen after `since_us`
        self.since_us: int | None = None

    def poll(self) -> int:
        """Read what is new on every reachable shard; returns entries read."""
        n = 0
        for stream, pos in self.pos.items():
            try:
                resp = self.r.xread({stream: pos}, count=5000)
            except PRODUCER_ERRORS:
                continue
            for _, entries in resp or []:
                for eid, fields in entries:
                    self.pos[stream] = eid.decode()
                    res = decode_result(fields)
                    self.count[res.cid] += 1
                    n += 1
                    shard = self.shard_of[stream]
                    if self.since_us is not None and res.ts_us >= self.since_us:
                        self.first_after[shard] = min(self.first_after.get(shard, res.ts_us), res.ts_us)
        return n


class SteadyProducer(threading.Thread):
    """Publishes chunks of windows with fresh cids at ``rate`` windows/s until stopped; never restarts."""

    def __init__(self, url: str, keys: Keys, d: Durability, rate: float, chunk: int = 50) -> None:
        super().__init__(daemon=True)
        self.prod = Producer(connect(url), keys, pipeline_size=chunk, durability=d)
        self.rate, self.chunk = rate, chunk
        self.accepted: list[str] = []
        self.short: list[str] = []
        self.failed = 0
        self.errors: Counter[str] = Counter()
        self.halt = threading.Event()
        self.xs = list(np.random.default_rng(0).standard_normal((chunk, 20, 1)).astype(np.float32))

    def run(self) -> None:
        n = 0
        t0 = time.monotonic()
        while not self.halt.is_set():
            cids = [f"w{n + i}" for i in range(self.chunk)]
            n += self.chunk
            try:
                self.prod.publish_many(self.xs, ids=cids)
                self.accepted += cids
            except ReplicaAckError:
                self.short += cids
            except PRODUCER_ERRORS as e:
                self.failed += 1
                self.errors[type(e).__name__] += 1
            ahead = t0 + n / self.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)


def spread_prefix(rc: Any) -> str:
    """A prefix whose shard streams land on all three masters."""
    for _ in range(1000):
        prefix = f"f{uuid.uuid4().hex[:8]}"
        if len(set(shard_nodes(rc, Keys(prefix, prefix, SHARDS)).values())) == 3:
            return prefix
    raise RuntimeError("no prefix spreads the shards over every node")


def worker_env(url: str, prefix: str, checkpoint: Path, wait_replicas: int) -> dict[str, str]:
    """Environment of the worker processes (short claim idle time, as the chaos tests)."""
    return dict(os.environ, BIGRU_REDIS_URL=url, BIGRU_PREFIX=prefix, BIGRU_GROUP=prefix, BIGRU_SHARDS=str(SHARDS),
                BIGRU_CHECKPOINT=str(checkpoint), BIGRU_LOG_JSON="true", PYTHONPATH=str(ROOT),
                BIGRU_CLAIM_IDLE_MS="1000", BIGRU_RECLAIM_INTERVAL_MS="200", BIGRU_HEARTBEAT_INTERVAL_S="0.5",
                BIGRU_MAX_BATCH="64", BIGRU_WAIT_REPLICAS=str(wait_replicas), BIGRU_WAIT_TIMEOUT_MS="1000",
                OMP_NUM_THREADS="1")


def start_workers(env: dict[str, str], logdir: Path, n: int = 2) -> list[subprocess.Popen[bytes]]:
    """``n`` worker processes (consumers ``fo<i>-0``) logging to ``logdir``."""
    procs = []
    for i in range(n):
        with open(logdir / f"fo{i}.log", "ab") as f:
            procs.append(subprocess.Popen([sys.executable, "-m", "worker.cli", "--worker-name", f"fo{i}"],
                                          env=env, stdout=f, stderr=subprocess.STDOUT))
    return procs


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each worker, SIGKILL after 20 s."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _until(cond: Any, timeout: float, what: str, step: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        if step is not None:
            step()
        time.sleep(0.05)


def run_failover(checkpoint: Path, logdir: Path, *, wait_replicas: int, rate: float = 500.0,
                 before_s: float = 3.0, after_s: float = 5.0, node_timeout_ms: int = 1000) -> FailoverFigures:
    """Start a cluster with a replica per master, stream, kill shard 0's master, audit by cid."""
    fig = FailoverFigures(wait_replicas=wait_replicas, rate_per_s=rate)
    d = Durability(wait_replicas, 1000)
    with LocalCluster(3, replicas=1, node_timeout_ms=node_timeout_ms) as cluster:
        rc = connect(cluster.url)
        prefix = spread_prefix(rc)
        keys = Keys(prefix, prefix, SHARDS)
        workers = start_workers(worker_env(cluster.url, prefix, checkpoint, wait_replicas), logdir)
        pids = [p.pid for p in workers]
        out = ResultsByCid(rc, keys)
        prod = SteadyProducer(cluster.url, keys, d, rate)
        try:
            _until(lambda: all(rc.exists(keys.heartbeat(f"fo{i}-0")) for i in range(2)), 120, "both workers")
            prod.start()
            t_end = time.monotonic() + before_s
            _until(lambda: time.monotonic() > t_end, before_s + 5, "streaming before the kill", out.poll)
            victim = cluster.master_port_of(keys.shard(0).windows)
            fig.killed_shards = [s for s, node in shard_nodes(rc, keys).items() if node.endswith(f":{victim}")]
            killed = cluster.kill_master_of(keys.shard(0).windows)
            out.since_us = now_us()  # the dead master can publish nothing after this
            fig.promoted_s = round(cluster.wait_failover(killed), 2)
            # Until the dead node is back (as a replica of the new master) WAIT 1 cannot succeed on
            # its slots: an operator or orchestrator restarts it; here at once.
            fig.rejoined_s = round(cluster.rejoin(killed), 2)
            t_end = time.monotonic() + after_s
            _until(lambda: time.monotonic() > t_end, after_s + 5, "streaming after the failover", out.poll)
            prod.halt.set()
            prod.join(30)
            _until(lambda: set(prod.accepted) <= set(out.count), 90, "every accepted window served", out.poll)
            fig.all_served_s = round(time.monotonic() - killed.at, 2)
            try:  # windows written whose WAIT fell short are served too, if they survived: give them time
                _until(lambda: set(prod.short) <= set(out.count), 15, "short-acknowledged windows", out.poll)
            except TimeoutError:
                pass
        except TimeoutError as e:
            fig.extra["timeout"] = str(e)
        finally:
            prod.halt.set()
            time.sleep(1.0)  # let a late duplicate surface
            out.poll()
            fig.workers_alive = all(p.poll() is None for p in workers) and [p.pid for p in workers] == pids
            stop_workers(workers)
            rc.close()
        recovered = [out.first_after[s] for s in fig.killed_shards if s in out.first_after]
        fig.recovery_s = round((min(recovered) - out.since_us) / 1e6, 2) if recovered and out.since_us else -1.0
        fig.accepted, fig.short_acked, fig.failed_chunks = len(prod.accepted), len(prod.short), prod.failed
        fig.results = sum(out.count[c] for c in prod.accepted)
        fig.lost = sum(1 for c in prod.accepted if not out.count[c])
        fig.duplicates = sum(n - 1 for n in out.count.values() if n > 1)
        fig.worker_ack_short = sum(p.read_text().count("replica_ack_short") for p in logdir.glob("fo*.log"))
        fig.extra["producer_errors"] = dict(prod.errors)
        fig.extra["short_unserved"] = sum(1 for c in prod.short if not out.count[c])
    return fig
