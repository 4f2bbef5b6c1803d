"""The soak's verdicts, markdown and figure, from its result document (:mod:`bench.soak`).

RSS flatness is judged per process incarnation (a pid: the supervisor, each replica, and the
replica the supervisor restarted after the kill counted apart from the one killed), on that
process' own clock: the mean RSS of its last minute of load against the mean of its second minute
(the first holds the warm-up). A process seen for less than :data:`MIN_JUDGED_S` is not judged:
its second and last minutes would nearly touch, so the comparison could not show a slow leak.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: Shortest life (seconds under load) of a process whose RSS flatness is judged.
MIN_JUDGED_S = 180.0
#: Allowed change of the last minute's mean RSS against the second minute's.
RSS_TOLERANCE = 0.05


def incarnations(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Per process (name and pid) under load: its RSS samples (own age in s, KiB) and the flatness figures."""
    procs: dict[tuple[str, int], list[tuple[float, int]]] = {}
    for s in doc["samples"]:
        if s["phase"] != "load":
            continue
        for name, pid in s["pids"].items():
            kb = s["rss_kb"].get(name)
            if kb is not None:
                procs.setdefault((name, pid), []).append((s["t"], kb))
    out = []
    served = _event(doc, "reload_served")
    for (name, pid), pts in procs.items():
        t0, t1 = pts[0][0], pts[-1][0]
        before = [kb for t, kb in pts if served and t < served["t"] - served["after_s"]]
        after = [kb for t, kb in pts if served and t >= served["t"] + 10]
        second = [kb for t, kb in pts if 60 <= t - t0 < 120]
        last = [kb for t, kb in pts if t >= t1 - 60]
        row: dict[str, Any] = {"name": name, "pid": pid, "from_s": t0, "to_s": t1, "span_s": round(t1 - t0, 1),
                               "first_mib": round(pts[0][1] / 1024, 1), "max_mib": round(max(kb for _, kb in pts) / 1024, 1),
                               "reload_step_mib": round((after[0] - before[-1]) / 1024, 1) if before and after else None,
                               "second_min_mib": None, "last_min_mib": None, "change": None, "pass": None}
        if t1 - t0 >= MIN_JUDGED_S and second and last:
            a, b = sum(second) / len(second), sum(last) / len(last)
            row.update(second_min_mib=round(a / 1024, 1), last_min_mib=round(b / 1024, 1), change=round(b / a - 1, 4),
                       **{"pass": abs(b / a - 1) <= RSS_TOLERANCE})
        out.append(row)
    return sorted(out, key=lambda r: (r["name"], r["from_s"]))


