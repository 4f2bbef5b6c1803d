"""The producer's window sources are the training data's windows (one synthetic generator, one set of loaders)."""

from pathlib import Path

import numpy as np
import pytest

from producer.sources import from_file, synthetic
from training.model.data import DataError
from training.model.data import synthetic as training_synthetic

ROOT = Path(__file__).resolve().parents[2]


def test_synthetic_windows_are_the_training_task_s() -> None:
    ds = training_synthetic(50, 12, seed=7)
    got = list(synthetic(50, 12, seed=7))
    assert [w.label for w in got] == [ds.classes[int(c)] for c in ds.y]
    assert all(w.x.shape == (12, 1) and w.x.dtype == np.float32 for w in got)
    assert np.array_equal(np.stack([w.x for w in got]), np.stack(ds.X))
    assert sorted({str(w.label) for w in got}) == ["0", "1"]


def test_synthetic_counts() -> None:
    assert list(synthetic(0)) == []
    (one,) = synthetic(1, 5, seed=2)
    assert np.array_equal(one.x, training_synthetic(2, 5, seed=2).X[0])
    with pytest.raises(DataError, match="length"):
        synthetic(3, 0)


def test_from_file_cycles_and_fills_missing_values(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("label,t0,t1,t2\na,1,2,3\nb,4,?,6\n")
    got = list(from_file(str(path), count=5))
    assert [w.label for w in got] == ["a", "b", "a", "b", "a"]
    assert got[1].x[:, 0].tolist() == [4.0, 0.0, 6.0]  # missing -> 0
    assert [w.label for w in from_file(str(ROOT / "tests" / "data" / "ItalyPowerDemand_TRAIN.ts"))][:3] == ["1", "1", "2"]


def test_from_file_reads_ucr2018_tsv_with_padding_and_missing_values() -> None:
    got = list(from_file(str(ROOT / "tests" / "data" / "Padded_TRAIN.tsv")))
    assert [w.label for w in got] == ["1", "2", "1", "3"]
    assert [w.x.shape for w in got] == [(5, 1), (3, 1), (2, 1), (5, 1)]
    assert got[1].x[:, 0].tolist() == [-1.0, 0.0, -3.0]  # missing -> 0, padding dropped
