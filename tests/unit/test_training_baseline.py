"""The 1-NN DTW baseline (training.experiments.baseline): known answers, unequal lengths, multivariate, NaN."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("dtaidistance")

from training.experiments import baseline
from training.experiments.baseline import (
    describe,
    discover_datasets,
    dtw_1nn_accuracy,
    fill_missing,
    nearest_neighbours,
    task_data,
)
from training.model.data import Dataset


def _bump(length: int, centre: int, width: int = 3, height: float = 1.0) -> np.ndarray:
    x = np.zeros(length, dtype=np.float32)
    x[max(0, centre - width): centre + width] = height
    return x


def _ds(windows: list[np.ndarray], y: list[int], classes: int = 2) -> Dataset:
    X = [w[:, None] if w.ndim == 1 else w for w in windows]
    return Dataset([w.astype(np.float32) for w in X], np.asarray(y, dtype=np.int64), [str(c) for c in range(classes)])


def _shifted_task(length: int) -> tuple[Dataset, Dataset]:
    """Class 0: one bump; class 1: two bumps. Test copies are shifted so far that Euclidean 1-NN fails."""
    one = _bump(length, length // 4)
    two = _bump(length, length // 4) + _bump(length, 3 * length // 4)
    train = _ds([one, two], [0, 1])
    shift = length // 2
    test = _ds([np.roll(one, shift), np.roll(two, -length // 8)], [0, 1])
    return train, test


@pytest.fixture(params=["matrix", "pairs"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run each test with both strategies (they must agree)."""
    monkeypatch.setattr(baseline, "PAIR_MODE_CELLS", 10**12 if request.param == "matrix" else 0)
    return str(request.param)


def test_dtw_gets_shifted_copies_right_where_euclidean_fails(mode: str) -> None:
    train, test = _shifted_task(60)
    # Euclidean 1-NN misclassifies the shifted single bump as the two-bump class
    ed = [int(np.argmin([np.sum((q - t) ** 2) for t in train.X])) for q in test.X]
    assert train.y[ed[0]] == 1
    res = dtw_1nn_accuracy(train, test)
    assert res["accuracy"] == 1.0
    assert res["mode"] == mode
    assert res["test_windows"] == 2 and res["train_windows"] == 2 and not res["subsampled"]
    assert res["seconds"] >= 0


def test_known_nearest_indices_and_tie_to_lowest_index(mode: str) -> None:
    base = _bump(40, 10)
    train = [base[:, None], base[:, None].copy(), _bump(40, 30)[:, None] * 5]
    nearest, used = nearest_neighbours(train, [np.roll(base, 3)[:, None], _bump(40, 25)[:, None] * 5])
    assert used == mode
    assert nearest.tolist() == [0, 2]  # identical candidates 0 and 1: the lower index wins


def test_unequal_lengths(mode: str) -> None:
    # a slow and a fast version of the same shapes: DTW matches across lengths
    def up(n: int) -> np.ndarray:
        return np.linspace(0, 1, n).astype(np.float32)

    def down(n: int) -> np.ndarray:
        return np.linspace(1, 0, n).astype(np.float32)

    train = _ds([up(30), down(90), up(120), down(17)], [0, 1, 0, 1])
    test = _ds([up(55), down(200), up(9), down(64)], [0, 1, 0, 1])
    assert dtw_1nn_accuracy(train, test)["accuracy"] == 1.0


def test_multivariate_uses_all_channels(mode: str) -> None:
    # channel 0 is identical for both classes; only channel 1 separates them
    t = 50
    common = _bump(t, 20)
    a = np.stack([common, _bump(t, 10)], axis=1)
    b = np.stack([common, _bump(t, 40)], axis=1)
    train = _ds([a, b], [0, 1])
    test = _ds([np.roll(a, 4, axis=0), np.roll(b, -4, axis=0), a[:35], b[5:]], [0, 1, 0, 1])
    assert dtw_1nn_accuracy(train, test)["accuracy"] == 1.0


def test_nan_filled_by_interpolation(mode: str) -> None:
    x = np.array([[np.nan, 0.0], [1.0, np.nan], [np.nan, np.nan], [3.0, 6.0], [np.nan, np.nan]], dtype=np.float32)
    f = fill_missing(x)
    assert f.dtype == np.float64 and f.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(f[:, 0], [1, 1, 2, 3, 3])
    np.testing.assert_allclose(f[:, 1], [0, 2, 4, 6, 6])
    np.testing.assert_array_equal(fill_missing(np.full((3, 1), np.nan)), np.zeros((3, 1)))
    assert fill_missing(np.zeros((0, 2))).shape == (1, 2)
    train, test = _shifted_task(60)
    holey = [w.copy() for w in test.X]
    for w in holey:
        w[::7] = np.nan
    res = dtw_1nn_accuracy(train, Dataset(holey, test.y, test.classes))
    assert res["accuracy"] == 1.0


def test_subsample_is_seeded_and_reported() -> None:
    rng = np.random.default_rng(0)
    train = _ds([rng.standard_normal(12) for _ in range(6)], [0, 1] * 3)
    test = _ds([rng.standard_normal(12) for _ in range(40)], [0, 1] * 20)
    a = dtw_1nn_accuracy(train, test, max_test=10)
    b = dtw_1nn_accuracy(train, test, max_test=10)
    assert a["subsampled"] and a["test_windows"] == 10 and a["test_total"] == 40
    assert a["accuracy"] == b["accuracy"]


def test_discover_and_load_datasets(tmp_path: Path) -> None:
    for name, ok in (("Good", True), ("NoTest", False)):
        d = tmp_path / name
        d.mkdir()
        body = "@problemName x\n@timeStamps false\n@univariate true\n@equalLength false\n@classLabel true a b\n@data\n"
        (d / f"{name}_TRAIN.ts").write_text(body + "1,2,3:a\n3,2,1,0:b\n")
        if ok:
            (d / f"{name}_TEST.ts").write_text(body + "1,2,2,3:a\n3,1:b\n")
    (tmp_path / "stray.txt").write_text("")
    assert discover_datasets(tmp_path) == ["Good"]
    assert discover_datasets(tmp_path / "missing") == []
    train, test = task_data("Good", tmp_path)
    assert describe(train, test) == {"min_length": 2, "max_length": 4, "train": 2, "test": 2, "channels": 1,
                                     "classes": 2}
    assert dtw_1nn_accuracy(train, test)["accuracy"] == 1.0


def test_synthetic_task_data() -> None:
    train, test = task_data("synthetic", Path("."), n=40, test_n=30)
    assert (len(train), len(test)) == (40, 30) and train.n_features == 1
    assert describe(train, test)["max_length"] == 20
