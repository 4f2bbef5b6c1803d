"""The device check's report as Markdown (``device.md``): machine, steps, training, throughput tables.

``training.experiments.reports`` is imported inside ``_table`` only: this module is imported before the
project's dependencies are importable.
"""

from __future__ import annotations

from typing import Any


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1 else f"{v:.2f}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    from training.experiments.reports import md_table

    return md_table(headers, [[_fmt(c) for c in r] for r in rows]).splitlines()


def _best(rows: list[dict[str, Any]], backend_prefix: str, length: int = 20) -> dict[str, Any] | None:
    cands = [r for r in rows if str(r.get("backend", "")).startswith(backend_prefix) and r.get("T") == length
             and "windows_per_s" in r]
    return max(cands, key=lambda r: r["windows_per_s"]) if cands else None


def _md_machine(env: dict[str, Any]) -> list[str]:
    if not env:
        return []
    smi = env.get("nvidia_smi", {})
    return ["## Machine", ""] + _table(["what", "value"], [
        ["GPU", env.get("device_name") or "none"], ["memory GiB", env.get("memory_gib")],
        ["capability", env.get("capability")], ["driver", smi.get("driver_version")],
        ["torch", env.get("torch")], ["CUDA (torch)", env.get("torch_cuda")], ["cuDNN", env.get("cudnn")],
        ["python", env.get("python")], ["CPU cores", env.get("cpu_count")], ["glibc", env.get("glibc")],
        ["redis-server", env.get("redis_server")],
    ]) + [""]


def _md_steps(steps: dict[str, Any], res: dict[str, Any]) -> list[str]:
    lines = ["## Steps", ""] + _table(["step", "status", "seconds", "note"], [
        [k, v.get("status"), v.get("seconds"), (v.get("error") or "")[:160].replace("|", "/").replace("\n", " ")]
        for k, v in steps.items()
    ]) + [""]
    if "pytest_gpu" in res and res["pytest_gpu"]:
        lines += ["## GPU tests (`pytest -m gpu`)", "", f"`{res['pytest_gpu'].get('summary', '')}` "
                  f"(exit {res['pytest_gpu'].get('rc')})", ""]
    return lines


def _md_training(res: dict[str, Any]) -> list[str]:
    train_rows = []
    for key in ("train", "train_cpu"):
        for r in res.get(key, {}).get("runs", []):
            train_rows.append([r.get("dataset"), r.get("device"), r.get("status"), r.get("test_accuracy"),
                               r.get("val_accuracy"), r.get("epochs"), r.get("seconds_per_epoch"), r.get("wall_s")])
    if not train_rows:
        return []
    return ["## Training (bigru-train defaults)", ""] + _table(
        ["dataset", "device", "status", "test acc", "val acc", "epochs", "s/epoch", "wall s"], train_rows) + [""]


def _md_bf16(model: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for t, b in (model.get("bf16_vs_fp32") or {}).items():
        if "error" in b:
            lines += [f"bf16 autocast failed at {t}: {b['error']}", ""]
        else:
            same = " (identical: autocast left the model in fp32)" if b.get("max_abs_prob_diff") == 0 else ""
            lines += [f"bf16 autocast vs fp32 at {t} (256 windows): max |Δp| {b.get('max_abs_prob_diff')}, "
                      f"argmax agreement {b.get('argmax_agreement')}{same}.", ""]
    return lines


def _md_best_ratio(model: dict[str, Any], mrows: list[dict[str, Any]]) -> list[str]:
    g, o1 = _best(mrows, "torch-fp32"), _best(mrows, "onnx-cpu-1t")
    on = max((r for r in mrows if str(r.get("backend", "")).startswith("onnx-cpu") and r.get("threads", 1) > 1
              and "windows_per_s" in r), key=lambda r: r["windows_per_s"], default=None)
    if not (g and o1):
        return []
    return [f"Best T=20: torch {model.get('device')} {g['windows_per_s']:,.0f} windows/s (batch {g['batch']}) vs "
            f"ONNX CPU 1 thread {o1['windows_per_s']:,.0f} (batch {o1['batch']}): "
            f"x{g['windows_per_s'] / max(o1['windows_per_s'], 1e-9):.1f}"
            + (f"; ONNX CPU {on['threads']} threads {on['windows_per_s']:,.0f}: "
               f"x{g['windows_per_s'] / max(on['windows_per_s'], 1e-9):.1f}" if on else "") + ".", ""]


def _md_model(res: dict[str, Any]) -> list[str]:
    model = res.get("model", {})
    onnx = res.get("onnx_cpu", {})
    mrows = [r for r in model.get("rows", []) + onnx.get("rows", []) if "windows_per_s" in r]
    if not mrows:
        return []
    lines = [f"## Model-only serving throughput (default model; {model.get('device', '?')} torch, CPU onnx)", ""]
    lines += _table(["backend", "threads", "T", "batch", "windows/s", "p50 ms", "p99 ms"], [
        [r.get("backend"), r.get("threads"), r.get("T"), r.get("batch"), r.get("windows_per_s"),
         r.get("latency_ms_p50"), r.get("latency_ms_p99")] for r in mrows]) + [""]
    lines += _md_bf16(model)
    for err in model.get("errors", []):
        lines += [f"model error: {err}", ""]
    return lines + _md_best_ratio(model, mrows)


def _md_pipeline(res: dict[str, Any]) -> list[str]:
    lines: list[str] = []
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
    return lines


def render_md(report: dict[str, Any]) -> str:
    """The report as Markdown tables: machine, steps, training, model-only and pipeline throughput."""
    steps = report.get("steps", {})
    res = {k: (v.get("result") or {}) for k, v in steps.items()}
    title = "Device check" + (" (DRY RUN on CPU, tiny sizes: not a GPU measurement)" if report.get("dry_run") else "")
    lines = [f"# {title}", "", f"Started {report.get('started')}, {report.get('elapsed_s', 0)} s in all "
             f"(budget {report.get('budget_s')} s).", ""]
    lines += _md_machine(res.get("env", {})) + _md_steps(steps, res) + _md_training(res) + _md_model(res)
    lines += _md_pipeline(res)
    return "\n".join(lines) + "\n"
