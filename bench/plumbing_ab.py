"""The plumbing ceiling of two code trees, interleaved on one redis-server: ``python -m bench.plumbing_ab
--code before=/old/tree --code after=. [--runs 3] [--windows 60000] [--out results/bench/hotpath-ab.md]``.

Each run calls that tree's own :func:`bench.plumbing.ceiling` (one null-model replica drains pre-filled
single-window entries, then 64-window entries) in a child process whose ``PYTHONPATH`` is the tree, so
the worker loop measured is the tree's. Trees alternate run by run, so drift of a shared machine hits
both alike. Writes a markdown table and its JSON beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.harness import LocalRedis

ROOT = Path(__file__).resolve().parents[1]

CHILD = ("import json, sys; from bench.plumbing import ceiling; "
         "print(json.dumps(ceiling(sys.argv[1], int(sys.argv[2]), 1, max_batch=256, per_entry=int(sys.argv[3]))))")


def one(url: str, tree: Path, windows: int, per_entry: int) -> dict[str, Any]:
    """One ceiling run of ``tree``'s code."""
    out = subprocess.run([sys.executable, "-c", CHILD, url, str(windows), str(per_entry)], cwd=tree, check=True,
                         env=dict(os.environ, PYTHONPATH=str(tree)), capture_output=True, text=True, timeout=900)
    row: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return row


def main(argv: list[str] | None = None) -> int:
    """Entry point (see the module docstring)."""
    p = argparse.ArgumentParser(prog="bench.plumbing_ab")
    p.add_argument("--code", action="append", required=True, metavar="NAME=PATH")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--windows", type=int, default=60_000)
    p.add_argument("--out", default=str(ROOT / "results" / "bench" / "hotpath-ab.md"))
    a = p.parse_args(argv)
    trees = {k: Path(v).resolve() for k, v in (c.split("=", 1) for c in a.code)}
    rows: list[dict[str, Any]] = []
    with LocalRedis() as srv:
        for run in range(1, a.runs + 1):
            for per_entry in (1, 64):
                for name, tree in trees.items():
                    row = one(srv.url, tree, a.windows * (1 if per_entry == 1 else 4), per_entry)
                    rows.append({"run": run, "tree": name, **row})
                    print(json.dumps(rows[-1]), flush=True)
    keys = ("windows_per_s", "worker_cpu_us_per_window", "redis_cpu_us_per_window")
    med = {f"{t} x{pe}": {k: statistics.median(r[k] for r in rows if r["tree"] == t and r["per_entry"] == pe)
                          for k in keys} for t in trees for pe in (1, 64)}
    lines = ["# Plumbing ceiling, before and after (issue 28)", "",
             f"`python -m bench.plumbing_ab {' '.join('--code ' + c for c in a.code)} --runs {a.runs} --windows "
             f"{a.windows}`: one null-model replica (max batch 256) drains pre-filled entries from one local "
             "redis-server; the trees alternate run by run (load average before: "
             f"{[round(x, 2) for x in os.getloadavg()]}).", "",
             "| run | tree | windows per entry | windows/s | worker CPU µs / window | redis-server CPU µs / window |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['run']} | {r['tree']} | {r['per_entry']} | {r['windows_per_s']:.0f} | {r['worker_cpu_us_per_window']} | "
              f"{r['redis_cpu_us_per_window']} |" for r in rows]
    lines += ["", "Medians:", "", "| tree, entries | windows/s | worker CPU µs / window | redis-server CPU µs / window |",
              "|---|---|---|---|"]
    lines += [f"| {k} | {v['windows_per_s']:.0f} | {v['worker_cpu_us_per_window']:.2f} | {v['redis_cpu_us_per_window']:.2f} |"
              for k, v in med.items()]
    names = list(trees)
    if len(names) == 2:
        b, f = names
        for pe in (1, 64):
            mb, mf = med[f"{b} x{pe}"], med[f"{f} x{pe}"]
            lines.append(f"\n{f} ÷ {b}, {pe} window(s) per entry: windows/s {mf['windows_per_s'] / mb['windows_per_s']:.2f}×, "
                         f"worker CPU per window {mf['worker_cpu_us_per_window'] / mb['worker_cpu_us_per_window']:.2f}×, "
                         f"redis-server CPU per window {mf['redis_cpu_us_per_window'] / mb['redis_cpu_us_per_window']:.2f}×.")
    out = Path(a.out)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "median": med}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
