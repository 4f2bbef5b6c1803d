"""``make bench``: one run, one local redis-server, every measurement side by side.

Phases: model-only forward (torch, onnx fp32 and int8) at batch sizes 1..1024; the naive one-window
worker; the plumbing ceiling (the real loop with a null model, single- and multi-window entries);
the pipeline saturated with 1 and 2 replicas (and the other levers, multi-window entries among
them); the pipeline in open loop at 10/25/50/75/90 % of the saturated rate under several batch-wait
policies; the server scenario (``bench.server``: Poisson arrivals, the replica pinned apart from
redis-server and the load generator). Writes ``results/bench/bench.json``, ``bench.md`` and PNG plots. A missed target is
reported, not an error.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import redis

from bench import report
from bench.harness import LocalRedis
from bench.model import build_checkpoint, describe_model, windows
from bench.pipeline import WorkerConfig, classify_round_trips, open_loop, saturated
from bench.plumbing import ceiling
from producer.client import Producer
from protocol.keys import Keys
from worker.onnx_backend import onnx_available

ROOT = Path(__file__).resolve().parents[1]

BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
LOADS = [0.1, 0.25, 0.5, 0.75, 0.9]
#: Windows per entry of the multi-window measurements.
PER_ENTRY = 64


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        redis_v = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=10).stdout.split()[2]
    except (OSError, IndexError, subprocess.SubprocessError):
        redis_v = "unknown"
    return {
        "cpus": os.cpu_count(), "cpu_model": cpu, "platform": platform.platform(), "python": platform.python_version(),
        "torch": _version("torch"), "onnxruntime": _version("onnxruntime"), "redis": redis_v.removeprefix("v="),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }


def _child(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.PIPE, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def _json_lines(proc: subprocess.Popen[str], timeout: float) -> list[dict[str, Any]]:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{proc.args!r} failed: {err[-2000:]}")
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def model_only(ckpt: Path, backend: str, threads: int, batches: list[int], min_s: float, processes: int = 1,
               precision: str = "fp32") -> list[dict[str, Any]]:
    """Model-only rows from ``processes`` parallel child processes (summed throughput when > 1)."""
    args = ["-m", "bench.model", "--checkpoint", str(ckpt), "--backend", backend, "--threads", str(threads),
            "--batches", ",".join(map(str, batches)), "--min-s", str(min_s), "--wait-go"]
    if precision != "fp32":
        args += ["--precision", precision]
    procs = [_child(args) for _ in range(processes)]
    for p in procs:  # wait until every copy has built its predictor, then start them together
        assert p.stdout is not None
        line = p.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"bench.model did not start: {line!r} {(p.stderr.read() if p.stderr else '')!r}")
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    per = [_json_lines(p, 600) for p in procs]
    rows = []
    for i, b in enumerate(batches):
        rs = [rows_[i] for rows_ in per]
        row = dict(rs[0], processes=processes, precision=precision)
        row["windows_per_s"] = round(sum(r["windows_per_s"] for r in rs), 1)
        rows.append(row)
        assert row["batch"] == b
    return rows


def naive(url: str, ckpt: Path, backend: str, seconds: float, expect_rate: float) -> dict[str, Any]:
    """The naive worker on a pre-filled stream."""
    prefix = f"nv{uuid.uuid4().hex[:8]}"
    keys = Keys(prefix, prefix)
    r = redis.Redis.from_url(url)
    n = int(min(50_000, max(2_000, expect_rate * seconds * 2)))
    Producer(r, keys, pipeline_size=2000).publish_many(windows(n, seed=3))
    r.xgroup_create(keys.shard(0).windows, prefix, id="0")
    try:
        proc = _child(["-m", "bench.naive", "--redis-url", url, "--prefix", prefix, "--checkpoint", str(ckpt),
                       "--backend", backend, "--seconds", str(seconds)])
        return _json_lines(proc, seconds + 120)[0]
    finally:
        sk = keys.shard(0)
        r.delete(sk.windows, sk.results, sk.dead)


def _rate(rows: list[dict[str, Any]], backend: str, batch: int) -> float:
    return next((r["windows_per_s"] for r in rows if r["backend"] == backend and r["batch"] == batch
                 and r["threads"] == 1 and r["processes"] == 1 and r.get("precision", "fp32") == "fp32"), 1000.0)





def _plain(o: Any) -> Any:
    """JSON for numpy scalars."""
    return o.item() if hasattr(o, "item") else str(o)


@dataclass
class Plan:
    """Sizes of one run (``quick``: a smoke test whose numbers mean nothing)."""

    quick: bool
    device: str = "cpu"

    @property
    def batches(self) -> list[int]:
        return [1, 8, 64] if self.quick else BATCHES

    @property
    def min_s(self) -> float:
        return 0.05 if self.quick else 0.3

    @property
    def sat_s(self) -> float:
        return 1.0 if self.quick else 4.0

    @property
    def ol_s(self) -> float:
        return 1.0 if self.quick else 3.0


def phase_model_only(ckpt: Path, backends: list[str], plan: Plan, mb: int) -> list[dict[str, Any]]:
    """Model-only rows: every batch size per backend, then threads and processes at ``mb``."""
    mo: list[dict[str, Any]] = []
    for b in backends:
        mo += model_only(ckpt, b, 1, plan.batches, plan.min_s)
        print(f"model-only {b}: " + ", ".join(f"b{r['batch']}={r['windows_per_s']:.0f}/s" for r in mo if r["backend"] == b), flush=True)
    if "onnx" in backends:
        rows = model_only(ckpt, "onnx", 1, plan.batches, plan.min_s, precision="int8")
        print("model-only onnx int8: " + ", ".join(f"b{r['batch']}={r['windows_per_s']:.0f}/s" for r in rows), flush=True)
        mo += rows
    for b in backends:
        mo += model_only(ckpt, b, 2, [1, mb], plan.min_s)
        mo += model_only(ckpt, b, 1, [mb], plan.min_s, processes=2)
    return mo


def phase_plumbing(url: str, plan: Plan) -> list[dict[str, Any]]:
    """The null-model ceiling: 1 and 2 replicas, single-window and multi-window entries."""
    rows = []
    for per_entry in (1, PER_ENTRY):
        for procs in (1, 2):
            n = (20_000 if plan.quick else 200_000) * (1 if per_entry == 1 else 8)
            row = ceiling(url, n, procs, max_batch=256, per_entry=per_entry)
            print(f"plumbing {procs} proc(s), {per_entry}/entry: {row['windows_per_s']:.0f}/s "
                  f"(worker {row['worker_cpu_us_per_window']} us, redis {row['redis_cpu_us_per_window']} us per window)", flush=True)
            rows.append(row)
    return rows


def phase_saturated(url: str, ckpt: Path, mo: list[dict[str, Any]], head: str, mb: int, plan: Plan,
                    tmpdir: Path) -> list[dict[str, Any]]:
    """Pre-filled stream drained by real worker processes; the first two rows (and the multi-window
    ones) are compared with model-only runs right before and after them."""
    configs = [WorkerConfig(backend=head, replicas=1, max_batch=mb), WorkerConfig(backend=head, replicas=2, max_batch=mb)]
    configs.append(WorkerConfig(backend=head, replicas=2, max_batch=mb, per_entry=PER_ENTRY))
    if not plan.quick:
        configs += [WorkerConfig(backend=head, replicas=1, max_batch=mb, overlap=False),
                    WorkerConfig(backend=head, replicas=1, threads=2, max_batch=mb),
                    WorkerConfig(backend=head, replicas=1, max_batch=256)]
        if head == "onnx":
            configs += [WorkerConfig(backend=head, replicas=2, max_batch=mb, precision="int8"),
                        WorkerConfig(backend=head, replicas=1, max_batch=mb, precision="auto")]
        if head != "torch":
            configs += [WorkerConfig(backend="torch", replicas=1, max_batch=mb),
                        WorkerConfig(backend="torch", replicas=2, max_batch=mb)]
    sat = []
    for i, cfg in enumerate(configs):
        est = _rate(mo, cfg.backend, mb) * cfg.replicas
        n = int(min(400_000, max(2_000 if plan.quick else 10_000, est * plan.sat_s * (2 if cfg.per_entry > 1 else 1))))
        adjacent = i < 2 or cfg.per_entry > 1 or cfg.precision == "int8"
        ref = [model_only(ckpt, cfg.backend, 1, [mb], plan.min_s * 3, processes=cfg.replicas, precision=cfg.precision)[0]] if adjacent else []
        row = saturated(url, ckpt, cfg, n, tmpdir)
        if ref:
            ref.append(model_only(ckpt, cfg.backend, 1, [mb], plan.min_s * 3, processes=cfg.replicas, precision=cfg.precision)[0])
            row["model_only_adjacent_windows_per_s"] = round(sum(r["windows_per_s"] for r in ref) / 2, 1)
        sat.append(row)
        print(f"saturated {row['label']}: {row['windows_per_s']:.0f}/s (mean batch {row['mean_batch']})", flush=True)
    return sat


def phase_open_loop(url: str, ckpt: Path, head: str, mb: int, sat: list[dict[str, Any]], plan: Plan,
                    tmpdir: Path) -> list[dict[str, Any]]:
    """Latency at fractions of one replica's saturated rate, per batch-wait policy. The first policy
    is the worker's defaults (continuous batching, overlap, precision auto), loaded relative to its
    own saturated rate; the fp32 policies relative to the fp32 replica's."""
    fp32 = sat[0]["windows_per_s"]
    auto = next((r["windows_per_s"] for r in sat if r["replicas"] == 1 and r.get("precision") == "auto"), fp32)
    policies = [WorkerConfig(backend=head, max_batch=mb, precision="auto"),
                WorkerConfig(backend=head, max_batch=mb),
                WorkerConfig(backend=head, max_batch=mb, overlap=False),
                WorkerConfig(backend=head, max_batch=mb, batch_wait="fixed", max_wait_ms=5.0),
                WorkerConfig(backend=head, max_batch=mb, batch_wait="slo", slo_p99_ms=10.0)]
    loads = LOADS[:2] if plan.quick else LOADS
    if plan.quick:
        policies = policies[:1]
    ol = []
    for cfg in policies:
        base = auto if cfg.precision == "auto" else fp32
        pts = open_loop(url, ckpt, cfg, [f * base for f in loads], plan.ol_s, tmpdir)
        for p, f in zip(pts, loads):
            p["load"], p["saturated_base"] = f, base
            print(f"open loop {cfg.label} at {f:.0%} ({p['rate_achieved']:.0f}/s): p50 {p['e2e_ms']['p50']} "
                  f"p99 {p['e2e_ms']['p99']} ms, mean batch {p['batch']['mean']}, "
                  f"load generator {p['load_generator_cpu_share']:.0%} CPU", flush=True)
        ol += pts
    return ol


