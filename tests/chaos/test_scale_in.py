"""Scale-in loses nothing: what a Deployment scaled down by KEDA does to its pods, on real processes.

While a producer publishes and other replicas serve, a random replica is sent SIGTERM at an instant it
holds a batch (frozen with SIGSTOP while we look, so "holds" is true when the signal lands), then a new
replica with a new name starts (a new pod). Each stopped replica must exit 0 with nothing pending and
its consumer deleted. The first one runs as PID 1 of its own PID namespace (``unshare --pid --fork``),
as in a container: a PID 1 gets only the signals it installed handlers for, so this checks that
``bigru-worker`` handles SIGTERM there. Last, the kubelet's SIGKILL after the grace period: a replica
frozen mid-batch gets SIGTERM, then SIGKILL when the "grace period" ends; its entries are reclaimed
like a kill -9's. The oracle: every accepted window has exactly one output (0 lost, 0 duplicated).
Figures, including SIGTERM -> exit times (what terminationGracePeriodSeconds must exceed), go to
results/scale_in.{json,md}.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from producer.client import Producer
from protocol.keys import Keys
from tests.chaos_support import Outputs, audit, live, pending_of, start_worker, stop, wait_until

pytestmark = pytest.mark.chaos

ROOT = Path(__file__).resolve().parents[2]
CLAIM_IDLE_MS = 1000
ROUNDS = 6


def _child_pid(p: subprocess.Popen[bytes]) -> int:
    """The worker under ``unshare --fork``: unshare's only child."""
    for _ in range(100):
        kids = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
        if kids:
            return int(kids[0])
        time.sleep(0.05)
    raise AssertionError("unshare started no child")


def _ns_pid(pid: int) -> list[int]:
    line = next(ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith("NSpid:"))
    return [int(x) for x in line.split()[1:]]


def _can_unshare() -> bool:
    exe = shutil.which("unshare")
    return exe is not None and subprocess.run([exe, "--pid", "--fork", "true"], capture_output=True).returncode == 0


class Replica:
    """One worker process (a pod); ``pid`` is the worker itself (under unshare: the namespace's PID 1)."""

    def __init__(self, env: dict[str, str], name: str, log: Path, pid1: bool = False) -> None:
        self.name, self.consumer, self.pid1 = name, f"{name}-0", pid1
        if pid1:
            with open(log, "ab") as f:
                self.proc = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-m",
                                              "worker.cli", "--worker-name", name], env=env, stdout=f,
                                             stderr=subprocess.STDOUT)
            self.pid = _child_pid(self.proc)
            assert _ns_pid(self.pid)[-1] == 1, "the worker is PID 1 of its namespace"
        else:
            self.proc = start_worker(env, name, log)
            self.pid = self.proc.pid


def _freeze_holding(rep: Replica, r: redis.Redis, keys: Keys, at_least: int = 16) -> list[str]:
    """SIGSTOP ``rep`` at an instant it holds entries (``at_least`` of them if that happens within 200
    tries, else any); returns them (the process stays stopped)."""
    for attempt in range(600):
        os.kill(rep.pid, signal.SIGSTOP)
        time.sleep(0.02)
        held = pending_of(r, keys, rep.consumer)
        if len(held) >= (at_least if attempt < 200 else 1):
            return held
        os.kill(rep.pid, signal.SIGCONT)
        time.sleep(0.01)
    raise AssertionError(f"{rep.consumer} never held a batch")


def _consumers(r: redis.Redis, keys: Keys) -> set[str]:
    return {c["name"].decode() for c in r.xinfo_consumers(keys.shard(0).windows, keys.group)}


