"""The two numbers KEDA's Redis Streams scaler reads, XINFO GROUPS ``lag`` and the pending count, stay
true: with real workers on 2 shards, at every poll each shard's lag is an integer (never nil) and
lag + pending equals the true backlog (entries published minus entries acknowledged), through a burst,
poison windows, a kill -9 of a replica holding a batch, maintenance passes (input trimming, consumer
reaping) and MAXLEN trimming of the results and dead-letter streams.

Each poll reads one shard atomically (MULTI: XINFO GROUPS and XINFO STREAM of the shard's input,
results and dead-letter streams, one hash slot). Acknowledged = results + dead letters ever added
(``entries-added``, which trimming does not lower): the publish script XADDs exactly one output per
single-window entry it acknowledges, in the same atomic step. The figures and the KEDA formula
``replicas = ceil(sum(lag + pending) / target)`` evaluated on them go to results/lag.{md,json}.
A control shows the checks can fail: an XDEL after the group's position (what a length-trimmed
input does to Redis's counters) gives a nil lag, or a lag that no longer counts what is undelivered.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import yaml

from producer.client import Producer
from protocol.keys import Keys
from tests.chaos_support import kill9_when, live, start_worker, stop, wait_until
from tests.k8s_support import DEPLOY

pytestmark = pytest.mark.chaos

ROOT = Path(__file__).resolve().parents[2]
SHARDS = 2


def keda_settings() -> dict[str, int]:
    """Target and replica bounds of deploy/kubernetes' ScaledObject."""
    so = next(d for d in yaml.safe_load_all((DEPLOY / "base" / "keda.yaml").read_text()) if d["kind"] == "ScaledObject")
    return {"target": int(so["spec"]["advanced"]["scalingModifiers"]["target"]),
            "min": so["spec"]["minReplicaCount"], "max": so["spec"]["maxReplicaCount"]}


def keda_replicas(metric: int, k: dict[str, int]) -> int:
    """What KEDA's HPA asks for with an AverageValue formula: ceil(metric / target), clamped."""
    return max(k["min"], min(k["max"], math.ceil(metric / k["target"])))


@dataclass
class Snapshot:
    """One shard at one instant."""

    t: float
    shard: int
    lag: Any
    pending: int
    published: int
    acked: int
    input_len: int
    results_len: int
    dead_len: int

    @property
    def backlog(self) -> int:
        return self.published - self.acked


def snapshot(r: redis.Redis, keys: Keys, shard: int, t0: float) -> Snapshot:
    """lag, pending and the stream counters of ``shard``, read in one MULTI/EXEC (one hash slot)."""
    sk = keys.shard(shard)
    pipe = r.pipeline(transaction=True)
    pipe.xinfo_groups(sk.windows)
    for s in (sk.windows, sk.results, sk.dead):
        pipe.execute_command("XINFO", "STREAM", s)
    groups, win, res, dead = pipe.execute(raise_on_error=False)

    def info(raw: Any) -> dict[str, Any]:
        if isinstance(raw, redis.ResponseError):  # no output stream yet: nothing was ever added to it
            assert "no such key" in str(raw), raw
            return {"entries-added": 0, "length": 0}
        pairs = raw.items() if isinstance(raw, dict) else zip(raw[::2], raw[1::2])
        return {k.decode() if isinstance(k, bytes) else k: v for k, v in pairs}

    g = next(g for g in groups if g["name"].decode() == keys.group)
    w, rs, d = info(win), info(res), info(dead)
    return Snapshot(time.monotonic() - t0, shard, g["lag"], int(g["pending"]), int(w["entries-added"]),
                    int(rs["entries-added"]) + int(d["entries-added"]), int(w["length"]), int(rs["length"]),
                    int(d["length"]))


