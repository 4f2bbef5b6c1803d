"""Datasets: the tutorial's synthetic task and helpers shared by the loaders."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Dataset:
    """Windows (each [T_i, F]) with integer labels and class names."""

    X: list[np.ndarray]
    y: np.ndarray
    classes: list[str]
    name: str = ""
    meta: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.X)

    @property
    def n_features(self) -> int:
        """Feature count F (the same for every window)."""
        return int(self.X[0].shape[1])

    def subset(self, idx: np.ndarray) -> Dataset:
        """The windows at ``idx``."""
        return Dataset([self.X[i] for i in idx], self.y[idx], self.classes, self.name, dict(self.meta))


def synthetic(n: int = 2000, length: int = 20, seed: int = 0) -> Dataset:
    """The tutorial's task: class 0 ~ N(0.5, 1.0), class 1 ~ N(-0.5, 1.2), balanced, 1 feature."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    rng.shuffle(y)
    loc = np.where(y == 0, 0.5, -0.5)[:, None]
    scale = np.where(y == 0, 1.0, 1.2)[:, None]
    x = (rng.standard_normal((n, length)) * scale + loc).astype(np.float32)
    return Dataset([row[:, None] for row in x], y.astype(np.int64), ["0", "1"], name=f"synthetic-T{length}")


def normalization(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std over every real timestep of ``ds`` (NaN ignored)."""
    allx = np.concatenate(ds.X, axis=0)
    mean = np.nanmean(allx, axis=0).astype(np.float32)
    std = np.nanstd(allx, axis=0).astype(np.float32)
    std[~np.isfinite(std) | (std < 1e-6)] = 1.0
    mean[~np.isfinite(mean)] = 0.0
    return mean, std


def fingerprint(ds: Dataset) -> str:
    """sha256 over the windows and labels, to tie a checkpoint to its training data."""
    h = hashlib.sha256()
    for x in ds.X:
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
    """Indices (train, held-out) with ``frac`` of each class held out."""
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


class DataError(ValueError):
    """A dataset file is malformed; the message names the file, line and what was expected."""


def load_ts(path: str) -> Dataset:
    """Load a UCR/UEA ``.ts`` file (dimensions separated by ``:``, label last, ``?`` as NaN)."""
    X: list[np.ndarray] = []
    labels: list[str] = []
    declared: list[str] | None = None
    in_data = False
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not in_data:
                low = line.lower()
                if low.startswith("@classlabel"):
                    parts = line.split()
                    if len(parts) > 2 and parts[1].lower() == "true":
                        declared = parts[2:]
                elif low.startswith("@data"):
                    in_data = True
                elif not line.startswith("@"):
                    raise DataError(f"{path}:{lineno}: expected a header line starting with '@' before @data")
                continue
            dims = line.split(":")
            if len(dims) < 2:
                raise DataError(f"{path}:{lineno}: expected 'values:...:label', found no ':'")
            labels.append(dims[-1].strip())
            try:
                cols = [np.array([float(v) if v != "?" else np.nan for v in d.split(",")], dtype=np.float32) for d in dims[:-1]]
            except ValueError as e:
                raise DataError(f"{path}:{lineno}: expected comma-separated numbers or '?': {e}") from e
            t = max(len(c) for c in cols)
            if any(len(c) != t for c in cols):
                raise DataError(f"{path}:{lineno}: dimensions have different lengths {[len(c) for c in cols]}")
            X.append(np.stack(cols, axis=1))
    if not X:
        raise DataError(f"{path}: no @data rows")
    if len({x.shape[1] for x in X}) != 1:
        raise DataError(f"{path}: cases have different numbers of dimensions")
    classes = declared or sorted(set(labels))
    index = {c: i for i, c in enumerate(classes)}
    missing = sorted(set(labels) - set(index))
    if missing:
        raise DataError(f"{path}: labels {missing} not declared in @classLabel {classes}")
    return Dataset(X, np.array([index[v] for v in labels], dtype=np.int64), classes, name=path)


def load_npz(path: str) -> Dataset:
    """Load ``.npz`` with ``X`` ([N,T,F] or an object array of [T_i,F]), optional ``y`` and ``classes``."""
    with np.load(path, allow_pickle=False) as z:
        if "X" not in z:
            raise DataError(f"{path}: expected an array named 'X'")
        Xa = z["X"]
        y = z["y"].astype(np.int64) if "y" in z else np.zeros(len(Xa), dtype=np.int64)
        classes = [str(c) for c in z["classes"]] if "classes" in z else [str(i) for i in range(max(2, int(y.max()) + 1))]
    if Xa.ndim == 2:
        Xa = Xa[:, :, None]
    if Xa.ndim != 3:
        raise DataError(f"{path}: X must be [N, T, F], got shape {Xa.shape}")
    return Dataset([x.astype(np.float32) for x in Xa], y, classes, name=path)


def load_dataset(path: str) -> Dataset:
    """Load a dataset file by extension (``.ts`` or ``.npz``)."""
    if path.endswith(".ts"):
        return load_ts(path)
    if path.endswith(".npz"):
        return load_npz(path)
    raise DataError(f"{path}: unsupported extension (expected .ts or .npz)")
