"""Sustained streaming load and the producer's CPU per sample (part of :mod:`bench.streams`).

:func:`sustained_load`: D simulated devices at R Hz (hop 25: D * R / 25 windows/s), each with a random
phase so their windows do not all complete at once, push 100 ms of samples per device per tick through
a :class:`~producer.streaming.StreamPublisher` to one worker replica; a reader thread stamps each
result's arrival. Latency: from the push of the window's last sample to its result being read.
Loads run in order and stop after the first one whose p99 exceeds 50 ms (or loses windows).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from bench.harness.localredis import LocalRedis
from bench.harness.workers import start_worker, terminate, worker_process_env
from producer.client import Producer
from producer.results import ResultsReader
from producer.streaming import StreamPublisher
from producer.windower import Windower, WindowSpec
from protocol.keys import Keys
from training.model.recording import Recording

LOAD_HOP, TICK_S, P99_TARGET_MS, FEATURES = 25, 0.1, 50.0, 6


def _reader(r: Any, keys: Keys, seen: dict[str, float], worker_ms: list[tuple[float, float]],
            stop: threading.Event) -> None:
    reader = ResultsReader(r, keys, start="$")
    while not stop.is_set():
        for _, res in reader.poll(count=1000, block_ms=100):
            seen[res.cid] = time.perf_counter()
            worker_ms.append((res.e2e_us / 1000, res.infer_us / 1000))


def one_load(url: str, keys: Keys, window: int, devices: int, hz: int, seconds: float) -> dict[str, Any]:
    """Run one load for ``seconds``; latency percentiles and losses."""
    import redis

    r = redis.Redis.from_url(url)
    spec = WindowSpec.at_rate(window, LOAD_HOP, hz)
    pub = StreamPublisher(Producer(r, keys), Windower(spec))
    rng = np.random.default_rng(devices)
    phase = rng.integers(0, LOAD_HOP, devices)
    per_tick = max(1, round(hz * TICK_S))
    seen: dict[str, float] = {}
    pushed: dict[str, float] = {}
    worker_ms: list[tuple[float, float]] = []
    stop = threading.Event()
    th = threading.Thread(target=_reader, args=(redis.Redis.from_url(url), keys, seen, worker_ms, stop), daemon=True)
    th.start()
    time.sleep(0.2)
    noise = rng.normal(size=(per_tick, FEATURES)).astype(np.float32)
    t0 = time.perf_counter()
    ticks = 0
    cpu0 = time.process_time()
    while time.perf_counter() - t0 < seconds:
        first = ticks * per_tick
        batch = [(f"d{d}", (phase[d] + first + np.arange(per_tick)) * spec.period_us, noise) for d in range(devices)]
        at = time.perf_counter()
        for w in pub.push_many(batch):
            pushed[w.cid] = at
        ticks += 1
        time.sleep(max(0.0, t0 + ticks * TICK_S - time.perf_counter()))
    cpu = time.process_time() - cpu0
    deadline = time.perf_counter() + 3.0
    while time.perf_counter() < deadline and len([c for c in pushed if c in seen]) < len(pushed):
        time.sleep(0.05)
    stop.set()
    th.join(2)
    lat = np.array([(seen[c] - t) * 1000 for c, t in pushed.items() if c in seen])
    return {"devices": devices, "hz": hz, "windows_per_s": round(len(pushed) / seconds, 1),
            "target_windows_per_s": devices * hz / LOAD_HOP, "windows": len(pushed), "lost": len(pushed) - len(lat),
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
            "producer_cpu_share": round(cpu / seconds, 3),
            # the worker's own view: entry written -> result published, and the batch's forward pass
            "worker_e2e_p50_ms": float(np.median([e for e, _ in worker_ms])) if worker_ms else None,
            "infer_p50_ms": float(np.median([i for _, i in worker_ms])) if worker_ms else None}


def sustained_load(ckpt: str, window: int, loads: list[tuple[int, int]], seconds: float) -> dict[str, Any]:
    """Each (devices, Hz) of ``loads`` in order against one worker replica; the largest that met the target."""
    runs: list[dict[str, Any]] = []
    with LocalRedis() as server:
        env = worker_process_env(redis_url=server.url, prefix="load", group="load", checkpoint=ckpt)
        proc = start_worker(env, ["--replicas", "1"])
        try:
            keys = Keys("load", "load")
            r = server.client()
            warm = Producer(r, keys)
            warm.classify([np.zeros((window, FEATURES), np.float32)], timeout=120)  # the worker is up
            for devices, hz in loads:
                res = one_load(server.url, keys, window, devices, hz, seconds)
                runs.append(res)
                if res["lost"] or res["p99_ms"] is None or res["p99_ms"] > P99_TARGET_MS:
                    break
        finally:
            terminate(proc, 20)
    ok = [x for x in runs if not x["lost"] and x["p99_ms"] is not None and x["p99_ms"] <= P99_TARGET_MS]
    return {"hop": LOAD_HOP, "tick_s": TICK_S, "seconds": seconds, "runs": runs,
            "largest_ok": max(ok, key=lambda x: x["target_windows_per_s"]) if ok else None}


def cpu_per_sample(rec: Recording, spec: WindowSpec) -> dict[str, float]:
    """The windower's CPU µs per sample over ``rec``'s devices, pushed 1 and 10 samples at a time."""
    out = {}
    for chunk in (1, 10):
        w = Windower(spec)
        parts = [rec.of_device(d) for d in rec.devices]
        t0 = time.process_time()
        n = 0
        for p in parts:
            for lo in range(0, len(p), chunk):
                w.push(p.device[0], p.t_us[lo: lo + chunk], p.x[lo: lo + chunk])
                n += len(p.t_us[lo: lo + chunk])
        out[f"windower_us_per_sample_chunk{chunk}"] = 1e6 * (time.process_time() - t0) / n
    return out
