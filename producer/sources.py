"""Window sources for the producer CLI: the synthetic task and dataset files. No torch here.

Both come from the model layer's numpy-only dataset code (:mod:`training.model.data`,
:mod:`training.model.formats`), so the producer publishes exactly the windows training sees.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from training.model import data
from training.model.formats import load_dataset


@dataclass
class LabeledWindow:
    """A window with an optional known label (sent as ``meta.label``)."""

    x: np.ndarray
    label: str | None = None


def _windows(ds: data.Dataset, count: int) -> Iterator[LabeledWindow]:
    """``count`` windows of ``ds`` in order (cycling past its end), missing values as 0."""
    for i in range(count):
        j = i % len(ds)
        yield LabeledWindow(np.nan_to_num(ds.X[j]), ds.classes[int(ds.y[j])])


def synthetic(count: int, length: int = 20, seed: int = 0) -> Iterator[LabeledWindow]:
    """``count`` windows of the tutorial's task (:func:`training.model.data.synthetic`), labelled "0" or "1"."""
    return _windows(data.synthetic(max(count, 2), length, seed), count)


def from_file(path: str, count: int | None = None) -> Iterator[LabeledWindow]:
    """Windows of a ``.npz``, UCR ``.ts`` / ``.tsv`` or ``.csv`` file, cycling when ``count`` exceeds the file."""
    ds = load_dataset(path)
    return _windows(ds, len(ds) if count is None else count)
