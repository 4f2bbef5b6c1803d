"""Datasets: the tutorial's synthetic task, splits and normalization (file parsers: :mod:`training.model.formats`).

This module (and :mod:`training.model.formats`) imports only numpy: the producer uses it to read dataset
files without pulling in torch.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class DataError(ValueError):
    """A dataset is malformed or inconsistent; the message names the file, line and what was expected."""


@dataclass
class Dataset:
    """Windows (each [T_i, F], float32, NaN for missing values) with integer labels and class names."""

    X: list[np.ndarray]
    y: np.ndarray
    classes: list[str]
    name: str = ""
    meta: dict[str, str] = field(default_factory=dict)
    labeled: bool = True

    def __len__(self) -> int:
        return len(self.X)

    @property
    def n_features(self) -> int:
        """Feature count F (the same for every window)."""
        return int(self.X[0].shape[1])

    @property
    def lengths(self) -> np.ndarray:
        """Timesteps T_i of every window."""
        return np.fromiter((x.shape[0] for x in self.X), dtype=np.int64, count=len(self.X))

    def subset(self, idx: np.ndarray) -> Dataset:
        """The windows at ``idx``."""
        return Dataset([self.X[i] for i in idx], self.y[idx], self.classes, self.name, dict(self.meta), self.labeled)

    def concat(self, other: Dataset) -> Dataset:
        """This dataset followed by ``other`` (same classes)."""
        if list(other.classes) != list(self.classes):
            raise DataError(f"cannot join datasets with classes {self.classes} and {other.classes}")
        return Dataset(self.X + other.X, np.concatenate([self.y, other.y]), self.classes, self.name, dict(self.meta), self.labeled)

    def summary(self) -> dict[str, Any]:
        """Size, shape and class balance, for logs and metrics files."""
        lengths = self.lengths
        return {
            "name": self.name,
            "windows": len(self),
            "features": self.n_features,
            "min_length": int(lengths.min()),
            "max_length": int(lengths.max()),
            "classes": list(self.classes),
            "class_counts": [int((self.y == c).sum()) for c in range(len(self.classes))],
        }


def synthetic(n: int = 2000, length: int = 20, seed: int = 0) -> Dataset:
    """The tutorial's task: class 0 ~ N(0.5, 1.0), class 1 ~ N(-0.5, 1.2), balanced, 1 feature.

    Every timestep is drawn independently from the class's Gaussian, so the Bayes-optimal rule
    thresholds the summed log-likelihood ratio (98.27 % accuracy at ``length=20``).
    """
    if n < 2 or length < 1:
        raise DataError(f"synthetic data needs n >= 2 and length >= 1, got n={n}, length={length}")
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    rng.shuffle(y)
    loc = np.where(y == 0, 0.5, -0.5)[:, None]
    scale = np.where(y == 0, 1.0, 1.2)[:, None]
    x = (rng.standard_normal((n, length)) * scale + loc).astype(np.float32)
    return Dataset([row[:, None] for row in x], y.astype(np.int64), ["0", "1"], name=f"synthetic-T{length}",
                   meta={"seed": str(seed)})


def fill_missing(x: np.ndarray) -> np.ndarray:
    """A [T, F] window as C-contiguous float64 with NaN filled per channel (linear in time, carried at the ends).

    An entirely missing channel becomes 0; an empty window becomes one timestep of zeros.
    """
    a = np.array(x, dtype=np.float64, order="C", copy=True)
    if a.ndim == 1:
        a = a[:, None]
    if a.shape[0] == 0:
        return np.zeros((1, a.shape[1]), dtype=np.float64)
    t = np.arange(a.shape[0])
    for f in range(a.shape[1]):
        col = a[:, f]
        bad = np.isnan(col)
        if not bad.any():
            continue
        if bad.all():
            col[:] = 0.0
        else:
            col[bad] = np.interp(t[bad], t[~bad], col[~bad])
    return a


def normalization(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std over every real timestep of ``ds`` (NaN ignored)."""
    allx = np.concatenate(ds.X, axis=0)
    with warnings.catch_warnings():  # an all-NaN feature warns; it is handled below
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(allx, axis=0).astype(np.float32)
        std = np.nanstd(allx, axis=0).astype(np.float32)
    std[~np.isfinite(std) | (std < 1e-6)] = 1.0
    mean[~np.isfinite(mean)] = 0.0
    return mean, std


def fingerprint(ds: Dataset) -> str:
    """sha256 over the windows and labels, to tie a checkpoint to its training data."""
    h = hashlib.sha256()
    for x in ds.X:
        h.update(np.asarray(x.shape, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    h.update(np.asarray(ds.y, dtype=np.int64).tobytes())
    return h.hexdigest()


def pad(windows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad windows to [N, T_max, F] with zeros; returns the array and the lengths."""
    lengths = np.array([w.shape[0] for w in windows], dtype=np.int64)
    out = np.zeros((len(windows), int(lengths.max()), windows[0].shape[1]), dtype=np.float32)
    for i, w in enumerate(windows):
        out[i, : w.shape[0]] = w
    return out, lengths


def stratified_split(y: np.ndarray, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, held-out) with ``frac`` of each class held out (at least one when a class has two)."""
    if not 0.0 < frac < 1.0:
        raise DataError(f"held-out fraction must be in (0, 1), got {frac}")
    rng = np.random.default_rng(seed)
    tr, ho = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        k = int(round(len(idx) * frac))
        if len(idx) > 1:
            k = min(max(k, 1), len(idx) - 1)
        ho.append(idx[:k])
        tr.append(idx[k:])
    return np.sort(np.concatenate(tr)), np.sort(np.concatenate(ho))


def align_classes(ds: Dataset, classes: list[str]) -> Dataset:
    """Relabel ``ds`` onto ``classes`` (by name), e.g. a test file onto its training file's classes."""
    if list(ds.classes) == list(classes):
        return ds
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({ds.classes[int(v)] for v in np.unique(ds.y)} - set(index))
    if unknown:
        raise DataError(f"{ds.name}: labels {unknown} do not occur in the training classes {classes}")
    y = np.array([index[ds.classes[int(v)]] for v in ds.y], dtype=np.int64)
    return Dataset(ds.X, y, list(classes), ds.name, dict(ds.meta), ds.labeled)
