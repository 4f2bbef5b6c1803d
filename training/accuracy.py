"""``bigru-train accuracy``: the accuracy benchmark, with the training defaults on every task.

Writes ``accuracy.md``, ``accuracy.json`` and ``accuracy.png`` under ``--results``. Nothing is
tuned per task: every dataset gets ``bigru-train``'s defaults (architecture, schedule, epochs,
refit); only the synthetic task's data size is a benchmark parameter.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from training.reports import environment, md_table, mean_std, pct, write
from training.tasks import Task, default_datasets, measure
from training.train import TrainConfig

TARGETS = {"synthetic": 0.979, "ItalyPowerDemand": 0.965, "GunPoint": 0.99, "BasicMotions": 1.0}
REFERENCE = {
    "synthetic": "Bayes-optimal 98.27 %; the tutorial reports 93.6 %",
    "ItalyPowerDemand": "InceptionTime 96.0 %",
    "GunPoint": "InceptionTime 99.5 %",
    "BasicMotions": "most published methods 100 %",
}


def main(argv: list[str]) -> int:
    """The ``accuracy`` subcommand."""
    p = argparse.ArgumentParser(prog="bigru-train accuracy", description=__doc__)
    p.add_argument("--tasks", default=",".join(TARGETS))
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--n", type=int, default=6000, help="synthetic training + validation windows")
    p.add_argument("--test-n", type=int, default=20000, help="synthetic held-out test windows")
    p.add_argument("--datasets", type=Path, default=None, help="folder with <name>/<name>_TRAIN.ts (default ../shared/datasets)")
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--merge", action="store_true", help="keep the other tasks' runs from an existing accuracy.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    datasets = args.datasets or default_datasets()
    defaults: dict[str, Any] = {}
    runs: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for name in args.tasks.split(","):
        task = Task(name, n=args.n, test_n=args.test_n) if name == "synthetic" else Task(name)
        for seed in range(args.seeds):
            r = measure(task, datasets, defaults, TrainConfig(seed=seed), refit=True)
            runs.append(r)
            print(json.dumps({k: r[k] for k in ("task", "seed", "test_accuracy", "epochs", "seconds_per_epoch")}),
                  file=sys.stderr, flush=True)
    seconds = time.perf_counter() - t0
    old = args.results / "accuracy.json"
    if args.merge and old.is_file():
        prev = json.loads(old.read_text())
        kept = [r for r in prev["runs"] if r["task"] not in {r["task"] for r in runs}]
        runs, seconds = kept + runs, seconds + float(prev.get("seconds", 0))
    write_report(runs, args, seconds)
    print(json.dumps({r["task"]: r["test_accuracy"] for r in runs} if args.seeds == 1 else {"runs": len(runs)}))
    return 0


def write_report(runs: list[dict[str, Any]], args: argparse.Namespace, seconds: float) -> None:
    """accuracy.md/.json/.png."""
    from training.plots import plot_bars

    args.results.mkdir(parents=True, exist_ok=True)
    rows: list[list[str]] = []
    groups: dict[str, dict[str, tuple[float, float]]] = {}
    for name in dict.fromkeys(r["task"] for r in runs):
        rs = [r for r in runs if r["task"] == name]
        acc = [r["test_accuracy"] for r in rs]
        m, s = mean_std(acc)
        target = TARGETS.get(name)
        met = "n/a" if target is None else ("yes" if m >= target - 1e-9 else "no")
        rows.append([name, f"{rs[0]['test_windows']:,}", pct(acc), f"{100 * target:.1f}" if target else "-", met,
                     REFERENCE.get(name, ""), f"{sum(r['epochs'] for r in rs) / len(rs):.0f}"])
        groups[name] = {"measured": (100 * m, 100 * s), "target": (100 * (target or 0), 0.0)}
    plot_bars(groups, "test accuracy (%)", "Accuracy with the default settings", args.results / "accuracy.png")
    md = [
        "# Accuracy benchmark\n",
        f"Command: `bigru-train accuracy --seeds {args.seeds} --n {args.n} --test-n {args.test_n}`"
        f"{' (tasks run separately and merged with --merge)' if args.merge else ''} "
        f"({seconds / 60:.1f} min on {environment()['threads']} CPU thread(s)). Every task uses the same "
        "`bigru-train` defaults; UCR/UEA tasks use the archive's own train/test split, the synthetic task a "
        f"fresh held-out draw of {args.test_n:,} windows.\n",
        md_table(["task", "test windows", "test accuracy (%)", "target (%)", "met", "for reference", "epochs"], rows),
        "\n![accuracy](accuracy.png)\n",
    ]
    write(args.results, "accuracy", "\n".join(md), {"runs": runs, "args": {k: str(v) for k, v in vars(args).items()},
                                                    "seconds": seconds, "environment": environment()})
