"""``python -m bench.continuous_report``: results/continuous.md from results/continuous.json (``bench.continuous``)."""

from __future__ import annotations

import json
import sys
from typing import Any

from bench.pipeline import ROOT


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f} %"


def scenario_md(s: dict[str, Any]) -> list[str]:
    """The shift scenario's section."""
    a, p = s["accuracy"], s["parts"]
    d = json.loads(s["candidate"].get("decision") or "{}")
    gap = None if a["shifted_promoted_live"] is None or a["shifted_reference_same_windows"] is None else \
        100 * (a["shifted_reference_same_windows"] - a["shifted_promoted_live"])
    summary = json.loads(s["loop"].get("last_summary") or "{}")
    return [
        "## 1. The shift scenario, live (once)",
        "",
        f"Synthetic task (T = 20, one feature), {s['rate_windows_per_s']:.0f} windows/s with a `cid` each, one "
        "primary `bigru-worker` process following the registry, `bigru-train record` and `bigru-train watch` as "
        f"processes of their own. After the warm-up both class means move by one standard deviation; the labeller "
        f"sends the true class of {100 * s['label_share']:.0f} % of the windows {s['label_delay_s']:g} s after they "
        "were published. Every model (primary, candidate, reference) is the trainer's default model (fixed "
        "MiniRocket branch plus BiGRU) with its default 45 s budget. The loop's settings are its defaults but for "
        f"the times a bench can wait: drift held {s['args_hold']:g} s (default 300), {s['args_min_labels']} new "
        f"labels for a drift retrain (default 100), the newest {s['args_max_live']} live windows (default 20 000), "
        f"a minimum shadow wait of {s['args_min_wait']:g} s (default 30).",
        "",
        "| measure | target | reached |",
        "|---|---|---|",
        f"| accuracy on live traffic after the promotion ({a['windows_after_promotion']} windows) | within 1 point "
        f"of a model trained on the shifted distribution | {_pct(a['shifted_promoted_live'])} vs {_pct(a['shifted_reference_same_windows'])} "
        f"(the reference, 4 000 shifted windows, scored offline on the very same windows): "
        f"{'-' if gap is None else f'{gap:.2f}'} points below (one standard error on these windows is about 0.2 "
        f"points), **{'met' if gap is not None and gap <= 1 else 'missed'}** |",
        f"| time from the shift to a promoted model | reported | **{p['shift_to_promoted_s']} s** (serving everywhere "
        f"after {p['shift_to_serving_s']} s) |",
        f"| windows lost / answered twice during the whole loop ({s['published']} windows, reload under load "
        f"included) | 0 | **{s['lost']} / {s['answered_twice']}** |",
        "",
        "Before the shift the primary was right on " + _pct(a["pre_shift_primary"]) + " of the live windows, after "
        "it on " + _pct(a["shifted_primary"]) + " until the promotion.",
        "",
        "| part of the time | seconds | what |",
        "|---|---|---|",
        f"| detection | {p['detection_s']} | the shift to the first heartbeat at \"act\" (max feature PSI ≥ 0.25) |",
        f"| labels and the drift hold | {p['labels_wait_s']} | the rule: drift held {s['args_hold']} s and "
        f"{s['args_min_labels']} new labels (`BIGRU_WATCH_DRIFT_HOLD_S`, `BIGRU_WATCH_DRIFT_MIN_LABELS`); the "
        f"retrain used the newest {summary.get('live_windows', '-')} labelled windows (live only: drift called it) |",
        f"| retrain | {p['retrain_s']} | `training.retrain` with the trainer's defaults ({summary.get('train_windows', '-')} "
        "training windows; the 45 s budget counts optimizer steps only, the rest is the branch's transform and "
        "read-out on this shared machine) |",
        f"| shadow decision | {p['shadow_decision_s']} | the shadow replica's start, then the first look at "
        f"{d.get('pairs', '-')} labelled pairs → {d.get('outcome')}: {d.get('reason')} (minimum wait "
        f"{s['args_min_wait']:g} s) |",
        f"| reload | {p['reload_s']} | the primary's hot reload of the promoted version through its gate |",
        "",
        f"Recorder during the run: {s['recorder'].get('windows')} windows seen, {s['recorder'].get('joined')} "
        f"labelled, {s['recorder'].get('retained')} retained ({int(s['recorder'].get('retained_bytes', 0)) / 2**20:.1f} MiB "
        f"by its count), RSS at most {s['recorder_rss_mib']['max']} MiB; labels refused: {s['recorder'].get('refused')}.",
    ]


