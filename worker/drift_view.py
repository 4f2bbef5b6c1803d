"""The drift lines of ``bigru-worker status``: one per live replica that reports drift."""

from __future__ import annotations

from typing import Any

from worker.drift import PSI_ACT, PSI_WATCH


def level(psi: float | None) -> str:
    """``stable`` below 0.1, ``watch`` up to 0.25, ``act`` above; ``-`` when not measured yet."""
    if psi is None:
        return "-"
    return "act" if psi > PSI_ACT else "watch" if psi > PSI_WATCH else "stable"


def _f(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def drift_lines(consumers: list[dict[str, Any]]) -> list[str]:
    """Lines for the consumers whose heartbeat carries a ``drift`` summary (none: no lines)."""
    rows = [(c["name"], c["drift"]) for c in consumers if c.get("alive") and c.get("drift")]
    if not rows:
        return []
    out = ["", f"{'drift':<24} {'level':<7} {'max psi':>8} {'feature':>8} {'pred psi':>9} {'top p':>6} {'ref':>6}  sample"]
    for name, d in rows:
        if not d.get("known"):
            out.append(f"{name:<24} {'unknown':<7} (checkpoint {d.get('model')} has no drift statistics)")
            continue
        worst = max(d.get("max_psi") or 0.0, d.get("prediction_psi") or 0.0) if d.get("max_psi") is not None else None
        out.append(f"{name:<24} {level(worst):<7} {_f(d.get('max_psi')):>8} {_f(d.get('max_feature')):>8} "
                   f"{_f(d.get('prediction_psi')):>9} {_f(d.get('top_prob_mean')):>6} {_f(d.get('reference_top_prob')):>6}"
                   f"  {d.get('windows', 0)} windows")
        if d.get("features_over_act"):
            out.append(f"{'':<24} features over {PSI_ACT}: {', '.join(map(str, d['features_over_act']))}")
    return out
