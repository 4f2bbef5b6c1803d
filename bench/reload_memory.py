"""RSS of one replica across hot reloads: ``python -m bench.reload_memory [--reloads 4] [--out results]``.

Starts its own redis-server and one ``python -m worker.cli`` replica on a checkpoint root, then
publishes ``--reloads`` new versions into the root one after another (``latest`` moves, the replica
verifies and swaps each), with a trickle of windows so batches flow. After each swap it waits for the
replica to serve ``--batches`` batches (past the breaker's fallback window, when the previous version
is dropped) and reads the replica's RSS from ``/proc``. Writes ``results/reload_memory.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.harness import LocalRedis, rss_mib, start_worker, worker_process_env
from bench.model import build_checkpoint
from producer.client import Producer
from protocol.keys import Keys
from training.model.checkpoint_file import set_latest_version
from worker.health import heartbeat

ROOT = Path(__file__).resolve().parents[1]


def serve(prod: Producer, r: object, keys: Keys, n_batches: int) -> None:
    """Publish single windows one at a time until the replica has published ``n_batches`` more results."""
    sk = keys.shard(0)
    start = r.xlen(sk.results)  # type: ignore[attr-defined]
    while r.xlen(sk.results) - start < n_batches:  # type: ignore[attr-defined]
        prod.publish(np.zeros((20, 1), np.float32))
        time.sleep(0.005)


def main(argv: list[str] | None = None) -> int:
    """Run the measurement and write the results files."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reloads", type=int, default=4)
    p.add_argument("--batches", type=int, default=150, help="batches served after each swap before reading RSS")
    p.add_argument("--out", type=Path, default=ROOT / "results")
    a = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="reload-mem-"))
    root = tmp / "ck"
    build_checkpoint(root, seed=0, golden=256)
    staged = []
    for seed in range(1, a.reloads + 1):
        build_checkpoint(tmp / f"st{seed}", seed=seed, golden=256)
        staged.append((tmp / f"st{seed}", (tmp / f"st{seed}" / "latest").read_text().strip()))
    rows: list[dict[str, object]] = []
    with LocalRedis() as srv:
        r = srv.client()
        keys = Keys("rm", "rm")
        env = worker_process_env(dict(os.environ, OMP_NUM_THREADS="1"), redis_url=srv.url, prefix="rm", group="rm",
                                 checkpoint=str(root), replicas=1, worker_name="rm", reload_interval_s=0.5)
        with open(tmp / "worker.log", "wb") as log:
            proc = start_worker(env, log=log)
        try:
            while (hb := heartbeat(r, keys, "rm-0")) is None:
                if proc.poll() is not None:
                    raise RuntimeError((tmp / "worker.log").read_text()[-2000:])
                time.sleep(0.2)
            pid = hb.pid
            prod = Producer(r, keys)
            serve(prod, r, keys, a.batches)
            rows.append({"step": "start", "version": hb.model, "rss_mib": round(rss_mib(pid), 1)})
            for i, (src, version) in enumerate(staged, 1):
                shutil.copytree(src / version, root / version)
                set_latest_version(root, version)
                while (now := heartbeat(r, keys, "rm-0")) is None or now.model != version:
                    time.sleep(0.2)
                serve(prod, r, keys, a.batches)
                time.sleep(2.5)  # the release after a swap is due 2 s after it
                rows.append({"step": f"reload {i}", "version": version, "rss_mib": round(rss_mib(pid), 1)})
                print(rows[-1], flush=True)
        finally:
            proc.terminate()
            proc.wait(30)
    a.out.mkdir(parents=True, exist_ok=True)
    doc = {"reloads": a.reloads, "batches_after_each": a.batches, "rows": rows}
    (a.out / "reload_memory.json").write_text(json.dumps(doc, indent=1))
    base = float(rows[0]["rss_mib"])  # type: ignore[arg-type]
    lines = ["# RSS of one replica across hot reloads", "",
             f"`python -m bench.reload_memory --reloads {a.reloads}`: one replica (defaults: onnx, precision auto), "
             f"a trickle of single windows; RSS read after {a.batches} batches on each version (past the "
             "breaker's fallback window) and the release 2 s after the swap.", "",
             "| step | RSS MiB | vs start |", "|---|---|---|"]
    lines += [f"| {row['step']} | {row['rss_mib']} | {float(row['rss_mib']) / base - 1:+.1%} |" for row in rows]  # type: ignore[arg-type]
    (a.out / "reload_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
