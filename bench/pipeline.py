"""Pipeline measurements with real worker processes (``python -m worker.cli``) on a local Redis.

Saturated: the stream is pre-filled while the group points past its end, the replicas start and
report ready, then the group is rewound so every replica starts draining at once. Open loop: a
``bigru-producer publish --rate`` process feeds the replicas while this process reads the results
stream and stamps each result on arrival.
"""

from __future__ import annotations

import gc
import os
import resource
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import redis

from bench.harness import HarnessError, env_name, settings_env, start_worker, terminate
from bench.model import windows
from producer.client import Producer
from protocol.keys import Keys
from protocol.wire import now_us
from worker.config import WorkerSettings
from worker.health import live_replicas

ROOT = Path(__file__).resolve().parents[1]


class BenchError(RuntimeError):
    """A benchmark step could not run (workers died, results missing)."""


@dataclass
class WorkerConfig:
    """How the replicas of one measurement run."""

    backend: str = "onnx"
    replicas: int = 1
    threads: int = 1
    max_batch: int = 64
    max_wait_ms: float = 5.0
    batch_wait: str = "continuous"
    slo_p99_ms: float = 10.0
    overlap: bool = True
    per_entry: int = 1  # windows per input entry (1: single-window entries)
    precision: str = "fp32"  # the bench pins fp32 unless a row says otherwise (the worker's default is auto)
    device: str = "cpu"
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Short human-readable name."""
        wait = {"slo": f"slo {self.slo_p99_ms:g} ms", "fixed": f"fixed {self.max_wait_ms:g} ms"}.get(self.batch_wait, "continuous")
        extra = ("" if self.overlap else " no-overlap") + (f" x{self.per_entry}/entry" if self.per_entry > 1 else "")
        extra += f" {self.precision}" if self.precision != "fp32" else ""
        extra += f" {self.device}" if self.device != "cpu" else ""
        return f"{self.backend} {self.replicas}x{self.threads}t b{self.max_batch} {wait}{extra}"


#: The WorkerSettings field each WorkerConfig field sets (``per_entry`` shapes the input, ``extra_env``
#: is passed through as it is).
SETTING_OF = {"backend": "backend", "replicas": "replicas", "threads": "torch_threads", "max_batch": "max_batch",
              "max_wait_ms": "max_wait_ms", "batch_wait": "batch_wait", "slo_p99_ms": "slo_p99_ms",
              "overlap": "overlap", "precision": "precision", "device": "device"}
#: WorkerConfig fields that are no worker setting.
NOT_SETTINGS = ("per_entry", "extra_env")
#: What every bench run sets besides its WorkerConfig. The saturated run parks the group at "$" while
#: workers start, then rewinds it to the pre-filled backlog; input trimming would treat that backlog
#: as acknowledged.
BENCH_SETTINGS: dict[str, Any] = {"block_ms": 50, "log_level": "WARNING", "log_json": True, "trim_input": False}


def worker_env(cfg: WorkerConfig, **values: Any) -> dict[str, str]:
    """The worker environment of ``cfg`` plus the settings ``values`` (by WorkerSettings field name), then
    ``cfg.extra_env`` on top as given (its ``BIGRU_`` names must be settings too)."""
    names = {env_name(f): f for f in WorkerSettings.model_fields}
    unknown = sorted(k for k in cfg.extra_env if k.startswith(env_name("")) and k not in names)
    if unknown:
        raise BenchError(f"extra_env names no WorkerSettings field: {', '.join(unknown)}")
    unmapped = [f.name for f in fields(cfg) if f.name not in SETTING_OF and f.name not in NOT_SETTINGS]
    if unmapped:
        raise BenchError(f"WorkerConfig fields mapped to no WorkerSettings field: {', '.join(unmapped)}")
    cfg_values = {SETTING_OF[f.name]: getattr(cfg, f.name) for f in fields(cfg) if f.name in SETTING_OF}
    try:
        env = settings_env({**BENCH_SETTINGS, **cfg_values, **values})
    except HarnessError as e:
        raise BenchError(str(e)) from e
    return {**env, **cfg.extra_env}


class Workers:
    """``python -m worker.cli`` with a config, as a context manager that waits until all are live."""

    def __init__(self, url: str, prefix: str, checkpoint: Path, cfg: WorkerConfig, log_dir: Path, *,
                 cpus: set[int] | None = None, root: Path = ROOT) -> None:
        """``cpus``: pin the workers to these CPUs; ``root``: the code tree whose worker runs (another
        checkout, for before/after comparisons)."""
        self.url, self.prefix, self.cfg, self.cpus, self.root = url, prefix, cfg, cpus, root
        self.keys = Keys(prefix, prefix)
        self.env = dict(os.environ, PYTHONPATH=str(root))
        self.env.update(worker_env(cfg, redis_url=url, prefix=prefix, group=prefix, checkpoint=str(checkpoint),
                                   worker_name=f"bench-{prefix}"))
        self.log_path = log_dir / f"workers-{prefix}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Workers:
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed with the process
        self.proc = start_worker(self.env, log=log, cwd=self.root, cpus=self.cpus)
        r = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 120
        while len(live_replicas(r, self.keys)) < self.cfg.replicas:
            if self.proc.poll() is not None:
                raise BenchError(f"workers exited with {self.proc.returncode}: {self.tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"workers not ready after 120 s: {self.tail()}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc:
            terminate(self.proc, 30)

    def tail(self) -> str:
        """The end of the workers' log."""
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""


