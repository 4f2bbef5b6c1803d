"""Training-time augmentation of normalized windows, chosen from the training data's smoothness.

Three transforms: Gaussian noise (``jitter``), a random per-window gain (``scale``) and window
slicing (``crop``: a random slice of ``1 - crop`` of the window stretched back to its length). Gain
and slicing preserve the class of a *shape* (a gesture, a power signature) but not of a series whose
class lives in the distribution of independent steps (the tutorial's task: the classes differ in
mean and variance, which a gain or an interpolation changes). With ``augment="auto"`` they apply
only when the training windows are smooth: mean lag-1 autocorrelation of at least
:data:`SMOOTH_AUTOCORR`. The choice uses the training split only.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch.nn import functional

from training.model.data import Dataset

AUGMENT_MODES = ("auto", "all", "noise", "none")
#: Lag-1 autocorrelation from which windows count as smooth shapes (white noise: 0; GunPoint: ~1).
SMOOTH_AUTOCORR = 0.5


def lag1_autocorrelation(ds: Dataset) -> float:
    """Mean over windows and features of the lag-1 autocorrelation (NaN steps and flat windows skipped)."""
    vals: list[float] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for x in ds.X:
            if x.shape[0] < 3:
                continue
            c = x - np.nanmean(x, axis=0)
            den = np.nansum(c * c, axis=0)
            num = np.nansum(c[1:] * c[:-1], axis=0)
            ok = den > 1e-12
            vals.extend((num[ok] / den[ok]).tolist())
    return float(np.mean(vals)) if vals else 0.0


class Augmenter:
    """Applies the configured transforms to a padded batch [B, T, F] with lengths [B]."""

    def __init__(self, mode: str, jitter: float, scale: float, crop: float, smooth: bool) -> None:
        if mode not in AUGMENT_MODES:
            raise ValueError(f"augment must be one of {AUGMENT_MODES}, got {mode!r}")
        shapes = mode == "all" or (mode == "auto" and smooth)
        self.jitter = jitter if mode != "none" else 0.0
        self.scale = scale if shapes else 0.0
        self.crop = crop if shapes else 0.0

    def describe(self) -> dict[str, float]:
        """The magnitudes in force (0 = off)."""
        return {"jitter": self.jitter, "scale": self.scale, "crop": self.crop}

    def __call__(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """An augmented copy of ``x`` (padding stays where it was)."""
        if self.crop:
            x = self._slice(x, lengths)
        if self.scale:
            x = x * (1 + self.scale * torch.randn(len(x), 1, x.shape[-1], device=x.device))
        if self.jitter:
            x = x + self.jitter * torch.randn_like(x)
        return x

    def _slice(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        for i, n in enumerate(lengths.tolist()):
            keep = max(2, math.ceil(n * (1 - self.crop)))
            if keep >= n:
                continue
            start = int(torch.randint(0, n - keep + 1, (1,)).item())
            piece = x[i, start : start + keep].T[None]  # [1, F, keep]
            out[i, :n] = functional.interpolate(piece, size=n, mode="linear", align_corners=True)[0].T
        return out
