"""What a master failover costs, with and without waiting for replicas (``make failover``).

    python -m bench.failover [--reps 2] [--lag-s 1.0] [--out results/failover.json]

For ``wait_replicas`` 0 and 1 it runs :func:`bench.failover_scenario.run_failover` ``--reps``
times (a fresh 3-master + 3-replica cluster each, ``kill -9`` of shard 0's master mid-stream) in
two scenarios: *clean* (the replica is up to date) and, unless ``--lag-s 0``, *lagging replica*
(the replica stops applying its stream ``--lag-s`` seconds before the kill), then measures throughput on one healthy cluster with replicas, both settings alternated in the
same run: the producer's ``publish_many`` windows/s (no workers) and the worker pool's windows/s
(two worker processes draining a backlog). Writes ``results/failover.json`` and
``results/failover.md``. Needs a checkpoint (``BIGRU_CHECKPOINT``, trained on the fly when missing).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.failover_scenario import (
    SHARDS,
    ResultsByCid,
    run_failover,
    spread_prefix,
    start_workers,
    stop_workers,
    worker_env,
)
from bench.harness import LocalCluster
from bench.scaleout import trained_checkpoint
from producer.client import Producer
from protocol.durability import Durability
from protocol.keys import Keys
from protocol.redisconn import connect

ROOT = Path(__file__).resolve().parents[1]


def producer_rate(url: str, wait_replicas: int, n: int) -> float:
    """``publish_many`` windows/s of one producer (pipelines of 500, no workers)."""
    rc = connect(url)
    keys = Keys(spread_prefix(rc), "g", SHARDS)
    prod = Producer(rc, keys, pipeline_size=500, durability=Durability(wait_replicas, 1000))
    xs = list(np.zeros((n, 20, 1), np.float32))
    t0 = time.perf_counter()
    prod.publish_many(xs, ids=[f"p{i}" for i in range(n)])
    rate = n / (time.perf_counter() - t0)
    rc.close()
    return rate


def worker_rate(url: str, ckpt: Path, wait_replicas: int, n: int, logdir: Path) -> float:
    """Windows/s of two worker processes draining ``n`` windows published before they start."""
    rc = connect(url)
    prefix = spread_prefix(rc)
    keys = Keys(prefix, prefix, SHARDS)
    Producer(rc, keys, pipeline_size=500).publish_many(list(np.zeros((n, 20, 1), np.float32)),
                                                       ids=[f"q{i}" for i in range(n)])
    out = ResultsByCid(rc, keys)
    out.since_us = 0
    workers = start_workers(worker_env(url, prefix, ckpt, wait_replicas), logdir)
    try:
        deadline = time.monotonic() + 300
        while len(out.count) < n and time.monotonic() < deadline:
            if not out.poll():
                time.sleep(0.05)
    finally:
        stop_workers(workers)
    first = min(out.first_after.values())
    last = max(_last_ts(rc, keys))
    rc.close()
    return len(out.count) / max((last - first) / 1e6, 1e-9)


def _last_ts(rc: Any, keys: Keys) -> list[int]:
    out = []
    for sk in keys.all_shards():
        for _, fields in rc.xrevrange(sk.results, count=1):
            out.append(int(fields[b"ts"]))
    return out


def throughput(ckpt: Path, logdir: Path, rounds: int) -> dict[str, Any]:
    """Producer and worker rates with and without WAIT, alternated on one cluster; medians and ratios."""
    rates: dict[str, list[float]] = {k: [] for k in ("producer_0", "producer_1", "worker_0", "worker_1")}
    with LocalCluster(3, replicas=1, node_timeout_ms=1000) as cluster:
        for _ in range(rounds):
            for w in (0, 1):
                rates[f"producer_{w}"].append(producer_rate(cluster.url, w, 10_000))
                rates[f"worker_{w}"].append(worker_rate(cluster.url, ckpt, w, 6000, logdir))
    med = {k: float(np.median(v)) for k, v in rates.items()}
    return {"runs": {k: [round(x) for x in v] for k, v in rates.items()},
            "median_windows_per_s": {k: round(v) for k, v in med.items()},
            "producer_ratio_wait1_to_wait0": round(med["producer_1"] / med["producer_0"], 3),
            "worker_ratio_wait1_to_wait0": round(med["worker_1"] / med["worker_0"], 3)}


def markdown(report: dict[str, Any]) -> str:
    """The report as the table docs/reliability.md quotes."""
    lines = ["| scenario | wait_replicas | run | accepted | accepted in stall | written, WAIT short | ReplicaAckError "
             "calls | accepted on retry | failed chunks | results | lost (reader) | duplicates (reader) "
             "| lost (survived streams) | duplicates (survived streams; of which two input entries) | promoted (s) | recovery (s) "
             "| all served (s) | worker `replica_ack_short` | workers restarted |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in report["failover"]:
        lag = run.get("lag_s", 0.0)
        scenario = f"lagging replica {lag} s" if lag else "clean"
        lines.append(f"| {scenario} | {run['wait_replicas']} | {run['rep']} | {run['accepted']} "
                     f"| {run.get('accepted_in_stall', 0) if lag else '—'} | {run['short_acked']} "
                     f"| {run.get('short_calls', 0)} | {run.get('retried_ok', 0)} "
                     f"| {run['failed_chunks']} | {run['results']} | {run['lost']} | {run['duplicates']} "
                     f"| {run.get('lost_final', '—')} | {run.get('duplicates_final', '—')}"
                     f"; {run.get('duplicates_final_two_inputs', '—')} "
                     f"| {run['promoted_s']} | {run['recovery_s']} "
                     f"| {run['all_served_s'] if run['all_served_s'] >= 0 else 'never'} | {run['worker_ack_short']} "
                     f"| {'no' if run['workers_alive'] else 'YES'} |")
    t = report["throughput"]
    m = t["median_windows_per_s"]
    lines += ["", "| throughput (median windows/s) | wait 0 | wait 1 | ratio |", "|---|---|---|---|",
              f"| producer `publish_many` | {m['producer_0']} | {m['producer_1']} | {t['producer_ratio_wait1_to_wait0']} |",
              f"| 2 worker processes | {m['worker_0']} | {m['worker_1']} | {t['worker_ratio_wait1_to_wait0']} |",
              "", "single runs (windows/s): " + "; ".join(f"{k} {' / '.join(map(str, v))}" for k, v in t["runs"].items())]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run the failover scenario both ways and the throughput comparison; write the results."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2, help="failover runs per setting")
    ap.add_argument("--rounds", type=int, default=2, help="throughput rounds (each setting once per round)")
    ap.add_argument("--lag-s", type=float, default=1.0,
                    help="lagging-replica scenario: the replica stops applying this long before the kill (0: skip it)")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "failover.json")
    args = ap.parse_args()
    ckpt = trained_checkpoint()
    runs = []
    with tempfile.TemporaryDirectory(prefix="failover-") as tmp:
        for lag in sorted({0.0, args.lag_s}):
            for rep in range(args.reps):
                for w in (0, 1):
                    logdir = Path(tmp) / f"lag{lag}-w{w}-{rep}"
                    logdir.mkdir()
                    fig = run_failover(ckpt, logdir, wait_replicas=w, lag_s=lag)
                    runs.append({"rep": rep + 1, **fig.as_dict()})
                    print(json.dumps(runs[-1]), flush=True)
        tput = throughput(ckpt, Path(tmp), args.rounds)
    report = {"host": platform.node(), "note": "2 CPU cores shared with other work; loopback cluster, node timeout "
              "1000 ms; producer 500 windows/s in chunks of 50; 2 worker processes; lagging replica: CLIENT PAUSE ALL "
              f"on the doomed master's replica {args.lag_s} s before the kill, ending 0.3 s after it; nodes with "
              "cluster-replica-validity-factor 0; with wait 1 the producer publishes idempotently and retries a "
              "chunk whose WAIT fell short (up to 30 s)", "failover": runs,
              "throughput": tput}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
