"""The accuracy benchmark's report (training.experiments.accuracy): table, DTW column, met logic, merge, task discovery."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("matplotlib")

from training.experiments.accuracy import merge, target_for, task_names, verdict, write_report


def _run(task: str, seed: int, acc: float, seconds: float = 10.0) -> dict[str, Any]:
    return {"task": task, "seed": seed, "test_accuracy": acc, "test_windows": 100, "epochs": 40 + seed,
            "seconds_per_epoch": 0.1, "seconds": seconds}


def _baseline(acc: float, subsampled: bool = False) -> dict[str, Any]:
    return {"accuracy": acc, "seconds": 1.5, "test_windows": 50 if subsampled else 100, "test_total": 100,
            "train_windows": 40, "subsampled": subsampled, "mode": "pairs"}


def _data(lo: int, hi: int, channels: int = 1) -> dict[str, Any]:
    return {"min_length": lo, "max_length": hi, "train": 40, "test": 100, "channels": channels, "classes": 3}


def _args(tmp_path: Path, **kw: Any) -> argparse.Namespace:
    base = {"results": tmp_path, "seeds": 3, "n": 6000, "test_n": 20000, "merge": False, "no_baseline": False,
            "dtw_max_test": 5000, "threads": 1, "jobs": 1}
    return argparse.Namespace(**{**base, **kw})


def _rows(md: str) -> dict[str, list[str]]:
    rows = {}
    for line in md.splitlines():
        if line.startswith("| ") and not line.startswith("| task"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells
    return rows


def test_report_table_mean_std_dtw_and_met(tmp_path: Path) -> None:
    runs = [_run("GunPoint", s, a) for s, a in enumerate([0.99, 1.0, 0.98])]
    runs += [_run("ACSF1", s, a) for s, a in enumerate([0.90, 0.88, 0.86])]  # target 85 met, but below DTW
    runs += [_run("PickupGestureWiimoteZ", s, a) for s, a in enumerate([0.80, 0.76, 0.78])]  # DTW 70 + 5 -> met
    runs += [_run("synthetic", s, 0.981) for s in range(3)]
    tasks = {"GunPoint": {"data": _data(150, 150), "baseline": _baseline(0.9067)},
             "ACSF1": {"data": _data(1460, 1460), "baseline": _baseline(0.91)},
             "PickupGestureWiimoteZ": {"data": _data(29, 361), "baseline": _baseline(0.70)},
             "synthetic": {"data": _data(20, 20), "baseline": _baseline(0.958, subsampled=True)}}
    md_path, js_path = write_report(runs, tasks, _args(tmp_path), 600.0)
    md = md_path.read_text()
    rows = _rows(md)
    assert rows["GunPoint"][5] == "99.00 ± 0.82"
    assert rows["GunPoint"][6] == "90.67"
    assert rows["GunPoint"][9] == "100.0 / 100.0"  # InceptionTime / HIVE-COTE 2 on the archive's split
    assert rows["GunPoint"][11] == "no"  # 99.00 under the target of 100 (InceptionTime's figure on this split)
    assert rows["ACSF1"][1] == "1460" and rows["ACSF1"][11] == "no"  # below DTW
    assert rows["PickupGestureWiimoteZ"][1] == "29–361"
    assert "DTW + 5" in rows["PickupGestureWiimoteZ"][10] and "75.0" in rows["PickupGestureWiimoteZ"][10]
    assert rows["PickupGestureWiimoteZ"][11] == "yes" and rows["PickupGestureWiimoteZ"][9] == "-"
    assert "50 of 100 test windows" in rows["synthetic"][6]
    assert rows["synthetic"][11] == "yes"
    assert rows["GunPoint"][12] == "10" and rows["GunPoint"][13] == "41"
    assert "1-NN DTW (%)" in md and "--seeds 3" in md and "nothing is tuned" in md
    assert (tmp_path / "accuracy.png").stat().st_size > 0
    data = json.loads(js_path.read_text())
    assert data["tasks"]["ACSF1"]["met"] == "no" and len(data["runs"]) == 12


def test_report_without_baseline(tmp_path: Path) -> None:
    runs = [_run("GunPoint", 0, 1.0), _run("GunPoint", 1, 1.0), _run("PickupGestureWiimoteZ", 0, 0.8)]
    md_path, _ = write_report(runs, {}, _args(tmp_path, no_baseline=True, seeds=2), 60.0)
    md = md_path.read_text()
    rows = _rows(md)
    assert rows["GunPoint"][6] == "not run" and rows["GunPoint"][11] == "yes"
    assert rows["PickupGestureWiimoteZ"][11] == "n/a"
    assert "only the fixed targets were checked" in md


def test_verdict_and_targets() -> None:
    assert verdict(0.99, 0.99, 0.9) == "yes"
    assert verdict(0.99, 0.99, 0.99) == "no"  # must be above DTW, not equal
    assert verdict(0.98, 0.99, None) == "no"
    assert verdict(0.5, None, None) == "n/a"
    assert verdict(0.5, None, 0.4) == "yes"  # a new dataset: only 'above DTW'
    assert target_for("PickupGestureWiimoteZ", 0.7) == pytest.approx(0.75)
    assert target_for("PickupGestureWiimoteZ", None) is None
    assert target_for("BasicMotions", None) == 1.0


def test_merge_keeps_other_tasks_and_old_baseline() -> None:
    prev = {"runs": [_run("GunPoint", 0, 0.9), _run("ACSF1", 0, 0.8)], "seconds": 100.0,
            "tasks": {"GunPoint": {"data": _data(150, 150), "baseline": _baseline(0.9)},
                      "ACSF1": {"data": _data(1460, 1460), "baseline": _baseline(0.64)}}}
    runs, tasks, seconds = merge(prev, [_run("GunPoint", 0, 1.0)], {"GunPoint": {"data": _data(150, 150), "baseline": None}}, 5.0)
    assert sorted((r["task"], r["test_accuracy"]) for r in runs) == [("ACSF1", 0.8), ("GunPoint", 1.0)]
    assert tasks["GunPoint"]["baseline"]["accuracy"] == 0.9 and tasks["ACSF1"]["baseline"]["accuracy"] == 0.64
    assert seconds == 105.0


def test_task_names_discovers_dataset_folders(tmp_path: Path) -> None:
    for name in ("Zeta", "Alpha"):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}_TRAIN.ts").write_text("")
        (tmp_path / name / f"{name}_TEST.ts").write_text("")
    (tmp_path / "Empty").mkdir()
    assert task_names(tmp_path) == ["synthetic", "Alpha", "Zeta"]


def test_readme_shows_the_committed_accuracy_table() -> None:
    """The README's accuracy table is results/accuracy.md's table (`make accuracy` copies it)."""
    from training.experiments.accuracy import readme_table, report_table

    root = Path(__file__).resolve().parents[2]
    table = report_table((root / "results" / "accuracy.md").read_text())
    assert table.startswith("| task |")
    assert readme_table((root / "README.md").read_text()) == table


def test_sync_readme_replaces_only_the_marked_block(tmp_path: Path) -> None:
    from training.experiments.accuracy import README_BEGIN, README_END, readme_table, sync_readme

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n\n{README_BEGIN}\n| old |\n{README_END}\n\nafter\n")
    md = tmp_path / "accuracy.md"
    md.write_text("# Accuracy\n\ntext\n\n| task | acc |\n|---|---|\n| a | 1 |\n\nmore\n")
    sync_readme(readme, md)
    text = readme.read_text()
    assert readme_table(text) == "| task | acc |\n|---|---|\n| a | 1 |"
    assert text.startswith("intro\n") and text.endswith("\nafter\n") and "| old |" not in text
