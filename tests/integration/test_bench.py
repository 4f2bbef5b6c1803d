"""The benchmark's pieces: target arithmetic and report on a synthetic run, and a tiny real run."""

from pathlib import Path
from typing import Any

import pytest

from bench import report
from bench.harness import LocalRedis
from bench.model import build_checkpoint
from bench.pipeline import WorkerConfig, open_loop, saturated


def _doc() -> dict[str, Any]:
    sat = [dict(backend="onnx", replicas=r, threads=1, max_batch=64, per_entry=pe, label=f"onnx {r}x1t x{pe}",
                windows_per_s=v, mean_batch=64, replicas_serving=r) for r, pe, v in ((1, 1, 900.0), (2, 1, 1530.0), (2, 64, 1960.0))]
    mo = [dict(backend="onnx", threads=1, batch=64, processes=p, windows_per_s=v, latency_ms_p50=1, cpu_us_per_window=1)
          for p, v in ((1, 1000.0), (2, 2000.0))]
    ol = [dict(config=cfg, load=f, rate_achieved=450.0, windows=100, e2e_ms=dict(p50=p50, p95=4, p99=p99, max=20),
               breakdown_ms_mean=dict(queued=0, batch_wait=1, inference=1, decode_encode=0, publish=0), batch=dict(mean=3),
               load_generator_cpu_share=0.1)
          for cfg, f, p50, p99 in (("onnx continuous", 0.1, 1.5, 3.0), ("onnx continuous", 0.5, 2.0, 12.0),
                                   ("onnx slo 10 ms", 0.1, 4.0, 6.0), ("onnx slo 10 ms", 0.5, 4.0, 7.0))]
    plumbing = [dict(procs=p, per_entry=pe, max_batch=256, windows_per_s=v, worker_cpu_us_per_window=10.0,
                     redis_cpu_us_per_window=5.0, mean_batch=256) for p, pe, v in
                ((1, 1, 30_000.0), (2, 1, 45_000.0), (1, 64, 150_000.0), (2, 64, 190_000.0))]
    return {"saturated": sat, "model_only": mo, "naive": [dict(backend="torch", windows_per_s=50.0)], "open_loop": ol,
            "plumbing": plumbing,
            "config": {"headline": {"backend": "onnx", "max_batch": 64, "per_entry": 64}, "model": "m", "gpu": "none"},
            "machine": dict(cpus=2, cpu_model="x", platform="p", python="3", torch="t", onnxruntime="o", redis="7",
                            loadavg_before=[0], loadavg_after=[0]), "seconds": 1.0}


