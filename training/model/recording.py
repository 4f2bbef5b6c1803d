"""Long recordings: samples in time order, per device, with an optional per-sample label. numpy only
(the producer's ``stream`` command and the trainer's ``--window`` both read them).

A ``.csv`` recording has a header row; the columns named ``device`` (optional: one device when
absent), ``t`` (optional: event time in seconds; without it samples are ``1 / rate_hz`` apart per
device) and ``label`` (optional: the activity at that sample) are taken out, and every other column
is a channel, in header order. Empty cells, ``?``, ``NA`` and ``nan`` are missing values. A ``.npz``
recording holds ``x`` ``[n, F]`` and optionally ``t`` ``[n]`` (seconds), ``device`` ``[n]``, ``y``
``[n]`` (labels) and ``classes``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.model.data import DataError
from training.model.formats import MISSING, classes_for

#: Column names a recording's special columns have by default.
DEVICE_COLUMN, TIME_COLUMN, LABEL_COLUMN = "device", "t", "label"
#: The device of a recording without a device column.
DEFAULT_DEVICE = "0"
#: One parsed data row: device, event time in seconds (None without a time column), label (None
#: without a label column), channel values.
Row = tuple[str, "float | None", "str | None", np.ndarray]


@dataclass
class Recording:
    """Samples ``x`` ``[n, F]`` at event times ``t_us`` of devices ``device``, labels ``y`` (class
    indices into ``classes``; None when unlabelled). Rows of one device are in time order."""

    t_us: np.ndarray
    x: np.ndarray
    device: np.ndarray
    y: np.ndarray | None = None
    classes: list[str] = field(default_factory=list)
    channels: list[str] = field(default_factory=list)
    name: str = ""

    def __len__(self) -> int:
        return len(self.t_us)

    @property
    def devices(self) -> list[str]:
        """Device names in order of first appearance."""
        _, first = np.unique(self.device, return_index=True)
        return [str(self.device[i]) for i in sorted(first)]

    def of_device(self, dev: str) -> Recording:
        """The rows of one device (time order)."""
        rows = np.flatnonzero(self.device == dev)
        return Recording(self.t_us[rows], self.x[rows], self.device[rows], None if self.y is None else self.y[rows],
                         self.classes, self.channels, self.name)

    def rate_hz(self) -> float:
        """The sampling rate: 1 / the median step between a device's consecutive samples."""
        steps = np.concatenate([np.diff(self.of_device(d).t_us) for d in self.devices] or [np.zeros(0)])
        steps = steps[steps > 0]
        if not len(steps):
            raise DataError(f"{self.name}: cannot tell the sampling rate (fewer than two samples per device)")
        return float(1e6 / np.median(steps))


@dataclass(frozen=True)
class Columns:
    """Where a recording's header puts the device, time and label columns, and the channels."""

    header: list[str]
    device: int | None
    time: int | None
    label: int | None
    channels: list[int]

    @classmethod
    def of(cls, header: Sequence[str], where: str, device_column: str = DEVICE_COLUMN,
           time_column: str = TIME_COLUMN, label_column: str = LABEL_COLUMN) -> Columns:
        """The columns of ``header`` (raises :class:`DataError` without a channel column)."""
        h = [c.strip() for c in header]

        def find(name: str) -> int | None:
            return h.index(name) if name in h else None

        special = {find(device_column), find(time_column), find(label_column)} - {None}
        channels = [i for i in range(len(h)) if i not in special]
        if not channels:
            raise DataError(f"{where}:1: no channel columns in the header {h[:10]}")
        return cls(h, find(device_column), find(time_column), find(label_column), channels)

    def parse(self, row: Sequence[str], where: str) -> Row:
        """One data row: (device, time in seconds or None, label or None, channel values)."""
        if len(row) != len(self.header):
            raise DataError(f"{where}: expected {len(self.header)} cells like the header, found {len(row)}")
        dev = row[self.device].strip() if self.device is not None else DEFAULT_DEVICE
        t = None
        if self.time is not None:
            try:
                t = float(row[self.time])
            except ValueError:
                raise DataError(f"{where}: column {self.header[self.time]!r}: expected a time in seconds, "
                                f"found {row[self.time]!r}") from None
        label = row[self.label].strip() if self.label is not None else None
        vals = np.empty(len(self.channels), np.float32)
        for j, c in enumerate(self.channels):
            v = row[c].strip()
            try:
                vals[j] = np.nan if v in MISSING else float(v)
            except ValueError:
                raise DataError(f"{where}: column {self.header[c]!r}: expected a number or an empty cell, "
                                f"found {v!r}") from None
        return dev, t, label, vals


def read_csv(lines: Iterable[str], where: str, **names: str) -> tuple[Columns, Iterator[Row]]:
    """A recording's CSV lines: the :class:`Columns` of its header, and its data rows parsed lazily
    (device, seconds or None, label or None, values). ``names``: ``device_column``, ``time_column``,
    ``label_column``."""
    reader = csv.reader(lines)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{where}: empty; expected a header row") from None
    except (csv.Error, UnicodeDecodeError) as e:
        raise DataError(f"{where}:1: unreadable header: {e}") from e
    cols = Columns.of(header, where, **names)

    def rows() -> Iterator[Row]:
        try:
            for row in reader:
                if row and any(c.strip() for c in row):
                    yield cols.parse(row, f"{where}:{reader.line_num}")
        except (csv.Error, UnicodeDecodeError) as e:
            raise DataError(f"{where}:{reader.line_num}: unreadable row: {e}") from e

    return cols, rows()


