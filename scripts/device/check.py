"""One-shot GPU machine check: environment, GPU tests, training, model and pipeline throughput.

Run through ``scripts/device-check.sh`` (which installs carried wheels and finds a redis-server
first); see ``docs/device-check.md``. The parent process runs each step in a child process
(``python -m scripts.device.check --step NAME``) under a timeout, so a hanging or crashing step is
recorded and the next one still runs. Results go to ``$OUT``:

* ``device.json``: every number, rewritten after each step (a killed run still leaves one);
* ``device.md``: the same as tables; ``env.txt``; ``pytest-gpu.log``; ``steps.log`` (the steps'
  output); ``workers.log`` (the pipeline workers' logs).

Without CUDA, or with ``DEVICE_CHECK_DRY=1``, the same flow runs on CPU with tiny sizes.

This module is the runner (CLI, step list, child and parent sides); the pieces live in
``scripts.device.base`` (plan, context, helpers, wheels), ``scripts.device.steps`` (env, GPU tests,
model, training, ONNX CPU), ``scripts.device.pipeline`` (pipeline, plumbing) and
``scripts.device.report`` (device.md). Every one imports only the standard library at module level:
the shell script calls this module to pick the wheels to install before the project's
dependencies are importable.
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
from typing import Any

from scripts.device.base import (
    ROOT,
    Ctx,
    Plan,
    Step,
    StepFailed,
    StepSkipped,
    child_env,
    extract_wheels,
    run_cmd,
    time_scale,
    want_dry,
    wheels_to_install,
)
from scripts.device.pipeline import step_pipeline, step_plumbing
from scripts.device.report import render_md
from scripts.device.steps import make_train_step, step_env, step_model, step_onnx_cpu, step_pytest_gpu

SCHEMA = "bigru-device-check/1"


# ------------------------------------------------------------------------------------------ steps


def step_selftest_sleep(ctx: Ctx) -> dict[str, Any]:
    """Sleeps past any sane timeout (used by the tests of the step runner)."""
    time.sleep(float(os.environ.get("DEVICE_CHECK_SLEEP_S", "3600")))
    return {}


STEPS: list[Step] = [
    Step("env", step_env, 45, 45),
    Step("pytest_gpu", step_pytest_gpu, 110, 120),
    Step("model", step_model, 60, 40),
    Step("pipeline", step_pipeline, 150, 90),
    Step("plumbing", step_plumbing, 50, 60),
    Step("train", make_train_step(None, False), 140, 60),
    Step("onnx_cpu", step_onnx_cpu, 45, 40),
    Step("train_cpu", make_train_step("cpu", True), 70, 40, optional=True, gpu_only=True),
]


def step_selftest_fail(ctx: Ctx) -> dict[str, Any]:
    """Fails (used by the tests of the step runner)."""
    raise RuntimeError("selftest failure")


HIDDEN_STEPS = {s.name: s for s in (Step("selftest_sleep", step_selftest_sleep, 3600, 3600),
                                     Step("selftest_fail", step_selftest_fail, 60, 60))}


def step_by_name(name: str) -> Step:
    """A step of :data:`STEPS` (or a hidden test step) by name."""
    for s in STEPS:
        if s.name == name:
            return s
    if name in HIDDEN_STEPS:
        return HIDDEN_STEPS[name]
    raise KeyError(name)


def step_child(name: str, out: Path, result: Path, deadline_in_s: float, dry: bool) -> int:
    """Body of a step's child process: run it, write its JSON result."""
    out.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(Plan.make(dry), out, time.monotonic() + deadline_in_s)
    try:
        data = {"status": "ok", "result": step_by_name(name).fn(ctx)}
    except StepSkipped as e:
        data = {"status": "skipped", "error": str(e)}
    except StepFailed as e:
        data = {"status": "failed", "error": str(e), "result": e.partial}
    except Exception as e:  # noqa: BLE001 - the parent records it
        import traceback

        traceback.print_exc()
        data = {"status": "failed", "error": f"{type(e).__name__}: {e}"[-1500:]}
    result.write_text(json.dumps(data, default=str))
    return 0


# ----------------------------------------------------------------------------------------- parent


