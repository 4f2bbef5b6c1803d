"""Training windows from long labelled recordings, split without leakage (``bigru-train --window``).

**Cutting.** Per device, windows of ``window`` samples every ``hop`` samples, starting at the
device's first sample. A window takes the label of its **middle sample** (index ``window // 2``), the
activity it mostly shows when it straddles a change; the stream's segmenter places a window's label
at the same point in time (docs/streams.md).

**Splitting.** Never by random window: overlapping windows share samples, so a random split puts
the neighbours of every test window into training and reports accuracy the stream will never see.
``time`` (default): each device's samples are cut into contiguous blocks, training first, then
validation, then test (``val_fraction`` and ``test_fraction`` of its samples), with a gap of one
window between blocks, and windows are cut inside each block only; no sample of a training window
is within one window of a test sample. ``device``: whole devices go to test (``test_fraction`` of
them, at least one, seeded), the rest are split by time into training and validation.
:func:`random_window_split` is the leaky split, kept for the benchmark's leakage check only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from training.model.data import DataError, Dataset
from training.model.recording import Recording

Split = Literal["time", "device"]


@dataclass(frozen=True)
class Cut:
    """How windows are cut: ``window`` samples every ``hop``."""

    window: int
    hop: int

    def __post_init__(self) -> None:
        if self.window < 2:
            raise DataError(f"window must be >= 2 samples, got {self.window}")
        if not 1 <= self.hop <= self.window:
            raise DataError(f"hop must be between 1 and the window ({self.window}), got {self.hop}")

    def starts(self, n: int) -> np.ndarray:
        """Start rows of the windows inside ``n`` samples."""
        return np.arange(0, max(0, n - self.window + 1), self.hop)


def cut_windows(rec: Recording, cut: Cut, name: str = "") -> Dataset:
    """Every device's windows (in device then time order), each labelled by its middle sample."""
    if rec.y is None:
        raise DataError(f"{rec.name}: the recording has no label column; training needs per-sample labels")
    X: list[np.ndarray] = []
    y: list[int] = []
    for dev in rec.devices:
        part = rec.of_device(dev)
        assert part.y is not None
        for s in cut.starts(len(part)):
            X.append(part.x[s: s + cut.window])
            y.append(int(part.y[s + cut.window // 2]))
    return Dataset(X, np.array(y, np.int64), list(rec.classes), name=name or rec.name,
                   meta={"file": rec.name, "window": str(cut.window), "hop": str(cut.hop)})


def _rows(rec: Recording, rows: np.ndarray) -> Recording:
    return Recording(rec.t_us[rows], rec.x[rows], rec.device[rows], None if rec.y is None else rec.y[rows],
                     rec.classes, rec.channels, rec.name)


def time_blocks(n: int, fractions: tuple[float, ...], gap: int) -> list[np.ndarray]:
    """Row ranges of ``n`` samples cut into contiguous blocks of the given shares, ``gap`` rows left out
    between consecutive blocks (the gap is taken from the later block)."""
    edges = np.rint(np.cumsum((0.0, *fractions)) / sum(fractions) * n).astype(int)
    out = []
    for i in range(len(fractions)):
        lo = edges[i] + (gap if i else 0)
        out.append(np.arange(lo, max(lo, edges[i + 1])))
    return out


def block_split(rec: Recording, cut: Cut, val_fraction: float, test_fraction: float, split: Split = "time",
                seed: int = 0) -> tuple[Dataset, Dataset, Dataset]:
    """Training, validation and test windows of ``rec`` split by time blocks or by device (module docstring)."""
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise DataError(f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must leave a training share")
    parts: list[list[np.ndarray]] = [[], [], []]
    devices = rec.devices
    test_devices: set[str] = set()
    if split == "device":
        if len(devices) < 2:
            raise DataError(f"{rec.name}: a split by device needs at least two devices, found {len(devices)}")
        k = min(len(devices) - 1, max(1, round(test_fraction * len(devices))))
        test_devices = {str(d) for d in np.random.default_rng(seed).permutation(devices)[:k]}
    for dev in devices:
        rows = np.flatnonzero(rec.device == dev)
        if dev in test_devices:
            parts[2].append(rows)
            continue
        shares = (1 - val_fraction - test_fraction, val_fraction, 0.0 if test_devices else test_fraction)
        for i, block in enumerate(time_blocks(len(rows), shares, cut.window)):
            parts[i].append(rows[block])
    names = ("train", "val", "test")
    out = [cut_windows(_rows(rec, np.concatenate(p) if p else np.zeros(0, int)), cut, f"{rec.name}:{names[i]}")
           for i, p in enumerate(parts)]
    if not len(out[0]):
        raise DataError(f"{rec.name}: no training window of {cut.window} samples fits the training block")
    return out[0], out[1], out[2]


def random_window_split(rec: Recording, cut: Cut, test_fraction: float, seed: int = 0) -> tuple[Dataset, Dataset]:
    """The LEAKY split (every window cut, then split at random): only to measure how much it overstates
    accuracy beside :func:`block_split`."""
    ds = cut_windows(rec, cut)
    order = np.random.default_rng(seed).permutation(len(ds))
    k = int(round(test_fraction * len(ds)))
    return ds.subset(np.sort(order[k:])), ds.subset(np.sort(order[:k]))
