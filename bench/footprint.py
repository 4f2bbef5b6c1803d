"""What a CPU worker costs to run and install: RSS per replica, time to ready, dependency size.

``python -m bench.footprint --code before=/path/to/old/tree --code after=. --runs 3`` runs, for each
code tree (alternating, ``--runs`` times), ``bigru-worker --replicas 2`` against a throwaway
redis-server on one checkpoint (the default architecture, random weights, a golden batch; written by
this tree's code, so it carries its ONNX graph; older code ignores the extra tensor and exports). It
measures the seconds from starting the command until both replicas heartbeat (loaded, warmed up,
ready), then serves ``--windows`` windows and reads each replica's VmRSS and whether libtorch is
mapped into it. ``--deps`` adds the installed size of the worker's dependency closure with torch
(extras ``model`` + ``onnx``) and without it (extra ``serve``), from the installed files of each
distribution (package size in this environment; no container image is built). Prints JSON.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import redis
from packaging.requirements import Requirement

from bench.harness import LocalRedis, maps_torch, rss_mib, start_worker
from bench.model import build_checkpoint
from producer.client import Producer
from producer.results import ResultsReader
from protocol.keys import Keys
from worker.health import live_replicas
from worker.heartbeat_record import HeartbeatRecord

ROOT = Path(__file__).resolve().parents[1]


def one_run(url: str, code: Path, checkpoint: Path, windows: int, precision: str = "auto",
            timeout_s: float = 180.0) -> dict[str, Any]:
    """Start 2 replicas from ``code``, time them to ready, serve ``windows`` windows, read their RSS."""
    prefix = f"fp{uuid.uuid4().hex[:8]}"
    keys = Keys(prefix, prefix)
    env = {**os.environ, "PYTHONPATH": str(code), "BIGRU_REDIS_URL": url, "BIGRU_PREFIX": prefix,
           "BIGRU_GROUP": prefix, "BIGRU_CHECKPOINT": str(checkpoint), "BIGRU_LOG_JSON": "true",
           "BIGRU_REPLICAS": "2", "BIGRU_PRECISION": precision, "OMP_NUM_THREADS": "1"}
    r = redis.Redis.from_url(url)
    with tempfile.TemporaryFile() as log:
        t0 = time.perf_counter()
        proc = start_worker(env, cwd=code, stderr=log)
        try:
            live: list[HeartbeatRecord] = []
            while len(live) < 2:
                if proc.poll() is not None or time.perf_counter() - t0 > timeout_s:
                    log.seek(0)
                    raise RuntimeError(f"replicas not ready: {log.read().decode()[-2000:]}")
                time.sleep(0.02)
                live = live_replicas(r, keys)
            ready_s = time.perf_counter() - t0
            rng = np.random.default_rng(0)
            xs = [rng.standard_normal((20, 1)).astype(np.float32) for _ in range(windows)]
            prod = Producer(r, keys)
            for i in range(0, windows, 1000):
                prod.publish_many(xs[i : i + 1000])
            got = len(ResultsReader(r, keys).collect(windows, timeout_s=120))
            pids = sorted(h.pid for h in live)
            out = {"ready_s": ready_s, "served": got, "rss_mb": [rss_mib(p) for p in pids],
                   "supervisor_rss_mb": rss_mib(proc.pid), "torch_mapped": [maps_torch(p) for p in pids]}
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    r.close()
    return out


def closure(roots: list[str]) -> set[str]:
    """Installed distributions needed by the requirement strings ``roots`` (markers and extras evaluated)."""
    seen: set[str] = set()
    todo = [Requirement(s) for s in roots]
    while todo:
        req = todo.pop()
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            continue
        name = dist.metadata["Name"].lower().replace("_", "-")
        key = f"{name}[{','.join(sorted(req.extras))}]"
        if key in seen:
            continue
        seen.add(key)
        for s in dist.requires or []:
            sub = Requirement(s)
            for extra in ["", *req.extras]:
                if sub.marker is None or sub.marker.evaluate({"extra": extra}):
                    todo.append(Requirement(str(sub).split(";")[0]))
                    break
    return {k.split("[")[0] for k in seen}


def dist_mb(name: str) -> float:
    """Installed size (MiB) of a distribution's recorded files."""
    total = 0
    for f in md.distribution(name).files or []:
        p = Path(str(f.locate()))
        if p.is_file():
            total += p.stat().st_size
    return total / 2**20


def deps() -> dict[str, Any]:
    """Dependency closures of the CPU worker with torch (extras model+onnx) and without (extra serve)."""
    import tomllib  # Python 3.11+

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core, extras = meta["dependencies"], meta["optional-dependencies"]
    sets = {"with_torch": closure(core + extras["model"] + extras["onnx"]),
            "torch_free": closure(core + extras["serve"])}
    sizes = {n: dist_mb(n) for s in sets.values() for n in s}
    out: dict[str, Any] = {k: {"mb": sum(sizes[n] for n in s), "dists": len(s)} for k, s in sets.items()}
    out["only_with_torch"] = sorted(sets["with_torch"] - sets["torch_free"])
    out["largest"] = {n: round(sizes[n], 1) for n in sorted(sizes, key=sizes.get, reverse=True)[:8]}  # type: ignore[arg-type]
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the measurements and print them as JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--code", action="append", required=True, help="label=path of a code tree (repeatable)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--windows", type=int, default=20000)
    p.add_argument("--precision", default="auto", help="BIGRU_PRECISION of the replicas (the default: auto)")
    p.add_argument("--deps", action="store_true", help="also measure dependency sizes")
    args = p.parse_args(argv)
    trees = {lab: Path(path).resolve() for lab, path in (c.split("=", 1) for c in args.code)}
    res: dict[str, Any] = {"precision": args.precision, "windows": args.windows, "runs": {lab: [] for lab in trees}}
    with tempfile.TemporaryDirectory() as tmp, LocalRedis() as srv:
        ckpt = build_checkpoint(Path(tmp) / "ckpt", golden=256)
        for _ in range(args.runs):
            for lab, code in trees.items():
                res["runs"][lab].append(one_run(srv.url, code, ckpt, args.windows, args.precision))
    res["median"] = {lab: {"ready_s": statistics.median(r["ready_s"] for r in runs),
                           "rss_mb": statistics.median(x for r in runs for x in r["rss_mb"]),
                           "supervisor_rss_mb": statistics.median(r["supervisor_rss_mb"] for r in runs),
                           "torch_mapped": any(t for r in runs for t in r["torch_mapped"])}
                     for lab, runs in res["runs"].items()}
    if args.deps:
        res["deps"] = deps()
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