@dataclass
class Poller:
    """A thread taking a snapshot of every shard as often as it can, noting every violation."""

    r: redis.Redis
    keys: Keys
    phase: str = "start"
    snaps: list[tuple[str, Snapshot]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    polls: int = 0

    def __post_init__(self) -> None:
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self._poll()
        except Exception as e:  # a failed poll fails the test (it is a violation, not a lost thread)
            self.violations.append(f"poll raised {e!r}")

    def _poll(self) -> None:
        while not self._stop.is_set():
            for s in range(SHARDS):
                snap = snapshot(self.r, self.keys, s, self.t0)
                self.snaps.append((self.phase, snap))
                if not isinstance(snap.lag, int):
                    self.violations.append(f"{self.phase} t={snap.t:.2f} shard {s}: lag is {snap.lag!r}")
                elif snap.lag + snap.pending != snap.backlog:
                    self.violations.append(f"{self.phase} t={snap.t:.2f} shard {s}: lag {snap.lag} + pending "
                                           f"{snap.pending} != backlog {snap.backlog}")
            self.polls += 1
            time.sleep(0.01)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def backlog(self) -> int:
        return sum(snapshot(self.r, self.keys, s, self.t0).backlog for s in range(SHARDS))


def held_by(r: redis.Redis, keys: Keys, consumer: str) -> int:
    """Entries in ``consumer``'s pending lists, over every shard."""
    total = 0
    for sk in keys.all_shards():
        for c in r.xinfo_consumers(sk.windows, keys.group):
            if c["name"].decode() == consumer:
                total += int(c["pending"])
    return total


def consumers(r: redis.Redis, keys: Keys) -> set[str]:
    """Consumer names of the group, over every shard."""
    return {c["name"].decode() for sk in keys.all_shards() for c in r.xinfo_consumers(sk.windows, keys.group)}


def kill9_holding(proc: subprocess.Popen[bytes], r: redis.Redis, keys: Keys, consumer: str) -> int:
    """SIGKILL ``proc`` at an instant it holds entries on any shard; how many it held."""
    return kill9_when(proc, lambda: held_by(r, keys, consumer), consumer, tries=300)


def _control_without_the_guarantee(r: redis.Redis, prefix: str) -> dict[str, Any]:
    """What XINFO GROUPS says after an entry past the group's position is removed (XDEL), and after a
    length trim past it: the cases the worker's trimming never creates."""
    out: dict[str, Any] = {}
    for case in ("xdel_undelivered", "maxlen_past_undelivered"):
        key = f"{{{prefix}:ctl}}:{case}"
        ids = [r.xadd(key, {"x": i}) for i in range(10)]
        r.xgroup_create(key, "g", id="0")
        r.xreadgroup("g", "c", {key: ">"}, count=3)
        r.xack(key, "g", *ids[:3])
        if case == "xdel_undelivered":
            r.xdel(key, ids[5])
        else:
            r.xtrim(key, maxlen=2, approximate=False)
        g = r.xinfo_groups(key)[0]
        undelivered = len(r.xrange(key, f"({ids[2].decode()}", "+"))
        out[case] = {"lag": g["lag"], "pending": int(g["pending"]), "undelivered_entries": undelivered,
                     "lag_true": g["lag"] == undelivered}
    return out


def _table(rows: list[dict[str, Any]]) -> str:
    head = ("| t (s) | phase | shard 0 lag / pending / backlog | shard 1 lag / pending / backlog | "
            "input len (0, 1) | results len (0, 1) | metric Σ(lag+pending) | KEDA replicas |\n|---|---|---|---|---|---|---|---|\n")
    return head + "".join(
        f"| {x['t']:.1f} | {x['phase']} | {x['s0']} | {x['s1']} | {x['input_len']} | {x['results_len']} | "
        f"{x['metric']} | {x['replicas']} |\n" for x in rows)


def _report(p: Poller, k: dict[str, int], extra: dict[str, Any]) -> dict[str, Any]:
    by_t: dict[int, dict[int, Snapshot]] = {}
    phases: dict[int, str] = {}
    for i, (phase, s) in enumerate(p.snaps):
        by_t.setdefault(i // SHARDS, {})[s.shard] = s
        phases[i // SHARDS] = phase
    rows, last = [], -1.0
    peak = {"metric": 0, "replicas": 0}
    per_phase: dict[str, dict[str, int]] = {}
    for i, shards in sorted(by_t.items()):
        if len(shards) < SHARDS:
            continue
        metric = sum(int(s.lag) + s.pending for s in shards.values())
        reps = keda_replicas(metric, k)
        ph = per_phase.setdefault(phases[i], {"polls": 0, "max_metric": 0, "max_replicas": 0})
        ph["polls"] += 1
        ph["max_metric"] = max(ph["max_metric"], metric)
        ph["max_replicas"] = max(ph["max_replicas"], reps)
        if metric > peak["metric"]:
            peak = {"metric": metric, "replicas": reps}
        t = shards[0].t
        if t - last >= 0.5 or (rows and rows[-1]["phase"] != phases[i]):
            last = t
            rows.append({"t": t, "phase": phases[i], "metric": metric, "replicas": reps,
                         "s0": f"{shards[0].lag} / {shards[0].pending} / {shards[0].backlog}",
                         "s1": f"{shards[1].lag} / {shards[1].pending} / {shards[1].backlog}",
                         "input_len": f"{shards[0].input_len}, {shards[1].input_len}",
                         "results_len": f"{shards[0].results_len}, {shards[1].results_len}"})
    return {"polls": p.polls, "snapshots": len(p.snaps), "violations": len(p.violations),
            "first_violations": p.violations[:5], "keda": k, "peak": peak, "per_phase": per_phase,
            "rows": rows, **extra}


def test_lag_plus_pending_is_the_true_backlog_at_every_poll(
    r: redis.Redis, prefix: str, worker_env: dict[str, str], tmp_path: Path
) -> None:
    keys = Keys(prefix, prefix, SHARDS)
    env = {**worker_env, "BIGRU_SHARDS": str(SHARDS), "BIGRU_CLAIM_IDLE_MS": "1000", "BIGRU_RECLAIM_INTERVAL_MS": "200",
           "BIGRU_MAINTENANCE_INTERVAL_MS": "200", "BIGRU_REAP_IDLE_MS": "1000", "BIGRU_HEARTBEAT_INTERVAL_S": "0.5",
           "BIGRU_HEARTBEAT_TTL_S": "5", "BIGRU_RESULTS_MAXLEN": "300", "BIGRU_DEAD_MAXLEN": "10",
           "BIGRU_MAX_BATCH": "64"}
    names = ["a", "b", "c"]
    workers = {n: start_worker(env, n, tmp_path / f"{n}.log") for n in names}
    prod = Producer(r, keys)
    rng = np.random.default_rng(0)
    k = keda_settings()
    published = 0
    try:
        wait_until(lambda: live(r, keys, *(f"{n}-0" for n in names)), 120, "three workers to start")
        with Poller(r, keys) as p:
            time.sleep(0.3)
            p.phase = "burst"
            windows = list(rng.standard_normal((12_000, 20, 1)).astype(np.float32))
            for i in range(0, 40):  # poison windows: dead letters (bad_x), also acknowledged
                windows[i * 300][3, 0] = np.nan
            # A burst faster than the pool serves: the workers are paused while it lands, so the backlog
            # (and what KEDA would ask for) does not depend on this machine's speed.
            for w in workers.values():
                os.kill(w.pid, signal.SIGSTOP)
            try:
                published += len(prod.publish_many(windows))
                time.sleep(0.2)
            finally:
                for w in workers.values():
                    os.kill(w.pid, signal.SIGCONT)
            wait_until(lambda: p.backlog() < 9000, 60, "the pool to serve 3000 windows")
            p.phase = "kill -9"
            held = kill9_holding(workers["a"], r, keys, "a-0")
            wait_until(lambda: held_by(r, keys, "a-0") == 0, 30, "a-0's entries to be reclaimed")
            p.phase = "second burst"
            published += len(prod.publish_many(list(rng.standard_normal((4000, 20, 1)).astype(np.float32))))
            wait_until(lambda: p.backlog() == 0, 120, "the backlog to drain")
            p.phase = "maintenance"
            # Passes every 200 ms: trimming the acknowledged input, and reaping a-0 once its heartbeat expired.
            wait_until(lambda: "a-0" not in consumers(r, keys), 30, "a-0 to be reaped")
            time.sleep(1.0)
            p.phase = "drained"
            time.sleep(0.5)
        after = consumers(r, keys)
        final = [snapshot(r, keys, s, p.t0) for s in range(SHARDS)]
    finally:
        for w in workers.values():
            stop(w)
    control = _control_without_the_guarantee(r, prefix)
    trimmed_input = sum(s.published - s.input_len for s in final)
    trimmed_results = sum(s.acked - s.results_len - s.dead_len for s in final)
    rep = _report(p, k, {"published": published, "killed_held": held, "trimmed_input_entries": trimmed_input,
                         "trimmed_output_entries": trimmed_results, "consumers_after": sorted(after),
                         "control": control, "server": r.info("server").get("valkey_version")
                         or r.info("server")["redis_version"]})
    _write(rep)
    assert p.violations == [], p.violations[:10]
    assert p.polls >= 100 and rep["per_phase"]["kill -9"]["polls"] > 0
    assert sum(s.published for s in final) == published and sum(s.acked for s in final) == published  # 0 lost
    assert all(s.lag == 0 and s.pending == 0 for s in final)
    assert held > 0 and "a-0" not in after  # the killed replica's entries were reclaimed, it was reaped
    assert trimmed_input > 0 and trimmed_results > 0  # both kinds of trimming ran during the test
    # The paused burst: 12 000 windows of backlog -> ceil(12 000 / target) replicas; drained -> the minimum.
    assert rep["peak"]["metric"] == 12_000 and rep["peak"]["replicas"] == keda_replicas(12_000, k)
    assert rep["per_phase"]["drained"]["max_replicas"] == k["min"]
    # Without the guarantee the same checks fail (nil lag, or a lag that is not the undelivered count).
    assert not all(c["lag_true"] for c in control.values())


def _write(rep: dict[str, Any]) -> None:
    if os.environ.get("BIGRU_TEST_SERVER"):  # the Valkey pass records its own copy
        name = "lag-valkey"
    else:
        name = "lag"
    out = ROOT / "results"
    (out / f"{name}.json").write_text(json.dumps(rep, indent=2, default=str) + "\n")
    k, ctl = rep["keda"], rep["control"]
    phases = "".join(f"| {ph} | {v['polls']} | {v['max_metric']} | {v['max_replicas']} |\n" for ph, v in rep["per_phase"].items())
    (out / f"{name}.md").write_text(
        f"# A lag that stays true: what KEDA reads vs the real backlog ({rep['server']})\n\n"
        "`tests/chaos/test_lag_true.py`: 3 real `bigru-worker` processes on 2 shards against a real server; a "
        f"poller read each shard atomically {rep['snapshots']} times ({rep['polls']} polls of both shards) and "
        "checked at every one that XINFO GROUPS `lag` is an integer and lag + pending = published − acknowledged. "
        f"**Violations: {rep['violations']}.** Published {rep['published']} single-window entries (40 poison windows "
        f"dead-lettered), a replica holding {rep['killed_held']} entries killed with `kill -9` (reclaimed, then reaped: "
        f"consumers after {rep['consumers_after']}), the workers' maintenance trimmed {rep['trimmed_input_entries']} "
        f"acknowledged input entries and MAXLEN trimmed {rep['trimmed_output_entries']} result/dead-letter entries "
        "(`BIGRU_RESULTS_MAXLEN=300`, `BIGRU_DEAD_MAXLEN=10`).\n\n"
        f"KEDA (deploy/kubernetes/base/keda.yaml): metric = Σ over shards (lag + pending), target {k['target']}, "
        f"replicas = min({k['max']}, max({k['min']}, ceil(metric / {k['target']}))).\n\n"
        "| phase | polls | max metric | max KEDA replicas |\n|---|---|---|---|\n" + phases +
        "\nEvery 0.5 s (and at each phase change) — per shard `lag / pending / backlog`, where backlog = "
        "published − acknowledged from `entries-added` counters:\n\n" + _table(rep["rows"]) +
        "\n## Control: the same checks on a stream trimmed the way the worker never trims\n\n"
        "10 entries, a group that read and acknowledged 3, then an entry past the group's position removed:\n\n"
        "| case | XINFO GROUPS lag | undelivered entries | lag true |\n|---|---|---|---|\n" +
        "".join(f"| {c} | {v['lag']} | {v['undelivered_entries']} | {v['lag_true']} |\n" for c, v in ctl.items()) +
        "\nA nil lag reads as 0 in KEDA's client (scale to the minimum with a backlog); a lag that counts "
        "trimmed entries asks for replicas for work that no longer exists. The worker's trim script "
        "(worker/maintenance.py) keeps every entry after each group's last-delivered id and every pending entry, "
        "so neither happens.\n")


def test_maintenance_never_trims_undelivered_entries_and_reports_a_nil_lag(r: redis.Redis, prefix: str) -> None:
    from worker.maintenance import Maintenance

    keys = Keys(prefix, prefix, SHARDS)
    sk = keys.shard(1)
    ids = [r.xadd(sk.windows, {"x": i}).decode() for i in range(20)]
    r.xgroup_create(sk.windows, keys.group, id="0")
    r.xgroup_create(keys.shard(0).windows, keys.group, id="0", mkstream=True)
    r.xreadgroup(keys.group, "c", {sk.windows: ">"}, count=8)
    r.xack(sk.windows, keys.group, *ids[:5])  # 5 acknowledged, 3 pending, 12 undelivered
    m = Maintenance(r, keys, "m-0", interval_s=1, trim=True, reap_idle_ms=1000)
    rep = m.run_once()
    assert rep.trimmed == 5 and rep.trimmed_to[1] == ids[5] and rep.lag_unknown == {}
    g = r.xinfo_groups(sk.windows)[0]
    assert (g["lag"], g["pending"]) == (12, 3)
    r.xdel(sk.windows, ids[15])  # an entry past the group's position removed by hand: the lag is lost
    rep = m.run_once()
    assert rep.lag_unknown == {1: [keys.group]} and rep.trimmed == 0
    assert [i.decode() for i, _ in r.xrange(sk.windows)] == ids[5:15] + ids[16:]  # nothing undelivered trimmed
