"""Alert rules (promtool check + unit tests), Prometheus config, the Grafana dashboard, and
that both only use metrics the services really export."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from .conftest import ROOT, run

PROM = ROOT / "deploy/prometheus"
RULES = PROM / "rules/a2f.rules.yml"
DASHBOARD = ROOT / "deploy/grafana/dashboards/a2f-serving.json"
METRIC_RE = re.compile(r"\b(a2f_(?:inference|engine_builder|model_sync)_[a-z0-9_]+)")


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: scripts/install-system-deps.sh installs Debian's "
                    "prometheus package")
    return path


def exported_metric_names() -> set[str]:
    """Every sample name the three services' metrics modules can export."""
    from a2f_engine_builder.metrics import BuilderMetrics
    from a2f_inference.server.metrics import InferenceMetrics
    from a2f_model_sync.metrics import SyncMetrics

    reg = CollectorRegistry()
    InferenceMetrics(registry=reg).init_model("m")
    BuilderMetrics(registry=reg).init_model("m")
    SyncMetrics(registry=reg)
    names = set()
    for family in reg.collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_sum", "_count"))
        if family.type == "gauge":
            names.add(family.name)
    return names


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def test_rules_pass_promtool_check() -> None:
    run([promtool(), "check", "rules", str(RULES)])


def test_rules_unit_tests_pass() -> None:
    proc = run([promtool(), "test", "rules", "a2f.rules.test.yml"], cwd=RULES.parent)
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_rules_unit_tests_catch_a_broken_threshold(tmp_path: Path) -> None:
    """The rule tests are not vacuous: a wrong latency threshold makes them fail."""
    import subprocess

    broken = RULES.read_text(encoding="utf-8").replace(") > 0.25", ") > 2.5")
    assert broken != RULES.read_text(encoding="utf-8")
    (tmp_path / "a2f.rules.yml").write_text(broken, encoding="utf-8")
    shutil.copy(RULES.parent / "a2f.rules.test.yml", tmp_path)
    proc = subprocess.run([promtool(), "test", "rules", "a2f.rules.test.yml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "A2FFrameLatencyHigh" in proc.stdout + proc.stderr


def test_alerts_cover_the_four_required_conditions() -> None:
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    assert {"A2FInferenceNotReady", "A2FFrameLatencyHigh", "A2FEngineBuildFailing",
            "A2FModelSyncStale"} <= set(alerts)
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_prometheus_config_is_valid() -> None:
    run([promtool(), "check", "config", str(PROM / "prometheus.yml")])


def test_prometheus_scrapes_the_three_services() -> None:
    cfg = yaml.safe_load((PROM / "prometheus.yml").read_text(encoding="utf-8"))
    targets = {j["job_name"]: j["static_configs"][0]["targets"] for j in cfg["scrape_configs"]}
    assert targets["a2f-inference"] == ["inference:9101"]
    assert targets["a2f-engine-builder"] == ["engine-builder:9102"]
    assert targets["a2f-model-sync"] == ["model-sync:9103"]


def test_rules_and_dashboard_use_only_exported_metrics() -> None:
    exported = exported_metric_names()
    used = set(METRIC_RE.findall(RULES.read_text(encoding="utf-8")))
    for expr in dashboard_exprs():
        used.update(METRIC_RE.findall(expr))
    assert used, "no a2f metrics found"
    missing = sorted(used - exported)
    assert not missing, f"not exported by any service: {missing}"


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Each panel query, with Grafana's variables filled in, is valid PromQL (promtool
    checks them as recording rules)."""
    exprs = [e.replace("$__rate_interval", "1m").replace("$instance", ".*")
             for e in dashboard_exprs()]
    group: dict[str, Any] = {"name": "dashboard", "rules": [
        {"record": f"a2f:dashboard_query:{i}", "expr": e} for i, e in enumerate(exprs)]}
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [group]}), encoding="utf-8")
    run([promtool(), "check", "rules", str(path)])


def test_dashboard_shows_every_area() -> None:
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    text = " ".join(dashboard_exprs())
    for metric in ("a2f_inference_active_streams", "a2f_inference_streams_total",
                   "a2f_inference_frame_latency_seconds_bucket",
                   "a2f_inference_batch_size_bucket", "a2f_inference_errors_total",
                   "a2f_inference_model_info", "a2f_engine_builder_builds_total",
                   "a2f_model_sync_runs_total", "a2f_model_sync_last_success_timestamp_seconds"):
        assert metric in text, metric
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert dash["uid"] == "a2f-serving"


def test_k8s_monitoring_copies_are_in_sync() -> None:
    run([sys.executable, str(ROOT / "deploy/sync_k8s_monitoring.py"),
         "--check"])


def test_generated_prometheus_rule_passes_promtool(tmp_path: Path) -> None:
    obj = yaml.safe_load((ROOT / "k8s/components/monitoring/prometheusrule.yaml")
                         .read_text(encoding="utf-8"))
    path = tmp_path / "from-crd.rules.yml"
    path.write_text(yaml.safe_dump({"groups": obj["spec"]["groups"]}), encoding="utf-8")
    run([promtool(), "check", "rules", str(path)])
