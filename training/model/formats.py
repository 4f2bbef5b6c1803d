"""Dataset file parsers: UCR/UEA ``.ts``, UCR 2018 ``.tsv``, ``.npz`` and ``.csv``. numpy only (the producer imports these).

Every parser returns a :class:`training.model.data.Dataset` whose windows are float32 [T_i, F] with NaN
for missing values, and raises :class:`training.model.data.DataError` naming the file, the line and what
was expected when the file is malformed.
"""

from __future__ import annotations

import csv
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from training.model.data import DataError, Dataset

#: Cells read as a missing value.
MISSING = {"?", "", "nan", "NaN", "NA"}


def _trim_trailing_missing(x: np.ndarray) -> np.ndarray:
    """Drop trailing timesteps where every feature is missing (how padded unequal-length files end)."""
    real = ~np.isnan(x).all(axis=1)
    if not real.any():
        return x[:0]
    return x[: int(np.flatnonzero(real)[-1]) + 1]


def classes_for(labels: list[str], declared: list[str] | None, where: str) -> tuple[list[str], np.ndarray]:
    """Class names (declared order, else numeric-aware sorted order) and integer labels."""
    if declared is None:
        uniq = set(labels)
        try:
            classes = sorted(uniq, key=float)
        except ValueError:
            classes = sorted(uniq)
    else:
        classes = declared
        missing = sorted(set(labels) - set(classes))
        if missing:
            raise DataError(f"{where}: labels {missing} are not among the declared classes {classes}")
    index = {c: i for i, c in enumerate(classes)}
    return classes, np.array([index[v] for v in labels], dtype=np.int64)


def _floats(cells: Sequence[str], bad: Callable[[int, str], str]) -> np.ndarray:
    """``cells`` as float32, missing markers (``?``, empty, ``NA``, ``nan``) as NaN.

    A cell that is neither raises :class:`DataError` with the message ``bad(index, cell)``.
    """
    out = np.empty(len(cells), dtype=np.float32)
    for j, cell in enumerate(cells):
        v = cell.strip()
        try:
            out[j] = np.nan if v in MISSING else float(v)
        except ValueError:
            raise DataError(bad(j, v)) from None
    return out


# --------------------------------------------------------------------------------------------- .ts


def _text_lines(path: str, strip: str | None = None) -> list[tuple[int, str]]:
    """(line number, text stripped of ``strip`` (None: whitespace)) of every line of ``path`` that is
    neither blank nor a ``#`` comment."""
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e}") from e
    with f:
        try:
            lines = list(enumerate(f, 1))
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not a UTF-8 text file ({e})") from e
    return [(n, text) for n, raw in lines
            if (text := raw.strip(strip)) and text.strip() and not text.startswith("#")]


def _ts_class_labels(where: str, rest: str) -> list[str] | None:
    """The labels of an ``@classLabel true <labels...>`` line, None for ``@classLabel false``."""
    parts = rest.split()
    if not parts or parts[0].lower() not in ("true", "false"):
        raise DataError(f"{where}: expected '@classLabel true <labels...>' or '@classLabel false'")
    if parts[0].lower() == "false":
        return None
    if len(parts) < 2:
        raise DataError(f"{where}: '@classLabel true' must list the class labels")
    return parts[1:]


def _ts_header(path: str, lines: list[tuple[int, str]]) -> tuple[dict[str, str], list[str] | None, int]:
    """Header fields (lower-case keys), the declared class labels and the index of the first line after @data."""
    header: dict[str, str] = {}
    declared: list[str] | None = None
    for k, (lineno, line) in enumerate(lines):
        where = f"{path}:{lineno}"
        if not line.startswith("@"):
            raise DataError(f"{where}: expected a header line starting with '@' (or @data) before the data, found {line[:40]!r}")
        key, _, rest = line[1:].partition(" ")
        key = key.lower()
        if key == "data":
            return header, declared, k + 1
        if key == "classlabel":
            declared = _ts_class_labels(where, rest) or declared
        elif key == "targetlabel" and rest.strip().lower() == "true":
            raise DataError(f"{where}: regression files (@targetLabel true) are not supported; expected class labels")
        else:
            header[key] = rest.strip()
    raise DataError(f"{path}: no @data line; expected a UCR/UEA .ts file")


def _ts_values(where: str, dim: int, text: str) -> np.ndarray:
    """The comma-separated values of dimension ``dim`` (0-based) of one case."""
    return _floats(text.split(","),
                   lambda j, v: f"{where}: dimension {dim + 1}, value {j + 1}: expected a number or '?', found {v!r}")


