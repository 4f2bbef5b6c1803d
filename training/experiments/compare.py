"""``bigru-train compare``: the tutorial's table (LSTM, BiLSTM, GRU, BiGRU) measured here, several seeds.

Writes ``compare.md``, ``compare.json`` and ``compare.png`` (test accuracy, mean ± std) under
``--results``. Every variant uses the same defaults as ``bigru-train``; only the cell and the
direction change.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from training.experiments.reports import environment, md_table, mean_std, pct, write
from training.experiments.tasks import Task, default_datasets, measure
from training.train import TrainConfig

VARIANTS: dict[str, dict[str, Any]] = {
    "LSTM": {"cell": "lstm", "bidirectional": False},
    "BiLSTM": {"cell": "lstm", "bidirectional": True},
    "GRU": {"cell": "gru", "bidirectional": False},
    "BiGRU": {"cell": "gru", "bidirectional": True},
}


def main(argv: list[str]) -> int:
    """The ``compare`` subcommand."""
    p = argparse.ArgumentParser(prog="bigru-train compare", description=__doc__)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--n", type=int, default=2000, help="synthetic training + validation windows")
    p.add_argument("--test-n", type=int, default=20000, help="synthetic test windows")
    p.add_argument("--tasks", default="synthetic,ItalyPowerDemand", help="comma-separated: synthetic and/or UCR names")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--epochs", type=int, default=20, help="maximum epochs per run (kept small so the table takes minutes)")
    p.add_argument("--refit", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--datasets", type=Path, default=None, help="folder with <name>/<name>_TRAIN.ts (default ../shared/datasets)")
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    datasets = args.datasets or default_datasets()
    tasks = [Task(t, n=args.n, test_n=args.test_n) if t == "synthetic" else Task(t) for t in args.tasks.split(",") if t]
    runs: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for task in tasks:
        for v in args.variants.split(","):
            for seed in range(args.seeds):
                r = measure(task, datasets, VARIANTS[v], TrainConfig(epochs=args.epochs, seed=seed), args.refit)
                r["variant"] = v
                runs.append(r)
                print(json.dumps({k: r[k] for k in ("task", "variant", "seed", "test_accuracy", "params", "seconds_per_epoch")}),
                      file=sys.stderr, flush=True)
    write_report(runs, tasks, args, time.perf_counter() - t0)
    print(json.dumps({"results": str(args.results / "compare.md"), "runs": len(runs)}))
    return 0


def write_report(runs: list[dict[str, Any]], tasks: list[Task], args: argparse.Namespace, seconds: float) -> None:
    """compare.md/.json/.png from the individual runs."""
    from training.experiments.plots import plot_bars

    variants = args.variants.split(",")
    args.results.mkdir(parents=True, exist_ok=True)
    rows: list[list[str]] = []
    groups: dict[str, dict[str, tuple[float, float]]] = {}
    for task in tasks:
        groups[task.name] = {}
        for v in variants:
            rs = [r for r in runs if r["task"] == task.name and r["variant"] == v]
            acc = [r["test_accuracy"] for r in rs]
            spe = mean_std([r["seconds_per_epoch"] for r in rs])
            rows.append([task.name, v, f"{rs[0]['params']:,}", f"{spe[0]:.3f} ± {spe[1]:.3f}", pct(acc),
                         f"{rs[0]['test_windows']:,}", f"{sum(r['epochs'] for r in rs) / len(rs):.1f}"])
            m, s = mean_std(acc)
            groups[task.name][v] = (100 * m, 100 * s)
    plot_bars(groups, "test accuracy (%)", f"Test accuracy, mean ± std over {args.seeds} seeds", args.results / "compare.png")
    md = [
        "# LSTM vs BiLSTM vs GRU vs BiGRU\n",
        f"Command: `bigru-train compare --seeds {args.seeds} --n {args.n} --test-n {args.test_n} --epochs {args.epochs}"
        f"{' --refit' if args.refit else ''}` ({seconds / 60:.1f} min on {environment()['threads']} CPU thread(s)). "
        "Same `bigru-train` defaults for every variant (the convolutional stem and branch, per-window normalised "
        f"inputs, AdamW + cosine, auto early stopping, refit {'on' if args.refit else 'off'}), with the epoch cap above; "
        "only the recurrent cell and its direction change. Seconds per epoch are wall-clock on a shared CPU.\n",
        md_table(["task", "model", "params", "s/epoch", "test accuracy (%)", "test windows", "epochs"], rows),
        "\n![test accuracy](compare.png)\n",
    ]
    write(args.results, "compare", "\n".join(md), {"runs": runs, "args": {k: str(v) for k, v in vars(args).items()},
                                                  "seconds": seconds, "environment": environment()})
