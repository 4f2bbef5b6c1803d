"""The compose `monitoring` profile: Prometheus config, Grafana provisioning and the dashboard."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from prometheus_client import generate_latest

from protocol.keys import Keys
from tests.conftest import ROOT
from worker.drift import DriftReport
from worker.metrics import StreamCollector, WorkerMetrics
from worker.reader import ensure_groups

MON = ROOT / "monitoring"
DASHBOARD = MON / "grafana" / "dashboards" / "bigru-stream.json"


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


def _dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def _exprs() -> list[str]:
    return [t["expr"] for p in _dashboard()["panels"] for t in p.get("targets", [])]


def _exported_names(r: redis.Redis, prefix: str) -> set[str]:
    keys = Keys(prefix, prefix)
    ensure_groups(r, keys)
    m = WorkerMetrics("w-0")
    m.registry.register(StreamCollector(r, keys))
    m.model_version("v1")
    m.dead("bad_x")
    m.drift(DriftReport("v1", True, 16, [0.01], 0.0, 0.9, 0.9))
    text = generate_latest(m.registry).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_monitoring_services_mount_files_that_exist() -> None:
    compose = _compose()
    for name in ("prometheus", "grafana"):
        svc = compose["services"][name]
        assert svc["profiles"] == ["monitoring"]
        for vol in svc["volumes"]:
            src = vol.split(":")[0]
            if src.startswith("./"):
                assert (ROOT / src).exists(), f"{name} mounts missing {src}"
    worker = compose["services"]["worker"]
    assert worker["environment"]["BIGRU_METRICS_PORT"] == "9100" and "9100" in worker["expose"]


def test_prometheus_config_scrapes_the_worker_port() -> None:
    cfg = yaml.safe_load((MON / "prometheus" / "prometheus.yml").read_text())
    (job,) = cfg["scrape_configs"]
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["worker"] and sd["port"] == int(_compose()["services"]["worker"]["environment"]["BIGRU_METRICS_PORT"])
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    out = subprocess.run([promtool, "check", "config", str(MON / "prometheus" / "prometheus.yml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_grafana_provisioning_points_at_the_dashboard_and_prometheus() -> None:
    compose = _compose()
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"] if v.startswith("./"))
    ds = yaml.safe_load((MON / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert ds["apiVersion"] == 1
    (src,) = ds["datasources"]
    assert src["type"] == "prometheus" and src["url"] == "http://prometheus:9090" and "prometheus" in compose["services"]
    prov = yaml.safe_load((MON / "grafana" / "provisioning" / "dashboards" / "bigru.yml").read_text())
    (provider,) = prov["providers"]
    assert prov["apiVersion"] == 1 and provider["type"] == "file"
    # The provider's path inside the container is where the dashboards directory is mounted.
    assert mounts["./monitoring/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./monitoring/grafana/provisioning"] == "/etc/grafana/provisioning"
    home = compose["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"
    # Every panel and target uses the provisioned datasource.
    for p in _dashboard()["panels"]:
        assert p["datasource"]["uid"] == src["uid"], p["title"]
        assert all(t["datasource"]["uid"] == src["uid"] for t in p["targets"])


def test_dashboard_structure_and_coverage() -> None:
    d = _dashboard()
    assert d["uid"] and d["title"] and isinstance(d["schemaVersion"], int)
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        assert p["type"] in {"timeseries", "stat", "table"}
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]) and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs))
    exprs = " ".join(_exprs())
    for needed in ("bigru_windows_served_total", "histogram_quantile(0.5, sum by (le) (rate(bigru_e2e_seconds_bucket",
                   "histogram_quantile(0.99, sum by (le) (rate(bigru_e2e_seconds_bucket", "bigru_batch_size",
                   "bigru_group_lag", "bigru_dead_letters_total", "bigru_model_info"):
        assert needed in exprs, needed


def test_dashboard_queries_use_exported_metrics(r: redis.Redis, prefix: str) -> None:
    names = _exported_names(r, prefix)
    used = set()
    for e in _exprs():
        used |= set(re.findall(r"\bbigru_[a-z0-9_]+", e))
    assert used and used <= names, used - names


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    rules = [{"record": f"bigru:check:{i}", "expr": e.replace("$__rate_interval", "1m")} for i, e in enumerate(_exprs())]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
