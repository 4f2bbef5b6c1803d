"""The accuracy benchmark's work, side by side: one 1-NN DTW baseline per task and one training run per
(task, seed), spread over ``jobs`` processes of ``threads`` CPU threads each.

Small networks use two single-threaded processes better than one two-threaded one (a training step is
mostly short, sequential kernels), so ``bigru-train accuracy --jobs 2 --threads 1`` fills a 2-core
machine. Each run's seconds are its own wall time, measured in its process.
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from training.experiments.baseline import describe, dtw_1nn_accuracy, task_data


@dataclass(frozen=True)
class Plan:
    """What to run: tasks with their seeds, and the synthetic task's and baseline's sizes."""

    datasets: Path
    seeds: dict[str, int]
    n: int
    test_n: int
    dtw_max_test: int
    baseline: bool
    threads: int


def _init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def task_info(plan: Plan, name: str) -> dict[str, Any]:
    """The task's data description and (unless skipped) its 1-NN DTW baseline."""
    train, test = task_data(name, plan.datasets, plan.n, plan.test_n)
    info: dict[str, Any] = {"data": describe(train, test), "baseline": None}
    if plan.baseline:
        info["baseline"] = dtw_1nn_accuracy(train, test, parallel=plan.threads > 1, max_test=plan.dtw_max_test)
        print(json.dumps({"task": name, "dtw_1nn": info["baseline"]}), file=sys.stderr, flush=True)
    return info


def train_run(plan: Plan, name: str, seed: int) -> dict[str, Any]:
    """One training run of ``bigru-train``'s defaults on ``name`` with ``seed``, scored on its test split."""
    from training.experiments.tasks import Task, measure
    from training.train import TrainConfig

    task = Task(name, n=plan.n, test_n=plan.test_n) if name == "synthetic" else Task(name)
    t1 = time.perf_counter()
    r = measure(task, plan.datasets, {}, TrainConfig(seed=seed), refit=True)
    r["seconds"] = time.perf_counter() - t1
    print(json.dumps({k: r.get(k) for k in ("task", "seed", "test_accuracy", "epochs", "seconds_per_epoch", "seconds")}),
          file=sys.stderr, flush=True)
    return r


def run_all(plan: Plan, jobs: int) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Every baseline and training run of ``plan``: the runs (in task, seed order) and the per-task info."""
    if jobs <= 1:
        _init(plan.threads)
        tasks = {name: task_info(plan, name) for name in plan.seeds}
        runs = [train_run(plan, name, seed) for name, k in plan.seeds.items() for seed in range(k)]
        return runs, tasks
    # spawn, not fork: the parent has torch's thread pools loaded
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_init, initargs=(plan.threads,)) as pool:
        info: dict[str, Future[dict[str, Any]]] = {name: pool.submit(task_info, plan, name) for name in plan.seeds}
        trained = [pool.submit(train_run, plan, name, seed) for name, k in plan.seeds.items() for seed in range(k)]
        return [f.result() for f in trained], {name: f.result() for name, f in info.items()}
