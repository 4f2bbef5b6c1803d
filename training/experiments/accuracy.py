"""``bigru-train accuracy``: the accuracy benchmark, with the training defaults on every task.

Runs the synthetic task and every dataset folder found in the datasets directory
(``<name>/<name>_TRAIN.ts`` + ``_TEST.ts``, and the UCR 2018 ``.tsv`` sets in ``ucr2018/<name>/``),
beside a 1-nearest-neighbour DTW baseline computed in the same run (:mod:`training.experiments.baseline`): the
original six tasks with ``--seeds`` seeds, the development sets with ``--dev-seeds``. Writes
``accuracy.md``, ``accuracy.json`` and ``accuracy.png`` under ``--results``, with the mean over the
sets that have published figures beside InceptionTime's and HIVE-COTE 2's means, wins / ties /
losses against DTW and training seconds. Nothing is tuned per task: every dataset gets
``bigru-train``'s defaults (architecture, schedule, steps); only the synthetic task's data size is a
benchmark parameter.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from training.experiments.baseline import MAX_TEST_WINDOWS, discover_datasets
from training.experiments.reports import environment, md_table, mean_std, pct, write

# Fixed targets: mean test accuracy over the seeds. Every task must also beat its 1-NN DTW baseline.
TARGETS = {"synthetic": 0.98, "ItalyPowerDemand": 0.965, "GunPoint": 1.0, "BasicMotions": 1.0, "ACSF1": 0.91}
#: Sets with a same-split InceptionTime figure and no fixed target: within this of it.
SAME_SPLIT_MARGIN = 0.03
# Targets relative to the task's 1-NN DTW baseline (no published figure to aim at): DTW + margin.
DTW_MARGIN = {"PickupGestureWiimoteZ": 0.05}
PUBLISHED = {
    "synthetic": "Bayes limit 98.27 %; tutorial 93.6 %",
    "ItalyPowerDemand": "InceptionTime 96.0 %, HIVE-COTE 2 96.3 %",
    "GunPoint": "InceptionTime 99.5 %, HIVE-COTE 2 99.8 %",
    "BasicMotions": "close to 100 % (most methods)",
    "ACSF1": "InceptionTime 82.7 %, HIVE-COTE 2 84.8 %",
    "PickupGestureWiimoteZ": "not in aeon's results files",
}
#: Published figures (aeon's results files, Middlehurst et al. 2024; ../shared/README.md) for the ucr2018
#: sets: InceptionTime and HIVE-COTE 2, each as the mean of 30 resamples and on resample 0 (the archive's
#: own train/test split, the one a run here uses); None where the results files have no figure.
_UCR2018 = {
    "Chinatown": (96.5, 96.9, 98.5, 98.3), "DistalPhalanxOutlineCorrect": (81.5, 82.8, 78.6, 77.5),
    "MedicalImages": (79.6, 81.1, 79.6, 80.7), "ECG200": (89.7, 89.6, 91.0, 86.0), "CBF": (99.6, 99.8, 99.9, 100.0),
    "FaceFour": (93.9, 97.9, 95.5, 100.0), "Lightning7": (82.1, 79.3, 79.5, 80.8), "CricketX": (85.3, 84.1, 84.9, 82.8),
    "Adiac": (82.2, 79.4, 84.4, 80.6), "Fish": (97.3, 98.2, 98.3, 99.4), "Beef": (68.2, 72.1, 66.7, 83.3),
    "InsectWingbeatSound": (62.7, 65.7, 63.7, 66.1), "Ham": (85.0, 86.0, 72.4, 72.4),
    "Computers": (86.6, 86.2, 80.8, 76.0), "HouseTwenty": (95.3, 98.4, 91.6, 97.5),
    "PigArtPressure": (93.3, 98.2, 100.0, 100.0), "EOGHorizontalSignal": (88.4, 81.8, 63.0, 65.2),
    "Fungi": (None, None, None, None), "GesturePebbleZ1": (None, None, None, None),
    "AllGestureWiimoteX": (None, None, None, None), "DodgerLoopGame": (None, None, None, None),
}
INCEPTION_TIME: dict[str, float | None] = {k: v[0] for k, v in _UCR2018.items()}
HIVE_COTE2: dict[str, float | None] = {k: v[1] for k, v in _UCR2018.items()}
#: The same methods on the archive's own split (resample 0): InceptionTime, HIVE-COTE 2.
SAME_SPLIT: dict[str, tuple[float, float]] = {
    **{k: (v[2], v[3]) for k, v in _UCR2018.items() if v[2] is not None and v[3] is not None},
    "ItalyPowerDemand": (96.6, 97.0), "GunPoint": (100.0, 100.0), "ACSF1": (91.0, 91.0),
}
PUBLISHED.update({k: "not in aeon's results files" if it is None else f"InceptionTime {it} %, HIVE-COTE 2 {hc} %"
                  for k, (it, hc, _, _) in _UCR2018.items()})
# Unequal-length / missing-value sets without published figures: DTW + 3 points.
DTW_MARGIN.update({k: 0.03 for k in ("GesturePebbleZ1", "AllGestureWiimoteX", "DodgerLoopGame")})
#: The tasks the benchmark started with (measured with ``--seeds``; the development sets with ``--dev-seeds``).
ORIGINAL = ("synthetic", "ItalyPowerDemand", "GunPoint", "BasicMotions", "ACSF1", "PickupGestureWiimoteZ")
_EPS = 1e-9


README_BEGIN = "<!-- accuracy-table:begin (copied from results/accuracy.md by bigru-train accuracy --readme) -->"
README_END = "<!-- accuracy-table:end -->"


def report_table(md: str) -> str:
    """The first markdown table of an ``accuracy.md``."""
    lines = md.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith("|")), None)
    if start is None:
        raise ValueError("no table in the accuracy report")
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "\n".join(lines[start:end])


def readme_table(text: str) -> str:
    """The table between the README's accuracy markers."""
    if README_BEGIN not in text or README_END not in text:
        raise ValueError(f"README has no {README_BEGIN} ... {README_END} block")
    return text.split(README_BEGIN, 1)[1].split(README_END, 1)[0].strip()


