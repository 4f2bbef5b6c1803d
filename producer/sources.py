"""Window sources for the producer CLI: the synthetic task and dataset files. No torch here."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass
class LabeledWindow:
    """A window with an optional known label (sent as ``meta.label``)."""

    x: np.ndarray
    label: str | None = None


def synthetic(count: int, length: int = 20, seed: int = 0) -> Iterator[LabeledWindow]:
    """The tutorial's two-class Gaussian task (class 0 ~ N(0.5, 1), class 1 ~ N(-0.5, 1.2))."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        y = int(rng.integers(0, 2))
        loc, scale = (0.5, 1.0) if y == 0 else (-0.5, 1.2)
        x = (rng.standard_normal((length, 1)) * scale + loc).astype(np.float32)
        yield LabeledWindow(x, str(y))


def from_file(path: str, count: int | None = None) -> Iterator[LabeledWindow]:
    """Windows of a ``.npz`` or UCR ``.ts`` file, cycling when ``count`` exceeds the file."""
    from training.formats import load_dataset  # numpy-only loaders; no torch import

    ds = load_dataset(path)
    n = len(ds) if count is None else count
    for i in range(n):
        j = i % len(ds)
        yield LabeledWindow(np.nan_to_num(ds.X[j]), ds.classes[int(ds.y[j])])
