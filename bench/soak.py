"""``make soak``: the worker pool under steady half load for minutes, with a hot reload and a crash.

One run: a throwaway redis-server, the default model (random weights) in a checkpoint root, the pool
(``python -m worker.cli`` with ``BIGRU_REPLICAS=2``, input trimming on, a small results cap). The
pool's saturated rate is measured first (the replicas are paused with SIGSTOP, a backlog is
published, they are resumed and the drain is timed) unless ``--rate`` fixes the rate. Then a paced
producer (:mod:`bench.soak_load`) publishes at ``--load`` (half) of it for ``--minutes``; at 1/3 of
the run a second version is published into the checkpoint root (``latest`` moves: a hot reload), at
2/3 one replica is killed with SIGKILL, mid-batch, and the supervisor restarts it (the crash path: no
graceful acknowledgement, its pending entries are re-read by the restarted consumer of the same
name). Every ``--sample-s`` seconds it records the RSS of every process, the group's pending and
lag, the three streams' lengths, the consumer count, throughput and the served model versions;
after the producer stops it waits for the pool to drain. A reader counts every result by client id
(0 lost, 0 duplicates). Writes ``<out>/soak.json``, ``soak.md``, ``soak.png``
(:mod:`bench.soak_report`); exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import redis

from bench import soak_report
from bench.harness import LocalRedis, settings_env, start_worker, terminate
from bench.model import build_checkpoint, windows
from bench.soak_load import Oracle, produce, rss_kb
from producer.client import Producer
from protocol.keys import Keys
from protocol.replies import group_info
from training.model.checkpoint_file import set_latest_version
from worker.health import heartbeat

ROOT = Path(__file__).resolve().parents[1]

PREFIX = "soak"


@dataclass
class Plan:
    """Sizes and settings of one run."""

    minutes: float = 10.0
    replicas: int = 2
    load: float = 0.5  # share of the calibrated saturated rate
    rate: float | None = None  # fixed windows/s (skips calibration)
    sample_s: float = 5.0
    calib_windows: int = 40_000
    results_maxlen: int = 100_000
    dead_maxlen: int = 10_000
    maintenance_s: float = 10.0  # input trimming period of each replica
    drain_timeout_s: float = 120.0

    @property
    def seconds(self) -> float:
        """Length of the load phase."""
        return self.minutes * 60


class Pool:
    """The supervised worker pool (one ``python -m worker.cli`` process, ``replicas`` children)."""

    def __init__(self, r: redis.Redis, keys: Keys, env: dict[str, str], replicas: int, log: Path) -> None:
        self.r, self.keys, self.env, self.replicas, self.log = r, keys, env, replicas, log
        self.consumers = [f"{PREFIX}-{i}" for i in range(replicas)]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 180.0) -> None:
        """Start the supervisor and wait until every replica has a heartbeat."""
        with open(self.log, "ab") as f:
            self.proc = start_worker(self.env, log=f, cwd=ROOT)
        deadline = time.monotonic() + timeout_s
        while len(self.pids()) < self.replicas:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker pool not ready (exit {self.proc.poll()}): {self.tail()}")
            time.sleep(0.2)

    def pids(self) -> dict[str, int]:
        """consumer -> pid of the replicas with a live heartbeat whose process exists."""
        out = {}
        for c in self.consumers:
            hb = heartbeat(self.r, self.keys, c)
            if hb is not None and Path(f"/proc/{hb.pid}").exists():
                out[c] = hb.pid
        return out

    def models(self) -> dict[str, str]:
        """consumer -> served model version, from the live heartbeats."""
        return {c: hb.model for c in self.consumers if (hb := heartbeat(self.r, self.keys, c))}

    def stop(self) -> int | None:
        """SIGTERM the supervisor (each replica finishes its batch); its exit code."""
        return None if self.proc is None else terminate(self.proc, 60)

    def tail(self) -> str:
        """The end of the pool's log."""
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def calibrate(r: redis.Redis, keys: Keys, pool: Pool, oracle: Oracle, n: int) -> float:
    """The pool's saturated windows/s: pause the replicas, publish ``n`` windows, resume, time the drain
    (result publish times over the middle 90 %)."""
    pids = list(pool.pids().values())
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        Producer(r, keys, pipeline_size=2000).publish_many(windows(n, seed=3), ids=[f"c-{i}" for i in range(n)])
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + 300
    while len(oracle.calib_ts) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"calibration: {len(oracle.calib_ts)}/{n} results after 300 s: {pool.tail()}")
        oracle.poll(block_ms=100)
    ts = np.sort(np.array(oracle.calib_ts, dtype=np.int64))
    lo, hi = int(0.05 * n), int(0.95 * n) - 1
    return float((hi - lo) / max(1e-6, (ts[hi] - ts[lo]) / 1e6))


