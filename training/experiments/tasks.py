"""Benchmark tasks shared by ``compare`` and ``accuracy``: what to train on and how to score it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.datasets import dataset_split_files, default_datasets
from training.run import RunOptions, evaluate_checkpoint, load_run_data, model_config, part_accuracies, train_model
from training.train import TrainConfig

__all__ = ["Task", "default_datasets", "measure"]


@dataclass(frozen=True)
class Task:
    """A dataset with its held-out test set: ``synthetic`` or a UCR/UEA name with _TRAIN/_TEST files."""

    name: str
    n: int = 0  # synthetic: training + validation windows
    test_n: int = 0  # synthetic: test windows
    length: int = 20

    def options(self, datasets: Path) -> RunOptions:
        """Run options for this task (data files under ``datasets/<name>/``)."""
        if self.name == "synthetic":
            return RunOptions(data="synthetic", n=self.n, test_n=self.test_n, length=self.length, plots=False)
        train, test = dataset_split_files(self.name, datasets)
        return RunOptions(data=str(train), test=str(test), plots=False)


def measure(task: Task, datasets: Path, model: dict[str, Any], tcfg: TrainConfig, refit: bool,
            validate: bool = False) -> dict[str, Any]:
    """Train once on ``task`` and score on its test set: accuracy, params, seconds per epoch, epochs.

    With ``refit`` and not ``validate`` (``bigru-train``'s default) the model trains once on all of the
    training file and ``val_accuracy`` is None.
    """
    opts = task.options(datasets)
    data = load_run_data(opts, tcfg.seed)
    mcfg = model_config(data.train, model)
    validated = validate or not refit
    res, ckpt = train_model(data, mcfg, tcfg, refit, validate=validated)
    assert data.test is not None
    test = evaluate_checkpoint(ckpt, data.test, tcfg.device)
    return {
        "task": task.name,
        "seed": tcfg.seed,
        "test_accuracy": test["accuracy"],
        "test_windows": test["windows"],
        "val_accuracy": res.checkpoint.metrics["val_accuracy"] if validated else None,
        "params": int(res.checkpoint.metrics["params"]),
        "seconds_per_epoch": res.seconds_per_epoch,
        "epochs": len(res.history),
        "best_epoch": res.best_epoch,
        "confusion": test["confusion"],
        "parts": part_accuracies(ckpt, data.test, tcfg.device),
        "seconds_per_step": res.checkpoint.metrics.get("seconds_per_step"),
        "config": mcfg.to_dict(),
    }
