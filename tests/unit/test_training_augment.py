"""Augmentation: smoothness from the training windows decides which transforms apply; padding is kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.augment import SMOOTH_AUTOCORR, Augmenter, lag1_autocorrelation
from training.model.data import Dataset, synthetic
from training.train import TrainConfig


def _sines(n: int = 20) -> Dataset:
    t = np.linspace(0, 4 * np.pi, 120, dtype=np.float32)
    return Dataset([np.sin(t + i)[:, None] for i in range(n)], np.arange(n) % 2, ["a", "b"])


def test_smoothness_separates_shapes_from_independent_steps() -> None:
    assert lag1_autocorrelation(synthetic(300, 20, seed=1)) < 0.1  # the tutorial's task: i.i.d. steps
    assert lag1_autocorrelation(_sines()) > 0.95
    ds = _sines()
    ds.X[0][5:9] = np.nan  # missing values and flat windows do not break it
    ds.X[1][:] = 1.0
    assert lag1_autocorrelation(ds) > SMOOTH_AUTOCORR


@pytest.mark.parametrize(("mode", "smooth", "expect"), [
    ("auto", True, {"jitter": 0.05, "scale": 0.1, "crop": 0.1}),
    ("auto", False, {"jitter": 0.05, "scale": 0.0, "crop": 0.0}),
    ("all", False, {"jitter": 0.05, "scale": 0.1, "crop": 0.1}),
    ("noise", True, {"jitter": 0.05, "scale": 0.0, "crop": 0.0}),
    ("none", True, {"jitter": 0.0, "scale": 0.0, "crop": 0.0}),
])
def test_modes(mode: str, smooth: bool, expect: dict[str, float]) -> None:
    assert Augmenter(mode, 0.05, 0.1, 0.1, smooth).describe() == expect


def test_none_is_the_identity_and_bad_modes_fail() -> None:
    x = torch.randn(4, 10, 2)
    assert torch.equal(Augmenter("none", 0.05, 0.1, 0.1, True)(x, torch.full((4,), 10)), x)
    with pytest.raises(ValueError, match="augment"):
        TrainConfig(augment="sometimes")
    with pytest.raises(ValueError, match="crop"):
        TrainConfig(crop=1.0)


def test_slicing_stretches_a_slice_back_to_each_windows_length_and_keeps_padding() -> None:
    torch.manual_seed(0)
    lengths = torch.tensor([50, 20, 3])
    x = torch.zeros(3, 50, 1)
    for i, n in enumerate(lengths.tolist()):
        x[i, :n, 0] = torch.linspace(0, 1, n)  # a ramp: any slice, stretched, is still a rising line
    out = Augmenter("all", 0.0, 0.0, 0.2, True)(x, lengths)
    assert out.shape == x.shape and not torch.equal(out, x)
    for i, n in enumerate(lengths.tolist()):
        seg = out[i, :n, 0]
        assert (seg[1:] >= seg[:-1] - 1e-6).all() and seg[0] >= 0 and seg[-1] <= 1
        assert (seg.max() - seg.min()) >= 0.75 - 1e-6  # a slice of at least 80 % of the ramp
        assert (out[i, n:] == 0).all()