def _ts_case(where: str, line: str, n_dims: int | None, timestamped: bool) -> tuple[np.ndarray, str]:
    """One data line: the window [T, F] (trailing all-missing timesteps dropped) and its label.

    ``n_dims``: the first case's dimension count, which every later case must have.
    """
    if timestamped or line.startswith("("):
        raise DataError(f"{where}: timestamped series '(t,v)' are not supported; expected comma-separated values")
    dims = line.split(":")
    if len(dims) < 2:
        raise DataError(f"{where}: expected 'values[:values...]:label', found no ':' before a class label")
    label = dims[-1].strip()
    if not label:
        raise DataError(f"{where}: expected a class label after the last ':'")
    cols = [_ts_values(where, k, d) for k, d in enumerate(dims[:-1])]
    if n_dims is not None and len(cols) != n_dims:
        raise DataError(f"{where}: expected {n_dims} dimensions like the first case, found {len(cols)}")
    if len({len(c) for c in cols}) != 1:
        raise DataError(f"{where}: dimensions have different lengths {[len(c) for c in cols]}; expected equal lengths within a case")
    x = _trim_trailing_missing(np.stack(cols, axis=1))
    if len(x) == 0:
        raise DataError(f"{where}: every value of this case is missing")
    return x, label


def _ts_cases(path: str, header: dict[str, str], lines: list[tuple[int, str]]) -> tuple[list[np.ndarray], list[str]]:
    """The windows and labels of the data lines."""
    X: list[np.ndarray] = []
    labels: list[str] = []
    timestamped = header.get("timestamps", "false").lower() == "true"
    for lineno, line in lines:
        x, label = _ts_case(f"{path}:{lineno}", line, X[0].shape[1] if X else None, timestamped)
        X.append(x)
        labels.append(label)
    if not X:
        raise DataError(f"{path}: no cases after @data")
    return X, labels


def load_ts(path: str) -> Dataset:
    """Load a UCR/UEA ``.ts`` classification file.

    Univariate or multivariate (dimensions separated by ``:``, the class label last), equal or
    unequal length, ``?`` (or ``NaN``) for a missing value. Trailing all-missing timesteps are
    dropped, so a file padded to equal length with ``?`` reads as unequal length. Header fields
    (``@dimensions``, ``@seriesLength``, ``@classLabel``, ...) are checked against the data.
    """
    lines = _text_lines(path)
    header, declared, start = _ts_header(path, lines)
    X, labels = _ts_cases(path, header, lines[start:])
    _check_ts_header(path, header, X)
    classes, y = classes_for(labels, declared, path)
    name = header.get("problemname") or Path(path).stem
    return Dataset(X, y, classes, name=name, meta={"file": str(path)})


def _check_ts_header(path: str, header: dict[str, str], X: list[np.ndarray]) -> None:
    f = X[0].shape[1]
    if "dimensions" in header:
        try:
            want = int(header["dimensions"])
        except ValueError:
            raise DataError(f"{path}: @dimensions must be an integer, found {header['dimensions']!r}") from None
        if want != f:
            raise DataError(f"{path}: @dimensions says {want}, the data has {f}")
    if header.get("univariate", "").lower() == "true" and f != 1:
        raise DataError(f"{path}: @univariate true but the data has {f} dimensions")
    if header.get("equallength", "").lower() == "true" and "serieslength" in header:
        try:
            want = int(header["serieslength"])
        except ValueError:
            raise DataError(f"{path}: @seriesLength must be an integer, found {header['serieslength']!r}") from None
        # Trailing '?' may have been trimmed, so only longer series contradict the header.
        longest = max(x.shape[0] for x in X)
        if longest > want:
            raise DataError(f"{path}: @seriesLength says {want}, a case has {longest} values")


# -------------------------------------------------------------------------------------------- .tsv


def _tsv_case(where: str, line: str) -> tuple[np.ndarray, str]:
    """One line of a UCR 2018 ``.tsv``: the window [T, 1] (trailing ``NaN`` padding dropped) and its label."""
    cells = line.split("\t") if "\t" in line else line.split(",")
    if len(cells) < 2:
        raise DataError(f"{where}: expected 'label<TAB>value<TAB>value...', found {len(cells)} cell(s)")
    label = cells[0].strip()
    if not label or label in MISSING:
        raise DataError(f"{where}: expected a class label in the first column, found {label!r}")
    vals = _floats(cells[1:], lambda j, v: f"{where}: value {j + 1}: expected a number or NaN, found {v!r}")
    x = _trim_trailing_missing(vals[:, None])
    if len(x) == 0:
        raise DataError(f"{where}: every value of this series is missing")
    return x, label