def sync_readme(readme: Path, accuracy_md: Path) -> None:
    """Replace the README's accuracy block with the table of ``accuracy_md``."""
    text = readme.read_text()
    readme_table(text)  # the markers must exist
    head, rest = text.split(README_BEGIN, 1)
    tail = rest.split(README_END, 1)[1]
    readme.write_text(f"{head}{README_BEGIN}\n{report_table(accuracy_md.read_text())}\n{README_END}{tail}")


def task_names(datasets: Path) -> list[str]:
    """``synthetic`` and every dataset folder under ``datasets``."""
    return ["synthetic", *discover_datasets(datasets)]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bigru-train accuracy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default=None, help="comma-separated tasks (default: synthetic + every dataset folder)")
    p.add_argument("--seeds", type=int, default=3, help="training runs per original task (seeds 0..N-1)")
    p.add_argument("--dev-seeds", type=int, default=1, help="training runs per development (ucr2018) task")
    p.add_argument("--n", type=int, default=6000, help="synthetic training + validation windows")
    p.add_argument("--test-n", type=int, default=20000, help="synthetic held-out test windows")
    p.add_argument("--datasets", type=Path, default=None, help="folder with <name>/<name>_TRAIN.ts (default ../shared/datasets)")
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--threads", type=int, default=1, help="CPU threads per job for training (and the DTW distance matrix)")
    p.add_argument("--jobs", type=int, default=1, help="training runs and baselines side by side, in this many processes")
    p.add_argument("--merge", action="store_true", help="keep the other tasks' runs from an existing accuracy.json")
    p.add_argument("--no-baseline", action="store_true", help="skip the 1-NN DTW baseline (quick runs)")
    p.add_argument("--readme", type=Path, default=None,
                   help=f"also copy the table into this file between {README_BEGIN} and {README_END}")
    p.add_argument("--dtw-max-test", type=int, default=MAX_TEST_WINDOWS,
                   help="score the DTW baseline on a seeded subsample of at most this many test windows")
    return p


