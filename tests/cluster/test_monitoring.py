"""k8s/monitoring: promtool checks and unit tests of the alert rules, the PrometheusRule copy, the
PodMonitor against the training Jobs, and every bcoder_* series used being one the code exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml
from helpers.paths import REPO

from bcoder_core import telemetry

MONITORING = REPO / "k8s" / "monitoring"
RULES = MONITORING / "bcoder.rules.yml"
METRIC = re.compile(r"\bbcoder_[a-z0-9_]+\b")


def _promtool() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return binary


def _rule_exprs() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


def test_promtool_checks_the_rules() -> None:
    out = subprocess.run(
        [_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 5 rules found" in out.stdout


def test_promtool_unit_tests_of_the_rules() -> None:
    out = subprocess.run(
        [_promtool(), "test", "rules", "tests/bcoder.rules.test.yml"],
        cwd=MONITORING, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_the_alerts_the_design_asks_for() -> None:
    assert {"BcoderTrainingStalled", "BcoderLossNotFinite", "BcoderExecutionFailureRatioHigh",
            "BcoderStageFailed"} <= set(_rule_exprs())  # fmt: skip


def test_prometheus_rule_resource_carries_the_same_rules() -> None:
    crd = yaml.safe_load((MONITORING / "prometheus-rules.yaml").read_text())
    assert crd["apiVersion"] == "monitoring.coreos.com/v1" and crd["kind"] == "PrometheusRule"
    assert crd["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


def test_rules_and_dashboard_use_only_exported_series() -> None:
    used = {name for expr in [*_rule_exprs().values(), *_dashboard_exprs()] for name in METRIC.findall(expr)}
    assert used, "no bcoder_* series found"
    unknown = used - telemetry.SERIES_NAMES
    assert not unknown, f"not exported by bcoder_core/telemetry.py: {sorted(unknown)}"


def test_dashboard_shows_what_an_operator_needs() -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    used = {name for expr in _dashboard_exprs() for name in METRIC.findall(expr)}
    for series in (
        "bcoder_loss", "bcoder_q_mean", "bcoder_v_mean", "bcoder_advantage_mean", "bcoder_tokens_total",
        "bcoder_step_duration_seconds_bucket", "bcoder_gpu_memory_allocated_bytes",
        "bcoder_programs_executed_total", "bcoder_grad_norm", "bcoder_learning_rate",
    ):  # fmt: skip
        assert series in used, series
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"  # importable into any Grafana


def test_podmonitor_selects_the_training_pods_and_their_metrics_port() -> None:
    monitor = yaml.safe_load((MONITORING / "podmonitor.yaml").read_text())
    assert monitor["kind"] == "PodMonitor"
    selector = monitor["spec"]["selector"]["matchLabels"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    for job in ("phi-job.yaml", "theta-job.yaml"):
        template = yaml.safe_load((REPO / "k8s" / "base" / job).read_text())["spec"]["template"]
        assert selector.items() <= template["metadata"]["labels"].items(), job
        ports = [p for c in template["spec"]["containers"] for p in c.get("ports", [])]
        named = [p for p in ports if p.get("name") == endpoint["port"]]
        assert named and named[0]["containerPort"] == telemetry.DEFAULT_PORT, job


def test_kustomize_builds_the_monitoring_bundle() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed")
    out = subprocess.run([kubectl, "kustomize", str(MONITORING)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    docs = {d["kind"]: d for d in yaml.safe_load_all(out.stdout)}
    assert set(docs) == {"PodMonitor", "PrometheusRule", "ConfigMap"}
    dashboard = docs["ConfigMap"]["data"]["grafana-dashboard.json"]
    assert json.loads(dashboard)["uid"] == "bcoder-training"
    assert docs["ConfigMap"]["metadata"]["labels"]["grafana_dashboard"] == "1"