def _by_name(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {t["measure"]: t for t in rows}


def test_targets_compute_ratios_and_verdicts() -> None:
    rows = report.targets(_doc())
    got = _by_name(rows)
    p99 = got["e2e p99 at 50 % load, open loop (onnx continuous, the default)"]
    assert p99["value"] == 12.0 and p99["pass"] is False and p99["target"] == "≤ 10 ms"
    assert got["e2e p99 at 50 % load, open loop (onnx slo 10 ms)"]["target"] == "info"
    p50 = got["e2e p50 at 10 % load (onnx continuous, the default)"]
    assert p50["value"] == 1.5 and p50["pass"] is True
    two = got["saturated pipeline ÷ model-only, 2 replicas vs 2 model processes, single-window entries"]
    assert two["value"] == 0.765 and two["pass"] is False
    multi = got["the same with multi-window entries (64 per entry)"]
    assert multi["value"] == 0.98 and multi["pass"] is True
    single = [t for t in rows if "single-window entries (best" in t["measure"]][0]
    assert single["value"] == 45_000.0 and single["pass"] is True and "2 process" in single["detail"]
    many = [t for t in rows if "64-window entries (best" in t["measure"]][0]
    assert many["value"] == 190_000.0 and many["pass"] is False
    assert got["saturated pipeline ÷ naive worker"]["value"] == pytest.approx(39.2)
    assert got["2 replicas ÷ 1 replica, saturated"]["value"] == 1.7
    assert got["saturated pipeline ÷ model-only (1 replica, 1 thread, same batch)"]["value"] == 0.9
    gpu = got["GPU machine, end to end, multi-window entries"]
    assert gpu["value"] is None and gpu["pass"] is None


def test_targets_prefer_the_adjacent_model_only_runs() -> None:
    doc = _doc()
    doc["saturated"][1]["model_only_adjacent_windows_per_s"] = 3060.0
    two = [t for t in report.targets(doc) if t["measure"].startswith("saturated pipeline ÷ model-only, 2 replicas")][0]
    assert two["value"] == 0.5


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
    assert "## Plumbing ceiling" in md and "| 2 | 64 | 256 | 190000 |" in md
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


@pytest.mark.slow
def test_plumbing_ceiling_serves_every_window_of_both_forms() -> None:
    from bench.plumbing import ceiling

    with LocalRedis() as srv:
        single = ceiling(srv.url, 3000, 1, max_batch=256)
        multi = ceiling(srv.url, 3200, 2, max_batch=256, per_entry=64)
    assert single["windows"] == 3000 and single["windows_per_s"] > 0 and single["worker_cpu_us_per_window"] > 0
    assert multi["windows"] == 3200 and multi["per_entry"] == 64 and multi["redis_cpu_us_per_window"] >= 0


@pytest.mark.slow
def test_classify_round_trips_under_background_load(tmp_path: Path) -> None:
    from bench.pipeline import classify_round_trips

    ckpt = build_checkpoint(tmp_path / "ckpt")
    with LocalRedis() as srv:
        (row,) = classify_round_trips(srv.url, ckpt, WorkerConfig(backend="torch", max_batch=16), [100.0], 1.0, tmp_path)
    rt = row["round_trip_ms"]
    assert row["calls"] > 5 and row["failed"] == 0 and 0 < rt["p50"] <= rt["p99"] <= rt["max"]


def test_poisson_arrivals_have_the_rate_and_the_spread_of_a_poisson_process() -> None:
    from bench.load import arrivals

    t = arrivals(2000.0, 10.0, seed=3)
    assert abs(len(t) - 20_000) < 600 and t.min() >= 0 and t.max() < 10.0 and (t[1:] >= t[:-1]).all()
    gaps = t[1:] - t[:-1]
    assert 0.9 < gaps.std() / gaps.mean() < 1.1  # exponential gaps (a paced generator would give ~0)


def test_server_targets_and_table_come_from_the_scenario() -> None:
    doc = _doc()
    pts = [dict(fraction=f, rate_target=100.0 * f, rate_offered=100.0 * f, windows=80, generator_cpu_us_per_window=30.0,
                e2e_ms=dict(mean=1, p50=2.0, p95=3, p99=p99, max=9), mean_batch=2.0, within_bound=p99 <= 10.0,
                p99_over_p50=p99 / 2.0) for f, p99 in ((0.3, 3.0), (0.6, 8.0), (0.9, 30.0))]
    doc["server"] = dict(config="onnx 1x1t b64 continuous auto", capacity=dict(windows_per_s=1000.0), bound_ms=10.0,
                         points=pts, server_fraction=0.6, **{"p99_over_p50_at_0.3": 1.5},
                         pinned=dict(worker=[0], redis_generator_reader=[1]))
    rows = _by_name(report.targets(doc))
    frac = next(v for k, v in rows.items() if k.startswith("server scenario: largest"))
    assert frac["value"] == 0.6 and frac["pass"] is False
    ratio = next(v for k, v in rows.items() if k.startswith("server scenario: p99"))
    assert ratio["value"] == 1.5 and ratio["pass"] is True
    doc["targets"] = report.targets(doc)
    assert "Server scenario" in report.markdown(doc, [])


@pytest.mark.slow
def test_tiny_server_scenario_reads_every_window_and_pins_the_replica(tmp_path: Path) -> None:
    import os

    from bench import server

    args = server.parser().parse_args(["--seconds", "1", "--capacity-seconds", "1", "--overload", "400",
                                       "--fractions", "0.3", "--max-batch", "16"])
    ckpt = build_checkpoint(tmp_path / "ckpt", golden=32)
    before = os.sched_getaffinity(0)
    with LocalRedis() as srv:
        doc = server.pinned_run(srv.url, srv.proc.pid if srv.proc else None, ckpt, server.ROOT, tmp_path, args)
    assert os.sched_getaffinity(0) == before  # moved back after the run
    (pt,) = doc["points"]
    assert doc["capacity"]["windows_per_s"] > 0 and doc["bound_ms"] > 0
    assert pt["windows"] > 0 and 0 < pt["e2e_ms"]["p50"] <= pt["e2e_ms"]["p99"]
    if len(before) > 1:
        assert doc["pinned"]["worker"] and not set(doc["pinned"]["worker"]) & set(doc["pinned"]["redis_generator_reader"])
