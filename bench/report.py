"""Turning a benchmark run (one JSON document) into target verdicts, markdown and PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _find(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    for row in rows:
        if all(row.get(k) == v for k, v in match.items()):
            return row
    return None


def _model_ref(sat: dict[str, Any] | None, model: dict[str, Any] | None) -> float | None:
    """Model-only windows/s to compare a pipeline row with: the runs adjacent to it when there are any."""
    if sat and sat.get("model_only_adjacent_windows_per_s"):
        return float(sat["model_only_adjacent_windows_per_s"])
    return None if model is None else float(model["windows_per_s"])


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's four targets, each with the measured value and pass/miss (None: not measured).

    One extra row (target ``info``) compares 2 replicas with 2 model-only processes: on 2 cores the
    replicas share them with redis-server, so it shows what Redis and the Python work cost.
    """
    sat, mo, naive, ol = doc["saturated"], doc["model_only"], doc["naive"], doc["open_loop"]
    head = doc["config"]["headline"]
    b, mb = head["backend"], head["max_batch"]
    one = _find(sat, backend=b, replicas=1, threads=1, max_batch=mb)
    two = _find(sat, backend=b, replicas=2, threads=1, max_batch=mb)
    model1 = _find(mo, backend=b, threads=1, batch=mb, processes=1)
    model2 = _find(mo, backend=b, threads=1, batch=mb, processes=2)
    tutorial = _find(naive, backend="torch")
    out: list[dict[str, Any]] = []

    def add(name: str, target: str, value: float | None, ok: bool | None, detail: str) -> None:
        out.append({"measure": name, "target": target, "value": None if value is None else round(value, 3),
                    "pass": ok, "detail": detail})

    m1, m2 = _model_ref(one, model1), _model_ref(two, model2)
    r = one["windows_per_s"] / m1 if one and m1 else None
    add("saturated pipeline ÷ model-only (1 replica, 1 thread, same batch)", "≥ 0.9", r, None if r is None else r >= 0.9,
        f"{b}, batch {mb}: pipeline {one and one['windows_per_s']}/s vs model {m1}/s")
    r2 = two["windows_per_s"] / m2 if two and m2 else None
    add("saturated pipeline ÷ model-only (2 replicas vs 2 model processes)", "info", r2, None,
        f"pipeline {two and two['windows_per_s']}/s vs 2 model processes {m2}/s")
    best = max(sat, key=lambda s: s["windows_per_s"]) if sat else None
    r3 = best["windows_per_s"] / tutorial["windows_per_s"] if best and tutorial else None
    add("saturated pipeline ÷ naive worker", "≥ 20×", r3, None if r3 is None else r3 >= 20,
        f"best pipeline ({best and best['label']}) {best and best['windows_per_s']}/s vs naive torch "
        f"{tutorial and tutorial['windows_per_s']}/s")
    half = [p for p in ol if abs(p["load"] - 0.5) < 1e-6]
    for p in half:
        v = p["e2e_ms"]["p99"]
        add(f"p99 end to end at 50 % load ({p['config']})", "≤ 10 ms", v, bool(v <= 10.0),
            f"{p['windows']} windows at {p['rate_achieved']}/s")
    r4 = two["windows_per_s"] / one["windows_per_s"] if one and two else None
    add("2 replicas ÷ 1 replica, saturated", "≥ 1.7×", r4, None if r4 is None else r4 >= 1.7,
        f"{two and two['windows_per_s']}/s vs {one and one['windows_per_s']}/s")
    return out


def _verdict(t: dict[str, Any]) -> str:
    if t["target"] == "info":
        return "info"
    return "not measured" if t["pass"] is None else ("pass" if t["pass"] else "**miss**")


def _table(title: str, header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["", f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(str(c) for c in row) + " |" for row in rows]]