def load_tsv(path: str) -> Dataset:
    """Load a UCR archive 2018 ``.tsv`` file (``NAME_TRAIN.tsv`` / ``NAME_TEST.tsv`` as downloaded).

    One univariate series a line, tab-separated (comma-separated lines are accepted too), the class
    label in the first column, no header. Trailing ``NaN`` padding makes a series shorter (unequal
    lengths); a ``NaN`` inside a series is a missing value, as ``?`` is in a ``.ts`` file.
    """
    X: list[np.ndarray] = []
    labels: list[str] = []
    for lineno, line in _text_lines(path, strip="\r\n"):  # a leading tab is an empty label, not blank space
        x, label = _tsv_case(f"{path}:{lineno}", line)
        X.append(x)
        labels.append(label)
    if not X:
        raise DataError(f"{path}: no series; expected one 'label<TAB>values...' line per series")
    classes, y = classes_for(labels, None, path)
    return Dataset(X, y, classes, name=Path(path).stem, meta={"file": str(path)})


# -------------------------------------------------------------------------------------------- .npz


def _npz_windows(path: str, z: np.lib.npyio.NpzFile) -> list[np.ndarray]:
    Xa = z["X"]
    if Xa.dtype == object:
        windows = [np.asarray(w, dtype=np.float32) for w in Xa]
        windows = [w[:, None] if w.ndim == 1 else w for w in windows]
    elif "lengths" in z:  # pickle-free unequal lengths: X is [sum T_i, F], lengths [N]
        lengths = np.asarray(z["lengths"], dtype=np.int64)
        flat = Xa[:, None] if Xa.ndim == 1 else Xa
        if flat.ndim != 2 or int(lengths.sum()) != len(flat) or (lengths < 1).any():
            raise DataError(f"{path}: with 'lengths', X must be [sum(lengths), F]; got X {Xa.shape}, sum(lengths) {int(lengths.sum())}")
        windows = [w.astype(np.float32) for w in np.split(flat, np.cumsum(lengths)[:-1])]
    else:
        if Xa.ndim == 2:
            Xa = Xa[:, :, None]
        if Xa.ndim != 3:
            raise DataError(f"{path}: X must be [N, T, F], [N, T] or an object array of [T_i, F]; got shape {Xa.shape}")
        windows = [x.astype(np.float32) for x in Xa]
    if not windows:
        raise DataError(f"{path}: X holds no windows")
    f = windows[0].shape[1] if windows[0].ndim == 2 else -1
    for i, w in enumerate(windows):
        if w.ndim != 2 or w.shape[1] != f or w.shape[0] < 1:
            raise DataError(f"{path}: window {i} has shape {w.shape}; expected [T_i >= 1, {f}] like window 0")
    return windows


def _open_npz(path: str, allow_pickle: bool) -> np.lib.npyio.NpzFile:
    """``np.load`` of a zip archive (never anything else: a non-zip file would be unpickled)."""
    try:
        if not zipfile.is_zipfile(path):
            raise DataError(f"{path}: not a readable .npz file: expected a zip archive of .npy arrays")
        z: np.lib.npyio.NpzFile = np.load(path, allow_pickle=allow_pickle)
        return z
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: not a readable .npz file: {e}") from e


def _npz_labels(path: str, y_raw: np.ndarray, classes: list[str] | None, n: int) -> tuple[list[str], np.ndarray]:
    """Class names and integer labels from ``y`` (indices into ``classes``, or label strings)."""
    if len(y_raw) != n:
        raise DataError(f"{path}: y has {len(y_raw)} labels for {n} windows")
    if y_raw.dtype.kind not in "iu":
        return classes_for([str(v) for v in y_raw], classes, path)
    y = y_raw.astype(np.int64)
    if classes is None:
        classes = [str(i) for i in range(max(2, int(y.max()) + 1))]
    if y.min() < 0 or y.max() >= len(classes):
        raise DataError(f"{path}: y must be in [0, {len(classes)}) to index classes {classes}, found {int(y.min())}..{int(y.max())}")
    return classes, y


