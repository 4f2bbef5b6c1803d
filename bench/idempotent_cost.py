"""What idempotent publishing costs: ``publish_many`` windows/s with plain ``XADD`` and with the
idempotent-XADD script, and the memory its dedup keys hold; writes ``results/idempotent.md``.

One run on a throwaway redis-server (``python -m bench.idempotent_cost [--windows N]``); the
numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np

from bench.harness import LocalRedis
from producer.client import Producer
from protocol.idempotent import IdempotentWriter
from protocol.keys import Keys

OUT = Path(__file__).resolve().parents[1] / "results" / "idempotent.md"


def measure(srv: LocalRedis, n: int, idempotent: bool, run: int) -> tuple[float, int]:
    """windows/s of ``publish_many`` of ``n`` [20, 1] windows with client ids, and the bytes Redis
    grew by (the stream, plus the dedup keys when ``idempotent``)."""
    r = srv.client()
    keys = Keys(f"cost{run}", "cost")
    idem = IdempotentWriter(keys, "bench", 300) if idempotent else None
    prod = Producer(r, keys, pipeline_size=500, idempotence=idem)
    xs = [np.random.default_rng(0).standard_normal((20, 1)).astype(np.float32)] * n
    cids = [f"w-{i}" for i in range(n)]
    prod.publish_many(xs[:500], [f"warm-{i}" for i in range(500)])
    before = int(r.info("memory")["used_memory"])
    t0 = time.perf_counter()
    prod.publish_many(xs, cids)
    dt = time.perf_counter() - t0
    grown = int(r.info("memory")["used_memory"]) - before
    r.flushall()
    return n / dt, grown


def main(argv: list[str] | None = None) -> int:
    """Measure both paths once each and write the report."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--windows", type=int, default=50_000)
    args = p.parse_args(argv)
    with LocalRedis() as srv:
        version = srv.client().info("server")["redis_version"]
        plain, plain_mem = measure(srv, args.windows, False, 0)
        idem, idem_mem = measure(srv, args.windows, True, 1)
    key_bytes = (idem_mem - plain_mem) / args.windows
    text = f"""# Idempotent publishing: cost

`python -m bench.idempotent_cost --windows {args.windows}`: one run, one `Producer.publish_many` of
{args.windows:,} single-window entries ([20, 1] float32, client ids `w-<n>`) in pipelines of 500, on a
throwaway redis-server {version} (script path; no persistence) on this machine ({platform.machine()},
2 CPU cores shared with other work: treat the figures as rough).

| path | windows/s | Redis memory grown |
|---|---|---|
| plain `XADD` | {plain:,.0f} | {plain_mem / 1e6:.1f} MB |
| idempotent (one script call per shard and pipeline: `GET`, `XADD`, `SET … EX` per entry) | {idem:,.0f} | {idem_mem / 1e6:.1f} MB |
| ratio idempotent / plain | {idem / plain:.2f} | |

The dedup keys cost about {key_bytes:.0f} bytes per window for as long as the window
(`idempotency_window_s`) keeps them: at {idem:,.0f} windows/s and the default 60 s window that is
about {idem * 60 * key_bytes / 1e9:.1f} GB. Size the window to the retries it must cover.
"""
    OUT.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