def _times(device: np.ndarray, seconds: np.ndarray | None, rate_hz: float | None, where: str) -> np.ndarray:
    if seconds is not None:
        return np.rint(seconds * 1e6).astype(np.int64)
    if not rate_hz or rate_hz <= 0:
        raise DataError(f"{where}: no time column; give the sampling rate (rate_hz / --rate-hz)")
    t = np.zeros(len(device), np.int64)
    for d in np.unique(device):
        rows = np.flatnonzero(device == d)
        t[rows] = np.rint(np.arange(len(rows)) * 1e6 / rate_hz).astype(np.int64)
    return t


def _ordered(rec: Recording) -> Recording:
    """Rows sorted by time (stable), so every device's rows are in time order."""
    order = np.argsort(rec.t_us, kind="stable")
    return Recording(rec.t_us[order], rec.x[order], rec.device[order], None if rec.y is None else rec.y[order],
                     rec.classes, rec.channels, rec.name)


def load_recording(path: str | Path, rate_hz: float | None = None, label_column: str = LABEL_COLUMN,
                   device_column: str = DEVICE_COLUMN, time_column: str = TIME_COLUMN) -> Recording:
    """Load a ``.csv`` or ``.npz`` recording (module docstring); rows sorted by time."""
    p = str(path)
    suffix = Path(p).suffix.lower()
    if suffix == ".npz":
        return _ordered(_load_npz(p, rate_hz))
    if suffix != ".csv":
        raise DataError(f"{p}: unsupported recording extension {suffix!r} (expected .csv or .npz)")
    try:
        f = open(p, encoding="utf-8", newline="")
    except OSError as e:
        raise DataError(f"{p}: cannot read: {e}") from e
    with f:
        header, parsed = read_csv(f, p, label_column=label_column, device_column=device_column,
                                  time_column=time_column)
        rows = list(parsed)
    if not rows:
        raise DataError(f"{p}: no data rows after the header")
    device = np.array([r[0] for r in rows], dtype=object)
    seconds = np.array([r[1] for r in rows], np.float64) if header.time is not None else None
    x = np.stack([r[3] for r in rows])
    y: np.ndarray | None = None
    classes: list[str] = []
    if header.label is not None:
        labels = [r[2] or "" for r in rows]
        if "" in labels:
            raise DataError(f"{p}:{labels.index('') + 2}: empty label in column {label_column!r}")
        classes, y = classes_for(labels, None, p)
    names = [header.header[c] for c in header.channels]
    return _ordered(Recording(_times(device, seconds, rate_hz, p), x, device, y, classes, names, Path(p).stem))


def _load_npz(p: str, rate_hz: float | None) -> Recording:
    try:
        z = np.load(p, allow_pickle=True)
    except (OSError, ValueError) as e:
        raise DataError(f"{p}: cannot read: {e}") from e
    with z:
        if "x" not in z:
            raise DataError(f"{p}: expected an array named 'x' [n, F], found {sorted(z.files)}")
        x = np.asarray(z["x"], np.float32)
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2:
            raise DataError(f"{p}: 'x' must be [n, F], found shape {x.shape}")
        n = len(x)
        device = np.asarray(z["device"]).astype(str).astype(object) if "device" in z else np.full(n, DEFAULT_DEVICE, object)
        seconds = np.asarray(z["t"], np.float64) if "t" in z else None
        y_raw = np.asarray(z["y"]) if "y" in z else None
        declared = [str(c) for c in z["classes"]] if "classes" in z else None
    for name, arr in (("device", device), ("t", seconds), ("y", y_raw)):
        if arr is not None and len(arr) != n:
            raise DataError(f"{p}: '{name}' has {len(arr)} entries for {n} samples")
    y: np.ndarray | None = None
    classes: list[str] = []
    if y_raw is not None:
        labels = [declared[int(v)] if declared is not None and y_raw.dtype.kind in "iu" else str(v) for v in y_raw]
        classes, y = classes_for(labels, declared, p)
    return Recording(_times(device, seconds, rate_hz, p), x, device, y, classes,
                     [f"c{i}" for i in range(x.shape[1])], Path(p).stem)


def save_recording_csv(rec: Recording, path: str | Path) -> None:
    """Write ``rec`` as a recording ``.csv`` (device, t in seconds, channels, label when labelled)."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow([DEVICE_COLUMN, TIME_COLUMN, *rec.channels, *([LABEL_COLUMN] if rec.y is not None else [])])
        for i in range(len(rec)):
            label = [rec.classes[int(rec.y[i])]] if rec.y is not None else []
            w.writerow([rec.device[i], f"{rec.t_us[i] / 1e6:.6f}", *(f"{v:.6g}" for v in rec.x[i]), *label])
