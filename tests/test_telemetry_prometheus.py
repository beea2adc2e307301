"""A real Prometheus server scrapes a real (tiny, CPU) `bcoder train phi` run.

The run is the trainer's own command on a random tiny T5 and a small transition store built with
the training tests' helpers. The same Prometheus evaluates the shipped alert rules, and every query
of the shipped Grafana dashboard runs against what it scraped.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from pathlib import Path

import pytest
from helpers.servers import free_ports
from helpers.training import ENV, REPO, common, make_store, train_cmd, write_shape, write_yaml

STEPS = 600
MONITORING = REPO / "k8s" / "monitoring"
# Dashboard queries that must show data for a phi run on CPU (GPU, sampling and execution panels
# stay empty here).
TRAINING_SERIES = ("bcoder_loss", "bcoder_q_mean", "bcoder_tokens_total", "bcoder_step_duration_seconds",
                   "bcoder_steps_total", "bcoder_learning_rate", "bcoder_grad_norm", "bcoder_checkpoint")  # fmt: skip


@pytest.mark.slow
def test_prometheus_scrapes_a_real_phi_training_run(prometheus_factory, tmp_path: Path) -> None:
    port = free_ports(1)[0]
    prometheus = prometheus_factory([f"127.0.0.1:{port}"], rule_files=[MONITORING / "bcoder.rules.yml"])

    store = make_store(tmp_path / "store", v_phi=False)
    t5 = write_shape(tmp_path / "t5.json")
    config = common(
        tmp_path / "phi", t5, transitions=str(store), max_steps=STEPS, save_every=50, log_every=50,
        metrics={"enable": True, "port": port},
    )  # fmt: skip
    log = tmp_path / "train.log"
    with open(log, "wb") as out:
        trainer = subprocess.Popen(
            train_cmd("phi", write_yaml(tmp_path / "phi.yaml", config)),
            cwd=REPO, env=ENV, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    started = time.time()
    try:
        sel = '{job="bcoder",stage="phi"}'
        # Scraped while it trains (the *_over_time forms also see series a finished target left).
        try:
            prometheus.wait_for(f"max_over_time(bcoder_steps_total{sel}[5m])", lambda v: v > 0, timeout=240)
        except AssertionError:
            raise AssertionError(f"{prometheus.targets()}\n{log.read_text()[-3000:]}") from None
        assert trainer.wait(timeout=300) == 0, log.read_text()[-3000:]
        ended = time.time()
    finally:
        if trainer.poll() is None:
            trainer.terminate()
            trainer.wait(timeout=60)

    def last(expr: str) -> float:
        result = prometheus.query(expr)
        assert result, f"{expr}: no data"
        return float(result[0]["value"][1])

    # Several scrapes during the run, and the final values: the stage waits for one last scrape.
    assert last(f"count_over_time(bcoder_steps_total{sel}[5m])") >= 2
    assert last(f"max_over_time(bcoder_steps_total{sel}[5m])") == STEPS
    assert last(f"last_over_time(bcoder_stage_running{sel}[5m])") == 0
    assert last(f"last_over_time(bcoder_stage_last_success_time_seconds{sel}[5m])") > 1.6e9
    assert last(f"max_over_time(bcoder_step_duration_seconds_count{sel}[5m])") == STEPS
    assert last(f"max_over_time(rate(bcoder_tokens_total{sel}[5s])[5m:1s])") > 0  # the dashboard's tokens/s
    loss = last('last_over_time(bcoder_loss{job="bcoder",stage="phi",term="total"}[5m])')
    assert math.isfinite(loss) and 0 <= loss < 100
    terms = {r["metric"]["term"] for r in prometheus.query(f"last_over_time(bcoder_loss{sel}[5m])")}
    assert "total" in terms and len(terms) >= 2, terms
    assert 0 < last(f"last_over_time(bcoder_learning_rate{sel}[5m])") <= 1e-3
    assert last(f"max_over_time(bcoder_checkpoint_save_duration_seconds_count{sel}[5m])") >= 1

    # The alert rules evaluate cleanly on real series, and none fired for a healthy run.
    rules = prometheus.rules()
    assert len(rules) == 5 and all(r["health"] == "ok" for r in rules), rules
    assert not [a for r in rules for a in r.get("alerts", [])]

    # Every dashboard query parses; the training panels show data for the run.
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "5s").replace("$__range", "5m")
            for var in ("$namespace", "$job_name", "$stage", "$run"):
                expr = expr.replace(var, ".*")
            result = prometheus.query_range(expr, started, ended + 1)
            if any(series in expr for series in TRAINING_SERIES):
                assert result, f"panel {panel['title']!r}: no data for {expr}"
