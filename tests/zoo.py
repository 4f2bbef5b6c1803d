"""Tiny checkpoints for the hot-reload tests: good successors, a wrong feature count, shuffled labels.

Trained once per session (about a second each) after the session's base checkpoint, so their
versions sort after it in publish order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from training.model.checkpoint import FILENAME, load_checkpoint, save_checkpoint
from training.model.data import Dataset, stratified_split, synthetic
from training.model.network import ModelConfig
from training.train import TrainConfig, fit


@dataclass(frozen=True)
class Zoo:
    """Checkpoint roots (each with a ``latest`` pointer) and their versions."""

    base: Path
    good: list[Path]
    wrong_features: Path
    shuffled: Path

    @staticmethod
    def version(root: Path) -> str:
        """The version a root's ``latest`` names."""
        return (root / "latest").read_text().strip()

    @staticmethod
    def data(root: Path) -> bytes:
        """Checkpoint bytes of a root's latest version."""
        return (root / Zoo.version(root) / FILENAME).read_bytes()


def _train(ds: Dataset, seed: int, out: Path, hidden: int = 8) -> Path:
    tr, va = stratified_split(ds.y, 0.25, seed)
    cfg = ModelConfig(input_dim=ds.n_features, num_classes=len(ds.classes), hidden=hidden, layers=1)
    res = fit(ds.subset(tr), ds.subset(va), cfg, TrainConfig(epochs=4, seed=seed, golden_size=200, batch_size=32))
    save_checkpoint(res.checkpoint, out)
    return out


_CACHE: dict[Path, Zoo] = {}


def build(base: Path, tmp: Path) -> Zoo:
    """Train (once per ``base``) three good successors and two bad checkpoints under ``tmp``."""
    if base in _CACHE:
        return _CACHE[base]
    import torch

    torch.set_num_threads(1)
    load_checkpoint(base)  # the base exists before anything here is versioned
    good = [_train(synthetic(800, 20, seed=10 + i), 10 + i, tmp / f"good{i}", hidden=8 + 2 * i) for i in range(3)]
    ds = synthetic(400, 20, seed=20)
    three = Dataset([np.repeat(x, 3, axis=1) for x in ds.X], ds.y, ds.classes, "synthetic-F3")
    wrong = _train(three, 20, tmp / "wrong_features")
    ds = synthetic(800, 20, seed=21)
    ds.y = np.random.default_rng(21).permutation(ds.y)  # labels unrelated to the windows
    shuffled = _train(ds, 21, tmp / "shuffled")
    zoo = Zoo(base, good, wrong, shuffled)
    _CACHE[base] = zoo
    return zoo


@pytest.fixture(scope="session", name="zoo")
def zoo_fixture(checkpoint_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    """Tiny successors of the session checkpoint (trained after it, so they sort after it)."""
    return build(checkpoint_root, tmp_path_factory.mktemp("zoo"))
