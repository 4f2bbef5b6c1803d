"""The server scenario: Poisson arrivals at fractions of the capacity, with the load generator kept off the
server's CPU; the largest fraction whose p99 stays within two full-batch forward passes.

``python -m bench.server [--code before=/old/tree --code after=.] [--out results/bench/server]``

On a machine with two or more CPUs the replica is pinned to CPU 0 and redis-server, the load generator
(``bench.load``) and this reader to the others, so "half load" means half of what the replica can do
while the generator runs beside it, not half of a machine the generator also uses. Per code tree:

1. **Capacity under the same generator**: the generator offers more than the replica can take
   (``--overload`` windows/s) for a few seconds; the replica's served rate over the middle 80 % of its
   results is the capacity, and the median forward time of its full batches is the forward time.
2. **Poisson points**: arrivals at each fraction of that capacity (0.2 … 0.9) for ``--seconds``; the
   end-to-end latency of every window, from the moment the generator wrote it to the moment this
   process read its result. The offered rate the generator really achieved is reported beside it.
3. **Server fraction**: the largest fraction whose p99 ≤ 2 × the forward time, with every lower fraction
   passing too (MLPerf's server scenario asks the same of a latency bound); and p99 ÷ p50 at 0.3.

One replica, the default model (random weights, a golden batch) served at the worker's default
precision (``auto``: int8 when the golden batch allows), single-window entries, T = 20.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import redis

from bench.harness import LocalRedis
from bench.model import build_checkpoint
from bench.pipeline import ROOT, BenchError, WorkerConfig, Workers, latency_summary
from protocol.keys import Keys
from protocol.wire import now_us

FRACTIONS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def split_cpus() -> tuple[set[int] | None, set[int] | None]:
    """(the replica's CPUs, everyone else's): CPU 0 and the rest, or no pinning on a one-CPU machine."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


def _generate(url: str, prefix: str, rate: float, seconds: float, seed: int, cpus: set[int] | None) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "bench.load", "--redis-url", url, "--prefix", prefix, "--rate", str(rate),
            "--seconds", str(seconds), "--seed", str(seed)]
    if cpus:
        args += ["--cpus", ",".join(map(str, sorted(cpus)))]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))


def _collect(r: redis.Redis, stream: str, pos: str, count: int, timeout_s: float) -> tuple[list[tuple[int, dict[bytes, bytes]]], str]:
    """Read ``count`` results after ``pos``, each stamped with its arrival (unix µs)."""
    got: list[tuple[int, dict[bytes, bytes]]] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        resp = r.xread({stream: pos}, count=5000, block=100)
        stamp = now_us()
        for _, entries in resp or []:
            for eid, fields in entries:
                got.append((stamp, fields))
                pos = eid.decode()
    return got, pos


def point(r: redis.Redis, w: Workers, rate: float, seconds: float, seed: int, cpus: set[int] | None,
          pos: str) -> tuple[dict[str, Any], str]:
    """One Poisson point: e2e latencies of every window and what the generator achieved."""
    sk = w.keys.shard(0)
    gen = _generate(w.url, w.prefix, rate, seconds, seed, cpus)
    got, pos = _collect(r, sk.results, pos, 1 << 62, seconds + 0.5)  # until the generator's horizon
    out, err = gen.communicate(timeout=60)
    if gen.returncode != 0:
        raise BenchError(f"bench.load failed: {err[-1000:]}")
    sent = json.loads(out.strip().splitlines()[-1])
    more, pos = _collect(r, sk.results, pos, sent["sent"] - len(got), 30)
    got += more
    if len(got) < sent["sent"]:
        raise BenchError(f"{len(got)} of {sent['sent']} results at {rate:.0f}/s: {w.tail()}")
    arrived = np.array([a for a, _ in got], dtype=np.int64)
    ts, e2e_us = (np.array([int(f[k]) for _, f in got], dtype=np.int64) for k in (b"ts", b"e2e_us"))
    e2e = (arrived - (ts - e2e_us)) / 1000
    batch = np.array([int(f[b"batch"]) for _, f in got])
    return {"rate_target": round(rate, 1), "rate_offered": sent["rate_offered"], "windows": len(got),
            "generator_cpu_us_per_window": sent["cpu_us_per_window"], "e2e_ms": latency_summary(e2e),
            "mean_batch": round(float(batch.mean()), 1)}, pos


