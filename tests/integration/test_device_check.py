"""The device check (scripts/device/: check.py and the modules beside it): wheels, datasets, the step runner, the report, a dry run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scripts.device.base import Ctx, Plan, Step, last_json, wheels_to_install
from scripts.device.check import SCHEMA, run_all, run_step, step_by_name, step_selftest_sleep
from scripts.device.report import render_md
from scripts.device.steps import _Autocast, find_datasets, step_model

ROOT = Path(__file__).resolve().parents[2]


def _wheel(d: Path, name: str) -> Path:
    p = d / name
    p.write_bytes(b"")
    return p


def test_wheels_to_install_picks_missing_and_older_and_keeps_pydantic_pair(tmp_path: Path) -> None:
    for n in ("redis-8.1.0-py3-none-any.whl", "structlog-26.1.0-py3-none-any.whl",
              "pydantic-2.14.4-py3-none-any.whl", "pydantic_core-2.50.5-cp312-cp312-manylinux2014_x86_64.whl",
              "typing_extensions-4.16.0-py3-none-any.whl", "not-a-wheel.whl"):
        _wheel(tmp_path, n)
    have = {"structlog": "26.1.0", "typing_extensions": "4.9.0", "pydantic_core": "2.50.5"}
    picked = [p.name.split("-")[0] for p in wheels_to_install(tmp_path, have.get)]
    # redis: missing; typing_extensions: older; pydantic: missing, so pydantic_core comes along.
    assert picked == ["pydantic", "pydantic_core", "redis", "typing_extensions"]
    assert wheels_to_install(tmp_path, lambda n: "99.0") == []


def test_find_datasets_pairs_train_and_test_smallest_first(tmp_path: Path) -> None:
    (tmp_path / "Big").mkdir()
    (tmp_path / "Big" / "Big_TRAIN.ts").write_text("x" * 100)
    (tmp_path / "Big" / "Big_TEST.ts").write_text("x")
    (tmp_path / "Small_TRAIN.ts").write_text("x")
    found = find_datasets(tmp_path)
    assert [d["name"] for d in found] == ["Small", "Big"]
    assert found[0]["test"] == found[0]["train"]  # no test file: the training file stands in
    assert found[1]["test"].endswith("Big_TEST.ts")
    assert [d["name"] for d in find_datasets(tmp_path, ["big"])] == ["Big"]
    assert find_datasets(tmp_path / "missing") == []


def test_last_json_skips_log_lines() -> None:
    text = '{"event": "train_start"}\nnoise\n{"checkpoint": "c", "test_accuracy": 0.9}\n{broken\n'
    assert last_json(text) == {"checkpoint": "c", "test_accuracy": 0.9}
    assert last_json("nothing") is None


def test_step_runner_records_timeout_and_failure(tmp_path: Path) -> None:
    log = open(tmp_path / "steps.log", "w")  # noqa: SIM115 - the children write to its descriptor
    t0 = time.monotonic()
    rec = run_step(step_by_name("selftest_sleep"), tmp_path, 0.5, True, log, grace=1.0)
    assert rec["status"] == "timeout" and time.monotonic() - t0 < 15
    rec = run_step(step_by_name("selftest_fail"), tmp_path, 20, True, log)
    assert rec["status"] == "failed" and "selftest failure" in rec["error"]
    log.close()
    assert "===== step selftest_fail: failed" in (tmp_path / "steps.log").read_text()


def test_run_all_respects_the_budget_and_writes_reports(tmp_path: Path) -> None:
    steps = [step_by_name("selftest_fail"), Step("later", step_selftest_sleep, 60, 60, optional=True),
             Step("gpu", step_selftest_sleep, 1, 1, gpu_only=True)]
    report = run_all(tmp_path, True, steps, budget_s=30)  # 'later' needs its whole 60 s: skipped
    assert report["steps"]["selftest_fail"]["status"] == "failed"
    assert report["steps"]["later"]["status"] == "skipped" and report["steps"]["gpu"]["status"] == "skipped"
    assert json.loads((tmp_path / "device.json").read_text())["schema"] == SCHEMA
    assert "| selftest_fail | failed |" in (tmp_path / "device.md").read_text()


def test_render_md_tables_and_ratio() -> None:
    row = {"threads": 1, "T": 20, "latency_ms_p50": 0.5, "latency_ms_p99": 0.9}
    report = {
        "dry_run": False, "started": "t", "elapsed_s": 1.0, "budget_s": 370,
        "steps": {
            "env": {"status": "ok", "seconds": 1, "result": {"device_name": "NVIDIA H100", "torch": "2.11"}},
            "pytest_gpu": {"status": "ok", "seconds": 9, "result": {"rc": 0, "summary": "2 passed, 9 deselected"}},
            "model": {"status": "ok", "seconds": 5, "result": {"device": "cuda", "rows": [
                {**row, "backend": "torch-fp32", "batch": 1024, "windows_per_s": 1e6}]}},
            "onnx_cpu": {"status": "ok", "seconds": 5, "result": {"rows": [
                {**row, "backend": "onnx-cpu-1t", "batch": 64, "windows_per_s": 1e4},
                {**row, "backend": "onnx-cpu-16t", "threads": 16, "batch": 1024, "windows_per_s": 1e5}]}},
            "train": {"status": "ok", "seconds": 5, "result": {"runs": [
                {"dataset": "GunPoint", "device": "cuda", "status": "ok", "test_accuracy": 0.98, "wall_s": 12.0}]}},
            "pipeline": {"status": "failed", "seconds": 5, "error": "a|b", "result": {"runs": [
                {"device": "cuda", "backend": "torch", "replicas": 1, "status": "ok", "windows_per_s": 30000.0}]}},
        },
    }
    md = render_md(report)
    assert "| GPU | NVIDIA H100 |" in md and "2 passed, 9 deselected" in md
    assert "| GunPoint | cuda | ok | 0.9800 |" in md
    assert "x100.0" in md and "x10.0" in md
    assert "| cuda | torch | 1 |" in md and "a/b" in md


def test_autocast_wrapper_keeps_float32_probabilities(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import bench.model as bm
    from training.model.checkpoint import load_checkpoint
    from worker.predictor import TorchPredictor

    pred = TorchPredictor(load_checkpoint(str(bm.build_checkpoint(tmp_path))))
    amp = _Autocast(pred)
    xs = bm.windows(4)
    out = amp.predict(xs)
    assert out.dtype.name == "float32" and out.shape == (4, 2) and abs(out - pred.predict(xs)).max() < 0.05


@pytest.mark.slow
def test_dry_run_end_to_end(tmp_path: Path) -> None:
    """The shell script on CPU with tiny sizes: every step runs and the report is complete."""
    env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHON=sys.executable, DEVICE_CHECK_DRY="1",
               WHEELS=str(tmp_path / "no-wheels"), DEVICE_CHECK_PIPELINE_WINDOWS="600",
               DEVICE_CHECK_TIME_SCALE="3")  # generous limits: a shared CI machine may be busy
    p = subprocess.run(["bash", str(ROOT / "scripts" / "device-check.sh")], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = tmp_path / "out"
    report = json.loads((out / "device.json").read_text())
    status = {k: v["status"] for k, v in report["steps"].items()}
    assert report["dry_run"] is True
    expected_pipeline = "ok" if shutil.which("redis-server") else "skipped"
    assert status == {"env": "ok", "pytest_gpu": "ok", "model": "ok", "train": "ok", "pipeline": expected_pipeline,
                      "plumbing": expected_pipeline, "onnx_cpu": "ok", "train_cpu": "skipped"}, (out / "steps.log").read_text()[-3000:]
    if expected_pipeline == "ok":
        runs = report["steps"]["pipeline"]["result"]["runs"]
        assert [(r["replicas"], r["per_entry"], r["status"]) for r in runs] == [(1, 1, "ok"), (2, 1, "ok"), (2, 64, "ok")]
        assert runs[2]["windows"] == 2400  # 600 x 4 windows in 64-window entries, each counted
        plumbing = report["steps"]["plumbing"]["result"]["rows"]
        assert [(r["procs"], r["per_entry"]) for r in plumbing] == [(1, 1), (2, 1), (1, 64), (2, 64)]
        assert all(r["windows_per_s"] > 0 for r in plumbing)
    train = report["steps"]["train"]["result"]["runs"][0]
    assert 0 <= train["test_accuracy"] <= 1 and train["wall_s"] > 0
    assert {"env.txt", "pytest-gpu.log", "steps.log", "device.md"} <= {f.name for f in out.iterdir()}
    assert len(list(out.iterdir())) <= 8
    assert "DRY RUN" in (out / "device.md").read_text() and "## Steps" in p.stdout


def test_model_step_measures_each_length(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from dataclasses import replace

    plan = replace(Plan.make(True), lengths=(20, 30), batches=(1, 4), min_s=0.01)
    res = step_model(Ctx(plan, tmp_path, time.monotonic() + 60))
    assert [(r["T"], r["batch"]) for r in res["rows"]] == [(20, 1), (20, 4), (30, 1), (30, 4)]
    assert all(r["windows_per_s"] > 0 for r in res["rows"]) and set(res["models"]) == {"T=20", "T=30"}