def trials_md(t: dict[str, Any]) -> list[str]:
    """The no-shift trials' section."""
    rows = ["| trial | outcome | pairs | b | c | p (better) | primary | candidate |", "|---|---|---|---|---|---|---|---|"]
    rows += [f"| {r['trial']} | {r['outcome']} | {r['pairs']} | {r['b']} | {r['c']} | {r['p_better']:.3g} | "
             f"{_pct(r['primary_accuracy'])} | {_pct(r['candidate_accuracy'])} |" for r in t["trials"]]
    return [
        "## 2. No shift: 10 candidates, never promoted?",
        "",
        "Run **offline** (a live loop ×10 does not fit this machine): a primary trained on the original data (4 000 "
        "synthetic windows), and per trial a candidate retrained from the same original data plus 2 000 unshifted "
        f"labelled windows (weight 0.8, the default; another seed each). Both with the default model but a "
        f"{t['budget_s']:g} s budget instead of 45 s. The promotion rule with its default "
        "settings (confidence 0.95, looks at 200, 400, ... 3 200 pairs, α = 0.01 a look) judges it against the "
        "primary on 3 200 fresh labelled windows, look by look.",
        "",
        f"**Promoted: {t['promoted']} of {len(t['trials'])}** (target: 0). The first run of the bench stopped at its "
        "25-minute timeout after trial 8; trial 9 ran afterwards (`--parts trials --first-trial 9`) against the same "
        "saved primary.",
        "",
        *rows,
    ]


def memory_md(m: dict[str, Any]) -> list[str]:
    """The recorder memory section."""
    last = m["samples"][-1]
    rows = ["| simulated s | windows retained | store (its count) MiB | evicted cids remembered | RSS growth MiB |",
            "|---|---|---|---|---|"]
    rows += [f"| {x['t_s']} | {x['windows']} | {x['store_mib']} | {x.get('evicted_cids_remembered', '-')} | "
             f"{x['rss_growth_mib']} |" for x in m["samples"][:: max(1, len(m["samples"]) // 10)]]
    return [
        "## 3. Recorder memory",
        "",
        f"The recorder's store (`training.live.Retained`) fed {m['rate']} windows/s of [20, 1] float32 for "
        f"{m['seconds']} s of simulated time ({m['rate'] * m['seconds']} windows, {m['feed_s']} s of wall time: the "
        f"store alone, without Redis), `BIGRU_RECORDER_MAX_MB` = {m['max_mb']:g}. The bound holds: after "
        f"{last['t_s']} s it keeps {last['windows']} windows ({last['store_mib']} MiB by its count, "
        f"{m['evicted']} evicted), the process grew by {last['rss_growth_mib']} MiB. The live run above (Redis "
        "included) peaked at the RSS it states.",
        "",
        *rows,
    ]


def render(doc: dict[str, Any]) -> str:
    """The whole page."""
    out = ["# The continuous loop: shift, labels, retrain, shadow, promotion", "",
           f"`python -m bench.continuous` ({doc['machine']}: **every time here is from a shared, busy machine**; "
           "each part ran once). Raw figures: [continuous.json](continuous.json). How the loop works: "
           "[docs/lifecycle.md](../docs/lifecycle.md#the-loop).", ""]
    s = doc.get("scenario")
    if s:
        args = doc["args"].get("scenario,trials,memory") or next(iter(doc["args"].values()))
        s = {**s, "args_hold": args["drift_hold_s"], "args_min_labels": args["drift_min_labels"],
             "args_max_live": args["max_live"], "args_min_wait": args["min_wait_s"]}
        out += scenario_md(s) + [""]
    if doc.get("no_shift"):
        out += trials_md(doc["no_shift"]) + [""]
    if doc.get("memory"):
        out += memory_md(doc["memory"]) + [""]
    return "\n".join(out)


def main() -> int:
    """Write results/continuous.md."""
    doc = json.loads((ROOT / "results" / "continuous.json").read_text())
    (ROOT / "results" / "continuous.md").write_text(render(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