def capacity(r: redis.Redis, w: Workers, overload: float, seconds: float, cpus: set[int] | None,
             max_batch: int, pos: str) -> tuple[dict[str, Any], str]:
    """The served rate while the generator offers ``overload`` windows/s (more than the replica can take)."""
    sk = w.keys.shard(0)
    gen = _generate(w.url, w.prefix, overload, seconds, 99, cpus)
    out, err = gen.communicate(timeout=seconds + 60)
    if gen.returncode != 0:
        raise BenchError(f"bench.load failed: {err[-1000:]}")
    sent = json.loads(out.strip().splitlines()[-1])
    got, pos = _collect(r, sk.results, pos, sent["sent"], 300)
    if len(got) < sent["sent"]:
        raise BenchError(f"capacity run: {len(got)} of {sent['sent']} results")
    ts = np.sort(np.array([int(f[b"ts"]) for _, f in got], dtype=np.int64))
    lo, hi = int(0.1 * len(ts)), int(0.9 * len(ts)) - 1
    infer = np.array([int(f[b"infer_us"]) for _, f in got])
    batch = np.array([int(f[b"batch"]) for _, f in got])
    full = infer[batch == max_batch]
    return {"offered": sent["rate_offered"], "windows": len(got),
            "windows_per_s": round(float((hi - lo) / max(1e-6, (ts[hi] - ts[lo]) / 1e6)), 1),
            "forward_ms_full_batch": round(float(np.median(full if len(full) else infer)) / 1000, 3),
            "full_batches_share": round(float(np.mean(batch == max_batch)), 3)}, pos


def scenario(url: str, checkpoint: Path, root: Path, log_dir: Path, args: argparse.Namespace,
             worker_cpus: set[int] | None, other_cpus: set[int] | None) -> dict[str, Any]:
    """Capacity, then one Poisson point per fraction, for the worker code in ``root`` (pinned as given)."""
    cfg = WorkerConfig(precision="auto", max_batch=args.max_batch)
    r = redis.Redis.from_url(url)
    prefix = f"sv{uuid.uuid4().hex[:8]}"
    keys = Keys(prefix, prefix)
    try:
        with Workers(url, prefix, checkpoint, cfg, log_dir, cpus=worker_cpus, root=root) as w:
            cap, pos = capacity(r, w, args.overload, args.capacity_seconds, other_cpus, args.max_batch, "0-0")
            bound_ms = 2 * cap["forward_ms_full_batch"]
            points = []
            for i, f in enumerate(args.fractions):
                time.sleep(0.5)
                p, pos = point(r, w, f * cap["windows_per_s"], args.seconds, i, other_cpus, pos)
                p.update(fraction=f, within_bound=p["e2e_ms"]["p99"] <= bound_ms,
                         p99_over_p50=round(p["e2e_ms"]["p99"] / max(1e-9, p["e2e_ms"]["p50"]), 2))
                points.append(p)
    finally:
        sk = keys.shard(0)
        r.delete(sk.windows, sk.results, sk.dead, keys.workers)
    fraction = 0.0  # the largest fraction that passes with every lower one: a pass above a miss is luck, not capacity
    for p in sorted(points, key=lambda p: p["fraction"]):
        if not p["within_bound"]:
            break
        fraction = p["fraction"]
    at03 = next((p for p in points if abs(p["fraction"] - 0.3) < 1e-9), None)
    return {"config": cfg.label, "capacity": cap, "bound_ms": round(bound_ms, 3), "points": points,
            "server_fraction": fraction,
            "p99_over_p50_at_0.3": at03["p99_over_p50"] if at03 else None,
            "pinned": {"worker": sorted(worker_cpus or []), "redis_generator_reader": sorted(other_cpus or [])}}


