"""The drift alert rules (checked and unit-tested by promtool) and the dashboard's drift panels."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import ROOT

MON = ROOT / "monitoring"
RULES = MON / "prometheus" / "rules" / "drift.yml"


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return promtool


def test_drift_rules_use_the_usual_thresholds() -> None:
    rules = {r["alert"]: r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    assert rules["BigruFeatureDriftWatch"]["expr"].endswith("> 0.1")
    assert rules["BigruFeatureDriftAct"]["expr"].endswith("> 0.25")
    assert all("by (feature)" in rules[a]["expr"] for a in ("BigruFeatureDriftWatch", "BigruFeatureDriftAct"))
    cfg = yaml.safe_load((MON / "prometheus" / "prometheus.yml").read_text())
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mount = "./monitoring/prometheus/rules:/etc/prometheus/rules:ro"
    assert mount in compose["services"]["prometheus"]["volumes"]
    assert cfg["rule_files"] == ["/etc/prometheus/rules/*.yml"]


def test_promtool_checks_the_drift_rules() -> None:
    out = subprocess.run([_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_unit_tests_fire_on_the_drifting_feature_only() -> None:
    """A feature at PSI 0.4 for 5 minutes raises the act alert for that feature alone (the rules' unit test)."""
    tests = MON / "prometheus" / "tests"
    out = subprocess.run([_promtool(), "test", "rules", "drift.test.yml"], cwd=tests, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dashboard_has_the_drift_panels() -> None:
    d = json.loads((MON / "grafana" / "dashboards" / "bigru-stream.json").read_text())
    panels = {p["title"]: p for p in d["panels"]}
    psi = panels["Input drift (PSI per feature)"]
    assert psi["targets"][0]["expr"] == "max by (feature) (bigru_drift_feature_psi)"
    steps = [s["value"] for s in psi["fieldConfig"]["defaults"]["thresholds"]["steps"]]
    assert steps == [None, 0.1, 0.25]
    assert "bigru_drift_prediction_psi" in json.dumps(panels["Prediction drift and confidence"])