class Soak:
    """One run: the pool, the load, the events and the samples."""

    def __init__(self, plan: Plan, srv: LocalRedis, tmp: Path) -> None:
        self.plan, self.tmp = plan, tmp
        self.r, self.url = srv.client(), srv.url
        self.keys = Keys(PREFIX, PREFIX)
        self.sk = self.keys.shard(0)
        self.root = tmp / "checkpoints"
        build_checkpoint(self.root, seed=0, golden=256)
        build_checkpoint(tmp / "staging", seed=1, golden=256)  # the version the hot reload publishes
        self.next_version = (tmp / "staging" / "latest").read_text().strip()
        self.first_version = (self.root / "latest").read_text().strip()
        self.env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
        self.settings = {"redis_url": srv.url, "prefix": PREFIX, "group": PREFIX, "checkpoint": str(self.root),
                         "replicas": plan.replicas, "worker_name": PREFIX, "results_maxlen": plan.results_maxlen,
                         "dead_maxlen": plan.dead_maxlen, "trim_input": True, "maintenance_interval_ms": int(plan.maintenance_s * 1000),
                         "log_level": "INFO", "log_json": True}
        self.env.update(settings_env(self.settings))
        self.pool = Pool(self.r, self.keys, self.env, plan.replicas, tmp / "workers.log")
        self.oracle = Oracle(self.r, self.sk.results, 1024)
        self.events: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []
        self.t0 = 0.0
        self.reloaded: float | None = None
        self.killed: tuple[str, int, float] | None = None
        self.converged = self.restarted = False

    def now(self) -> float:
        """Seconds since the load started."""
        return time.monotonic() - self.t0

    def event(self, name: str, **info: Any) -> None:
        """Record (and print) an event."""
        ev = {"t": round(self.now(), 2), "event": name, **info}
        self.events.append(ev)
        print(f"[{ev['t']:7.1f} s] {name} {json.dumps(info)}", flush=True)

    def sample(self, phase: str, published: int, prev: dict[str, Any] | None) -> dict[str, Any]:
        """One reading of every measure."""
        t = self.now()
        g = group_info(self.r, self.sk.windows, self.keys.group) or {}
        pids = self.pool.pids()
        sup = self.pool.proc.pid if self.pool.proc else 0
        s: dict[str, Any] = {
            "t": round(t, 2), "phase": phase,
            "rss_kb": {"supervisor": rss_kb(sup), **{c: rss_kb(p) for c, p in pids.items()}},
            "pids": {"supervisor": sup, **pids},
            "pending": g.get("pending"), "lag": g.get("lag"),
            "consumers": len(self.r.xinfo_consumers(self.sk.windows, self.keys.group)) if g else 0,
            "len": {"input": self.r.xlen(self.sk.windows), "results": self.r.xlen(self.sk.results),
                    "dead": self.r.xlen(self.sk.dead)},
            "redis_used_memory": int(self.r.info("memory")["used_memory"]),
            "published": published, "results_read": self.oracle.read,
            "served": self.oracle.served(published), "models": self.oracle.take_models(), "serving": self.pool.models(),
        }
        dt = t - prev["t"] if prev else 0.0
        s["published_per_s"] = round((published - prev["published"]) / dt, 1) if prev and dt > 0 else None
        s["results_per_s"] = round((s["results_read"] - prev["results_read"]) / dt, 1) if prev and dt > 0 else None
        self.samples.append(s)
        return s

    def reload(self) -> None:
        """Publish the staged version into the checkpoint root and move ``latest`` to it."""
        shutil.copytree(self.tmp / "staging" / self.next_version, self.root / self.next_version)
        set_latest_version(self.root, self.next_version)
        self.event("reload", version=self.next_version)

    def kill(self) -> tuple[str, int] | None:
        """SIGKILL the last replica; (consumer, pid), or None while it has no live heartbeat."""
        consumer = self.pool.consumers[-1]
        pid = self.pool.pids().get(consumer)
        if pid is None:
            return None
        os.kill(pid, signal.SIGKILL)
        self.event("kill", consumer=consumer, pid=pid, signal="SIGKILL")
        return consumer, pid

    def prepare(self) -> tuple[float, float | None]:
        """Start the pool and calibrate; (the soak's rate, the saturated rate or None)."""
        plan = self.plan
        self.pool.start()
        saturated = None
        if plan.rate is None:
            saturated = calibrate(self.r, self.keys, self.pool, self.oracle, plan.calib_windows)
            print(f"saturated pool: {saturated:.0f} windows/s", flush=True)
        deadline = time.monotonic() + 3 * plan.maintenance_s  # the calibration backlog trimmed away
        while self.r.xlen(self.sk.windows) > 1000 and time.monotonic() < deadline:
            self.oracle.poll(block_ms=100)
        self.oracle.drain()
        self.oracle.take_models()
        return (plan.rate if plan.rate is not None else plan.load * (saturated or 0.0)), saturated

    def inject(self, t: float) -> None:
        """The hot reload at 1/3, the kill at 2/3, and watching both take effect."""
        if self.reloaded is None and t >= self.plan.seconds / 3:
            self.reload()
            self.reloaded = t
        if self.reloaded is not None and not self.converged:
            models = self.pool.models()
            if len(models) == self.plan.replicas and set(models.values()) == {self.next_version}:
                self.converged = True
                self.event("reload_served", version=self.next_version, after_s=round(t - self.reloaded, 2))
        if self.killed is None and t >= 2 * self.plan.seconds / 3 and (victim := self.kill()):
            self.killed = (*victim, t)
        if self.killed is not None and not self.restarted:
            consumer, old, t_kill = self.killed
            pid = self.pool.pids().get(consumer)
            if pid is not None and pid != old:
                self.restarted = True
                self.event("restarted", consumer=consumer, pid=pid, after_s=round(t - t_kill, 2),
                           model=self.pool.models().get(consumer))

    def drained(self, published: int, prev: dict[str, Any] | None) -> tuple[bool, dict[str, Any]]:
        """A fresh sample (unless the last is under a second old) and whether the pool has drained."""
        s = prev if prev is not None and prev["t"] >= self.now() - 1 else self.sample("drain", published, prev)
        return s["pending"] == 0 and not s["lag"] and self.oracle.served(published) == published, s

    def run(self) -> dict[str, Any]:
        """Calibrate, load, inject, drain; the result document."""
        plan = self.plan
        rate, saturated = self.prepare()
        sent = mp.get_context("spawn").Value("q", 0)
        producer = mp.get_context("spawn").Process(target=produce, args=(self.url, PREFIX, rate, plan.seconds, sent),
                                                   daemon=True)
        self.t0 = time.monotonic()
        producer.start()
        self.event("load_start", rate=round(rate, 1))
        phase, next_sample, prev, drain_start = "load", 0.0, None, 0.0
        while True:
            self.oracle.poll(block_ms=50)
            t = self.now()
            self.inject(t)
            if phase == "load" and not producer.is_alive():
                phase, drain_start = "drain", t
                self.event("load_end", published=sent.value, exitcode=producer.exitcode)
            if t >= next_sample:
                prev = self.sample(phase, sent.value, prev)
                next_sample += plan.sample_s
            if phase == "drain":
                done, prev = self.drained(sent.value, prev)
                if done or t - drain_start > plan.drain_timeout_s:
                    self.oracle.drain()
                    prev = self.sample("end", sent.value, prev)
                    self.event("drained" if done else "drain_timeout", after_s=round(t - drain_start, 2))
                    break
                time.sleep(0.2)
        audit, reader = self.oracle.audit(sent.value), self.oracle.complete()
        exit_code = self.pool.stop()
        self.event("pool_stopped", exitcode=exit_code)
        return {
            "plan": asdict(plan), "rate": round(rate, 1), "saturated_windows_per_s": saturated and round(saturated, 1),
            "worker_settings": {k: v for k, v in self.settings.items() if k != "redis_url"},
            "versions": {"first": self.first_version, "reload": self.next_version},
            "audit": audit, "reader": reader, "events": self.events, "samples": self.samples,
            "stream_node_max_entries": int(self.r.config_get("stream-node-max-entries")["stream-node-max-entries"]),
            "pool_exit_code": exit_code, "pool_log_tail": self.pool.tail() if exit_code else "",
        }


