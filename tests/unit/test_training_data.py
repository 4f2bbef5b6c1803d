"""Loaders (.ts/.tsv/.npz/.csv), malformed-file errors, the synthetic task and splits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training.model.data import DataError, align_classes, normalization, stratified_split, synthetic
from training.model.formats import load_dataset

DATA = Path(__file__).parents[1] / "data"

UNEQUAL_TS = """# written for the test: 2 dimensions, unequal lengths, missing values
@problemName Unequal
@timeStamps false
@missing true
@univariate false
@dimensions 2
@equalLength false
@classLabel true up down
@data
1.0,2.0,3.0:10,20,30:up
4.5,?,6.5,7.5,8.5:1,2,3,4,5:down
0.5,?,2.5,?:5,?,7,?:up
"""


def write(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_synthetic_is_the_tutorial_task_and_seeded() -> None:
    ds = synthetic(4000, 20, seed=3)
    x = np.stack(ds.X)
    assert x.shape == (4000, 20, 1) and ds.classes == ["0", "1"]
    assert (ds.y == 0).sum() == 2000
    assert abs(x[ds.y == 0].mean() - 0.5) < 0.03 and abs(x[ds.y == 1].mean() + 0.5) < 0.03
    assert abs(x[ds.y == 0].std() - 1.0) < 0.03 and abs(x[ds.y == 1].std() - 1.2) < 0.03
    again = synthetic(4000, 20, seed=3)
    assert np.array_equal(np.stack(again.X), x) and np.array_equal(again.y, ds.y)
    assert not np.array_equal(np.stack(synthetic(4000, 20, seed=4).X), x)
    assert synthetic(10, 7).X[0].shape == (7, 1)


def test_ucr_ts_equal_length() -> None:
    ds = load_dataset(DATA / "ItalyPowerDemand_TRAIN.ts")
    assert len(ds) == 67 and ds.n_features == 1 and ds.classes == ["1", "2"]
    assert {x.shape for x in ds.X} == {(24, 1)}
    assert ds.summary()["class_counts"] == [34, 33]


def test_uea_ts_multivariate_unequal_length_with_missing(tmp_path: Path) -> None:
    ds = load_dataset(write(tmp_path, "u.ts", UNEQUAL_TS))
    assert ds.classes == ["up", "down"] and list(ds.y) == [0, 1, 0]
    assert [x.shape for x in ds.X] == [(3, 2), (5, 2), (3, 2)]  # trailing all-missing steps dropped
    assert np.isnan(ds.X[1][1, 0]) and ds.X[1][1, 1] == 2.0
    assert np.isnan(ds.X[2][1]).all() and ds.X[2][2, 1] == 7.0  # interior missing kept (a '?' in both dims)
    assert ds.X[0][2, 1] == 30.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("@classLabel true a b\n@data\n1,2,x:a\n", r":3: dimension 1, value 3: expected a number"),
        ("@classLabel true a b\n@data\n1,2:3,4:a\n1,2:b\n", r":4: expected 2 dimensions"),
        ("@classLabel true a b\n@data\n1,2,3:4,5:a\n", r":3: dimensions have different lengths"),
        ("@classLabel true a b\n@data\n1,2,3\n", r":3: expected 'values\[:values...\]:label'"),
        ("@classLabel true a b\n@data\n1,2:c\n", r"labels \['c'\] are not among the declared classes"),
        ("@classLabel true a b\n1,2:a\n", r":2: expected a header line"),
        ("@classLabel true a b\n", r"no @data line"),
        ("@dimensions 3\n@classLabel true a b\n@data\n1,2:a\n", r"@dimensions says 3, the data has 1"),
        ("@classLabel maybe\n@data\n1:a\n", r":1: expected '@classLabel true"),
    ],
)
def test_malformed_ts_names_line_and_expectation(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(DataError, match=expected):
        load_dataset(write(tmp_path, "bad.ts", text))


def test_ucr2018_tsv_padding_and_missing_values() -> None:
    ds = load_dataset(DATA / "Padded_TRAIN.tsv")
    assert ds.classes == ["1", "2", "3"] and list(ds.y) == [0, 1, 0, 2]
    assert [x.shape for x in ds.X] == [(5, 1), (3, 1), (2, 1), (5, 1)]  # trailing NaN padding = shorter series
    assert ds.X[0][:, 0].tolist() == [0.5, 1.5, 2.5, 3.5, 4.5]
    assert np.isnan(ds.X[1][1, 0]) and ds.X[1][2, 0] == -3.0  # NaN inside a series: missing, like '?' in .ts
    assert np.isnan(ds.X[3][2, 0]) and ds.X[3][4, 0] == 5.0
    assert ds.X[3][0, 0] == np.float32(0.1)
    same = load_dataset(DATA / "Padded_TRAIN.tsv")
    assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(ds.X, same.X, strict=True))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1\t0.5\t1.5\n2\t1.0\tabc\n", r"Bad_TRAIN.tsv:2: value 2: expected a number or NaN, found 'abc'"),
        ("1\t0.5\n7\n", r":2: expected 'label<TAB>value<TAB>value...', found 1 cell"),
        ("1\t0.5\n\t1\t2\n", r":2: expected a class label in the first column"),
        ("1\t0.5\n2\tNaN\tNaN\n", r":2: every value of this series is missing"),
        ("\n\n", r"no series"),
    ],
)
def test_malformed_tsv_names_line_and_expectation(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(DataError, match=expected):
        load_dataset(write(tmp_path, "Bad_TRAIN.tsv", text))


def test_malformed_tsv_file_in_tests_data() -> None:
    with pytest.raises(DataError, match=r"Malformed_TRAIN.tsv:2: value 2: expected a number or NaN"):
        load_dataset(DATA / "Malformed_TRAIN.tsv")


def test_npz_dense_object_and_flat_layouts(tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((5, 7, 3)).astype(np.float32)
    np.savez(tmp_path / "dense.npz", X=x, y=np.array([0, 1, 2, 1, 0]), classes=np.array(["a", "b", "c"]))
    ds = load_dataset(tmp_path / "dense.npz")
    assert ds.classes == ["a", "b", "c"] and np.array_equal(np.stack(ds.X), x) and ds.labeled

    ragged = np.empty(3, dtype=object)
    ragged[:] = [np.ones((4, 2)), np.zeros((2, 2)), np.ones((6, 2))]
    np.savez(tmp_path / "ragged.npz", X=ragged, y=np.array(["cat", "dog", "cat"]))
    ds = load_dataset(tmp_path / "ragged.npz")
    assert [w.shape for w in ds.X] == [(4, 2), (2, 2), (6, 2)] and ds.classes == ["cat", "dog"] and list(ds.y) == [0, 1, 0]

    np.savez(tmp_path / "flat.npz", X=np.arange(12, dtype=np.float32).reshape(6, 2), lengths=np.array([1, 2, 3]), y=np.array([1, 0, 1]))
    ds = load_dataset(tmp_path / "flat.npz")
    assert [w.shape for w in ds.X] == [(1, 2), (2, 2), (3, 2)] and ds.X[2][0, 0] == 6.0

    np.savez(tmp_path / "unlabeled.npz", X=x)
    assert not load_dataset(tmp_path / "unlabeled.npz").labeled


def test_npz_errors(tmp_path: Path) -> None:
    np.savez(tmp_path / "noX.npz", data=np.zeros((2, 3)))
    with pytest.raises(DataError, match="expected an array named 'X'"):
        load_dataset(tmp_path / "noX.npz")
    np.savez(tmp_path / "bady.npz", X=np.zeros((2, 3, 1)), y=np.array([0, 5]), classes=np.array(["a", "b"]))
    with pytest.raises(DataError, match=r"y must be in \[0, 2\)"):
        load_dataset(tmp_path / "bady.npz")
    np.savez(tmp_path / "count.npz", X=np.zeros((2, 3, 1)), y=np.array([0, 1, 1]))
    with pytest.raises(DataError, match="3 labels for 2 windows"):
        load_dataset(tmp_path / "count.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_dataset(tmp_path / "junk.npz")


def test_csv_label_column_missing_values_and_features(tmp_path: Path) -> None:
    path = write(tmp_path, "w.csv", "t0,t1,t2,t3,kind\n1,2,3,4,walk\n5,6,,,run\n7,?,9,10,walk\n")
    ds = load_dataset(path, label_column="kind")
    assert ds.classes == ["run", "walk"] and list(ds.y) == [1, 0, 1]
    assert [w.shape for w in ds.X] == [(4, 1), (2, 1), (4, 1)] and np.isnan(ds.X[2][1, 0])
    ds2 = load_dataset(path, label_column="kind", features=2)
    assert ds2.X[0].tolist() == [[1, 2], [3, 4]] and ds2.X[1].shape == (1, 2)


@pytest.mark.parametrize(
    ("text", "kwargs", "expected"),
    [
        ("a,b,label\n1,2,x\n3,oops,y\n", {}, r"w.csv:3: column 'b': expected a number"),
        ("a,b,label\n1,2,x\n3,y\n", {}, r"w.csv:3: expected 3 cells"),
        ("a,b,cls\n1,2,x\n", {}, r"w.csv:1: expected a label column named 'label'"),
        ("a,b,c,label\n1,2,3,x\n", {"features": 2}, r"3 value columns do not divide into 2 features"),
        ("a,b,label\n1,2,\n", {}, r"w.csv:2: empty label"),
        ("", {}, r"empty file"),
    ],
)
def test_malformed_csv(tmp_path: Path, text: str, kwargs: dict[str, int], expected: str) -> None:
    with pytest.raises(DataError, match=expected):
        load_dataset(write(tmp_path, "w.csv", text), **kwargs)


def test_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unsupported extension"):
        load_dataset(write(tmp_path, "x.parquet", ""))


def test_stratified_split_is_seeded_disjoint_and_stratified() -> None:
    y = np.array([0] * 80 + [1] * 20)
    tr, va = stratified_split(y, 0.25, seed=1)
    assert len(set(tr) & set(va)) == 0 and len(tr) + len(va) == 100
    assert (y[va] == 0).sum() == 20 and (y[va] == 1).sum() == 5
    tr2, va2 = stratified_split(y, 0.25, seed=1)
    assert np.array_equal(va, va2)
    assert not np.array_equal(va, stratified_split(y, 0.25, seed=2)[1])


def test_normalization_ignores_missing_and_align_classes(tmp_path: Path) -> None:
    ds = load_dataset(write(tmp_path, "u.ts", UNEQUAL_TS))
    mean, std = normalization(ds)
    real = np.concatenate(ds.X)
    assert np.allclose(mean, np.nanmean(real, axis=0)) and (std > 0).all()
    test = align_classes(ds, ["down", "up", "sideways"])
    assert list(test.y) == [1, 0, 1]
    with pytest.raises(DataError, match=r"labels \['up'\] do not occur"):
        align_classes(ds, ["down"])


def test_data_modules_do_not_import_torch() -> None:
    code = "import sys, training.model.data, training.model.formats, training.metrics; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[2]).returncode == 0
