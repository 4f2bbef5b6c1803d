"""Latency of ``bigru-worker --check`` as a Kubernetes exec probe runs it: a fresh process each time.

Starts a throwaway redis-server, writes a heartbeat for consumer ``probe-0`` (so the check passes,
exit 0), runs ``bigru-worker --check`` ``--calls`` times and writes p50/p99/max to
``results/check_latency.{json,md}``, next to an empty interpreter start (``python -c pass``) measured
the same way, which is the floor no exec probe in Python can beat.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.harness import LocalRedis
from protocol.keys import Keys
from worker.liveness import Heartbeat

ROOT = Path(__file__).resolve().parents[1]


def _times(cmd: list[str], n: int, env: dict[str, str]) -> tuple[list[float], set[int]]:
    out, codes = [], set()
    for _ in range(n):
        t0 = time.perf_counter()
        codes.add(subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode)
        out.append(time.perf_counter() - t0)
    return out, codes


def _summary(ts: list[float]) -> dict[str, float]:
    a = np.array(ts) * 1000
    return {"p50_ms": round(float(np.percentile(a, 50)), 1), "p99_ms": round(float(np.percentile(a, 99)), 1),
            "max_ms": round(float(a.max()), 1), "mean_ms": round(float(a.mean()), 1)}


def main() -> int:
    """Measure and write the results files."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    args = ap.parse_args()
    exe = shutil.which("bigru-worker") or str(Path(sys.executable).parent / "bigru-worker")
    with LocalRedis() as srv:
        keys = Keys("probe", "probe")
        Heartbeat(srv.client(), keys, "probe-0", ttl_s=3600, interval_s=1).beat("v-test", 0, 0, force=True)
        env = {**os.environ, "BIGRU_REDIS_URL": srv.url, "BIGRU_PREFIX": "probe", "BIGRU_GROUP": "probe",
               "BIGRU_WORKER_NAME": "probe"}
        check, codes = _times([exe, "--check"], args.calls, env)
        floor, _ = _times([sys.executable, "-c", "pass"], args.calls, env)
    if codes != {0}:
        print(f"--check exit codes {codes}, expected only 0", file=sys.stderr)
        return 1
    doc = {"calls": args.calls, "check": _summary(check), "python_c_pass": _summary(floor),
           "load_average_1m": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "check_latency.json").write_text(json.dumps(doc, indent=2) + "\n")
    c, f = doc["check"], doc["python_c_pass"]
    (args.out / "check_latency.md").write_text(
        "# `bigru-worker --check` latency (an exec probe's cost)\n\n"
        f"`python -m bench.check_latency`: {args.calls} fresh `bigru-worker --check` processes against a local "
        "redis-server holding one live heartbeat (every call exited 0), on this machine "
        f"({doc['cpus']} CPUs shared with other jobs, load average {doc['load_average_1m']} at the end).\n\n"
        "| command | p50 | p99 | max | mean |\n|---|---|---|---|---|\n"
        f"| `bigru-worker --check` | {c['p50_ms']} ms | {c['p99_ms']} ms | {c['max_ms']} ms | {c['mean_ms']} ms |\n"
        f"| `python -c pass` (interpreter start, the floor) | {f['p50_ms']} ms | {f['p99_ms']} ms | {f['max_ms']} ms "
        f"| {f['mean_ms']} ms |\n\n"
        f"p50 ratio check / bare interpreter: {c['p50_ms'] / f['p50_ms']:.1f}. The check imports redis and the "
        "settings only (no model runtime, no numpy) and sends one `GET` per replica, with no "
        "retries; the manifests give the exec probes `timeoutSeconds: 3`.\n")
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