def main(argv: list[str]) -> int:
    """The ``accuracy`` subcommand."""
    p = _parser()
    args = p.parse_args(argv)
    if args.seeds < 1 or args.dev_seeds < 1:
        p.error("--seeds and --dev-seeds must be at least 1")
    from training.experiments.jobs import Plan, run_all
    from training.experiments.tasks import default_datasets

    datasets = args.datasets or default_datasets()
    available = task_names(datasets)
    names = args.tasks.split(",") if args.tasks else available
    unknown = [n for n in names if n not in available]
    if unknown:
        p.error(f"unknown task(s) {unknown}; found {available} (datasets folder {datasets})")
    t0 = time.perf_counter()
    plan = Plan(datasets, {n: args.seeds if n in ORIGINAL else args.dev_seeds for n in names}, args.n, args.test_n,
                args.dtw_max_test, not args.no_baseline, args.threads)
    runs, tasks = run_all(plan, args.jobs)
    seconds = time.perf_counter() - t0
    old = args.results / "accuracy.json"
    if args.merge and old.is_file():
        runs, tasks, seconds = merge(json.loads(old.read_text()), runs, tasks, seconds)
    md_path, _ = write_report(runs, tasks, args, seconds)
    if args.readme:
        sync_readme(args.readme, md_path)
    print(json.dumps({n: summary(runs, tasks, n)["mean"] for n in tasks}))
    return 0


def merge(prev: dict[str, Any], runs: list[dict[str, Any]], tasks: dict[str, dict[str, Any]],
          seconds: float) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]], float]:
    """This run's tasks added to a previous ``accuracy.json``: its other tasks are kept, and its baseline
    is reused for a rerun task whose baseline was skipped (``--no-baseline``)."""
    fresh = {r["task"] for r in runs}
    kept = [r for r in prev.get("runs", []) if r["task"] not in fresh]
    old_tasks: dict[str, dict[str, Any]] = prev.get("tasks", {})
    merged: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys([*(r["task"] for r in kept), *tasks]):
        info = dict(tasks.get(name) or old_tasks.get(name) or {})
        if info.get("baseline") is None and (old_tasks.get(name) or {}).get("baseline") is not None:
            info["baseline"] = old_tasks[name]["baseline"]
        merged[name] = info
    return kept + runs, merged, seconds + float(prev.get("seconds", 0))


def target_for(name: str, dtw: float | None) -> float | None:
    """The fixed target, or DTW + margin for a task measured against its baseline (None when unknown)."""
    if name in TARGETS:
        return TARGETS[name]
    if name in DTW_MARGIN and dtw is not None:
        return dtw + DTW_MARGIN[name]
    if name in SAME_SPLIT:
        return SAME_SPLIT[name][0] / 100 - SAME_SPLIT_MARGIN
    return None


def verdict(mean: float, target: float | None, dtw: float | None) -> str:
    """``yes`` when the mean reaches the target and beats the DTW baseline (each where known), else ``no``."""
    checks = []
    if target is not None:
        checks.append(mean >= target - _EPS)
    if dtw is not None:
        checks.append(mean > dtw + _EPS)
    if not checks:
        return "n/a"
    return "yes" if all(checks) else "no"


