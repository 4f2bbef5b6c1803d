"""``python -m training.experiments.ablation``: one candidate recipe over the development benchmark, beside 1-NN DTW.

The experiment driver behind ``results/ablation-21.md``: trains a recipe (model and optimiser
overrides on top of ``bigru-train``'s defaults, as JSON) once per task and seed, and prints one
line per run (test accuracy, 1-NN DTW, seconds) and a summary: mean accuracy over all tasks and
over the sets with published figures, wins / ties / losses against DTW, median and largest
training seconds. DTW accuracies are cached in ``--dtw-cache`` (they do not depend on the recipe);
rows are appended to ``--out`` (JSON lines) so that recipes can be compared afterwards with
``--summarize``. Nothing here is tuned per dataset: a recipe applies to every task alike.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from training.experiments.accuracy import INCEPTION_TIME, task_names

_TIE = 1e-9


def _dtw(name: str, datasets: Path, cache: Path, n: int, test_n: int) -> float | None:
    """The task's 1-NN DTW test accuracy, from ``cache`` or computed and stored there (None for synthetic)."""
    if name == "synthetic":
        return None
    known: dict[str, float] = json.loads(cache.read_text()) if cache.is_file() else {}
    if name not in known:
        from training.experiments.baseline import dtw_1nn_accuracy, task_data

        train, test = task_data(name, datasets, n, test_n)
        known[name] = dtw_1nn_accuracy(train, test)["accuracy"]
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(known, indent=1, sort_keys=True) + "\n")
    return known[name]


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean accuracy (all tasks; the published sets), wins/ties/losses against DTW, seconds (median, max)."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_task.setdefault(r["task"], []).append(r)
    acc = {t: float(np.mean([r["test_accuracy"] for r in rs])) for t, rs in by_task.items()}
    dtw = {t: rs[0]["dtw"] for t, rs in by_task.items() if rs[0]["dtw"] is not None}
    wins = sum(acc[t] > d + _TIE for t, d in dtw.items())
    ties = sum(abs(acc[t] - d) <= _TIE for t, d in dtw.items())
    published = [t for t in acc if INCEPTION_TIME.get(t) is not None]
    secs = [r["seconds"] for r in rows]
    parts: dict[str, float] = {}
    if published and all(r.get("parts") for r in rows):  # each half of a model with the random-convolution branch
        for half in ("network", "rocket"):
            parts[f"{half}_mean_published"] = float(np.mean(
                [np.mean([r["parts"][half] for r in by_task[t]]) for t in published]))
    return {**parts, "tasks": len(acc), "mean": float(np.mean(list(acc.values()))),
            "mean_published": float(np.mean([acc[t] for t in published])) if published else None,
            "published_sets": len(published), "wins": wins, "ties": ties, "losses": len(dtw) - wins - ties,
            "median_s": float(np.median(secs)), "max_s": float(np.max(secs)), "total_s": float(np.sum(secs))}


def main(argv: list[str] | None = None) -> int:
    """Run one recipe (or ``--summarize`` the recipes recorded in ``--out``)."""
    p = argparse.ArgumentParser(prog="python -m training.experiments.ablation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default="default", help="the recipe's name in the output rows")
    p.add_argument("--model", default="{}", help="JSON ModelConfig overrides")
    p.add_argument("--train", default="{}", help="JSON TrainConfig overrides")
    p.add_argument("--tasks", default=None, help="comma-separated tasks (default: all)")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--n", type=int, default=6000, help="synthetic training + validation windows")
    p.add_argument("--test-n", type=int, default=20000, help="synthetic test windows")
    p.add_argument("--datasets", type=Path, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("results/ablation-26/runs.jsonl"))
    p.add_argument("--dtw-cache", type=Path, default=Path("results/ablation-26/dtw.json"))
    p.add_argument("--summarize", action="store_true", help="print the summary of every recipe in --out and exit")
    args = p.parse_args(argv)
    if args.summarize:
        rows = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]
        for name in dict.fromkeys(r["recipe"] for r in rows):
            print(json.dumps({"recipe": name, **summarize([r for r in rows if r["recipe"] == name])}))
        return 0
    import torch

    from training.experiments.tasks import Task, default_datasets, measure
    from training.train import TrainConfig

    torch.set_num_threads(args.threads)
    datasets = args.datasets or default_datasets()
    names = args.tasks.split(",") if args.tasks else task_names(datasets)
    model, train = json.loads(args.model), json.loads(args.train)
    rows = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in names:
        dtw = _dtw(name, datasets, args.dtw_cache, args.n, args.test_n)
        task = Task(name, n=args.n, test_n=args.test_n) if name == "synthetic" else Task(name)
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            r = measure(task, datasets, model, TrainConfig(**{**train, "seed": seed}), refit=True)
            row = {"recipe": args.name, "task": name, "seed": seed, "test_accuracy": r["test_accuracy"], "dtw": dtw,
                   "seconds": time.perf_counter() - t0, "epochs": r["epochs"], "params": r["params"],
                   "model": model, "train": train, "parts": r.get("parts")}
            rows.append(row)
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{args.name:>12} {name:>28} s{seed} acc {100 * r['test_accuracy']:6.2f} "
                  f"dtw {'-' if dtw is None else f'{100 * dtw:6.2f}'} {row['seconds']:6.1f}s ep {r['epochs']}",
                  file=sys.stderr, flush=True)
    print(json.dumps({"recipe": args.name, **summarize(rows)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
