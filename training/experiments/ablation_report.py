"""``python -m training.experiments.ablation_report``: issue 26's ablation table from the runs that were recorded.

Reads an ``accuracy.json`` of the default (its runs carry each half's accuracy, ``parts``), the previous
default's ``accuracy.json``, and the ``training.experiments.ablation`` rows (JSON lines) of other recipes; compares
them on seed 0 of every task they share: the mean over the sets with published figures (beside
InceptionTime's and HIVE-COTE 2's on the same split), wins / ties / losses against 1-NN DTW, and
training seconds. Writes ``summary.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from training.experiments.accuracy import INCEPTION_TIME, SAME_SPLIT

_TIE = 1e-9


def _score(acc: dict[str, float], dtw: dict[str, float], secs: list[float]) -> dict[str, Any]:
    published = sorted(t for t in acc if INCEPTION_TIME.get(t) is not None)
    against = {t: d for t, d in dtw.items() if t in acc}
    wins = sum(acc[t] > d + _TIE for t, d in against.items())
    ties = sum(abs(acc[t] - d) <= _TIE for t, d in against.items())
    return {"tasks": len(acc), "published_sets": len(published),
            "mean_published": float(np.mean([acc[t] for t in published])) if published else None,
            "mean_all": float(np.mean(list(acc.values()))),
            "wins": wins, "ties": ties, "losses": len(against) - wins - ties,
            "median_s": float(np.median(secs)) if secs else None, "max_s": float(np.max(secs)) if secs else None,
            "per_task": acc}


def variants(new: dict[str, Any], old: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each recipe's seed-0 accuracies over the tasks all of them ran."""
    dtw = {t: float(v["baseline"]["accuracy"]) for t, v in new["tasks"].items() if v.get("baseline")}
    first = [r for r in new["runs"] if r["seed"] == 0]
    out: dict[str, tuple[dict[str, float], list[float]]] = {
        "issue 21 default": ({r["task"]: r["test_accuracy"] for r in old["runs"] if r["seed"] == 0},
                             [r["seconds"] for r in old["runs"] if r["seed"] == 0]),
        "new default": ({r["task"]: r["test_accuracy"] for r in first}, [r["seconds"] for r in first]),
        "its network alone (no branch)": ({r["task"]: r["parts"]["network"] for r in first if r.get("parts")}, []),
        "its branch alone (no network)": ({r["task"]: r["parts"]["rocket"] for r in first if r.get("parts")}, []),
    }
    for name in dict.fromkeys(r["recipe"] for r in rows):
        rs = [r for r in rows if r["recipe"] == name and r["seed"] == 0]
        out[name] = ({r["task"]: r["test_accuracy"] for r in rs}, [r["seconds"] for r in rs])
        if all(r.get("parts") for r in rs):
            out[f"{name}: network alone"] = ({r["task"]: r["parts"]["network"] for r in rs}, [])
    common = set.intersection(*(set(acc) for acc, _ in out.values()))
    return {k: _score({t: a for t, a in acc.items() if t in common}, dtw, secs) for k, (acc, secs) in out.items()}


def main(argv: list[str] | None = None) -> int:
    """Print the table; write ``--out``."""
    p = argparse.ArgumentParser(prog="python -m training.experiments.ablation_report", description=__doc__)
    p.add_argument("--new", type=Path, default=Path("results/accuracy.json"))
    p.add_argument("--old", type=Path, required=True, help="the previous default's accuracy.json")
    p.add_argument("--rows", type=Path, default=Path("results/ablation-26/runs.jsonl"))
    p.add_argument("--out", type=Path, default=Path("results/ablation-26/summary.json"))
    args = p.parse_args(argv)
    rows = [json.loads(x) for x in args.rows.read_text().splitlines() if x.strip()] if args.rows.is_file() else []
    res = variants(json.loads(args.new.read_text()), json.loads(args.old.read_text()), rows)
    any_res = next(iter(res.values()))
    published = sorted(t for t in any_res["per_task"] if INCEPTION_TIME.get(t) is not None)
    it = float(np.mean([SAME_SPLIT[t][0] for t in published])) / 100
    hc = float(np.mean([SAME_SPLIT[t][1] for t in published])) / 100
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"variants": res, "inception_time_same_split": it, "hive_cote2_same_split": hc},
                                   indent=1) + "\n")
    print(f"| recipe (seed 0, {any_res['tasks']} tasks) | mean over the {len(published)} published sets (%) | "
          "mean over all (%) | vs 1-NN DTW (wins / ties / losses) | train s / run (median, max) |")
    print("|---|---|---|---|---|")
    for name, s in res.items():
        secs = "-" if s["median_s"] is None else f"{s['median_s']:.0f}, {s['max_s']:.0f}"
        print(f"| {name} | {100 * s['mean_published']:.1f} | {100 * s['mean_all']:.1f} | "
              f"{s['wins']} / {s['ties']} / {s['losses']} | {secs} |")
    print(f"| InceptionTime, HIVE-COTE 2 (same split) | {100 * it:.1f}, {100 * hc:.1f} | | | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