def _event(doc: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((e for e in doc["events"] if e["event"] == name), None)


def bounds(doc: dict[str, Any]) -> dict[str, int]:
    """The cap each stream must stay under: results and dead letters their approximate caps plus two
    stream nodes (``MAXLEN ~`` trims whole nodes only); the input stream what two trimming periods
    bring at the soak's rate plus two nodes (each replica trims acknowledged entries every period)."""
    node = int(doc.get("stream_node_max_entries", 100))
    settings, plan = doc["worker_settings"], doc["plan"]
    return {"results": settings["results_maxlen"] + 2 * node, "dead": settings["dead_maxlen"] + 2 * node,
            "input": int(2 * doc["rate"] * plan["maintenance_s"]) + 2 * node}


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target with its measured value and pass (True/False) or not judged (None)."""
    out: list[dict[str, Any]] = []

    def add(measure: str, target: str, value: Any, ok: bool | None, detail: str = "") -> None:
        out.append({"measure": measure, "target": target, "value": value, "pass": ok, "detail": detail})

    for row in incarnations(doc):
        label = f"RSS flat: {row['name']} (pid {row['pid']}, {row['from_s']:.0f}-{row['to_s']:.0f} s)"
        if row["pass"] is None:
            add(label, "last minute within ±5 % of the second", None, None,
                f"not judged: under load {row['span_s']:.0f} s < {MIN_JUDGED_S:.0f} s")
        else:
            add(label, "last minute within ±5 % of the second", f"{row['change']:+.1%}", row["pass"],
                f"{row['second_min_mib']} → {row['last_min_mib']} MiB (max {row['max_mib']})")
    end = doc["samples"][-1] if doc["samples"] else {}
    drained = _event(doc, "drained")
    add("pending after the producer stops", "0", end.get("pending"), end.get("pending") == 0 and not end.get("lag"),
        f"lag {end.get('lag')}; drained {drained['after_s']} s after the last publish" if drained else "drain timed out")
    b = bounds(doc)
    for name in ("input", "results", "dead"):
        peak = max((s["len"][name] for s in doc["samples"]), default=0)
        add(f"{name} stream bounded", f"≤ {b[name]}", peak, peak <= b[name], f"peak over {len(doc['samples'])} samples")
    a, rd = doc["audit"], doc["reader"]
    add("lost (published ids without a result)", "0", a["lost"], a["lost"] == 0,
        f"{a['with_result']}/{a['published']} ids served; {a['not_ok']} results not ok")
    add("duplicates (surplus results per id)", "0", a["duplicates"], a["duplicates"] == 0,
        f"{a['strays']} results for ids never published")
    add("results reader saw every result entry", "all", f"{rd['entries_read']}/{rd['entries_added']}", rd["complete"],
        "read continuously; the stream itself is capped, so a gap would hide results")
    peak_c = max((s["consumers"] for s in doc["samples"]), default=0)
    reps = doc["plan"]["replicas"]
    add("consumers in the group", f"≤ {reps}", peak_c, peak_c <= reps, "peak (a restarted replica reuses its name)")
    rs, rst = _event(doc, "reload_served"), _event(doc, "restarted")
    add("hot reload: every replica serves the new version", "yes", rs and f"{rs['after_s']} s", rs is not None,
        f"version {doc['versions']['reload']}")
    add("killed replica restarted by the supervisor", "yes", rst and f"{rst['after_s']} s", rst is not None,
        rst and f"new pid {rst['pid']}, serving {rst['model']}" or "")
    add("pool exit code after SIGTERM", "0", doc["pool_exit_code"], doc["pool_exit_code"] == 0)
    return out


def verdict(t: dict[str, Any]) -> str:
    """pass / MISS / not judged."""
    return "not judged" if t["pass"] is None else ("pass" if t["pass"] else "MISS")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join("" if c is None else str(c) for c in row) + " |" for row in rows]]


def markdown(doc: dict[str, Any], plot: str | None) -> str:
    """The run as markdown."""
    plan, m = doc["plan"], doc["machine"]
    sat = doc["saturated_windows_per_s"]
    rate = (f"{doc['rate']:.0f} windows/s ({plan['load']:.0%} of the calibrated saturated {sat:.0f}/s)" if sat
            else f"{doc['rate']:.0f} windows/s (fixed)")
    lines = ["# Soak", "",
             f"`python -m bench.soak --minutes {plan['minutes']:g}`: {plan['replicas']} replicas, load {rate}, "
             f"{plan['minutes']:g} min; hot reload at 1/3, SIGKILL of one replica at 2/3 (the supervisor restarts it). "
             f"Results cap {doc['worker_settings']['results_maxlen']}, input trimming every "
             f"{plan['maintenance_s']:g} s. {m['cpus']} CPUs, load average {m['loadavg_before']} before, "
             f"{m['loadavg_after']} after. Run took {doc['seconds']:.0f} s.", "", "## Targets", ""]
    lines += _table(["measure", "target", "measured", "verdict", "detail"],
                    [[t["measure"], t["target"], t["value"], verdict(t) if t["pass"] is not False else "**MISS**",
                      t["detail"]] for t in doc["targets"]])
    lines += ["", f"RSS rule: each process (pid) is judged on its own clock while the producer runs: the mean RSS "
              f"of its last minute against the mean of its second minute (the first minute holds the warm-up), "
              f"within ±{RSS_TOLERANCE:.0%}. The replica the supervisor restarts is a new process and is judged "
              f"on its own minutes; the killed one up to its kill. A process under load for less than "
              f"{MIN_JUDGED_S:.0f} s is not judged. Lost and duplicates come from a reader that follows the "
              "results stream from its first entry and counts results per client id. The step across the hot "
              "reload: the last sample before the reload against the first one 10 s after every replica served "
              "the new version.", "", "## Processes", ""]
    lines += _table(["process", "pid", "under load (s)", "first MiB", "2nd minute MiB", "last minute MiB", "max MiB",
                     "step across the hot reload MiB"],
                    [[r["name"], r["pid"], f"{r['from_s']:.0f}-{r['to_s']:.0f}", r["first_mib"], r["second_min_mib"],
                      r["last_min_mib"], r["max_mib"], r["reload_step_mib"]] for r in incarnations(doc)])
    lines += ["", "## Events", ""]
    lines += _table(["t (s)", "event", "detail"],
                    [[e["t"], e["event"], ", ".join(f"{k}={v}" for k, v in e.items() if k not in ("t", "event"))]
                     for e in doc["events"]])
    lines += ["", "## Samples (about one a minute)", ""]
    rows, next_t = [], 0.0
    for i, s in enumerate(doc["samples"]):
        if s["t"] >= next_t or i == len(doc["samples"]) - 1:
            next_t = s["t"] + 60
            rows.append([s["t"], s["phase"], s["published_per_s"], s["results_per_s"], s["pending"], s["lag"],
                         s["len"]["input"], s["len"]["results"], s["len"]["dead"], s["consumers"],
                         " ".join(f"{k}={v and round(v / 1024)}" for k, v in s["rss_kb"].items()),
                         " ".join(sorted(set(s["serving"].values())))])
    lines += _table(["t (s)", "phase", "published/s", "results/s", "pending", "lag", "input", "results", "dead",
                     "consumers", "RSS MiB", "serving"], rows)
    if plot:
        lines += ["", f"![soak]({Path(plot).name})"]
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], path: Path) -> str | None:
    """RSS per process, pending/lag, stream lengths and throughput over time, events marked; None
    without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ss = doc["samples"]
    t = [s["t"] for s in ss]
    fig, axes = plt.subplots(4, 1, figsize=(9, 11), sharex=True)
    ax = axes[0]
    procs = sorted({(n, p) for s in ss for n, p in s["pids"].items()}, key=lambda k: (k[0], t[0] if t else 0))
    for name, pid in procs:
        pts = [(s["t"], s["rss_kb"][name] / 1024) for s in ss if s["pids"].get(name) == pid and s["rss_kb"].get(name)]
        if pts:
            ax.plot(*zip(*pts), label=f"{name} (pid {pid})")
    ax.set_ylabel("RSS (MiB)")
    ax = axes[1]
    ax.plot(t, [s["pending"] or 0 for s in ss], label="pending")
    ax.plot(t, [s["lag"] or 0 for s in ss], label="lag")
    ax.set_ylabel("entries")
    ax = axes[2]
    b = bounds(doc)
    for i, name in enumerate(("input", "results", "dead")):
        ax.plot(t, [s["len"][name] for s in ss], color=f"C{i}", label=f"{name} stream")
        if name != "dead":
            ax.axhline(b[name], color=f"C{i}", ls=":", lw=0.8, label=f"{name} bound")
    ax.set_ylabel("stream length")
    ax = axes[3]
    ax.plot(t, [s["published_per_s"] or 0 for s in ss], label="published/s")
    ax.plot(t, [s["results_per_s"] or 0 for s in ss], label="results/s")
    ax.set_ylabel("windows/s")
    ax.set_xlabel("seconds since the load started")
    marks = {"reload": ("hot reload", "C2"), "kill": ("kill -9 replica", "C3"), "load_end": ("producer stops", "C7")}
    for a in axes:
        for e in doc["events"]:
            if e["event"] in marks:
                a.axvline(e["t"], color=marks[e["event"]][1], ls="--", lw=1, label=marks[e["event"]][0])
        a.legend(fontsize=7, loc="upper left")
    axes[0].set_title(f"Soak: {doc['plan']['replicas']} replicas at {doc['rate']:.0f} windows/s")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)
