"""Matplotlib figures for a training run and for experiment tables (Agg backend, PNG files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    """Lay out, write as PNG and close ``fig``."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def plot_history(history: list[dict[str, float]], out_dir: Path) -> list[Path]:
    """``loss.png`` (train and validation loss) and ``accuracy.png`` (validation accuracy) per epoch."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [h["train_loss"] for h in history], label="train")
    scored = [h for h in history if "val_loss" in h]  # a fixed-budget run validates only now and then
    ax.plot([h["epoch"] for h in scored], [h["val_loss"] for h in scored], label="validation")
    ax.set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
    ax.legend()
    paths.append(_save(fig, out_dir / "loss.png"))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([h["epoch"] for h in scored], [100 * h["val_accuracy"] for h in scored], label="validation")
    if history and "train_accuracy" in history[0]:
        ax.plot(epochs, [100 * h["train_accuracy"] for h in history], label="train")
    ax.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    ax.legend()
    paths.append(_save(fig, out_dir / "accuracy.png"))
    return paths


def plot_confusion(matrix: list[list[int]], classes: list[str], path: Path, title: str = "Confusion matrix") -> Path:
    """A confusion matrix heat map with counts in the cells."""
    plt = _pyplot()
    m = np.asarray(matrix)
    size = max(4.0, 0.6 * len(classes) + 2.5)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    thresh = m.max() / 2 if m.size else 0
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", color="white" if m[i, j] > thresh else "black")
    return _save(fig, path)


def plot_bars(groups: dict[str, dict[str, tuple[float, float]]], ylabel: str, title: str, path: Path) -> Path:
    """Grouped bars with error bars: ``groups[group][series] = (mean, std)``."""
    plt = _pyplot()
    names = list(groups)
    series = list(next(iter(groups.values())))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(names) + 2), 4))
    for k, s in enumerate(series):
        xs = np.arange(len(names)) + (k - (len(series) - 1) / 2) * width
        ax.bar(xs, [groups[g][s][0] for g in names], width, yerr=[groups[g][s][1] for g in names], label=s, capsize=3)
    ax.set_xticks(range(len(names)), names)
    ax.set(ylabel=ylabel, title=title)
    ax.legend()
    return _save(fig, path)