def phase_classify(url: str, ckpt: Path, head: str, mb: int, sat: list[dict[str, Any]], plan: Plan,
                   tmpdir: Path) -> list[dict[str, Any]]:
    """``Producer.classify`` round trips at 10 % and 50 % of the default replica's saturated rate."""
    fp32 = sat[0]["windows_per_s"]
    base = next((r["windows_per_s"] for r in sat if r["replicas"] == 1 and r.get("precision") == "auto"), fp32)
    cfg = WorkerConfig(backend=head, max_batch=mb, precision="auto")
    loads = [0.1] if plan.quick else [0.1, 0.5]
    rows = classify_round_trips(url, ckpt, cfg, [f * base for f in loads], plan.ol_s, tmpdir)
    for row, f in zip(rows, loads):
        row["load"] = f
        print(f"classify round trip at {f:.0%} ({row['rate_target']:.0f}/s background): p50 "
              f"{row['round_trip_ms']['p50']} p99 {row['round_trip_ms']['p99']} ms ({row['calls']} calls)", flush=True)
    return rows


def phase_server(srv: LocalRedis, ckpt: Path, plan: Plan, tmpdir: Path) -> dict[str, Any]:
    """The server scenario (``bench.server``): Poisson arrivals at fractions of the capacity, the replica pinned
    apart from redis-server and the load generator."""
    from bench import server

    args = server.parser().parse_args(["--seconds", "1.5", "--capacity-seconds", "1.5", "--fractions", "0.3,0.6"]
                                      if plan.quick else [])
    doc = server.pinned_run(srv.url, srv.proc.pid if srv.proc else None, ckpt, ROOT, tmpdir, args)
    print(f"server scenario: capacity {doc['capacity']['windows_per_s']:.0f}/s, server fraction "
          f"{doc['server_fraction']}, p99/p50 at 0.3 {doc['p99_over_p50_at_0.3']}", flush=True)
    return doc


