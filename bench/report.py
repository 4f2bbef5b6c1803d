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


def _ratio(sat: dict[str, Any] | None, ref: float | None) -> float | None:
    return sat["windows_per_s"] / ref if sat and ref else None


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The serving-hot-path targets, each with the measured value and pass/miss (None: not measured).

    Rows with target ``info`` are context: other batch-wait policies, int8, the earlier targets.
    """
    sat, mo, naive, ol = doc["saturated"], doc["model_only"], doc["naive"], doc["open_loop"]
    plumb = doc.get("plumbing", [])
    head = doc["config"]["headline"]
    b, mb = head["backend"], head["max_batch"]
    fp32 = [r for r in sat if r.get("precision", "fp32") == "fp32" and r.get("overlap", True)
            and r.get("batch_wait", "continuous") == "continuous" and r.get("device", "cpu") == "cpu"]
    one = _find(fp32, backend=b, replicas=1, threads=1, max_batch=mb, per_entry=1)
    two = _find(fp32, backend=b, replicas=2, threads=1, max_batch=mb, per_entry=1)
    multi = next((r for r in fp32 if r["backend"] == b and r["replicas"] == 2 and r.get("per_entry", 1) > 1), None)
    int8 = next((r for r in sat if r.get("precision") == "int8"), None)
    model1 = _find(mo, backend=b, threads=1, batch=mb, processes=1)
    model2 = _find(mo, backend=b, threads=1, batch=mb, processes=2)
    tutorial = _find(naive, backend="torch")
    out: list[dict[str, Any]] = []

    def add(name: str, target: str, value: float | None, ok: bool | None, detail: str) -> None:
        out.append({"measure": name, "target": target, "value": None if value is None else round(value, 3),
                    "pass": ok, "detail": detail})

    def at(load: float) -> list[dict[str, Any]]:
        return [p for p in ol if abs(p["load"] - load) < 1e-6]

    default_cfg = ol[0]["config"] if ol else ""  # the first policy is the worker's defaults
    for p in at(0.5):
        v = p["e2e_ms"]["p99"]
        main = p["config"] == default_cfg
        add(f"e2e p99 at 50 % load, open loop ({p['config']}{', the default' if main else ''})", "≤ 10 ms" if main else "info",
            v, bool(v <= 10.0) if main else None, f"{p['windows']} windows at {p['rate_achieved']}/s")
    for p in at(0.1):
        v = p["e2e_ms"]["p50"]
        main = p["config"] == default_cfg
        add(f"e2e p50 at 10 % load ({p['config']}{', the default' if main else ''})", "≤ 2 ms" if main else "info",
            v, bool(v <= 2.0) if main else None, f"{p['windows']} windows at {p['rate_achieved']}/s")
    r2 = _ratio(two, _model_ref(two, model2))
    add("saturated pipeline ÷ model-only, 2 replicas vs 2 model processes, single-window entries", "≥ 0.9", r2,
        None if r2 is None else r2 >= 0.9, f"pipeline {two and two['windows_per_s']}/s vs {_model_ref(two, model2)}/s")
    rm = _ratio(multi, _model_ref(multi, model2))
    add(f"the same with multi-window entries ({head.get('per_entry', 64)} per entry)", "≥ 0.95", rm,
        None if rm is None else rm >= 0.95, f"pipeline {multi and multi['windows_per_s']}/s vs {_model_ref(multi, model2)}/s")
    for row in plumb:
        single = row["per_entry"] == 1
        best = max((r["windows_per_s"] for r in plumb if r["per_entry"] == row["per_entry"]), default=0)
        if row["windows_per_s"] != best:
            continue
        add(f"plumbing ceiling: null model, one Redis, {'single-window' if single else str(row['per_entry']) + '-window'} "
            f"entries (best of 1-2 processes)", "≥ 40 000" if single else "≥ 200 000", row["windows_per_s"],
            row["windows_per_s"] >= (40_000 if single else 200_000),
            f"{row['procs']} process(es): worker {row['worker_cpu_us_per_window']} µs + redis-server "
            f"{row['redis_cpu_us_per_window']} µs CPU per window")
    one_proc = next((r for r in plumb if r["per_entry"] == 1 and r["procs"] == 1), None)
    if one_proc is not None:
        w, rd = one_proc["worker_cpu_us_per_window"], one_proc["redis_cpu_us_per_window"]
        add("worker CPU per single-window entry, null model (plumbing, 1 process)", "≤ 5 µs", w, w <= 5.0,
            "issue 28: 14.35 µs on the machine that filed it; this machine's before/after: results/bench/hotpath-ab.md")
        add("redis-server CPU per single-window entry (plumbing, 1 process)", "≤ 5 µs", rd, rd <= 5.0,
            "issue 28: 6.91 µs on the machine that filed it")
    srv = doc.get("server")
    if srv:
        add("server scenario: largest Poisson load (fraction of capacity) with p99 ≤ 2 full-batch forward passes",
            "≥ 0.8", srv["server_fraction"], srv["server_fraction"] >= 0.8,
            f"capacity {srv['capacity']['windows_per_s']}/s under the generator, bound {srv['bound_ms']} ms "
            f"(replica pinned to CPU {srv['pinned']['worker']}, Redis + generator to {srv['pinned']['redis_generator_reader']})")
        q = srv["p99_over_p50_at_0.3"]
        add("server scenario: p99 ÷ p50 at 0.3 of capacity", "≤ 2", q, None if q is None else q <= 2.0, "Poisson arrivals")
    add("GPU machine, end to end, multi-window entries", "≥ 100 000", None, None,
        "not measured here: scripts/device-check.sh writes results/bench-gpu/ on a CUDA machine")
    r1 = _ratio(one, _model_ref(one, model1))
    add("saturated pipeline ÷ model-only (1 replica, 1 thread, same batch)", "info", r1, None,
        f"{b}, batch {mb}: pipeline {one and one['windows_per_s']}/s vs model {_model_ref(one, model1)}/s")
    if int8 is not None:
        ri = _ratio(int8, two["windows_per_s"] if two else None)
        add("int8 pipeline ÷ fp32 pipeline (2 replicas, saturated)", "info", ri, None,
            f"{int8['windows_per_s']}/s vs {two and two['windows_per_s']}/s")
    for c in doc.get("classify", []):
        add(f"classify round trip, one window per call, at {c['load']:.0%} load ({c['config']})", "info",
            c["round_trip_ms"]["p99"], None,
            f"p50 {c['round_trip_ms']['p50']} ms, p99 {c['round_trip_ms']['p99']} ms over {c['calls']} calls "
            f"(the tutorial reports a 53 ms P99 for one window at a time)")
    best_sat = max(sat, key=lambda s: s["windows_per_s"]) if sat else None
    r3 = _ratio(best_sat, tutorial["windows_per_s"] if tutorial else None)
    add("saturated pipeline ÷ naive worker", "≥ 20×", r3, None if r3 is None else r3 >= 20,
        f"best pipeline ({best_sat and best_sat['label']}) {best_sat and best_sat['windows_per_s']}/s vs naive torch "
        f"{tutorial and tutorial['windows_per_s']}/s")
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
                    ["config", "windows/s", "windows per forward pass (mean / max)", "forward ms per batch (median)",
                     "replicas serving", "model-only right before/after"],
                    [[s["label"], f"{s['windows_per_s']:.0f}", f"{s['mean_batch']} / {s.get('max_batch_seen', '?')}",
                      s.get("infer_ms_median", ""),
                      s["replicas_serving"], s.get("model_only_adjacent_windows_per_s", "")] for s in doc["saturated"]])
    lines += _table("Plumbing ceiling (the real loop in burst mode, null model, one Redis)",
                    ["processes", "windows per entry", "max batch (windows)", "windows/s", "worker CPU µs/window",
                     "redis-server CPU µs/window", "mean windows per batch"],
                    [[p["procs"], p["per_entry"], p["max_batch"], f"{p['windows_per_s']:.0f}",
                      p["worker_cpu_us_per_window"], p["redis_cpu_us_per_window"], p["mean_batch"]]
                     for p in doc.get("plumbing", [])])
    srv = doc.get("server")
    if srv:
        lines += _table(f"Server scenario (Poisson arrivals, 1 replica {srv['config']}, capacity "
                        f"{srv['capacity']['windows_per_s']:.0f}/s under the generator, bound {srv['bound_ms']} ms)",
                        ["fraction", "target/s", "offered/s", "windows", "p50 ms", "p99 ms", "p99/p50", "mean batch",
                         "within bound", "generator µs/window"],
                        [[p["fraction"], f"{p['rate_target']:.0f}", f"{p['rate_offered']:.0f}", p["windows"],
                          p["e2e_ms"]["p50"], p["e2e_ms"]["p99"], p["p99_over_p50"], p["mean_batch"],
                          "yes" if p["within_bound"] else "no", p["generator_cpu_us_per_window"]]
                         for p in srv["points"]])
    lines += _table("Request/response: Producer.classify (one window per call, own reply stream) under background load",
                    ["config", "load", "background windows/s", "calls", "round trip p50 ms", "p95", "p99", "max"],
                    [[c["config"], f"{c['load']:.0%}", f"{c['rate_target']:.0f}", c["calls"],
                      *(c["round_trip_ms"][k] for k in ("p50", "p95", "p99", "max"))] for c in doc.get("classify", [])])
    lines += _table("Naive worker (COUNT 1, one forward, XADD, XACK)", ["backend", "windows/s"],
                    [[n["backend"], f"{n['windows_per_s']:.0f}"] for n in doc["naive"]])
    lines += _table("Model only (in-process forward, serving predictor)",
                    ["backend", "precision", "threads", "processes", "batch", "windows/s", "call p50 ms", "CPU µs/window"],
                    [[r["backend"], r.get("precision", "fp32"), r["threads"], r["processes"], r["batch"], f"{r['windows_per_s']:.0f}",
                      r["latency_ms_p50"], r["cpu_us_per_window"]] for r in doc["model_only"]])
    lines += _table("Pipeline, open loop",
                    ["config", "load", "sent/s", "load generator CPU", "e2e p50", "p95", "p99", "max", "queued",
                     "batch wait", "inference", "decode+encode", "publish", "mean batch"],
                    [[p["config"], f"{p['load']:.0%}", f"{p['rate_achieved']:.0f}",
                      f"{p.get('load_generator_cpu_share', 0):.0%}", *(p["e2e_ms"][k] for k in
                      ("p50", "p95", "p99", "max")), *(p["breakdown_ms_mean"][k] for k in
                      ("queued", "batch_wait", "inference", "decode_encode", "publish")), p["batch"]["mean"]]
                     for p in doc["open_loop"]])
    lines += ["", "Latencies in ms; breakdown columns are means; e2e is stamped by a results reader on arrival. "
              "Load generator CPU: the publishing process's CPU time over its run, as a share of all the machine's "
              "cores.", ""]
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
        for prec in ("fp32", "int8"):
            rows = [r for r in doc["model_only"] if r["backend"] == backend and r["threads"] == 1 and r["processes"] == 1
                    and r.get("precision", "fp32") == prec]
            if rows:
                ax.plot([r["batch"] for r in rows], [r["windows_per_s"] for r in rows], "o-", label=f"{backend} {prec}, 1 thread")
    for s in doc["saturated"]:
        if s["replicas"] == 1 and s["threads"] == 1 and s.get("per_entry", 1) == 1:
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
