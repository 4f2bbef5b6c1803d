"""The soak (``make soak``): its verdicts on made-up samples, and a CI-sized run (one minute at a fixed,
low rate, tiny results cap) that must lose nothing, duplicate nothing and drain to 0 pending."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import soak_report

ROOT = Path(__file__).resolve().parents[2]


def _doc(seconds: float, rss: dict[str, Any], restart_at: float | None = None) -> dict[str, Any]:
    """A soak document with a sample every 5 s; ``rss[name](t)`` gives KiB; the replica ``r1`` gets a
    new pid at ``restart_at``."""
    samples = []
    for i in range(int(seconds / 5) + 1):
        t = i * 5.0
        pids = {name: 100 + j for j, name in enumerate(rss)}
        if restart_at is not None and t >= restart_at:
            pids["r1"] = 999
        samples.append({"t": t, "phase": "load", "pids": pids, "rss_kb": {n: f(t) for n, f in rss.items()},
                        "pending": 0, "lag": 0, "consumers": 2, "len": {"input": 10, "results": 100, "dead": 0}})
    return {"samples": samples, "events": [], "plan": {"replicas": 2, "maintenance_s": 10.0}, "rate": 100.0,
            "worker_settings": {"results_maxlen": 1000, "dead_maxlen": 1000}, "stream_node_max_entries": 100,
            "audit": {"published": 10, "with_result": 10, "lost": 0, "duplicates": 0, "strays": 0, "not_ok": 0},
            "reader": {"entries_read": 10, "entries_added": 10, "complete": True},
            "versions": {"first": "a", "reload": "b"}, "pool_exit_code": 0}


def _rss_rows(doc: dict[str, Any]) -> dict[tuple[str, int], bool | None]:
    return {(r["name"], r["pid"]): r["pass"] for r in soak_report.incarnations(doc)}


def test_rss_flat_is_judged_per_process_on_its_own_minutes() -> None:
    flat = lambda t: 200_000  # noqa: E731
    leak = lambda t: 200_000 + 100 * t  # noqa: E731  (+30 % over ten minutes)
    rows = _rss_rows(_doc(600, {"r0": flat, "r1": flat, "sup": leak}, restart_at=400))
    assert rows[("r0", 100)] is True and rows[("sup", 102)] is False
    assert rows[("r1", 101)] is True  # judged up to its kill (0-395 s)
    assert rows[("r1", 999)] is True  # the restarted process: 400-600 s, its own second and last minutes


def test_rss_not_judged_on_a_short_run_or_a_short_life() -> None:
    rows = _rss_rows(_doc(90, {"r0": lambda t: 1000 + 100 * t, "r1": lambda t: 1000}))
    assert set(rows.values()) == {None}
    targets = soak_report.targets(_doc(90, {"r0": lambda t: 1000, "r1": lambda t: 1000}))
    assert all(t["pass"] is None for t in targets if t["measure"].startswith("RSS"))
    assert [t["measure"] for t in targets if t["pass"] is False] == ["hot reload: every replica serves the new version",
                                                                     "killed replica restarted by the supervisor"]


def test_stream_bounds_and_verdicts() -> None:
    doc = _doc(60, {"r0": lambda t: 1000})
    doc["samples"][3]["len"]["results"] = 1201  # cap 1000 + two 100-entry nodes = 1200
    doc["audit"]["duplicates"] = 1
    missed = {t["measure"] for t in soak_report.targets(doc) if t["pass"] is False}
    assert {"results stream bounded", "duplicates (surplus results per id)"} <= missed
    assert "input stream bounded" not in missed and "lost (published ids without a result)" not in missed


@pytest.mark.slow
def test_short_soak_run_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--minutes", "1", "--rate", "200", "--results-maxlen", "3000",
         "--sample-s", "2", "--out", str(tmp_path)],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"), capture_output=True, text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((tmp_path / "soak.json").read_text())
    assert doc["audit"]["published"] == 12_000 and doc["audit"]["lost"] == 0 and doc["audit"]["duplicates"] == 0
    assert doc["reader"]["complete"] and doc["samples"][-1]["pending"] == 0
    assert max(s["len"]["results"] for s in doc["samples"]) < 3000 + 300  # capped, though 12 000 results passed
    assert {e["event"] for e in doc["events"]} >= {"reload_served", "restarted", "drained"}
    verdicts = {t["measure"]: t["pass"] for t in doc["targets"]}
    assert all(v is None for k, v in verdicts.items() if k.startswith("RSS"))  # 1 minute: not judged
    assert (tmp_path / "soak.md").read_text().count("not judged") >= 3 and (tmp_path / "soak.png").stat().st_size > 1000
