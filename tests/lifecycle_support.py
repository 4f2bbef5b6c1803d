"""Checkpoints and windows for the lifecycle tests (drift, shadow scoring, tracing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.checkpoint import save_checkpoint
from training.data import Dataset, stratified_split
from training.model import ModelConfig
from training.train import TrainConfig, fit

#: Three features with different distributions: class-dependent normal, wide normal, exponential.
N_FEATURES = 3


def windows(n: int, seed: int, length: int = 20, flip: bool = False) -> tuple[list[np.ndarray], np.ndarray]:
    """``n`` windows of the three-feature task and their labels (``flip``: the class signal reversed)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    sign = -1.0 if flip else 1.0
    xs = [np.stack([rng.normal(sign * (0.5 if c == 0 else -0.5), 1.0, length), rng.normal(2.0, 3.0, length),
                    rng.exponential(1.0, length)], axis=1).astype(np.float32) for c in y]
    return xs, y.astype(np.int64)


def train(out: Path, seed: int, n: int = 600, flip: bool = False, drift: bool = True) -> Path:
    """A tiny BiGRU on the three-feature task saved under ``out`` (``drift`` False: no drift statistics,
    as a checkpoint from before they existed)."""
    import torch

    torch.set_num_threads(1)
    xs, y = windows(n, seed, flip=flip)
    ds = Dataset(xs, y, ["a", "b"], "lifecycle-f3")
    tr, va = stratified_split(ds.y, 0.25, seed)
    res = fit(ds.subset(tr), ds.subset(va), ModelConfig(input_dim=N_FEATURES, num_classes=2, hidden=8, layers=1),
              TrainConfig(epochs=3, seed=seed, golden_size=100))
    ckpt = res.checkpoint
    if not drift:
        ckpt.drift = None
    save_checkpoint(ckpt, out)
    return out