def markdown(doc: dict[str, Any], plots: list[str]) -> str:
    """The run as a markdown report."""
    m = doc["machine"]
    lines = [
        "# bigru-stream benchmark", "",
        f"{m['cpus']} CPUs ({m['cpu_model']}), {m['platform']}, Python {m['python']}, torch {m['torch']}, "
        f"onnxruntime {m['onnxruntime'] or 'not installed'}, redis-server {m['redis']}. "
        f"Load average before/after: {m['loadavg_before']} / {m['loadavg_after']}. Run took {doc['seconds']:.0f} s.",
        "",
        f"Model: {doc['config']['model']}. GPU: {doc['config']['gpu']}.",
    ]
    lines += _table("Targets", ["measure", "target", "measured", "verdict", "detail"],
                    [[t["measure"], t["target"], t["value"], _verdict(t), t["detail"]] for t in doc["targets"]])
    lines += _table("Pipeline, saturated",
                    ["config", "windows/s", "mean batch", "replicas serving", "model-only right before/after"],
                    [[s["label"], f"{s['windows_per_s']:.0f}", s["mean_batch"], s["replicas_serving"],
                      s.get("model_only_adjacent_windows_per_s", "")] for s in doc["saturated"]])
    lines += _table("Naive worker (COUNT 1, one forward, XADD, XACK)", ["backend", "windows/s"],
                    [[n["backend"], f"{n['windows_per_s']:.0f}"] for n in doc["naive"]])
    lines += _table("Model only (in-process forward, serving predictor)",
                    ["backend", "threads", "processes", "batch", "windows/s", "call p50 ms", "CPU µs/window"],
                    [[r["backend"], r["threads"], r["processes"], r["batch"], f"{r['windows_per_s']:.0f}",
                      r["latency_ms_p50"], r["cpu_us_per_window"]] for r in doc["model_only"]])
    lines += _table("Pipeline, open loop",
                    ["batch wait", "load", "sent/s", "e2e p50", "p95", "p99", "max", "queued", "batch wait",
                     "inference", "decode+encode", "publish", "mean batch"],
                    [[p["config"], f"{p['load']:.0%}", f"{p['rate_achieved']:.0f}", *(p["e2e_ms"][k] for k in
                      ("p50", "p95", "p99", "max")), *(p["breakdown_ms_mean"][k] for k in
                      ("queued", "batch_wait", "inference", "decode_encode", "publish")), p["batch"]["mean"]]
                     for p in doc["open_loop"]])
    lines += ["", "Latencies in ms; breakdown columns are means; e2e is stamped by a results reader on arrival.", ""]
    lines += [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    lines += ["", *[f"- {n}" for n in doc.get("notes", [])], ""]
    return "\n".join(lines)


def plot(doc: dict[str, Any], out_dir: Path) -> list[str]:
    """latency_vs_load.png and model_only.png; empty when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    files = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    by_cfg: dict[str, list[dict[str, Any]]] = {}
    for p in doc["open_loop"]:
        by_cfg.setdefault(p["config"], []).append(p)
    for i, (cfg, pts) in enumerate(by_cfg.items()):
        x = [p["load"] * 100 for p in pts]
        color = f"C{i}"
        ax.plot(x, [p["e2e_ms"]["p99"] for p in pts], "o-", color=color, label=f"{cfg} p99")
        ax.plot(x, [p["e2e_ms"]["p50"] for p in pts], "s--", color=color, alpha=0.6, label=f"{cfg} p50")
    ax.axhline(10, color="grey", lw=0.8, ls=":", label="10 ms target")
    ax.set_xlabel("offered load (% of saturated rate)")
    ax.set_ylabel("end-to-end latency (ms)")
    ax.set_yscale("log")
    ax.set_title("Open loop: latency against load")
    files.append(_save(fig, ax, out_dir / "latency_vs_load.png"))
    fig, ax = plt.subplots(figsize=(7, 4))
    for backend in sorted({r["backend"] for r in doc["model_only"]}):
        rows = [r for r in doc["model_only"] if r["backend"] == backend and r["threads"] == 1 and r["processes"] == 1]
        ax.plot([r["batch"] for r in rows], [r["windows_per_s"] for r in rows], "o-", label=f"{backend}, 1 thread")
    for s in doc["saturated"]:
        if s["replicas"] == 1 and s["threads"] == 1:
            ax.plot([s["max_batch"]], [s["windows_per_s"]], "*", ms=12, label=f"pipeline {s['label']}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("windows/s")
    ax.set_title("Model only vs saturated pipeline (1 process)")
    files.append(_save(fig, ax, out_dir / "model_only.png"))
    return files


def _save(fig: Any, ax: Any, path: Path) -> str:
    import matplotlib.pyplot as plt

    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
