"""Scale-out benchmark: throughput of 1, 2, 4 replicas on one Redis and on a three-master cluster.

    python -m bench.scaleout [--replicas 1 2 4] [--windows 8000] [--out bench-out/scaleout.json]

For each backend and replica count it starts a fresh redis-server (or cluster), runs
``bigru-worker --replicas N``, waits until every replica is ready, publishes the windows as fast as
it can and waits for every result. Throughput is windows / (first publish -> last result); the
serving rate is windows / (first result -> last result).
Writes a JSON report and prints a table. Needs a checkpoint (``BIGRU_CHECKPOINT``, default
``checkpoints``; trained on the fly when missing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import LocalCluster, LocalRedis, start_worker, worker_process_env
from producer.client import Producer
from producer.results import ResultsReader
from producer.sources import synthetic
from protocol.keys import Keys
from protocol.redisconn import connect
from worker.config import WorkerSettings
from worker.health import check

ROOT = Path(__file__).resolve().parents[1]


def trained_checkpoint() -> Path:
    """The checkpoint root (``BIGRU_CHECKPOINT``, else ./checkpoints), trained on the synthetic task if empty."""
    s = WorkerSettings()  # from the environment
    root = Path(s.checkpoint) if "checkpoint" in s.model_fields_set else ROOT / "checkpoints"
    if not (root / "latest").is_file():
        subprocess.run([sys.executable, "-m", "training.cli", "--data", "synthetic", "--out", str(root), "--n", "3000",
                        "--epochs", "5", "--json"], check=True, cwd=ROOT)
    return root


def run_one(url: str, replicas: int, shards: int, n: int, ckpt: Path, max_batch: int) -> dict[str, Any]:
    """One measurement against the Redis (or cluster) at ``url``."""
    prefix = f"scale{uuid.uuid4().hex[:6]}"
    keys = Keys(prefix, prefix, shards)
    env = worker_process_env(redis_url=url, prefix=prefix, group=prefix, shards=shards, checkpoint=str(ckpt),
                             worker_name="bench", max_batch=max_batch, log_json=True)
    proc = start_worker(env, ["--replicas", str(replicas)])
    r = connect(url)
    try:
        names = [f"bench-{i}" for i in range(replicas)]
        deadline = time.monotonic() + 300
        while not check(r, keys, names)[0]:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("workers did not become ready")
            time.sleep(0.2)
        windows = [w.x for w in synthetic(n, 20, seed=1)]
        cids = [f"b{i}" for i in range(n)]
        reader = ResultsReader(r, keys)
        t0 = time.perf_counter()
        Producer(r, keys).publish_many(windows, ids=cids)
        t_pub = time.perf_counter() - t0
        results = reader.collect(n, timeout_s=600)
        elapsed = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(60)
    e2e = np.array([res.e2e_us for res in results]) / 1000
    ts = np.array([res.ts_us for res in results])
    span_s = float(ts.max() - ts.min()) / 1e6 if len(ts) > 1 else 0.0
    per_cid = Counter(res.cid for res in results)
    return {
        "replicas": replicas, "shards": shards, "windows": n, "results": len(results),
        "served_twice": sum(v > 1 for v in per_cid.values()), "missing": n - len(per_cid),
        "publish_s": round(t_pub, 3), "elapsed_s": round(elapsed, 3),
        "throughput_per_s": round(len(results) / elapsed, 1),
        # first result -> last result: the serving rate without the publishing phase in front of it
        "serve_rate_per_s": round(len(results) / span_s, 1) if span_s else None,
        "e2e_ms_p50": round(float(np.percentile(e2e, 50)), 1), "e2e_ms_p99": round(float(np.percentile(e2e, 99)), 1),
        "mean_batch": round(float(np.mean([res.batch for res in results])), 1),
        "per_worker": dict(sorted(Counter(res.worker for res in results).items())),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark matrix and write the report."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--windows", type=int, default=8000)
    p.add_argument("--cluster-shards", type=int, default=6)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--backends", nargs="+", choices=["single", "cluster"], default=["single", "cluster"])
    p.add_argument("--out", default=str(ROOT / "bench-out" / "scaleout.json"))
    args = p.parse_args(argv)
    ckpt = trained_checkpoint()
    runs = []
    for backend in args.backends:
        for n in args.replicas:
            server: LocalRedis | LocalCluster = LocalRedis() if backend == "single" else LocalCluster(3)
            with server:
                shards = 1 if backend == "single" else args.cluster_shards
                res = {"backend": backend, **run_one(server.url, n, shards, args.windows, ckpt, args.max_batch)}
            runs.append(res)
            print(f"{backend:>7} replicas={n} shards={res['shards']}: {res['throughput_per_s']:>8}/s (serving {res['serve_rate_per_s']}/s)  "
                  f"p50 {res['e2e_ms_p50']} ms  p99 {res['e2e_ms_p99']} ms  batch {res['mean_batch']}  "
                  f"twice={res['served_twice']} missing={res['missing']}", flush=True)
    report = {"host": platform.node(), "cpus": os.cpu_count(), "loadavg_1m": os.getloadavg()[0],
              "python": platform.python_version(), "runs": runs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(r["served_twice"] == 0 and r["missing"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
