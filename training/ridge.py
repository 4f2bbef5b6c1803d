"""Closed-form ridge read-out for the random-convolution branch, its strength and temperature chosen by
leave-one-out on the training windows alone.

As MiniRocket's ``RidgeClassifierCV``: features standardized, one-vs-rest targets in {-1, +1}, the
penalty picked from :data:`ALPHAS` by the exact leave-one-out error (one eigendecomposition of the
windows' Gram matrix gives every alpha's LOO predictions). The branch's scores become probabilities
through one temperature fitted to the LOO scores (their cross-entropy), so they mix with the
network's probabilities on a common scale without any held-out data. Standardization and temperature
are folded into one linear map (``coef``, ``intercept``) that the served graph applies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Ridge penalties tried (MiniRocket's grid).
ALPHAS = np.logspace(-3, 3, 10)
#: Above this many windows the ridge is fitted on a seeded subsample (the Gram matrix is n x n).
MAX_WINDOWS = 1500
_TEMPERATURES = np.logspace(-2, 2.5, 91)


@dataclass(frozen=True)
class RidgeFit:
    """A fitted read-out: ``logits = features @ coef + intercept``; ``alpha``, ``temperature``, the LOO accuracy,
    and ``loo_logits`` [n, C]: each training window's logits from the read-out fitted without it (the
    plain logits for windows left out of a subsampled fit)."""

    coef: np.ndarray
    intercept: np.ndarray
    alpha: float
    temperature: float
    loo_accuracy: float
    loo_logits: np.ndarray


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    out: np.ndarray = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return out


def fit_ridge(features: np.ndarray, y: np.ndarray, classes: int, seed: int = 0) -> RidgeFit:
    """Fit the read-out on ``features`` [n, m] with labels ``y`` [n] in ``0..classes-1``."""
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    everything = x
    keep = np.arange(len(x))
    if len(x) > MAX_WINDOWS:
        keep = np.sort(np.random.default_rng(seed).choice(len(x), MAX_WINDOWS, replace=False))
        x, y = x[keep], y[keep]
    mu = x.mean(axis=0)
    sd = x.std(axis=0)
    sd[sd < 1e-8] = 1.0
    z = (x - mu) / sd
    t = -np.ones((len(y), classes))
    t[np.arange(len(y)), y] = 1.0
    t_mean = t.mean(axis=0)
    tc = t - t_mean
    lam, q = np.linalg.eigh(z @ z.T)
    lam = np.clip(lam, 0.0, None)
    qt = q.T @ tc
    best: tuple[float, float, float, np.ndarray, np.ndarray] | None = None
    for alpha in ALPHAS:
        g = 1.0 / (lam + alpha)
        dual = q @ (g[:, None] * qt)  # (K + alpha I)^-1 tc
        shrink = lam * g
        fitted = q @ (shrink[:, None] * qt)  # K dual, the centered fit
        # The hat matrix's diagonal: the unpenalized intercept's 1/n plus K (K + alpha I)^-1's (a zero
        # eigenvalue, such as centering's constant direction, adds nothing).
        hat = 1.0 / len(y) + (q**2) @ shrink
        loo = t - (tc - fitted) / np.clip(1.0 - hat, 1e-12, None)[:, None]  # leave-one-out scores
        err = float(((loo - t) ** 2).mean())
        acc = float((loo.argmax(axis=1) == y).mean())
        if best is None or (acc, -err) > (best[1], -best[2]):
            best = (float(alpha), acc, err, dual, loo)
    assert best is not None
    alpha, acc, _, dual, loo = best
    nll = [float(-_log_softmax(tau * loo)[np.arange(len(y)), y].mean()) for tau in _TEMPERATURES]
    tau = float(_TEMPERATURES[int(np.argmin(nll))])
    w = z.T @ dual  # [m, C] on standardized features
    coef = tau * w / sd[:, None]
    intercept = tau * (t_mean - (mu / sd) @ w)
    loo_logits = everything @ coef + intercept
    loo_logits[keep] = tau * loo
    return RidgeFit(coef.astype(np.float32), intercept.astype(np.float32), alpha, tau, acc, loo_logits.astype(np.float32))
