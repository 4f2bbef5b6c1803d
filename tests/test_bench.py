"""The benchmark's pieces: target arithmetic and report on a synthetic run, and a tiny real run."""

from pathlib import Path
from typing import Any

import pytest

from bench import report
from bench.model import build_checkpoint
from bench.pipeline import WorkerConfig, open_loop, saturated
from scripts.localredis import LocalRedis


def _doc() -> dict[str, Any]:
    sat = [dict(backend="onnx", replicas=r, threads=1, max_batch=64, label=f"onnx {r}x1t", windows_per_s=v,
                mean_batch=64, replicas_serving=r) for r, v in ((1, 900.0), (2, 1530.0))]
    mo = [dict(backend="onnx", threads=1, batch=64, processes=p, windows_per_s=v, latency_ms_p50=1, cpu_us_per_window=1)
          for p, v in ((1, 1000.0), (2, 2000.0))]
    ol = [dict(config="onnx fixed 5 ms", load=f, rate_achieved=450.0, windows=100, e2e_ms=dict(p50=2, p95=4, p99=p99, max=9),
               breakdown_ms_mean=dict(queued=0, batch_wait=1, inference=1, decode_encode=0, publish=0), batch=dict(mean=3))
          for f, p99 in ((0.25, 5.0), (0.5, 12.0))]
    return {"saturated": sat, "model_only": mo, "naive": [dict(backend="torch", windows_per_s=50.0)], "open_loop": ol,
            "config": {"headline": {"backend": "onnx", "max_batch": 64}, "model": "m", "gpu": "none"},
            "machine": dict(cpus=2, cpu_model="x", platform="p", python="3", torch="t", onnxruntime="o", redis="7",
                            loadavg_before=[0], loadavg_after=[0]), "seconds": 1.0}


def test_targets_compute_ratios_and_verdicts() -> None:
    rows = report.targets(_doc())
    got = {t["measure"].split(" (")[0]: t for t in rows}
    one, two_vs_model = rows[0], rows[1]
    assert one["value"] == 0.9 and one["pass"] is True
    assert two_vs_model["value"] == 0.765 and two_vs_model["target"] == "info"
    assert got["saturated pipeline ÷ naive worker"]["value"] == pytest.approx(30.6) and got["saturated pipeline ÷ naive worker"]["pass"]
    p99 = got["p99 end to end at 50 % load"]
    assert p99["value"] == 12.0 and p99["pass"] is False
    two = got["2 replicas ÷ 1 replica, saturated"]
    assert two["value"] == 1.7 and two["pass"] is True


def test_targets_prefer_the_adjacent_model_only_runs() -> None:
    doc = _doc()
    doc["saturated"][0]["model_only_adjacent_windows_per_s"] = 1800.0
    assert report.targets(doc)[0]["value"] == 0.5


def test_targets_not_measured_are_reported_as_such() -> None:
    doc = _doc()
    doc["saturated"] = doc["saturated"][:1]
    two = [t for t in report.targets(doc) if t["measure"].startswith("2 replicas")][0]
    assert two["value"] is None and two["pass"] is None


def test_markdown_and_plots(tmp_path: Path) -> None:
    doc = _doc()
    doc["targets"] = report.targets(doc)
    plots = report.plot(doc, tmp_path)
    md = report.markdown(doc, plots)
    assert "| 2 replicas ÷ 1 replica, saturated | ≥ 1.7× | 1.7 | pass |" in md
    assert "**miss**" in md
    for p in plots:
        assert Path(p).stat().st_size > 1000 and f"({Path(p).name})" in md


@pytest.mark.slow
def test_tiny_saturated_and_open_loop_run(tmp_path: Path) -> None:
    ckpt = build_checkpoint(tmp_path / "ckpt")
    cfg = WorkerConfig(backend="torch", max_batch=32)
    with LocalRedis() as srv:
        sat = saturated(srv.url, ckpt, cfg, 300, tmp_path)
        assert sat["windows"] == 300 and sat["windows_per_s"] > 0 and sat["replicas_serving"] == 1
        (pt,) = open_loop(srv.url, ckpt, cfg, [100.0], 1.0, tmp_path)
    assert pt["windows"] == 100 == pt["sent"]
    assert 0 < pt["e2e_ms"]["p50"] <= pt["e2e_ms"]["p99"] <= pt["e2e_ms"]["max"]
    assert sum(pt["batch"]["windows_by_size"].values()) == 100