def run(out_dir: Path, quick: bool) -> dict[str, Any]:
    """Every phase; returns the result document (also written to ``out_dir``)."""
    t_start = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = Plan(quick)
    backends = ["torch", "onnx"] if onnx_available() else ["torch"]
    head = "onnx" if "onnx" in backends else "torch"
    mb = 64
    doc: dict[str, Any] = {"machine": machine(), "notes": []}
    doc["config"] = {
        "model": describe_model(),
        "headline": {"backend": head, "max_batch": mb, "per_entry": PER_ENTRY},
        "gpu": "none on this machine (CPU run); GPU figures come from scripts/device-check.sh, see results/bench-gpu/",
        "quick": quick,
    }
    with tempfile.TemporaryDirectory(prefix="bigru-bench-") as tmp, LocalRedis() as srv:
        tmpdir = Path(tmp)
        ckpt = build_checkpoint(tmpdir / "ckpt", golden=256)  # the golden batch calibrates and judges int8
        print(f"redis-server on port {srv.port}; checkpoint in {ckpt}", flush=True)
        doc["model_only"] = mo = phase_model_only(ckpt, backends, plan, mb)
        doc["naive"] = [naive(srv.url, ckpt, b, 1.0 if quick else 4.0, _rate(mo, b, 1)) for b in backends]
        print("naive: " + ", ".join(f"{n['backend']}={n['windows_per_s']:.0f}/s" for n in doc["naive"]), flush=True)
        doc["plumbing"] = phase_plumbing(srv.url, plan)
        doc["saturated"] = sat = phase_saturated(srv.url, ckpt, mo, head, mb, plan, tmpdir)
        doc["open_loop"] = phase_open_loop(srv.url, ckpt, head, mb, sat, plan, tmpdir)
        doc["open_loop_base"] = {"config": sat[0]["label"], "saturated_windows_per_s": sat[0]["windows_per_s"]}
        doc["classify"] = phase_classify(srv.url, ckpt, head, mb, sat, plan, tmpdir)
        if head == "onnx":
            doc["server"] = phase_server(srv, ckpt, plan, tmpdir)
    doc["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    doc["seconds"] = round(time.monotonic() - t_start, 1)
    doc["targets"] = report.targets(doc)
    plots = report.plot(doc, out_dir)
    (out_dir / "bench.json").write_text(json.dumps(doc, indent=2, default=_plain) + "\n")
    (out_dir / "bench.md").write_text(report.markdown(doc, plots))
    return doc


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``make bench``."""
    p = argparse.ArgumentParser(prog="bench.run", description=__doc__)
    p.add_argument("--out", default=str(ROOT / "results" / "bench"), help="output directory")
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke test), numbers meaningless")
    a = p.parse_args(argv)
    doc = run(Path(a.out), a.quick)
    print(f"\nwrote {a.out}/bench.json, bench.md ({doc['seconds']:.0f} s)")
    for t in doc["targets"]:
        verdict = "info" if t["target"] == "info" else "n/a" if t["pass"] is None else ("PASS" if t["pass"] else "MISS")
        print(f"  [{verdict}] {t['measure']}: {t['value']} (target {t['target']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
