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


# --- watching a whole run: the workflow alert, the "Run stages" row, stage metrics of every command --

WORKFLOW_RULES = MONITORING / "bcoder-workflow.rules.yml"


def test_promtool_checks_and_unit_tests_the_workflow_rules() -> None:
    check = subprocess.run(
        [_promtool(), "check", "rules", str(WORKFLOW_RULES)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0 and "SUCCESS: 1 rules found" in check.stdout, check.stdout + check.stderr
    test = subprocess.run(
        [_promtool(), "test", "rules", "tests/bcoder-workflow.rules.test.yml"],
        cwd=MONITORING, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert test.returncode == 0 and "SUCCESS" in test.stdout, test.stdout + test.stderr
    groups = yaml.safe_load(WORKFLOW_RULES.read_text())["groups"]
    (rule,) = [r for g in groups for r in g["rules"]]
    assert rule["alert"] == "BcoderWorkflowStepFailed"
    used = set(METRIC.findall(rule["expr"]))
    assert used == {"bcoder_stage_last_failure_time_seconds", "bcoder_stage_last_success_time_seconds"}
    assert used <= telemetry.SERIES_NAMES
    crd = yaml.safe_load((MONITORING / "prometheus-rules-workflow.yaml").read_text())
    assert crd["kind"] == "PrometheusRule" and crd["spec"]["groups"] == groups
    kustomization = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    assert "prometheus-rules-workflow.yaml" in kustomization["resources"]


def test_podmonitor_labels_series_with_the_run() -> None:
    monitor = yaml.safe_load((MONITORING / "podmonitor.yaml").read_text())
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    relabel = {r["targetLabel"]: r["sourceLabels"] for r in endpoint["relabelings"]}
    assert relabel["run"] == ["__meta_kubernetes_pod_label_bcoder_dev_run"]  # bcoder.dev/run


def test_dashboard_has_a_run_stages_row_from_the_stage_metrics(tmp_path) -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    panels = dashboard["panels"]
    (row,) = [i for i, p in enumerate(panels) if p["type"] == "row" and p["title"] == "Run stages"]
    after = panels[row + 1 :]
    end = next((i for i, p in enumerate(after) if p["type"] == "row"), len(after))
    exprs = [t["expr"] for p in after[:end] for t in p.get("targets", [])]
    used = {name for e in exprs for name in METRIC.findall(e)}
    assert {"bcoder_stage_running", "bcoder_stage_last_success_time_seconds", "bcoder_stage_failures_total",
            "bcoder_stage_last_failure_time_seconds"} <= used <= telemetry.SERIES_NAMES  # fmt: skip
    assert all('run=~"$run"' in e for e in exprs)
    assert "run" in {v["name"] for v in dashboard["templating"]["list"]}
    # Every query of the row parses: promtool checks them as recording rules, Grafana's variables
    # replaced by values.
    subst = {"$__range": "1h", "$__rate_interval": "1m", "$namespace": ".*", "$run": ".*"}
    rules = []
    for k, e in enumerate(exprs):
        for var, value in subst.items():
            e = e.replace(var, value)
        rules.append({"record": f"bcoder:dashboard_query_{k}", "expr": e})
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = subprocess.run(
        [_promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_stage_run_serves_when_asked_and_records_start_success_and_failure(monkeypatch) -> None:
    served: list[int] = []
    monkeypatch.setattr(telemetry, "serve", lambda port=9090, addr="0.0.0.0": served.append(port) or port)
    monkeypatch.setattr(telemetry, "wait_for_final_scrape", lambda timeout=None: False)
    monkeypatch.setenv(telemetry.METRICS_PORT_ENV, "9191")
    value = telemetry.REGISTRY.get_sample_value
    with telemetry.stage_run("rank"):
        assert value("bcoder_stage_running", {"stage": "rank"}) == 1
    assert served == [9191] and value("bcoder_stage_running", {"stage": "rank"}) == 0
    assert value("bcoder_stage_last_success_time_seconds", {"stage": "rank"}) > 0
    # No step counter: the "training stalled" alert must not take a long sampling pass for a hang.
    assert value("bcoder_steps_total", {"stage": "rank"}) is None
    failures = value("bcoder_stage_failures_total", {"stage": "rank"})
    with pytest.raises(RuntimeError), telemetry.stage_run("rank"):
        raise RuntimeError("boom")
    assert value("bcoder_stage_failures_total", {"stage": "rank"}) == failures + 1
    monkeypatch.setenv(telemetry.METRICS_PORT_ENV, "http")
    bad = pytest.raises(telemetry.BcoderError, match="BCODER_METRICS_PORT='http': expected a port number")
    with bad, telemetry.stage_run("rank"):
        pass
