"""One failover run: a master of a 3-master + 3-replica cluster is killed mid-stream.

A producer thread publishes windows with client ids (``cid``) at a steady rate while two
``bigru-worker`` processes serve them; the master serving shard 0 is ``kill -9``ed and its
replica promoted. Nothing is restarted. The oracle counts by ``cid`` (entry ids are per shard and
a stream entry may be lost in the failover): *lost* = accepted cids with no result, *duplicates* =
surplus results for any cid, both as a reader following the results streams live saw them; and
the same audited on the streams that survived, read again from the start after the run.

Two scenarios: *clean* (``lag_s`` 0: the replica is up to date when its master dies) and *lagging
replica* (``lag_s`` > 0): for ``lag_s`` seconds before the kill the doomed master's replica stops
applying its replication stream (:meth:`LocalCluster.stall_replica`) while producer and workers
keep writing to the master; the master is killed and the replica promoted without those writes.
In the lagging scenario with waiting on, the producer publishes idempotently and retries a chunk
whose ``WAIT`` fell short (:class:`ReplicaAckError`) until it is acknowledged.
``tests/chaos/test_failover.py`` asserts on it; ``bench/failover.py`` repeats it with and without
waiting for replicas and writes the figures.
"""

from __future__ import annotations

import os
import subprocess
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

from bench.harness import LocalCluster, start_worker, worker_process_env
from producer.client import Producer
from protocol.cluster import shard_nodes
from protocol.durability import Durability, ReplicaAckError
from protocol.idempotent import IdempotentWriter
from protocol.keys import Keys
from protocol.redisconn import TRANSIENT, connect
from protocol.results import decode_result
from protocol.wire import now_us

ROOT = Path(__file__).resolve().parents[1]
SHARDS = 6
#: Lagging-replica scenario: the replica's pause outlasts the kill by this much, so its master is
#: dead before it would apply the writes it received.
STALL_AFTER_KILL_S = 0.3
#: What the producer thread may see during a failover (and keeps going after).
PRODUCER_ERRORS = (*TRANSIENT, redis.ResponseError, RedisClusterException)


@dataclass
class FailoverFigures:
    """What one run measured."""

    wait_replicas: int
    lag_s: float = 0.0  # the replica of the doomed master stopped applying for this long before the kill
    accepted: int = 0  # cids whose publish returned ids (with waiting: the replicas acknowledged them)
    accepted_in_stall: int = 0  # of which the publish call returned between the stall and the kill
    short_acked: int = 0  # cids written but whose WAIT fell short (ReplicaAckError), never acknowledged
    short_calls: int = 0  # publish calls that raised ReplicaAckError (a retried chunk counts each time)
    retried_ok: int = 0  # cids accepted by a retry after a ReplicaAckError (idempotent producer)
    failed_chunks: int = 0  # publish calls that raised a connection/cluster error (not accepted)
    results: int = 0  # result entries read for accepted cids
    lost: int = 0  # accepted cids with no result (live reader)
    duplicates: int = 0  # surplus results, any cid (live reader)
    lost_final: int = 0  # accepted cids with no result in the surviving results streams
    duplicates_final: int = 0  # surplus results in the surviving results streams
    duplicates_final_two_inputs: int = 0  # of which for a cid written as two input entries (a resent write)
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
        self.inputs: dict[str, set[tuple[int, str]]] = {}  # cid -> (shard, input entry id) its results name
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
                    self.inputs.setdefault(res.cid, set()).add((shard, res.input_id))
                    if self.since_us is not None and res.ts_us >= self.since_us:
                        self.first_after[shard] = min(self.first_after.get(shard, res.ts_us), res.ts_us)
        return n