def test_sigterm_to_random_replicas_mid_batch_loses_and_duplicates_nothing(
    r: redis.Redis, prefix: str, worker_env: dict[str, str], tmp_path: Path
) -> None:
    keys = Keys(prefix, prefix)
    env = {**worker_env, "BIGRU_CLAIM_IDLE_MS": str(CLAIM_IDLE_MS), "BIGRU_RECLAIM_INTERVAL_MS": "200",
           "BIGRU_HEARTBEAT_INTERVAL_S": "0.5", "BIGRU_MAX_BATCH": "64", "BIGRU_MAINTENANCE_INTERVAL_MS": "500"}
    pid1 = _can_unshare()
    reps = [Replica(env, f"w{i}", tmp_path / f"w{i}.log", pid1=pid1 and i == 0) for i in range(4)]
    out = Outputs(r, keys)
    accepted: list[str] = []
    done = threading.Event()
    rng = random.Random(7)

    def produce() -> None:
        prod = Producer(r, keys, pipeline_size=400)
        windows = list(np.random.default_rng(1).standard_normal((400, 20, 1)).astype(np.float32))
        while not done.is_set():
            # Keep the replicas busy (full batches) but the backlog bounded, so the test ends soon after.
            if r.xinfo_groups(keys.shard(0).windows)[0]["lag"] < 3000:
                accepted.extend(prod.publish_many(windows))
            time.sleep(0.05)

    rounds: list[dict[str, Any]] = []
    t = threading.Thread(target=produce)
    try:
        wait_until(lambda: live(r, keys, *(x.consumer for x in reps)), 120, "four replicas to start")
        t.start()
        wait_until(lambda: r.xlen(keys.shard(0).results) >= 1000, 60, "1000 results")
        def serving() -> list[Replica]:
            return [x for x in reps if live(r, keys, x.consumer)]

        for i in range(ROUNDS):
            # The PID 1 replica first, then a random serving one; at least one other serves meanwhile (a
            # replacement still loading its model holds nothing).
            wait_until(lambda: len(serving()) >= 2, 120, "two serving replicas")
            victim = reps[0] if i == 0 else rng.choice(serving())
            held = _freeze_holding(victim, r, keys)
            os.kill(victim.pid, signal.SIGTERM)  # delivered when it runs again, mid-batch
            t0 = time.monotonic()
            os.kill(victim.pid, signal.SIGCONT)
            rc = victim.proc.wait(60)
            rounds.append({"replica": victim.consumer, "pid1": victim.pid1, "held": len(held),
                           "exit_code": rc, "sigterm_to_exit_s": round(time.monotonic() - t0, 3),
                           "pending_after": len(pending_of(r, keys, victim.consumer)),
                           "consumer_deleted": victim.consumer not in _consumers(r, keys)})
            reps.remove(victim)
            reps.append(Replica(env, f"n{i}", tmp_path / f"n{i}.log"))  # the pod that replaces it
            time.sleep(0.3)  # the others serve on
        # The kubelet's SIGKILL once the grace period ends, on a replica stuck mid-batch.
        wait_until(lambda: live(r, keys, *(x.consumer for x in reps)), 120, "the replacements to start")
        victim = rng.choice(reps)
        held = _freeze_holding(victim, r, keys)
        os.kill(victim.pid, signal.SIGTERM)
        time.sleep(0.2)  # the "grace period": it does not finish (frozen)
        os.kill(victim.pid, signal.SIGKILL)
        victim.proc.wait(30)
        t_kill = time.monotonic()
        reps.remove(victim)
        reclaim_s = out.wait_served(held, CLAIM_IDLE_MS / 1000 + 20)
        time.sleep(0.5)
        done.set()
        t.join(30)
        out.wait_served(accepted, 120)
        time.sleep(0.5)  # let a duplicate surface
    finally:
        done.set()
        for x in reps:
            stop(x.proc)
    exits = [x["sigterm_to_exit_s"] for x in rounds]
    fig = audit("scale_in", out, accepted, rounds=rounds, sigkill_held=len(held),
                sigkill_reclaimed_served_after_s=round(reclaim_s, 2), since_kill_s=round(time.monotonic() - t_kill, 1))
    doc = {"sent": fig.sent, "results": fig.results, "dead_lettered": fig.dead_lettered, "lost": fig.lost,
           "duplicates": fig.duplicates, "rounds": rounds, "pid1_tested": pid1,
           "sigterm_to_exit_s": {"max": max(exits), "median": sorted(exits)[len(exits) // 2], "n": len(exits)},
           "sigkill_after_grace": {"held": len(held), "served_after_s": round(reclaim_s, 2),
                                   "claim_idle_ms": CLAIM_IDLE_MS},
           "server": r.info("server").get("valkey_version") or r.info("server")["redis_version"]}
    _write(doc)
    assert fig.lost == 0 and fig.duplicates == 0 and fig.dead_lettered == 0
    for x in rounds:
        assert x["held"] > 0 and x["exit_code"] == 0, x
        assert x["pending_after"] == 0 and x["consumer_deleted"], x  # finished and acknowledged its batch
    assert pending_of(r, keys, victim.consumer) == []  # the SIGKILLed replica's entries were reclaimed
    assert reclaim_s <= CLAIM_IDLE_MS / 1000 + 10


def _write(doc: dict[str, Any]) -> None:
    name = "scale_in-valkey" if os.environ.get("BIGRU_TEST_SERVER") else "scale_in"
    out = ROOT / "results"
    (out / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    rows = "".join(f"| {i + 1} | {x['replica']}{' (PID 1)' if x['pid1'] else ''} | {x['held']} | {x['exit_code']} | "
                   f"{x['sigterm_to_exit_s']} | {x['pending_after']} | {x['consumer_deleted']} |\n"
                   for i, x in enumerate(doc["rounds"]))
    s, k = doc["sigterm_to_exit_s"], doc["sigkill_after_grace"]
    (out / f"{name}.md").write_text(
        f"# Scale-in loses nothing ({doc['server']})\n\n"
        "`tests/chaos/test_scale_in.py`: 4 `bigru-worker` replicas (one process each, as one per pod) serve while a "
        "producer publishes; each round SIGTERMs a random replica at an instant it holds a batch and starts a "
        "new one under a new name (the pod that replaces it). "
        + ("The first runs as PID 1 of its own PID namespace (`unshare --pid --fork`), as in a container. "
           if doc["pid1_tested"] else "(`unshare` was not permitted: no PID 1 round.) ") +
        "Then one replica frozen mid-batch gets SIGTERM and, 0.2 s later (its grace period), SIGKILL.\n\n"
        f"**{doc['sent']} windows accepted: {doc['results']} results, {doc['lost']} lost, {doc['duplicates']} "
        f"duplicated, {doc['dead_lettered']} dead-lettered.**\n\n"
        "| round | replica | held at SIGTERM | exit code | SIGTERM → exit (s) | pending after | consumer deleted |\n"
        "|---|---|---|---|---|---|---|\n" + rows +
        f"\nSIGTERM → exit: median {s['median']} s, max {s['max']} s over {s['n']} rounds (batches of at most 64 "
        "windows, T=20, on a loaded 2-CPU machine). SIGKILL after the grace period: the replica held "
        f"{k['held']} entries; another replica served them {k['served_after_s']} s after the kill "
        f"(claim idle time {k['claim_idle_ms']} ms), as after a kill -9.\n")
