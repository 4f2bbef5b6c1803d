"""The tutorial's one-request-one-inference worker: XREADGROUP COUNT 1, one forward, XADD, XACK.

``python -m bench.naive --redis-url U --prefix P --checkpoint C --backend torch --seconds 4``
drains a pre-filled stream for a fixed time and prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import redis


def run(url: str, prefix: str, checkpoint: str, backend: str, threads: int, seconds: float) -> dict[str, object]:
    """Serve windows one at a time for ``seconds``; returns the throughput."""
    import torch

    from protocol.entries import decode_window
    from protocol.keys import Keys
    from protocol.results import Result, encode_result
    from protocol.wire import Limits, now_us
    from training.model.checkpoint import load_checkpoint
    from worker.backends import make_predictor

    if threads:
        torch.set_num_threads(threads)
    pred = make_predictor(load_checkpoint(checkpoint), "cpu", backend, threads)  # type: ignore[arg-type]
    r = redis.Redis.from_url(url)
    sk = Keys(prefix, prefix).shard(0)
    limits = Limits()
    n, t_end = 0, time.perf_counter() + seconds
    t0 = time.perf_counter()
    while time.perf_counter() < t_end:
        resp = r.xreadgroup(prefix, "naive-0", {sk.windows: ">"}, count=1, block=100)
        if not resp:
            continue
        eid, fields = resp[0][1][0]
        w = decode_window(fields, limits, pred.n_features)
        p = pred.predict([w.x])[0]
        label = int(p.argmax())
        ts = now_us()
        res = Result(eid.decode(), w.cid, "ok", label, pred.classes[label], [float(v) for v in p], pred.version,
                     "naive-0", 0, 0, 0, ts - w.ts_us, ts, 1, w.meta)
        r.xadd(sk.results, encode_result(res))
        r.xack(sk.windows, prefix, eid)
        n += 1
    dt = time.perf_counter() - t0
    return {"backend": pred.backend, "threads": threads, "windows": n, "seconds": round(dt, 3),
            "windows_per_s": round(n / dt, 1)}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the naive-worker child process."""
    p = argparse.ArgumentParser(prog="bench.naive")
    p.add_argument("--redis-url", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--backend", default="torch")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seconds", type=float, default=4.0)
    a = p.parse_args(argv)
    print(json.dumps(run(a.redis_url, a.prefix, a.checkpoint, a.backend, a.threads, a.seconds)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
