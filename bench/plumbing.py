"""The plumbing ceiling: the real worker loop with a null model (constant output) on a pre-filled stream.

``python -m bench.plumbing --redis-url U --prefix P --consumer C`` runs one replica's real
:class:`worker.loop.WorkerLoop` in burst mode with :class:`NullModel`; it prints ``ready``, waits for
``go`` on stdin, drains the stream, and prints one JSON line with its CPU time. :func:`ceiling`
pre-fills the stream, starts the processes, and measures windows/s from the results' timestamps,
the workers' CPU and redis-server's CPU per window.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import redis

from worker.types import PredictorDefaults

ROOT = Path(__file__).resolve().parents[1]


class NullModel(PredictorDefaults):
    """A predictor that costs nothing: the same probabilities for every window."""

    version = "null"
    backend = "null"

    def __init__(self, n_features: int = 1, classes: int = 2) -> None:
        self.classes = [str(i) for i in range(classes)]
        self.n_features = n_features
        self._out = np.full((1 << 16, classes), 1.0 / classes, dtype=np.float32)

    def predict(self, xs: list[np.ndarray]) -> np.ndarray:
        """Constant probabilities for ``len(xs)`` windows."""
        return self._out[: len(xs)]


def _redis_cpu(r: redis.Redis) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def ceiling(url: str, n: int, procs: int, max_batch: int = 256, per_entry: int = 1) -> dict[str, Any]:
    """Drain ``n`` pre-filled windows with ``procs`` null-model replicas; windows/s and CPU per window."""
    from bench.model import windows
    from producer.client import Producer
    from protocol.keys import Keys

    r = redis.Redis.from_url(url)
    prefix = f"pl{uuid.uuid4().hex[:8]}"
    keys = Keys(prefix, prefix)
    sk = keys.shard(0)
    prod = Producer(r, keys, pipeline_size=1000)
    xs = windows(n, seed=11)
    if per_entry > 1:
        prod.publish_many(xs, per_entry=per_entry)
    else:
        prod.publish_many(xs)
    r.xgroup_create(sk.windows, prefix, id="0")
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1")
    args = [sys.executable, "-m", "bench.plumbing", "--redis-url", url, "--prefix", prefix, "--max-batch", str(max_batch)]
    children = [subprocess.Popen([*args, "--consumer", f"null-{i}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env) for i in range(procs)]
    try:
        for c in children:
            assert c.stdout is not None
            line = c.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"bench.plumbing child did not start: {line!r} {c.stderr.read() if c.stderr else ''}")
        cpu0 = _redis_cpu(r)
        for c in children:
            assert c.stdin is not None
            c.stdin.write("go\n")
            c.stdin.flush()
        reports = []
        for c in children:
            out, err = c.communicate(timeout=600)
            if c.returncode != 0:
                raise RuntimeError(f"bench.plumbing child failed: {err[-2000:]}")
            reports.append(json.loads(out.strip().splitlines()[-1]))
        redis_cpu = _redis_cpu(r) - cpu0
        ts = np.sort(np.array([int(f[b"ts"]) for _, f in r.xrange(sk.results)], dtype=np.int64))
        counts = [int(f.get(b"n", b"1")) for _, f in r.xrange(sk.results)]
    finally:
        for c in children:
            if c.poll() is None:
                c.kill()
        r.delete(sk.windows, sk.results, sk.dead, keys.workers)
    served = sum(counts)
    lo, hi = int(0.05 * len(ts)), max(int(0.05 * len(ts)) + 1, int(0.95 * len(ts)) - 1)
    span_s = max(1e-6, (ts[hi] - ts[lo]) / 1e6)
    per_result = served / max(1, len(ts))
    worker_cpu = sum(rep["cpu_s"] for rep in reports)
    return {
        "procs": procs, "max_batch": max_batch, "per_entry": per_entry, "windows": served,
        "windows_per_s": round(float((hi - lo) * per_result / span_s), 1),
        "worker_cpu_us_per_window": round(worker_cpu / max(1, served) * 1e6, 2),
        "redis_cpu_us_per_window": round(redis_cpu / max(1, served) * 1e6, 2),
        "mean_batch": round(sum(rep["windows"] for rep in reports) / max(1, sum(rep["batches"] for rep in reports)), 1),
    }


def _serve(url: str, prefix: str, consumer: str, max_batch: int) -> dict[str, Any]:
    from worker.config import WorkerSettings
    from worker.loop import WorkerLoop
    from worker.types import StaticModel

    opts: dict[str, Any] = {"redis_url": url, "prefix": prefix, "group": prefix, "burst": True, "burst_idle_ms": 300,
                            "max_batch": max_batch, "log_level": "WARNING", "trim_input": False}
    s = WorkerSettings(**opts)
    loop = WorkerLoop(redis.Redis.from_url(url), s, consumer, StaticModel(NullModel()), stop=threading.Event())
    print("ready", flush=True)
    sys.stdin.readline()
    c0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    stats = loop.run()
    c1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
    return {"consumer": consumer, "windows": stats.windows, "batches": stats.batches, "cpu_s": round(cpu, 4),
            "wall_s": round(time.perf_counter() - t0, 3)}


def main(argv: list[str] | None = None) -> int:
    """Child entry point (see the module docstring)."""
    p = argparse.ArgumentParser(prog="bench.plumbing")
    p.add_argument("--redis-url", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--consumer", default="null-0")
    p.add_argument("--max-batch", type=int, default=256)
    a = p.parse_args(argv)
    from protocol.logs import configure

    configure("WARNING", True)
    print(json.dumps(_serve(a.redis_url, a.prefix, a.consumer, a.max_batch)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