def run_step(step: Step, out: Path, timeout: float, dry: bool, logf: Any, grace: float = 10.0) -> dict[str, Any]:
    """Run one step in a child process; kill it ``grace`` s after its ``timeout``; its record for device.json."""
    fd, tmp = tempfile.mkstemp(prefix=f"devchk-{step.name}-", suffix=".json")
    os.close(fd)
    result = Path(tmp)
    cmd = [sys.executable, "-m", "scripts.device.check", "--step", step.name, "--out", str(out), "--result", str(result),
           "--step-seconds", f"{timeout:.1f}"] + (["--dry"] if dry else [])
    logf.write(f"\n===== step {step.name} (timeout {timeout:.0f} s) {time.strftime('%H:%M:%S')}\n")
    logf.flush()
    t0 = time.perf_counter()
    rec: dict[str, Any]
    try:
        p = run_cmd(cmd, timeout + grace, stdout=logf, stderr=logf, cwd=ROOT, env=child_env())
        try:
            rec = json.loads(result.read_text() or "{}")
        except ValueError:
            rec = {}
        if not rec:
            rec = {"status": "failed", "error": f"step process exited with {p.returncode} without a result"}
    except subprocess.TimeoutExpired:
        rec = {"status": "timeout", "error": f"killed after {timeout + grace:.0f} s"}
    finally:
        result.unlink(missing_ok=True)
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    logf.write(f"===== step {step.name}: {rec['status']} in {rec['seconds']} s {rec.get('error', '')}\n")
    logf.flush()
    return rec


def run_all(out: Path, dry: bool, steps: list[Step] | None = None, budget_s: float | None = None) -> dict[str, Any]:
    """Every step within the budget; writes device.json and device.md after each one."""
    plan = Plan.make(dry)
    budget = plan.budget_s if budget_s is None else budget_s
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    report: dict[str, Any] = {
        "schema": SCHEMA, "dry_run": dry, "device": plan.device, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "budget_s": budget, "plan": {k: v for k, v in plan.__dict__.items()}, "steps": {},
    }
    with open(out / "steps.log", "a") as logf:
        for step in steps if steps is not None else STEPS:
            left = budget - (time.monotonic() - t_start)
            limit = (step.dry_timeout if dry else step.timeout) * time_scale()
            if dry and step.gpu_only:
                report["steps"][step.name] = {"status": "skipped", "error": "dry run (CPU only)"}
            elif left < 15 or (step.optional and left < limit + 5):
                report["steps"][step.name] = {"status": "skipped", "error": f"time budget spent ({left:.0f} s left)"}
            else:
                print(f"[device-check] {step.name} (up to {min(limit, left - 5):.0f} s)...", flush=True)
                report["steps"][step.name] = run_step(step, out, min(limit, left - 5), dry, logf)
                rec = report["steps"][step.name]
                print(f"[device-check] {step.name}: {rec['status']} in {rec['seconds']} s "
                      f"{rec.get('error', '')}"[:400], flush=True)
            report["elapsed_s"] = round(time.monotonic() - t_start, 1)
            write_report(out, report)
    return report


def write_report(out: Path, report: dict[str, Any]) -> None:
    """device.json and device.md."""
    tmp = out / "device.json.tmp"
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    tmp.replace(out / "device.json")
    (out / "device.md").write_text(render_md(report))


def main(argv: list[str] | None = None) -> int:
    """``python -m scripts.device.check [--out DIR]`` (the parent) or ``--step NAME`` (a child)."""
    p = argparse.ArgumentParser(prog="device_check", description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT", str(ROOT / "results" / "bench-gpu")))
    p.add_argument("--dry", action="store_true", help="CPU, tiny sizes (default: when DEVICE_CHECK_DRY=1 or no CUDA)")
    p.add_argument("--step", help="run one step (child process)")
    p.add_argument("--result", help="child: JSON result file")
    p.add_argument("--step-seconds", type=float, default=60.0)
    p.add_argument("--missing-wheels", metavar="DIR", help="print the wheels in DIR to install, one a line")
    p.add_argument("--extract-wheels", metavar="DIR", help="with --target: unzip DIR's missing wheels (no pip)")
    p.add_argument("--target")
    a = p.parse_args(argv)
    if a.missing_wheels:
        for w in wheels_to_install(Path(a.missing_wheels)):
            print(w)
        return 0
    if a.extract_wheels:
        extract_wheels(wheels_to_install(Path(a.extract_wheels)), Path(a.target or "/tmp/site"))
        return 0
    out = Path(a.out).resolve()
    if a.step:
        return step_child(a.step, out, Path(a.result), a.step_seconds, a.dry)
    dry = a.dry or want_dry()
    only = [n for n in os.environ.get("DEVICE_CHECK_STEPS", "").split(",") if n]  # e.g. env,pytest_gpu for a rerun
    report = run_all(out, dry, [step_by_name(n) for n in only] if only else None)
    print("\n" + render_md(report), flush=True)
    bad = [k for k, v in report["steps"].items() if v.get("status") not in ("ok", "skipped")]
    print(f"[device-check] results in {out}; {len(bad)} step(s) not ok: {', '.join(bad) or 'none'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
