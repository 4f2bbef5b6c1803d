"""The 1-nearest-neighbour DTW baseline of the accuracy benchmark, and the benchmark's task data.

The baseline is the classic reference of time-series classification: unconstrained dynamic time
warping (no window), squared-Euclidean point cost, 1-NN over every training window, scored on the
test split. Multivariate windows use dependent DTW (one warping path for all channels,
``dtaidistance.dtw_ndim``); windows of different lengths are compared as they are. Values are used
raw (no normalization), as in the UCR/UEA archive's own DTW figures. Missing values (NaN) are
filled per channel by linear interpolation in time and carried flat before the first and after the
last observed value; an entirely missing channel becomes 0.

The distances come from dtaidistance's C implementation (``use_c``); this module does no DTW
itself. Two strategies, picked by series length, give the same neighbours (ties go to the lowest
training index):

* short series (``mean T_train * mean T_test <= PAIR_MODE_CELLS``): the C distance matrix of the
  test x train block, in chunks, OpenMP-parallel when ``parallel``;
* long series: one C call per (test, train) pair, with the training windows visited in order of a
  cheap Euclidean proxy and ``max_dist`` set to the best distance so far, so that most pairs are
  abandoned early (ACSF1, T=1460: 19 s instead of 111 s for the full matrix on one core).

A test set larger than ``max_test`` windows is scored on a fixed, seeded subsample (the synthetic
task's 20 000 windows: the full 6 000 x 20 000 matrix takes about 4 minutes on one core).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from training.datasets import dataset_split_files, discover_datasets
from training.model.data import DataError, Dataset, align_classes, fill_missing, synthetic
from training.model.formats import load_dataset

PAIR_MODE_CELLS = 4096  # DP cells per pair above which per-pair early abandoning beats the matrix
MAX_TEST_WINDOWS = 5000  # default cap on scored test windows (seeded subsample above it)
_MATRIX_CHUNK = 2_000_000  # distances per distance-matrix call (16 MB of float64)
_PROXY_POINTS = 256  # resampled length of the Euclidean proxy that orders the candidates


class BaselineError(RuntimeError):
    """The DTW baseline could not be computed (dtaidistance missing or its C library unavailable)."""


def _dtaidistance() -> tuple[Any, Any]:
    """``(dtw, dtw_ndim)`` from dtaidistance, checking that the C implementation is there."""
    try:
        from dtaidistance import dtw, dtw_ndim
    except ImportError as e:
        raise BaselineError("the DTW baseline needs dtaidistance: pip install 'bigru-stream[train]' "
                            "(or pip install dtaidistance); use --no-baseline to skip it") from e
    if getattr(dtw, "dtw_cc", None) is None:  # (dtw.try_import_c() prints a diagnostic to stdout)
        raise BaselineError("dtaidistance is installed without its C library; reinstall it from a wheel "
                            "or with a C compiler (or use --no-baseline)")
    return dtw, dtw_ndim


def _prepare(windows: list[np.ndarray]) -> list[np.ndarray]:
    """Filled windows: 1-D arrays for one channel (dtaidistance's 1-D functions), else [T, F]."""
    out = [fill_missing(x) for x in windows]
    if out and out[0].shape[1] == 1:
        return [np.ascontiguousarray(x[:, 0]) for x in out]
    return out


def _proxy(windows: list[np.ndarray], points: int) -> np.ndarray:
    """Every window resampled to ``points`` timesteps and flattened: [N, points * F]."""
    out = []
    for x in windows:
        x2 = x[:, None] if x.ndim == 1 else x
        src = np.linspace(0.0, 1.0, x2.shape[0])
        dst = np.linspace(0.0, 1.0, points)
        out.append(np.stack([np.interp(dst, src, x2[:, f]) for f in range(x2.shape[1])], axis=1).ravel())
    return np.stack(out)


def _nn_matrix(train: list[np.ndarray], test: list[np.ndarray], parallel: bool) -> np.ndarray:
    """Nearest training index per test window from dtaidistance's C distance matrix (chunked)."""
    dtw, dtw_ndim = _dtaidistance()
    n = len(train)
    ndim = train[0].shape[1] if train[0].ndim == 2 else 0
    equal = len({x.shape[0] for x in train + test}) == 1
    chunk = max(1, _MATRIX_CHUNK // n)
    nearest = np.empty(len(test), dtype=np.int64)
    for lo in range(0, len(test), chunk):
        part = test[lo: lo + chunk]
        series: Any = train + part
        if equal:
            series = np.stack(series)
        block = ((0, n), (n, n + len(part)))
        if ndim:
            d = dtw_ndim.distance_matrix_fast(series, ndim=ndim, block=block, compact=True, parallel=parallel)
        else:
            d = dtw.distance_matrix_fast(series, block=block, compact=True, parallel=parallel)
        nearest[lo: lo + len(part)] = np.asarray(d, dtype=np.float64).reshape(n, len(part)).argmin(axis=0)
    return nearest


def _nn_pairs(train: list[np.ndarray], test: list[np.ndarray]) -> np.ndarray:
    """Nearest training index per test window: per-pair C DTW with early abandoning at the best so far."""
    dtw, dtw_ndim = _dtaidistance()
    distance = dtw_ndim.distance_fast if train[0].ndim == 2 else dtw.distance_fast
    points = min(_PROXY_POINTS, max(max(x.shape[0] for x in train), max(x.shape[0] for x in test)))
    ptrain, ptest = _proxy(train, points), _proxy(test, points)
    nearest = np.empty(len(test), dtype=np.int64)
    for q, query in enumerate(test):
        order = np.argsort(((ptrain - ptest[q]) ** 2).sum(axis=1), kind="stable")
        best, best_i = np.inf, -1
        for i in order:
            # a little above the best so far: a tie is computed exactly and goes to the lower index
            limit = best * (1 + 1e-9) + 1e-12 if np.isfinite(best) else None
            d = distance(query, train[i], max_dist=limit, use_pruning=False)
            if d < best or (d == best and i < best_i):
                best, best_i = d, int(i)
        nearest[q] = best_i
    return nearest


def nearest_neighbours(train: list[np.ndarray], test: list[np.ndarray], parallel: bool = False) -> tuple[np.ndarray, str]:
    """Index of the DTW-nearest training window for each test window, and the strategy used.

    Windows are [T_i, F] arrays (NaN allowed); see the module docstring for the distance.
    """
    if not train or not test:
        raise DataError("the DTW baseline needs at least one training and one test window")
    tr, te = _prepare(train), _prepare(test)
    cells = float(np.mean([x.shape[0] for x in tr])) * float(np.mean([x.shape[0] for x in te]))
    if cells <= PAIR_MODE_CELLS:
        return _nn_matrix(tr, te, parallel), "matrix"
    return _nn_pairs(tr, te), "pairs"


def dtw_1nn_accuracy(train: Dataset, test: Dataset, parallel: bool = False, max_test: int | None = MAX_TEST_WINDOWS,
                     seed: int = 0) -> dict[str, Any]:
    """Test accuracy of 1-NN unconstrained DTW over all of ``train``.

    ``test`` must use ``train``'s class indices (see :func:`training.model.data.align_classes`). With more
    than ``max_test`` test windows, a subsample of that size drawn with ``seed`` is scored.
    Returns ``accuracy``, ``seconds`` (wall), ``test_windows`` (scored), ``test_total``,
    ``train_windows``, ``subsampled`` and ``mode`` (``matrix`` or ``pairs``).
    """
    if train.n_features != test.n_features:
        raise DataError(f"train has {train.n_features} channels, test {test.n_features}")
    t0 = time.perf_counter()
    idx = np.arange(len(test))
    if max_test is not None and len(test) > max_test:
        idx = np.sort(np.random.default_rng(seed).choice(len(test), size=max_test, replace=False))
    nearest, mode = nearest_neighbours(train.X, [test.X[i] for i in idx], parallel)
    correct = np.asarray(train.y)[nearest] == np.asarray(test.y)[idx]
    return {"accuracy": float(correct.mean()), "seconds": time.perf_counter() - t0, "test_windows": int(len(idx)),
            "test_total": len(test), "train_windows": len(train), "subsampled": bool(len(idx) < len(test)),
            "mode": mode}


def task_data(name: str, datasets: Path, n: int = 6000, test_n: int = 20000, length: int = 20) -> tuple[Dataset, Dataset]:
    """A benchmark task's whole training set and its test set.

    ``synthetic``: the training draw of seed 0 (``n`` windows, training + validation) and the
    held-out draw of seed 0 (``test_n`` windows), as ``bigru-train`` makes them. Otherwise the
    archive files ``<name>_TRAIN`` and ``_TEST`` (``.ts`` or ``.tsv``) found by :func:`dataset_split_files`.
    """
    if name == "synthetic":
        from training.run import SYNTHETIC_TEST_SEED

        return synthetic(n, length, 0), synthetic(test_n, length, SYNTHETIC_TEST_SEED)
    train_file, test_file = dataset_split_files(name, datasets)
    train = load_dataset(train_file)
    test = align_classes(load_dataset(test_file), train.classes)
    return train, test


def describe(train: Dataset, test: Dataset) -> dict[str, Any]:
    """Shape of a task for the report: lengths (min, max over both splits), sizes, channels, classes."""
    lengths = np.concatenate([train.lengths, test.lengths])
    return {"min_length": int(lengths.min()), "max_length": int(lengths.max()), "train": len(train),
            "test": len(test), "channels": train.n_features, "classes": len(train.classes)}


def main(argv: list[str] | None = None) -> int:
    """``python -m training.experiments.baseline [TASK ...]``: the DTW baseline alone, one JSON line per task."""
    import argparse
    import json

    from training.datasets import default_datasets

    p = argparse.ArgumentParser(prog="python -m training.experiments.baseline", description=main.__doc__)
    p.add_argument("tasks", nargs="*", help="default: synthetic + every dataset folder")
    p.add_argument("--datasets", type=Path, default=None)
    p.add_argument("--n", type=int, default=6000)
    p.add_argument("--test-n", type=int, default=20000)
    p.add_argument("--max-test", type=int, default=MAX_TEST_WINDOWS)
    p.add_argument("--parallel", action="store_true", help="OpenMP distance matrix")
    args = p.parse_args(argv)
    datasets = args.datasets or default_datasets()
    for name in args.tasks or ["synthetic", *discover_datasets(datasets)]:
        train, test = task_data(name, datasets, args.n, args.test_n)
        res = dtw_1nn_accuracy(train, test, parallel=args.parallel, max_test=args.max_test)
        print(json.dumps({"task": name, **describe(train, test), **res}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