def run(plan: Plan, out: Path) -> dict[str, Any]:
    """The whole soak; writes ``out/soak.json``, ``soak.md``, ``soak.png`` and returns the document."""
    t_start = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="bigru-soak-") as tmp, LocalRedis() as srv:
        soak = Soak(plan, srv, Path(tmp))
        try:
            doc = soak.run()
        finally:
            soak.pool.stop()
    doc["machine"] = {"cpus": os.cpu_count(), "loadavg_before": load_before,
                      "loadavg_after": [round(x, 2) for x in os.getloadavg()]}
    doc["seconds"] = round(time.monotonic() - t_start, 1)
    doc["targets"] = soak_report.targets(doc)
    plot = soak_report.plot(doc, out / "soak.png")
    (out / "soak.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out / "soak.md").write_text(soak_report.markdown(doc, plot))
    return doc


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``make soak``; 1 when a target is missed."""
    p = argparse.ArgumentParser(prog="bench.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="length of the load phase (default 10)")
    p.add_argument("--out", default=str(ROOT / "results"), help="output directory (default results/)")
    p.add_argument("--load", type=float, default=0.5, help="share of the calibrated saturated rate (default 0.5)")
    p.add_argument("--rate", type=float, help="fixed windows/s instead of --load of the calibrated rate")
    p.add_argument("--sample-s", type=float, default=5.0, help="seconds between samples (default 5)")
    p.add_argument("--results-maxlen", type=int, default=100_000, help="the workers' results cap (default 100000)")
    p.add_argument("--calib-windows", type=int, default=40_000, help="backlog the calibration drains")
    a = p.parse_args(argv)
    plan = Plan(minutes=a.minutes, load=a.load, rate=a.rate, sample_s=a.sample_s, results_maxlen=a.results_maxlen,
                calib_windows=a.calib_windows)
    doc = run(plan, Path(a.out))
    print(f"\nwrote {a.out}/soak.json, soak.md, soak.png ({doc['seconds']:.0f} s)")
    for t in doc["targets"]:
        print(f"  [{soak_report.verdict(t)}] {t['measure']}: {t['value']} (target {t['target']})")
    return 1 if any(t["pass"] is False for t in doc["targets"]) else 0


if __name__ == "__main__":
    sys.exit(main())