def summary(runs: list[dict[str, Any]], tasks: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    """Mean/std test accuracy, baseline, target and verdict of one task."""
    rs = [r for r in runs if r["task"] == name]
    acc = [float(r["test_accuracy"]) for r in rs]
    m, s = mean_std(acc) if acc else (float("nan"), float("nan"))
    b = (tasks.get(name) or {}).get("baseline")
    dtw = None if b is None else float(b["accuracy"])
    target = target_for(name, dtw)
    return {"runs": len(rs), "accuracies": acc, "mean": m, "std": s, "dtw": dtw, "target": target,
            "met": verdict(m, target, dtw) if acc else "n/a",
            "seconds": float(np.mean([r["seconds"] for r in rs if "seconds" in r])) if any("seconds" in r for r in rs) else None,
            "epochs": float(np.mean([r["epochs"] for r in rs])) if rs else None}


def _fmt_target(name: str, target: float | None) -> str:
    if target is None:
        return f"DTW + {100 * DTW_MARGIN[name]:.0f} (no baseline)" if name in DTW_MARGIN else "above DTW"
    if name in SAME_SPLIT and name not in TARGETS:
        return f"≥ {100 * target:.1f} (InceptionTime, this split, - {100 * SAME_SPLIT_MARGIN:.0f})"
    if name in DTW_MARGIN:
        return f"≥ {100 * target:.1f} (DTW + {100 * DTW_MARGIN[name]:.0f})"
    return f"≥ {100 * target:.1f}"


def _fmt_dtw(b: dict[str, Any] | None) -> str:
    if b is None:
        return "not run"
    cell = f"{100 * b['accuracy']:.2f}"
    if b.get("subsampled"):
        cell += f" ({b['test_windows']:,} of {b['test_total']:,} test windows, seeded sample)"
    return cell


def _row(name: str, runs: list[dict[str, Any]], tasks: dict[str, dict[str, Any]]) -> list[str]:
    s = summary(runs, tasks, name)
    info = tasks.get(name) or {}
    d, b = info.get("data"), info.get("baseline")
    rs = [r for r in runs if r["task"] == name]
    if d:
        span = str(d["min_length"]) if d["min_length"] == d["max_length"] else f"{d['min_length']}–{d['max_length']}"
        sizes, chans, classes = f"{d['train']:,} / {d['test']:,}", str(d["channels"]), str(d["classes"])
    else:
        span, chans, classes = "-", "-", "-"
        sizes = f"- / {rs[0]['test_windows']:,}" if rs and "test_windows" in rs[0] else "-"
    return [name, span, sizes, chans, classes, pct(s["accuracies"]) if rs else "-", _fmt_dtw(b),
            f"{b['seconds']:.1f}" if b else "-", PUBLISHED.get(name, "-"), _fmt_same_split(name), _fmt_target(name, s["target"]), s["met"],
            f"{s['seconds']:.0f}" if s["seconds"] is not None else "-", f"{s['epochs']:.0f}" if s["epochs"] is not None else "-",
            str(s["runs"])]


def _fmt_same_split(name: str) -> str:
    if name not in SAME_SPLIT:
        return "-"
    it, hc = SAME_SPLIT[name]
    return f"{it:.1f} / {hc:.1f}"


def totals(runs: list[dict[str, Any]], tasks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Benchmark-wide figures: the mean over the sets with published figures (ours, InceptionTime's,
    HIVE-COTE 2's), wins / ties / losses against 1-NN DTW, targets met, training seconds per run."""
    sums = {n: summary(runs, tasks, n) for n in tasks if any(r["task"] == n for r in runs)}
    published = [n for n in sums if INCEPTION_TIME.get(n) is not None]
    dtw = {n: s for n, s in sums.items() if s["dtw"] is not None}
    secs = [float(r["seconds"]) for r in runs if "seconds" in r]
    return {
        "published_sets": len(published),
        "mean_published": float(np.mean([sums[n]["mean"] for n in published])) if published else None,
        "inception_time_mean": float(np.mean([INCEPTION_TIME[n] for n in published])) / 100 if published else None,
        "hive_cote2_mean": float(np.mean([HIVE_COTE2[n] for n in published])) / 100 if published else None,
        "inception_time_same_split_mean": float(np.mean([SAME_SPLIT[n][0] for n in published])) / 100 if published else None,
        "hive_cote2_same_split_mean": float(np.mean([SAME_SPLIT[n][1] for n in published])) / 100 if published else None,
        "below_inception_time_same_split": sorted(n for n in published if sums[n]["mean"] * 100 < SAME_SPLIT[n][0] - 3),
        "dtw_wins": sum(s["mean"] > s["dtw"] + _EPS for s in dtw.values()),
        "dtw_ties": sum(abs(s["mean"] - s["dtw"]) <= _EPS for s in dtw.values()),
        "dtw_losses": sum(s["mean"] < s["dtw"] - _EPS for s in dtw.values()),
        "met": sum(s["met"] == "yes" for s in sums.values()), "scored": sum(s["met"] != "n/a" for s in sums.values()),
        "tasks": len(sums), "median_seconds": float(np.median(secs)) if secs else None,
        "max_seconds": float(np.max(secs)) if secs else None,
    }


def overview(runs: list[dict[str, Any]], tasks: dict[str, dict[str, Any]]) -> list[str]:
    """The report's summary lines (see :func:`totals`)."""
    t = totals(runs, tasks)
    lines = []
    if t["mean_published"] is not None:
        lines.append(f"- **mean over the {t['published_sets']} sets with published figures**: "
                     f"{100 * t['mean_published']:.1f} % on the archive's split; on the same split InceptionTime "
                     f"{100 * t['inception_time_same_split_mean']:.1f} %, HIVE-COTE 2 {100 * t['hive_cote2_same_split_mean']:.1f} % "
                     f"(means of 30 resamples: {100 * t['inception_time_mean']:.1f} %, {100 * t['hive_cote2_mean']:.1f} %).")
        lines.append(f"- **more than 3 points below InceptionTime on the same split**: "
                     f"{', '.join(t['below_inception_time_same_split']) or 'none'}.")
    lines.append(f"- **against 1-NN DTW** (same run): {t['dtw_wins']} wins, {t['dtw_ties']} ties, {t['dtw_losses']} losses "
                 f"over {t['dtw_wins'] + t['dtw_ties'] + t['dtw_losses']} tasks; targets met on {t['met']} of {t['scored']}.")
    if t["median_seconds"] is not None:
        lines.append(f"- **training seconds per run**: median {t['median_seconds']:.0f} s, largest {t['max_seconds']:.0f} s.")
    return lines


def plot_accuracy(runs: list[dict[str, Any]], tasks: dict[str, dict[str, Any]], path: Path) -> Path:
    """Grouped bars per task: the model (mean ± std over seeds), 1-NN DTW and the target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(tasks)
    sums = [summary(runs, tasks, n) for n in names]
    series = [("BiGRU (mean ± std)", [s["mean"] for s in sums], [s["std"] for s in sums]),
              ("1-NN DTW", [np.nan if s["dtw"] is None else s["dtw"] for s in sums], None),
              ("target", [np.nan if s["target"] is None else s["target"] for s in sums], None)]
    values = [100 * v for _, vs, _ in series for v in vs if np.isfinite(v)]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(names) + 2), 4.5))
    width = 0.8 / len(series)
    for k, (label, vs, err) in enumerate(series):
        xs = np.arange(len(names)) + (k - (len(series) - 1) / 2) * width
        yerr = None if err is None else [100 * e for e in err]
        ax.bar(xs, [100 * v for v in vs], width, yerr=yerr, label=label, capsize=3)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set(ylabel="test accuracy (%)", title="Accuracy with the default settings, beside 1-NN DTW",
           ylim=(max(0.0, (min(values) if values else 0.0) - 5), 101))
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(runs: list[dict[str, Any]], tasks: dict[str, dict[str, Any]], args: argparse.Namespace,
                 seconds: float) -> tuple[Path, Path]:
    """accuracy.md/.json/.png under ``args.results`` from the training runs and per-task data/baseline info.

    ``runs``: :func:`training.experiments.tasks.measure` dicts (``task``, ``test_accuracy``, ``epochs``, plus
    ``seconds``); ``tasks``: per task ``{"data": describe(...), "baseline": dtw_1nn_accuracy(...) | None}``.
    """
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    tasks = dict(tasks)
    for name in dict.fromkeys(r["task"] for r in runs):
        tasks.setdefault(name, {"data": None, "baseline": None})
    env = {**environment(), "cpu_count": os.cpu_count()}
    seeds, dev_seeds = getattr(args, "seeds", 1), getattr(args, "dev_seeds", 1)
    cmd = (f"bigru-train accuracy --seeds {seeds} --dev-seeds {dev_seeds} --n {getattr(args, 'n', 6000)} "
           f"--test-n {getattr(args, 'test_n', 20000)} --jobs {args.jobs} --threads {args.threads}")
    if getattr(args, "no_baseline", False):
        cmd += " --no-baseline"
    dtw_s = sum(float(t["baseline"]["seconds"]) for t in tasks.values() if t.get("baseline"))
    headers = ["task", "T (min–max)", "train / test", "channels", "classes", "test accuracy (%), mean ± std over seeds",
               "1-NN DTW (%)", "DTW s", "published", "InceptionTime / HIVE-COTE 2, this split (%)", "target (%)", "met", "train s / run", "epochs", "seeds"]
    md = [
        "# Accuracy benchmark\n",
        f"Command: `{cmd}`{' (tasks run separately and merged with --merge)' if getattr(args, 'merge', False) else ''}. "
        "Every task uses the same `bigru-train` defaults (architecture, schedule, step budget); nothing is tuned "
        "per task. The tasks are the synthetic task and every dataset folder found in the datasets directory; "
        "UCR/UEA tasks use the archive's own train/test split, the synthetic task a fresh held-out draw of "
        f"{getattr(args, 'test_n', 20000):,} windows.\n",
        f"Total wall time {seconds / 60:.1f} min (1-NN DTW {dtw_s / 60:.1f} min of it, counted in its process) with "
        f"{args.jobs} job(s) side by side of {args.threads} thread(s) each, machine with "
        f"{env['cpu_count']} CPU(s).\n",
        md_table(headers, [_row(n, runs, tasks) for n in tasks]),
        "",
        *overview(runs, tasks),
        "",
        f"- **test accuracy**: mean ± (population) std over seeds 0..N-1 ({seeds} for the original six tasks, "
        f"{dev_seeds} for the development sets); a seed changes the initialization, the batch order and, for the "
        "synthetic task, the training draw. *train s / run*: wall seconds of one training run (training and test "
        "scoring), mean over seeds.",
        "- **1-NN DTW**: unconstrained DTW (dtaidistance, C; squared-Euclidean point cost; dependent DTW over all "
        "channels for multivariate data), nearest neighbour over the whole training split, on raw values (no "
        "normalization); windows of unequal length are compared as they are; missing values are filled by linear "
        "interpolation in time, carried flat at the ends. Deterministic, computed once per task. Synthetic: the "
        f"training draw of seed 0; a test set over {getattr(args, 'dtw_max_test', MAX_TEST_WINDOWS):,} windows is "
        "scored on a fixed seeded subsample (runtime).",
        "- **met**: `yes` when the mean reaches the target *and* is above the 1-NN DTW baseline"
        + (" (the baseline was not run here, so only the fixed targets were checked)" if getattr(args, "no_baseline", False) else "")
        + ". **published**: mean of 30 resamples (aeon's results files, Middlehurst et al. 2024); **this split**: "
        "the same methods on resample 0, the archive's own train/test split that every run here uses (the "
        "like-for-like comparison).",
        "\n![accuracy](accuracy.png)\n",
    ]
    plot_accuracy(runs, tasks, results / "accuracy.png")
    data = {"runs": runs, "tasks": {n: {**t, **{k: v for k, v in summary(runs, tasks, n).items() if k != "accuracies"}}
                                    for n, t in tasks.items()},
            "totals": totals(runs, tasks),
            "args": {k: str(v) for k, v in vars(args).items()}, "seconds": seconds, "environment": env}
    return write(results, "accuracy", "\n".join(md), data)
