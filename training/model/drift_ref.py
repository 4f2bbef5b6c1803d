"""The training-time reference that drift is measured against, stored in the checkpoint (numpy only).

A :class:`DriftReference` holds, per input feature, the quantile bin edges of the training split's
values (every real timestep of every training window, raw units, NaN left out) and the share of
training values in each bin; the class distribution of the training labels; and, on the validation
split, the distribution of the model's own predicted classes and its mean top probability.

It lives in the checkpoint's metadata JSON under ``drift`` (optional: files written before it, or by
code that does not compute it, load with ``drift`` None and a worker reports drift as unknown).
The population stability index :func:`psi` is what a worker computes against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Quantile bins per feature (deciles).
BINS = 10
#: At most this many training values per feature go into the quantiles (a deterministic sample above it).
MAX_VALUES = 200_000
#: Shares below this are clamped in the PSI, so an empty bin gives a large but finite term.
EPS = 1e-4


class DriftReferenceError(ValueError):
    """A checkpoint's ``drift`` document is malformed."""


@dataclass(frozen=True)
class DriftReference:
    """Training-split statistics of one checkpoint (see the module docstring).

    ``edges[f]`` are the ascending interior edges of feature ``f``'s bins (a value ``v`` falls in bin
    ``searchsorted(edges[f], v, side='right')``, so there are ``len(edges[f]) + 1`` bins, fewer than
    :data:`BINS` when quantiles tie); ``shares[f]`` the training share per bin.
    """

    edges: list[np.ndarray]
    shares: list[np.ndarray]
    label_shares: np.ndarray
    pred_shares: np.ndarray
    top_prob_mean: float

    @property
    def n_features(self) -> int:
        """Features covered."""
        return len(self.edges)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document stored in the checkpoint."""
        return {
            "bins": BINS,
            "features": [{"edges": [float(v) for v in e], "shares": [float(v) for v in s]}
                         for e, s in zip(self.edges, self.shares)],
            "label_shares": [float(v) for v in self.label_shares],
            "pred_shares": [float(v) for v in self.pred_shares],
            "top_prob_mean": float(self.top_prob_mean),
        }

    @classmethod
    def from_dict(cls, doc: Any, n_features: int, n_classes: int) -> DriftReference:
        """Parse and check a stored document; raises :class:`DriftReferenceError`."""
        try:
            feats = doc["features"]
            edges = [np.asarray(f["edges"], dtype=np.float64) for f in feats]
            shares = [np.asarray(f["shares"], dtype=np.float64) for f in feats]
            labels = np.asarray(doc["label_shares"], dtype=np.float64)
            preds = np.asarray(doc["pred_shares"], dtype=np.float64)
            top = float(doc["top_prob_mean"])
        except (KeyError, TypeError, ValueError) as e:
            raise DriftReferenceError(f"drift statistics incomplete: {e}") from e
        if len(edges) != n_features:
            raise DriftReferenceError(f"drift statistics cover {len(edges)} features, the model has {n_features}")
        for f, (edge, share) in enumerate(zip(edges, shares)):
            if edge.ndim != 1 or len(share) != len(edge) + 1 or bool(np.any(np.diff(edge) <= 0)) \
                    or not np.isfinite(edge).all():
                raise DriftReferenceError(f"drift statistics of feature {f}: edges must ascend and have one "
                                          f"fewer element than shares")
        if labels.shape != (n_classes,) or preds.shape != (n_classes,):
            raise DriftReferenceError(f"drift class shares must have {n_classes} elements")
        return cls(edges, shares, labels, preds, top)


def quantile_edges(values: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Ascending, distinct interior edges at the ``1/bins .. (bins-1)/bins`` quantiles of ``values``."""
    if values.size == 0:
        return np.zeros(0)
    qs = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])
    return np.unique(qs)


def bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """How many of ``values`` (NaN left out) fall in each of the ``len(edges) + 1`` bins."""
    v = values[~np.isnan(values)]
    return np.bincount(np.searchsorted(edges, v, side="right"), minlength=len(edges) + 1)


def shares_of(counts: np.ndarray) -> np.ndarray:
    """Counts as shares (all zero when empty)."""
    total = counts.sum()
    return counts / total if total else np.zeros(len(counts))


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index ``sum((a - e) * ln(a / e))`` of two share vectors (clamped at :data:`EPS`)."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), EPS)
    a = np.maximum(np.asarray(actual, dtype=np.float64), EPS)
    return float(np.sum((a - e) * np.log(a / e)))


def build_reference(windows: Sequence[np.ndarray], labels: np.ndarray, n_classes: int,
                    val_probs: np.ndarray, seed: int = 0) -> DriftReference:
    """The reference of a training split (``windows`` [T_i, F] raw, ``labels``) and the model's
    validation probabilities ``val_probs`` [N_val, C]."""
    allx = np.concatenate([np.asarray(w, dtype=np.float64) for w in windows], axis=0)
    if len(allx) > MAX_VALUES:  # a fixed generator: the same data gives the same edges
        allx = allx[np.random.default_rng(seed).choice(len(allx), MAX_VALUES, replace=False)]
    edges, shares = [], []
    for f in range(allx.shape[1]):
        col = allx[:, f]
        e = quantile_edges(col[~np.isnan(col)])
        edges.append(e)
        shares.append(shares_of(bin_counts(col, e)))
    label_shares = shares_of(np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes)[:n_classes])
    probs = np.asarray(val_probs, dtype=np.float64)
    preds = shares_of(np.bincount(probs.argmax(axis=1), minlength=n_classes)) if len(probs) else np.zeros(n_classes)
    top = float(probs.max(axis=1).mean()) if len(probs) else 0.0
    return DriftReference(edges, shares, label_shares, preds, top)
