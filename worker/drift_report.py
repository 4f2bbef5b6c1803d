"""What a drift reading says, and how it is shown: the PSI thresholds, :class:`DriftReport` (one reading of
``worker.drift.DriftMonitor``) and :class:`DriftSummary` (the frozen, typed summary a replica's heartbeat
carries and ``bigru-worker status`` renders with :func:`drift_lines`).

Pure Python (no numpy, no Prometheus): ``bigru-worker status`` and ``--check`` read heartbeats with it.
The conventional PSI reading: below 0.1 stable, 0.1 to 0.25 watch, above 0.25 act.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PSI_ACT", "PSI_WATCH", "DriftReport", "DriftSummary", "drift_lines", "level"]

#: PSI thresholds of drift: watch above the first, act above the second.
PSI_WATCH, PSI_ACT = 0.1, 0.25
#: At most this many features over :data:`PSI_ACT` are named in a summary.
MAX_NAMED_FEATURES = 16


def level(psi: float | None) -> str:
    """``stable`` below 0.1, ``watch`` up to 0.25, ``act`` above; ``-`` when not measured yet."""
    if psi is None:
        return "-"
    return "act" if psi > PSI_ACT else "watch" if psi > PSI_WATCH else "stable"


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 4)


@dataclass(frozen=True)
class DriftSummary:
    """The heartbeat's ``drift`` document, typed (``known`` False: the checkpoint carries no statistics,
    and only ``model`` is set)."""

    known: bool
    model: str
    windows: int = 0
    max_psi: float | None = None
    max_feature: int | None = None
    features_over_act: tuple[int, ...] = ()
    prediction_psi: float | None = None
    top_prob_mean: float | None = None
    reference_top_prob: float | None = None

    def to_doc(self) -> dict[str, Any]:
        """The JSON document (an unknown reading holds ``known`` and ``model`` only)."""
        if not self.known:
            return {"known": False, "model": self.model}
        return {
            "known": True, "model": self.model, "windows": self.windows, "max_psi": self.max_psi,
            "max_feature": self.max_feature, "features_over_act": list(self.features_over_act),
            "prediction_psi": self.prediction_psi, "top_prob_mean": self.top_prob_mean,
            "reference_top_prob": self.reference_top_prob,
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> DriftSummary:
        """Parse a document written by :meth:`to_doc` (missing fields default)."""
        return cls(
            known=bool(doc.get("known")), model=str(doc.get("model", "")), windows=int(doc.get("windows") or 0),
            max_psi=doc.get("max_psi"), max_feature=doc.get("max_feature"),
            features_over_act=tuple(doc.get("features_over_act") or ()), prediction_psi=doc.get("prediction_psi"),
            top_prob_mean=doc.get("top_prob_mean"), reference_top_prob=doc.get("reference_top_prob"),
        )

    @property
    def worst(self) -> float | None:
        """The larger of the worst feature's PSI and the prediction PSI (None before a full sample)."""
        if self.max_psi is None:
            return None
        return max(self.max_psi, self.prediction_psi or 0.0)


@dataclass(frozen=True)
class DriftReport:
    """One drift reading of a replica (``known`` False: the checkpoint carries no statistics)."""

    version: str
    known: bool
    windows: int = 0  # sampled windows in the rolling sample
    feature_psi: list[float] = field(default_factory=list)
    prediction_psi: float | None = None
    top_prob_mean: float | None = None
    reference_top_prob: float | None = None

    def summary(self) -> DriftSummary:
        """What the heartbeat carries (what ``bigru-worker status`` shows)."""
        if not self.known:
            return DriftSummary(known=False, model=self.version)
        psi = self.feature_psi
        worst = max(range(len(psi)), key=psi.__getitem__) if psi else None
        return DriftSummary(
            known=True, model=self.version, windows=self.windows,
            max_psi=None if worst is None else round(psi[worst], 4), max_feature=worst,
            features_over_act=tuple(i for i, v in enumerate(psi) if v > PSI_ACT)[:MAX_NAMED_FEATURES],
            prediction_psi=_round(self.prediction_psi), top_prob_mean=_round(self.top_prob_mean),
            reference_top_prob=_round(self.reference_top_prob),
        )


def _f(v: float | int | None) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def drift_lines(replicas: list[tuple[str, DriftSummary]]) -> list[str]:
    """The drift lines of ``bigru-worker status``: one per (live replica, its summary); none: no lines."""
    if not replicas:
        return []
    out = ["", f"{'drift':<24} {'level':<7} {'max psi':>8} {'feature':>8} {'pred psi':>9} {'top p':>6} {'ref':>6}  sample"]
    for name, d in replicas:
        if not d.known:
            out.append(f"{name:<24} {'unknown':<7} (checkpoint {d.model} has no drift statistics)")
            continue
        out.append(f"{name:<24} {level(d.worst):<7} {_f(d.max_psi):>8} {_f(d.max_feature):>8} "
                   f"{_f(d.prediction_psi):>9} {_f(d.top_prob_mean):>6} {_f(d.reference_top_prob):>6}"
                   f"  {d.windows} windows")
        if d.features_over_act:
            out.append(f"{'':<24} features over {PSI_ACT}: {', '.join(map(str, d.features_over_act))}")
    return out