def report(runs: dict[str, dict[str, Any]]) -> str:
    """The markdown page of one or more code trees' scenarios."""
    lines = ["# Server scenario: Poisson arrivals at fractions of the capacity", "",
             "`python -m bench.server` (one replica, default model served `auto`, single-window entries, T = 20; "
             "see the module docstring). e2e = from the generator's write to this reader's read.", ""]
    for name, s in runs.items():
        c = s["capacity"]
        lines += [f"## {name}", "",
                  f"Pinned: worker on CPU {s['pinned']['worker'] or 'any'}, redis-server + generator + reader on "
                  f"{s['pinned']['redis_generator_reader'] or 'any'}. Capacity under the generator: "
                  f"**{c['windows_per_s']:.0f} windows/s** (offered {c['offered']:.0f}/s); full-batch forward "
                  f"{c['forward_ms_full_batch']} ms, bound 2× = {s['bound_ms']} ms. **Server fraction "
                  f"{s['server_fraction']}**; p99 ÷ p50 at 0.3: **{s['p99_over_p50_at_0.3']}**.", "",
                  "| fraction | target/s | offered/s | windows | p50 ms | p95 ms | p99 ms | p99/p50 | mean batch | "
                  "within bound | generator µs/window |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for p in s["points"]:
            e = p["e2e_ms"]
            lines.append(f"| {p['fraction']} | {p['rate_target']:.0f} | {p['rate_offered']:.0f} | {p['windows']} | "
                         f"{e['p50']} | {e['p95']} | {e['p99']} | {p['p99_over_p50']} | {p['mean_batch']} | "
                         f"{'yes' if p['within_bound'] else 'no'} | {p['generator_cpu_us_per_window']} |")
        lines.append("")
    return "\n".join(lines)


def pinned_run(url: str, redis_pid: int | None, checkpoint: Path, root: Path, log_dir: Path,
               args: argparse.Namespace) -> dict[str, Any]:
    """:func:`scenario` with redis-server (``redis_pid``) and this process moved off the replica's CPU for its
    duration, and moved back after."""
    mine, others = split_cpus()
    every = os.sched_getaffinity(0)
    try:
        if others:
            if redis_pid is not None:
                os.sched_setaffinity(redis_pid, others)
            os.sched_setaffinity(0, others)
        return scenario(url, checkpoint, root, log_dir, args, mine, others)
    finally:
        if others:
            if redis_pid is not None:
                os.sched_setaffinity(redis_pid, every)
            os.sched_setaffinity(0, every)


def parser() -> argparse.ArgumentParser:
    """The options (also what ``make bench`` passes, as defaults)."""
    p = argparse.ArgumentParser(prog="bench.server")
    p.add_argument("--code", action="append", default=[], metavar="NAME=PATH",
                   help="a code tree whose worker to run (repeatable; default: this tree as 'main')")
    p.add_argument("--out", default=str(ROOT / "results" / "bench" / "server"))
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--capacity-seconds", type=float, default=5.0)
    p.add_argument("--overload", type=float, default=5000.0)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--fractions", type=lambda s: [float(v) for v in s.split(",")], default=list(FRACTIONS))
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point (see the module docstring)."""
    args = parser().parse_args(argv)
    codes = dict(c.split("=", 1) for c in args.code) or {"main": str(ROOT)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gc.collect()
    gc.freeze()
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp, LocalRedis() as lr:
        ckpt = build_checkpoint(Path(tmp) / "ckpt", golden=256)
        for name, path in codes.items():
            runs[name] = pinned_run(lr.url, lr.proc.pid if lr.proc else None, ckpt, Path(path).resolve(), Path(tmp), args)
            print(json.dumps({name: {k: runs[name][k] for k in ("server_fraction", "p99_over_p50_at_0.3", "bound_ms")}}),
                  flush=True)
    meta = {"cpus": os.cpu_count(), "load_before": os.getloadavg()}
    (out / "server.json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
    (out / "server.md").write_text(report(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
