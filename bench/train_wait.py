"""``python -m bench.train_wait``: the seconds a user waits for ``bigru-train`` on one dataset.

Runs the CLI as a user would (``bigru-train --data X_TRAIN --test X_TEST``, every default, torch's own
thread count: all cores), one dataset at a time on an otherwise quiet machine, and writes the wall time
of each process with its test accuracy to ``results/train_wait.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from training.datasets import dataset_split_files, default_datasets

DEFAULT_TASKS = ("GunPoint", "Adiac", "DistalPhalanxOutlineCorrect", "Computers", "PigArtPressure", "EOGHorizontalSignal")


def main(argv: list[str] | None = None) -> int:
    """Time one ``bigru-train`` process per dataset; write the report."""
    p = argparse.ArgumentParser(prog="python -m bench.train_wait", description=__doc__)
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS))
    p.add_argument("--results", type=Path, default=Path("results"))
    args = p.parse_args(argv)
    rows = []
    for name in args.tasks.split(","):
        train, test = dataset_split_files(name, default_datasets())
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "training.cli", "--data", str(train), "--test", str(test),
                                   "--out", out, "--json", "--no-plots"], capture_output=True, text=True, check=True)
            seconds = time.perf_counter() - t0
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append({"task": name, "seconds": seconds, "test_accuracy": summary["test_accuracy"], "epochs": summary["epochs"]})
        print(json.dumps(rows[-1]), flush=True)
    secs = sorted(r["seconds"] for r in rows)
    median = secs[len(secs) // 2] if len(secs) % 2 else (secs[len(secs) // 2 - 1] + secs[len(secs) // 2]) / 2
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "train_wait.json").write_text(json.dumps({"runs": rows, "cpus": os.cpu_count()}, indent=1) + "\n")
    lines = ["# Seconds a user waits for `bigru-train` on one dataset\n",
             f"`python -m bench.train_wait`: one `bigru-train --data X_TRAIN --test X_TEST` process per dataset, every "
             f"default (torch's own thread count), one at a time, machine with {os.cpu_count()} CPUs. Wall time of the "
             "whole process: start-up, loading, fitting the branch, training (at most 45 s of steps), scoring the "
             "test split, writing the checkpoint (with its ONNX graph).\n",
             "| dataset | seconds | test accuracy (%) | epochs |", "|---|---|---|---|",
             *(f"| {r['task']} | {r['seconds']:.0f} | {100 * r['test_accuracy']:.2f} | {r['epochs']} |" for r in rows),
             f"\nMedian {median:.0f} s, largest {secs[-1]:.0f} s.\n"]
    (args.results / "train_wait.md").write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
