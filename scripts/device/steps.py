"""The device check's model and environment steps: env, pytest_gpu, model, train (and train_cpu), onnx_cpu.

Also finds the training datasets. Project imports (torch, bench, training, worker) stay inside the
functions: this module is imported before the project's dependencies are importable.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scripts.device.base import ROOT, Ctx, Plan, StepFailed, child_env, last_json, log, run_cmd

# --------------------------------------------------------------------------------------- datasets


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
    pkgs: dict[str, str | None] = {}
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


def make_train_step(device: str | None, only_first: bool) -> Callable[[Ctx], dict[str, Any]]:
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
        self.precision = "bf16"

    def predict(self, xs: list[Any]) -> Any:
        import torch

        with torch.autocast(device_type=self.pred.device.type, dtype=torch.bfloat16):
            return self.pred.predict(xs)


def _default_checkpoint(length: int, prefix: str) -> Any:
    """``bench.model.build_checkpoint`` for windows of ``length`` steps (the default model may depend on T)."""
    from bench.model import build_checkpoint
    from training.model.checkpoint import load_checkpoint

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
