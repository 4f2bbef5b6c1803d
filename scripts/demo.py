"""`make demo`: the whole pipeline on one machine, then a summary.

Uses BIGRU_REDIS_URL when it answers; otherwise starts a local redis-server on a free port.
Trains a small checkpoint if none exists, runs 2 worker processes, publishes 10 000 synthetic
windows with known labels, waits for every result and prints throughput, latency and accuracy.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import redis

from bench.harness import LocalRedis, start_worker, worker_process_env
from producer.client import Producer
from producer.results import ResultsReader
from producer.sources import synthetic
from protocol.keys import Keys
from protocol.redisconn import connect
from worker.config import WorkerSettings

ROOT = Path(__file__).resolve().parents[1]

N = int(os.environ.get("DEMO_WINDOWS", "10000"))


def _redis() -> tuple[str, LocalRedis | None]:
    s = WorkerSettings()  # from the environment
    url = s.redis_url if "redis_url" in s.model_fields_set else None  # set in the environment (or .env)
    if url:
        try:
            connect(url).ping()
            print(f"using Redis at BIGRU_REDIS_URL ({url.split('@')[-1]})")
            return url, None
        except (redis.RedisError, redis.exceptions.RedisClusterException) as e:
            print(f"BIGRU_REDIS_URL does not answer ({e}); starting a local redis-server")
    try:
        srv = LocalRedis().start()
    except RuntimeError as e:
        sys.exit(f"{e}\nStart one with `docker compose up -d redis` and set BIGRU_REDIS_URL.")
    print(f"started local redis-server on port {srv.port} (dir {srv.dir})")
    return srv.url, srv


def main() -> int:
    """Run the demo."""
    url, srv = _redis()
    s = WorkerSettings()  # from the environment
    ckpt_root = Path(s.checkpoint) if "checkpoint" in s.model_fields_set else ROOT / "checkpoints"
    prefix = f"demo-{uuid.uuid4().hex[:6]}" if srv is None else "bigru"
    env = worker_process_env(redis_url=url, prefix=prefix, group=prefix, checkpoint=str(ckpt_root))
    workers = None
    try:
        if not (ckpt_root / "latest").is_file():
            print("no checkpoint yet: training a small BiGRU on the synthetic task ...")
            subprocess.run([sys.executable, "-m", "training.cli", "--data", "synthetic", "--out", str(ckpt_root),
                            "--n", "4000", "--epochs", "10"], env=env, check=True)
        workers = start_worker(env, ["--replicas", "2"], log=None, stderr=subprocess.DEVNULL)
        r = connect(url)
        keys = Keys(prefix, prefix)
        _wait_ready(r, keys, 2, workers)
        windows = list(synthetic(N, 20, seed=2026))
        truth = {f"d{i}": w.label for i, w in enumerate(windows)}
        reader = ResultsReader(r, keys, start="$" if srv is None else "0-0")
        if srv is None:
            reader.positions = {k: (r.xinfo_stream(k)["last-generated-id"].decode() if r.exists(k) else "0-0")
                                for k in reader.positions}
        t0 = time.perf_counter()
        Producer(r, keys).publish_many([w.x for w in windows], ids=list(truth))
        t_pub = time.perf_counter() - t0
        results = reader.collect(N, timeout_s=300)
        elapsed = time.perf_counter() - t0
        e2e = np.array([res.e2e_us for res in results]) / 1000
        acc = float(np.mean([res.class_name == truth.get(res.cid) for res in results])) if results else 0.0
        summary = {
            "windows": N, "results": len(results), "unique_inputs": len({res.input_id for res in results}),
            "publish_s": round(t_pub, 2), "elapsed_s": round(elapsed, 2), "throughput_per_s": round(len(results) / elapsed, 1),
            "e2e_ms_p50": round(float(np.percentile(e2e, 50)), 2), "e2e_ms_p95": round(float(np.percentile(e2e, 95)), 2),
            "e2e_ms_p99": round(float(np.percentile(e2e, 99)), 2), "accuracy": round(acc, 4),
            "p50_breakdown_ms": {k: round(float(np.percentile([getattr(res, f"{k}_us") for res in results], 50)) / 1000, 3)
                                 for k in ("queue", "wait", "infer")},
            "model_versions": sorted({res.model for res in results}),
            "workers": sorted({res.worker for res in results}),
            "mean_batch": round(float(np.mean([res.batch for res in results])), 1),
        }
        print("\n== demo summary ==")
        print(json.dumps(summary, indent=2))
        return 0 if len(results) == N else 1
    finally:
        if workers is not None:
            workers.send_signal(signal.SIGTERM)
            try:
                workers.wait(30)
            except subprocess.TimeoutExpired:
                workers.kill()
        if srv is not None:
            srv.stop()


def _wait_ready(r: redis.Redis, keys: Keys, n: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"workers exited with {proc.returncode}")
        alive = [c for c in r.hkeys(keys.workers) if r.exists(keys.heartbeat(c.decode()))]
        if len(alive) >= n:
            return
        time.sleep(0.2)
    sys.exit("workers did not become ready in 120 s")


if __name__ == "__main__":
    sys.exit(main())