def load_npz(path: str, allow_pickle: bool = True) -> Dataset:
    """Load ``.npz`` holding ``X`` and optionally ``y`` and ``classes``.

    ``X`` is [N, T, F], [N, T] (one feature), an object array of [T_i, F] windows (unequal lengths;
    stored pickled by numpy, so only load object arrays from files you trust; ``allow_pickle=False``
    refuses them) or, pickle-free, [sum T_i, F] together with ``lengths`` [N]. ``y`` holds integer
    indices into ``classes`` or label strings; without ``y`` the dataset is unlabeled.
    """
    z = _open_npz(path, allow_pickle)
    try:
        with z:
            if "X" not in z:
                raise DataError(f"{path}: expected an array named 'X', found {sorted(z.files)}")
            windows = _npz_windows(path, z)
            y_raw = z["y"] if "y" in z else None
            classes = [str(c) for c in z["classes"]] if "classes" in z else None
    except ValueError as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: {e}") from e
    meta = {"file": str(path)}
    if y_raw is None:
        return Dataset(windows, np.zeros(len(windows), dtype=np.int64), classes or ["0", "1"], name=Path(path).stem,
                       meta=meta, labeled=False)
    classes, y = _npz_labels(path, y_raw, classes, len(windows))
    return Dataset(windows, y, classes, name=Path(path).stem, meta=meta)


# -------------------------------------------------------------------------------------------- .csv


def _csv_header(path: str, reader: Iterator[list[str]], label_column: str, features: int) -> list[str]:
    """The header row (cells stripped), checked to name ``label_column`` and to divide into ``features``."""
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise DataError(f"{path}: empty file; expected a header row") from None
    except (csv.Error, UnicodeDecodeError) as e:
        raise DataError(f"{path}:1: unreadable header: {e}") from e
    if label_column not in header:
        raise DataError(f"{path}:1: expected a label column named {label_column!r} in the header, found {header[:10]}")
    n_values = len(header) - 1
    if n_values < 1 or n_values % features:
        raise DataError(f"{path}:1: {n_values} value columns do not divide into {features} features")
    return header


def _csv_row(where: str, row: list[str], header: list[str], li: int, features: int) -> tuple[np.ndarray, str]:
    """One data row: the window [T, F] (trailing missing values dropped) and its label (column ``li``)."""
    if len(row) != len(header):
        raise DataError(f"{where}: expected {len(header)} cells like the header, found {len(row)}")
    label = row[li].strip()
    if not label:
        raise DataError(f"{where}: empty label in column {header[li]!r}")
    names = header[:li] + header[li + 1 :]
    vals = _floats(row[:li] + row[li + 1 :],
                   lambda j, v: f"{where}: column {names[j]!r}: expected a number or an empty cell, found {v!r}")
    x = _trim_trailing_missing(vals.reshape(-1, features))
    if len(x) == 0:
        raise DataError(f"{where}: every value of this row is missing")
    return x, label


def load_csv(path: str, label_column: str = "label", features: int = 1) -> Dataset:
    """Load a ``.csv`` with a header row and one window a row.

    The column named ``label_column`` holds the class; every other column is a value, in time order
    and, with ``features`` F > 1, row-major [T, F] (so the value count must divide by F). Empty cells,
    ``?``, ``NA`` and ``nan`` are missing; trailing missing values make a window shorter.
    """
    if features < 1:
        raise DataError(f"{path}: features must be >= 1, got {features}")
    try:
        f = open(path, encoding="utf-8", newline="")
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e}") from e
    X: list[np.ndarray] = []
    labels: list[str] = []
    with f:
        reader = csv.reader(f)
        header = _csv_header(path, reader, label_column, features)
        li = header.index(label_column)
        try:
            for row in reader:
                if row and any(c.strip() for c in row):
                    x, label = _csv_row(f"{path}:{reader.line_num}", row, header, li, features)
                    X.append(x)
                    labels.append(label)
        except (csv.Error, UnicodeDecodeError) as e:
            raise DataError(f"{path}:{reader.line_num}: unreadable row: {e}") from e
    if not X:
        raise DataError(f"{path}: no data rows after the header")
    classes, y = classes_for(labels, None, path)
    return Dataset(X, y, classes, name=Path(path).stem, meta={"file": str(path)})


def load_dataset(path: str | Path, label_column: str = "label", features: int = 1) -> Dataset:
    """Load a dataset file by extension: UCR/UEA ``.ts``, UCR 2018 ``.tsv``, ``.npz`` or ``.csv``.

    ``label_column`` and ``features`` apply to ``.csv`` only (see :func:`training.load_csv`).
    """
    p = str(path)
    suffix = Path(p).suffix.lower()
    if suffix == ".ts":
        return load_ts(p)
    if suffix == ".tsv":
        return load_tsv(p)
    if suffix == ".npz":
        return load_npz(p)
    if suffix == ".csv":
        return load_csv(p, label_column=label_column, features=features)
    raise DataError(f"{p}: unsupported extension {suffix!r} (expected .ts, .tsv, .npz or .csv)")