class SteadyProducer(threading.Thread):
    """Publishes chunks of windows with fresh cids at ``rate`` windows/s until stopped; never restarts.

    With ``retry_short_s`` > 0 (and an idempotent ``prod``) a chunk whose ``WAIT`` fell short is
    published again with the same cids until it is acknowledged or ``retry_short_s`` passed.
    """

    def __init__(self, url: str, keys: Keys, d: Durability, rate: float, chunk: int = 50,
                 idempotent: bool = False, retry_short_s: float = 0.0) -> None:
        super().__init__(daemon=True)
        idem = IdempotentWriter(keys, f"fo-{uuid.uuid4().hex[:6]}", 600) if idempotent else None
        self.prod = Producer(connect(url), keys, pipeline_size=chunk, durability=d, idempotence=idem)
        self.rate, self.chunk, self.retry_short_s = rate, chunk, retry_short_s
        self.accepted: list[str] = []
        self.accepted_at: list[tuple[float, int]] = []  # (monotonic time the call returned, windows)
        self.short: list[str] = []
        self.short_calls = 0
        self.retried_ok = 0
        self.failed = 0
        self.errors: Counter[str] = Counter()
        self.halt = threading.Event()
        self.xs = list(np.random.default_rng(0).standard_normal((chunk, 20, 1)).astype(np.float32))

    def _publish(self, cids: list[str]) -> None:
        deadline = time.monotonic() + self.retry_short_s
        tries = 0
        while True:
            tries += 1
            try:
                self.prod.publish_many(self.xs, ids=cids)
            except ReplicaAckError:
                self.short_calls += 1
                if time.monotonic() >= deadline or self.halt.is_set():
                    self.short += cids
                    return
            except PRODUCER_ERRORS as e:
                self.failed += 1
                self.errors[type(e).__name__] += 1
                if not self.retry_short_s or time.monotonic() >= deadline or self.halt.is_set():
                    return
            else:
                self.accepted += cids
                self.accepted_at.append((time.monotonic(), len(cids)))
                if tries > 1:
                    self.retried_ok += len(cids)
                return
            time.sleep(0.1)

    def run(self) -> None:
        n = 0
        t0 = time.monotonic()
        while not self.halt.is_set():
            cids = [f"w{n + i}" for i in range(self.chunk)]
            n += self.chunk
            self._publish(cids)
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
    return worker_process_env(dict(os.environ, OMP_NUM_THREADS="1"), redis_url=url, prefix=prefix, group=prefix,
                              shards=SHARDS, checkpoint=str(checkpoint), log_json=True, claim_idle_ms=1000,
                              reclaim_interval_ms=200, heartbeat_interval_s=0.5, max_batch=64,
                              wait_replicas=wait_replicas, wait_timeout_ms=1000)


def start_workers(env: dict[str, str], logdir: Path, n: int = 2) -> list[subprocess.Popen[bytes]]:
    """``n`` worker processes (consumers ``fo<i>-0``) logging to ``logdir``."""
    procs = []
    for i in range(n):
        with open(logdir / f"fo{i}.log", "ab") as f:
            procs.append(start_worker(env, ["--worker-name", f"fo{i}"], log=f))
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


def _settle(out: ResultsByCid, want: set[str], quiet_s: float, timeout: float) -> bool:
    """Poll until every cid in ``want`` has a result (True), or none got one for ``quiet_s`` s, or
    ``timeout`` s passed (False): windows lost with a master never get one."""
    deadline = time.monotonic() + timeout
    served, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        out.poll()
        now = sum(1 for c in want if out.count[c])
        if now == len(want):
            return True
        if now != served:
            served, since = now, time.monotonic()
        elif time.monotonic() - since > quiet_s:
            return False
        time.sleep(0.05)
    return False


def _audit(rc: Any, keys: Keys, accepted: list[str]) -> tuple[int, int, int]:
    """(accepted cids with no result, surplus results, surplus results of cids whose results name
    two or more input entries) in the results streams as they survived, read again from the start."""
    survived = ResultsByCid(rc, keys)
    for _ in range(3):  # a shard's node may be briefly unreachable: read what is left
        while survived.poll():
            pass
    return (sum(1 for c in accepted if not survived.count[c]),
            sum(n - 1 for n in survived.count.values() if n > 1),
            sum(n - 1 for c, n in survived.count.items() if n > 1 and len(survived.inputs[c]) > 1))