def results_since(r: redis.Redis, stream: str, start: str = "-") -> list[dict[bytes, bytes]]:
    """Every result entry's fields on ``stream`` after ``start``."""
    out: list[dict[bytes, bytes]] = []
    while True:
        chunk = r.xrange(stream, start, "+", count=5000)
        out += [f for _, f in chunk]
        if len(chunk) < 5000:
            return out
        start = "(" + chunk[-1][0].decode()


def saturated(url: str, checkpoint: Path, cfg: WorkerConfig, n: int, log_dir: Path) -> dict[str, Any]:
    """Drain ``n`` pre-filled windows with ``cfg``'s replicas; windows/s over the middle 90 %."""
    r = redis.Redis.from_url(url)
    prefix = f"sat{uuid.uuid4().hex[:8]}"
    keys = Keys(prefix, prefix)
    sk = keys.shard(0)
    prod = Producer(r, keys, pipeline_size=2000)
    if cfg.per_entry > 1:
        prod.publish_many(windows(n, seed=7), per_entry=cfg.per_entry)
    else:
        prod.publish_many(windows(n, seed=7))
    r.xgroup_create(sk.windows, prefix, id="$")
    try:
        with Workers(url, prefix, checkpoint, cfg, log_dir) as w:
            assert w.proc is not None
            cpu0 = proc_cpu_s(w.proc.pid)
            r.xgroup_setid(sk.windows, prefix, id="0")
            t0 = time.monotonic()
            expect = -(-n // cfg.per_entry)  # one result entry per input entry
            while r.xlen(sk.results) < expect:
                if w.proc is not None and w.proc.poll() is not None:
                    raise BenchError(f"workers exited during the run: {w.tail()}")
                if time.monotonic() - t0 > 600:
                    raise BenchError(f"only {r.xlen(sk.results)}/{expect} results after 600 s")
                time.sleep(0.02)
            cpu_s = proc_cpu_s(w.proc.pid) - cpu0
        res = results_since(r, sk.results)
    finally:
        r.delete(sk.windows, sk.results, sk.dead, keys.workers)
    ts = np.sort(np.array([int(f[b"ts"]) for f in res], dtype=np.int64))
    lo, hi = int(0.05 * len(ts)), int(0.95 * len(ts)) - 1
    span_s = max(1e-6, (ts[hi] - ts[lo]) / 1e6)
    batches = np.array([int(f[b"batch"]) for f in res])
    workers = {f[b"worker"] for f in res}
    served = sum(int(f.get(b"n", b"1")) for f in res)
    return {
        **asdict(cfg), "label": cfg.label, "windows": served,
        "windows_per_s": round(float((hi - lo) * served / len(res) / span_s), 1),
        "mean_batch": round(float(batches.mean()), 1), "max_batch_seen": int(batches.max()),
        "replicas_serving": len(workers),
        # the forward pass per batch as the replicas timed it (model-only's "call p50" is the same in isolation)
        "infer_ms_median": round(float(np.median([int(f[b"infer_us"]) for f in res])) / 1000, 3),
        "drain_s": round(float(ts[-1] - ts[0]) / 1e6, 2),
        # CPU seconds of the worker process (replicas=1: the replica itself) over the drain: on a shared
        # machine windows per CPU second varies far less than windows per wall second
        "worker_cpu_s": round(cpu_s, 3),
    }


def proc_cpu_s(pid: int) -> float:
    """User plus system CPU seconds of process ``pid`` so far (Linux ``/proc``; its children not included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _summary(values: np.ndarray) -> dict[str, float]:
    return {
        "mean": round(float(values.mean()), 3), "p50": round(float(np.percentile(values, 50)), 3),
        "p95": round(float(np.percentile(values, 95)), 3), "p99": round(float(np.percentile(values, 99)), 3),
        "max": round(float(values.max()), 3),
    }


BATCH_BUCKETS = [(1, 1), (2, 3), (4, 7), (8, 15), (16, 31), (32, 63), (64, 127), (128, 1 << 30)]


def _batch_histogram(batches: np.ndarray) -> dict[str, int]:
    """Windows per batch-size bucket (each window counted once, in its batch's bucket)."""
    return {(f"{a}" if a == b else f"{a}-{b}" if b < 1 << 30 else f"{a}+"): int(((batches >= a) & (batches <= b)).sum())
            for a, b in BATCH_BUCKETS}


def open_loop_point(r: redis.Redis, w: Workers, rate: float, seconds: float) -> dict[str, Any]:
    """Publish single-window entries at ``rate`` windows/s for ``seconds``; latency of every result,
    stamped on arrival, and the load generator's share of the machine's CPU."""
    sk = w.keys.shard(0)
    last = r.xrevrange(sk.results, "+", "-", count=1)
    pos = last[0][0].decode() if last else "0-0"
    count = max(1, int(rate * seconds))
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t_start = time.monotonic()
    prod = subprocess.Popen(
        [sys.executable, "-m", "producer.cli", "--redis-url", w.url, "--prefix", w.prefix, "publish",
         "--count", str(count), "--rate", str(rate), "--id-prefix", f"r{int(rate)}"],
        env=w.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT,
    )
    got: list[tuple[int, dict[bytes, bytes]]] = []
    deadline = time.monotonic() + seconds + 30
    try:
        while len(got) < count and time.monotonic() < deadline:
            resp = r.xread({sk.results: pos}, count=2000, block=100)
            stamp = now_us()
            for _, entries in resp or []:
                for eid, fields in entries:
                    got.append((stamp, fields))
                    pos = eid.decode()
    finally:
        try:
            _, err = prod.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            prod.kill()
            _, err = prod.communicate()
    prod_wall = time.monotonic() - t_start
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the producer is the only child reaped meanwhile
    prod_cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    if prod.returncode != 0:
        raise BenchError(f"producer failed: {err.decode(errors='replace')[-1000:]}")
    if not got:
        raise BenchError(f"no results at {rate:.0f} windows/s: {w.tail()}")
    arrived = np.array([a for a, _ in got], dtype=np.int64)
    f = {k: np.array([int(x[k]) for _, x in got], dtype=np.int64)
         for k in (b"ts", b"e2e_us", b"queue_us", b"wait_us", b"infer_us", b"batch")}
    produced = f[b"ts"] - f[b"e2e_us"]
    e2e = (arrived - produced) / 1000
    return {
        "rate_target": round(rate, 1), "windows": len(got), "sent": count,
        "load_generator_cpu_share": round(prod_cpu / max(1e-6, prod_wall) / (os.cpu_count() or 1), 3),
        "rate_achieved": round(len(got) / max(1e-6, (arrived.max() - produced.min()) / 1e6), 1),
        "e2e_ms": _summary(e2e),
        "breakdown_ms_mean": {
            "queued": round(float(f[b"queue_us"].mean()) / 1000, 3),
            "batch_wait": round(float(f[b"wait_us"].mean()) / 1000, 3),
            "inference": round(float(f[b"infer_us"].mean()) / 1000, 3),
            "decode_encode": round(float((f[b"e2e_us"] - f[b"queue_us"] - f[b"wait_us"] - f[b"infer_us"]).mean()) / 1000, 3),
            "publish": round(float((arrived - f[b"ts"]).mean()) / 1000, 3),
        },
        "batch": {"mean": round(float(f[b"batch"].mean()), 2), "p50": float(np.percentile(f[b"batch"], 50)),
                  "max": int(f[b"batch"].max()), "windows_by_size": _batch_histogram(f[b"batch"])},
    }


def open_loop(url: str, checkpoint: Path, cfg: WorkerConfig, rates: list[float], seconds: float,
              log_dir: Path) -> list[dict[str, Any]]:
    """One worker start, then one open-loop point per rate."""
    # This process stamps arrivals: keep full garbage collections of its large heap (torch is
    # imported) from adding pauses to the latencies it measures.
    gc.collect()
    gc.freeze()
    r = redis.Redis.from_url(url)
    prefix = f"ol{uuid.uuid4().hex[:8]}"
    keys = Keys(prefix, prefix)
    out = []
    try:
        with Workers(url, prefix, checkpoint, cfg, log_dir) as w:
            for rate in rates:
                point = open_loop_point(r, w, rate, seconds)
                out.append({"config": cfg.label, "batch_wait": cfg.batch_wait, "max_wait_ms": cfg.max_wait_ms,
                            "slo_p99_ms": cfg.slo_p99_ms, **point})
                time.sleep(0.3)
    finally:
        sk = keys.shard(0)
        r.delete(sk.windows, sk.results, sk.dead, keys.workers)
    return out


def classify_point(r: redis.Redis, w: Workers, rate: float, seconds: float, calls_per_s: float = 50.0) -> dict[str, Any]:
    """Round trips of ``Producer.classify`` (one window per call, its own reply stream) while a paced
    producer loads the replica with single-window entries at ``rate`` windows/s."""
    count = max(1, int(rate * seconds))
    prod = subprocess.Popen(
        [sys.executable, "-m", "producer.cli", "--redis-url", w.url, "--prefix", w.prefix, "publish",
         "--count", str(count), "--rate", str(rate), "--id-prefix", f"bg{int(rate)}"],
        env=w.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT,
    )
    client = Producer(r, w.keys)
    x = windows(1, seed=5)[0]
    lat: list[float] = []
    failed = 0
    t_end = time.monotonic() + seconds
    try:
        while time.monotonic() < t_end and prod.poll() is None:
            t0 = time.perf_counter()
            try:
                client.classify([x], timeout=5.0)
                lat.append((time.perf_counter() - t0) * 1000)
            except Exception:  # noqa: BLE001 - counted, the next call still runs
                failed += 1
            time.sleep(1.0 / calls_per_s)
    finally:
        try:
            _, err = prod.communicate(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            prod.kill()
            _, err = prod.communicate()
    if not lat:
        raise BenchError(f"no classify round trip at {rate:.0f} windows/s ({failed} failed): {err.decode(errors='replace')[-500:]}")
    return {"rate_target": round(rate, 1), "calls": len(lat), "failed": failed,
            "round_trip_ms": _summary(np.array(lat))}


def classify_round_trips(url: str, checkpoint: Path, cfg: WorkerConfig, rates: list[float], seconds: float,
                         log_dir: Path) -> list[dict[str, Any]]:
    """One worker start, then classify round trips under background load at each rate."""
    r = redis.Redis.from_url(url)
    prefix = f"rr{uuid.uuid4().hex[:8]}"
    keys = Keys(prefix, prefix)
    out = []
    gc.collect()
    gc.freeze()
    try:
        with Workers(url, prefix, checkpoint, cfg, log_dir) as w:
            for rate in rates:
                out.append({"config": cfg.label, **classify_point(r, w, rate, seconds)})
                time.sleep(0.3)
    finally:
        sk = keys.shard(0)
        r.delete(sk.windows, sk.results, sk.dead, keys.workers)
    return out
