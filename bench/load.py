"""An open-loop load generator with Poisson arrivals: ``python -m bench.load --redis-url U --prefix P --rate R``.

Arrival times are drawn once from a seeded exponential distribution (mean gap ``1/rate``); the
generator sleeps until the next arrival is due and then writes every window due by now in one
pipeline, each with its own ``ts`` (the moment it is written, so a generator that falls behind
shows in the latencies instead of hiding them). It writes single-window entries of one pre-encoded
window (the ``x`` bytes are encoded once: the generator's own CPU per window stays small and is
reported), optionally pinned to ``--cpus``. Prints one JSON line: windows sent, wall and CPU seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np
import redis

from protocol.entries import encode_array
from protocol.keys import Keys
from protocol.wire import VERSION


def arrivals(rate: float, seconds: float, seed: int) -> np.ndarray:
    """Poisson arrival times (s from the start) over ``seconds`` at ``rate`` per second."""
    rng = np.random.default_rng(seed)
    n = int(rate * seconds * 1.2) + 16
    t = np.cumsum(rng.exponential(1.0 / rate, n))
    while t[-1] < seconds:  # a rare draw that falls short of the horizon
        t = np.concatenate([t, t[-1] + np.cumsum(rng.exponential(1.0 / rate, n))])
    return t[t < seconds]


def run(url: str, prefix: str, rate: float, seconds: float, seed: int, length: int = 20) -> dict[str, float]:
    """Publish Poisson arrivals at ``rate`` windows/s for ``seconds``; what was sent and what it cost."""
    # Commands are written on one connection without waiting for their replies (read when some are
    # waiting, and all at the end): a round trip per arrival would cost the generator more than the
    # server it loads.
    conn = redis.Redis.from_url(url).connection_pool.get_connection()
    stream = Keys(prefix, prefix).shard(0).windows
    x = encode_array(np.random.default_rng(seed).standard_normal((length, 1)).astype(np.float32))
    due = arrivals(rate, seconds, seed)
    c0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    i, n, unread = 0, len(due), 0
    while i < n:
        now = time.perf_counter() - t0
        if due[i] > now:
            while unread and conn.can_read():
                conn.read_response()
                unread -= 1
            time.sleep(max(0.0, due[i] - (time.perf_counter() - t0)))
            now = time.perf_counter() - t0
        j = max(int(np.searchsorted(due, now, side="right")), i + 1)
        ts = str(time.time_ns() // 1000).encode()
        conn.send_packed_command(conn.pack_commands(
            [("XADD", stream, "*", b"v", VERSION, b"x", x, b"ts", ts, b"cid", b"%d" % k) for k in range(i, j)]))
        unread += j - i
        i = j
    for _ in range(unread):
        conn.read_response()
    wall = time.perf_counter() - t0
    c1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
    return {"sent": n, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "rate_offered": round(n / max(wall, 1e-9), 1),
            "cpu_us_per_window": round(cpu / max(n, 1) * 1e6, 2)}


def main(argv: list[str] | None = None) -> int:
    """Entry point (see the module docstring)."""
    p = argparse.ArgumentParser(prog="bench.load")
    p.add_argument("--redis-url", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpus", default="", help="comma-separated CPUs to pin this process to")
    a = p.parse_args(argv)
    if a.cpus:
        os.sched_setaffinity(0, {int(c) for c in a.cpus.split(",")})
    print(json.dumps(run(a.redis_url, a.prefix, a.rate, a.seconds, a.seed)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