def run_failover(checkpoint: Path, logdir: Path, *, wait_replicas: int, rate: float = 500.0,
                 before_s: float = 3.0, after_s: float = 5.0, node_timeout_ms: int = 1000,
                 lag_s: float = 0.0) -> FailoverFigures:
    """Start a cluster with a replica per master, stream, kill shard 0's master, audit by cid.

    ``lag_s`` > 0: the lagging-replica scenario (see the module docstring). Its nodes run with
    ``cluster-replica-validity-factor 0``, so a replica's data age never vetoes its promotion.
    """
    fig = FailoverFigures(wait_replicas=wait_replicas, rate_per_s=rate, lag_s=lag_s)
    d = Durability(wait_replicas, 1000)
    args = ["--cluster-replica-validity-factor", "0"] if lag_s else None
    with LocalCluster(3, args, replicas=1, node_timeout_ms=node_timeout_ms) as cluster:
        rc = connect(cluster.url)
        prefix = spread_prefix(rc)
        keys = Keys(prefix, prefix, SHARDS)
        workers = start_workers(worker_env(cluster.url, prefix, checkpoint, wait_replicas), logdir)
        pids = [p.pid for p in workers]
        out = ResultsByCid(rc, keys)
        retry = bool(lag_s and wait_replicas)
        prod = SteadyProducer(cluster.url, keys, d, rate, idempotent=retry, retry_short_s=30.0 if retry else 0.0)
        stall_at = kill_at = 0.0
        try:
            _until(lambda: all(rc.exists(keys.heartbeat(f"fo{i}-0")) for i in range(2)), 120, "both workers")
            prod.start()
            t_end = time.monotonic() + before_s
            _until(lambda: time.monotonic() > t_end, before_s + 5, "streaming before the kill", out.poll)
            victim = cluster.master_port_of(keys.shard(0).windows)
            fig.killed_shards = [s for s, node in shard_nodes(rc, keys).items() if node.endswith(f":{victim}")]
            lagging = cluster.replica_ports_of(victim) if lag_s else []
            for port in lagging:  # the pause ends STALL_AFTER_KILL_S after the kill
                cluster.stall_replica(port, int((lag_s + STALL_AFTER_KILL_S) * 1000))
            stall_at = time.monotonic()
            if lag_s:
                t_end = stall_at + lag_s
                _until(lambda: time.monotonic() > t_end, lag_s + 5, "the replica to fall behind", out.poll)
            killed = cluster.kill_master_of(keys.shard(0).windows)
            kill_at = killed.at
            out.since_us = now_us()  # the dead master can publish nothing after this
            fig.promoted_s = round(cluster.wait_failover(killed), 2)
            # Until the dead node is back (as a replica of the new master) WAIT 1 cannot succeed on
            # its slots: an operator or orchestrator restarts it; here at once.
            fig.rejoined_s = round(cluster.rejoin(killed), 2)
            t_end = time.monotonic() + after_s
            _until(lambda: time.monotonic() > t_end, after_s + 5, "streaming after the failover", out.poll)
            prod.halt.set()
            prod.join(60)
            if _settle(out, set(prod.accepted), 10.0, 90):
                fig.all_served_s = round(time.monotonic() - killed.at, 2)
            else:
                fig.all_served_s = -1.0  # some accepted windows never got a result (lost with the master)
            # windows written whose WAIT fell short are served too, if they survived: give them time
            _settle(out, set(prod.short), 5.0, 15)
        except TimeoutError as e:
            fig.extra["timeout"] = str(e)
        finally:
            prod.halt.set()
            time.sleep(1.0)  # let a late duplicate surface
            out.poll()
            fig.workers_alive = all(p.poll() is None for p in workers) and [p.pid for p in workers] == pids
            stop_workers(workers)
            final = _audit(rc, keys, prod.accepted)
            rc.close()
        recovered = [out.first_after[s] for s in fig.killed_shards if s in out.first_after]
        fig.recovery_s = round((min(recovered) - out.since_us) / 1e6, 2) if recovered and out.since_us else -1.0
        fig.accepted, fig.short_acked, fig.failed_chunks = len(prod.accepted), len(prod.short), prod.failed
        fig.short_calls, fig.retried_ok = prod.short_calls, prod.retried_ok
        fig.accepted_in_stall = sum(n for t, n in prod.accepted_at if stall_at and stall_at <= t < kill_at) \
            if lag_s else 0
        fig.results = sum(out.count[c] for c in prod.accepted)
        fig.lost = sum(1 for c in prod.accepted if not out.count[c])
        fig.duplicates = sum(n - 1 for n in out.count.values() if n > 1)
        fig.lost_final, fig.duplicates_final, fig.duplicates_final_two_inputs = final
        fig.worker_ack_short = sum(p.read_text().count("replica_ack_short") for p in logdir.glob("fo*.log"))
        fig.extra["producer_errors"] = dict(prod.errors)
        fig.extra["short_unserved"] = sum(1 for c in prod.short if not out.count[c])
    return fig
