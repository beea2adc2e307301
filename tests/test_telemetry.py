"""Telemetry: what each record_* call exports, naming conventions, and the /metrics server."""

from __future__ import annotations

import math
import socket
import subprocess
import sys
import threading
import time
import types
import urllib.request

import pytest
from helpers.paths import REPO

from bcoder_core import telemetry

ALLOWED_LABELS = {"stage", "term", "verdict"}


def value(name: str, **labels: str) -> float:
    """Current value of one sample (0.0 for a series that does not exist yet)."""
    got = telemetry.REGISTRY.get_sample_value(name, labels)
    return 0.0 if got is None else got


def test_record_step_exports_counts_and_last_values() -> None:
    stage = "phi-test"
    steps, tokens = value("bcoder_steps_total", stage=stage), value("bcoder_tokens_total", stage=stage)
    telemetry.record_step(
        stage, tokens=1000, seconds=0.3, losses={"td": 0.25, "total": 0.5},
        q_mean=0.1, v_mean=0.2, adv_mean=-0.3, grad_norm=1.5, lr=1e-5,
    )  # fmt: skip
    telemetry.record_step(stage, tokens=500, seconds=0.7, losses={"td": 0.125})
    assert value("bcoder_steps_total", stage=stage) == steps + 2
    assert value("bcoder_tokens_total", stage=stage) == tokens + 1500
    assert value("bcoder_step_duration_seconds_count", stage=stage) == 2
    assert value("bcoder_step_duration_seconds_sum", stage=stage) == pytest.approx(1.0)
    assert value("bcoder_step_duration_seconds_bucket", stage=stage, le="0.5") == 1
    assert value("bcoder_loss", stage=stage, term="td") == 0.125  # the last step's value
    assert value("bcoder_loss", stage=stage, term="total") == 0.5
    assert value("bcoder_q_mean", stage=stage) == 0.1
    assert value("bcoder_v_mean", stage=stage) == 0.2
    assert value("bcoder_advantage_mean", stage=stage) == -0.3
    assert value("bcoder_grad_norm", stage=stage) == 1.5
    assert value("bcoder_learning_rate", stage=stage) == 1e-5
    assert value("bcoder_stage_running", stage=stage) == 1


def test_non_finite_loss_is_exported_as_such() -> None:
    telemetry.record_step("nan-test", tokens=1, seconds=0.1, losses={"td": float("nan"), "ce": float("inf")})
    assert math.isnan(value("bcoder_loss", stage="nan-test", term="td"))
    assert value("bcoder_loss", stage="nan-test", term="ce") == math.inf


def test_executions_samples_checkpoints() -> None:
    before = {v: value("bcoder_programs_executed_total", verdict=v) for v in ("passed", "timeout")}
    telemetry.record_execution("passed", 0.02)
    telemetry.record_execution("passed", 0.03)
    telemetry.record_execution("timeout", 4.0)
    assert value("bcoder_programs_executed_total", verdict="passed") == before["passed"] + 2
    assert value("bcoder_programs_executed_total", verdict="timeout") == before["timeout"] + 1
    assert value("bcoder_execution_duration_seconds_bucket", verdict="timeout", le="2.0") == 0
    assert value("bcoder_execution_duration_seconds_bucket", verdict="timeout", le="4.0") >= 1

    samples = value("bcoder_samples_generated_total")
    telemetry.record_samples(64)
    assert value("bcoder_samples_generated_total") == samples + 64

    telemetry.record_checkpoint("ckpt-test", 2.5)
    assert value("bcoder_checkpoint_save_duration_seconds_count", stage="ckpt-test") == 1
    assert value("bcoder_checkpoint_save_duration_seconds_sum", stage="ckpt-test") == 2.5


def test_stage_lifecycle() -> None:
    stage = "lifecycle-test"
    telemetry.record_stage_started(stage)
    assert value("bcoder_stage_running", stage=stage) == 1
    assert value("bcoder_stage_start_time_seconds", stage=stage) > 1.6e9
    # The step counter exists at 0 before the first step, so "stalled" can see a stage that hangs early.
    assert telemetry.REGISTRY.get_sample_value("bcoder_steps_total", {"stage": stage}) == 0
    telemetry.record_stage_completed(stage)
    assert value("bcoder_stage_running", stage=stage) == 0
    assert value("bcoder_stage_last_success_time_seconds", stage=stage) > 1.6e9
    telemetry.record_stage_failed(stage)
    assert value("bcoder_stage_failures_total", stage=stage) == 1
    assert value("bcoder_stage_last_failure_time_seconds", stage=stage) > 1.6e9


def test_names_units_and_labels_follow_the_conventions() -> None:
    families = [f for f in telemetry.REGISTRY.collect() if f.name.startswith("bcoder_")]
    assert {f.name for f in families} <= set(telemetry.METRIC_NAMES)
    for family in families:
        for sample in family.samples:
            assert set(sample.labels) - {"le"} <= ALLOWED_LABELS, sample
            if family.type == "counter":
                assert sample.name.endswith("_total"), sample.name
        if family.type == "histogram" or "time" in family.name or "duration" in family.name:
            assert family.name.endswith("_seconds"), family.name
        if "memory" in family.name:
            assert family.name.endswith("_bytes"), family.name
    # Process metrics come along on the same registry.
    assert telemetry.REGISTRY.get_sample_value("process_resident_memory_bytes") is not None


def test_gpu_memory_is_exported_only_when_cuda_is_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    names = [n for n in telemetry.METRIC_NAMES if n.startswith("bcoder_gpu_")]
    assert len(names) == 3
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        x = torch.ones(1 << 20, device="cuda")  # 4 MiB held by a tensor
        telemetry.record_step("gpu-test", tokens=1, seconds=0.1, losses={})
        assert value("bcoder_gpu_memory_allocated_bytes") >= x.numel() * 4
        assert value("bcoder_gpu_memory_reserved_bytes") >= value("bcoder_gpu_memory_allocated_bytes")
        return
    # No CUDA here: nothing GPU-shaped is exported ...
    monkeypatch.setattr(telemetry._GPU, "values", {})
    telemetry.record_step("cpu-test", tokens=1, seconds=0.1, losses={})
    assert telemetry.REGISTRY.get_sample_value("bcoder_gpu_memory_allocated_bytes") is None
    # ... and with a CUDA-reporting torch the three gauges appear (the GPU path itself runs in
    # this same test on a CUDA machine, above).
    fake_cuda = types.SimpleNamespace(
        is_available=lambda: True, is_initialized=lambda: True,
        memory_allocated=lambda: 1 << 30, memory_reserved=lambda: 2 << 30, max_memory_allocated=lambda: 3 << 30,
    )  # fmt: skip
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=fake_cuda))
    telemetry.record_step("cpu-test", tokens=1, seconds=0.1, losses={})
    assert value("bcoder_gpu_memory_allocated_bytes") == 1 << 30
    assert value("bcoder_gpu_memory_reserved_bytes") == 2 << 30
    assert value("bcoder_gpu_memory_peak_allocated_bytes") == 3 << 30


def test_serve_is_idempotent_and_serves_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    port = telemetry.serve(0, "127.0.0.1")
    assert port > 0
    assert telemetry.serve(0, "127.0.0.1") == port
    assert telemetry.serve(telemetry.DEFAULT_PORT) == port  # already serving: same server
    telemetry.record_step("http-test", tokens=3, seconds=0.1, losses={"td": 0.5})
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert 'bcoder_steps_total{stage="http-test"} 1.0' in text
    assert 'bcoder_loss{stage="http-test",term="td"} 0.5' in text
    assert "process_cpu_seconds_total" in text
    assert "_created" not in text
    monkeypatch.setenv("RANK", "3")
    assert telemetry.serve(0) == 0  # not rank 0: never serves


def test_port_in_use_is_one_line_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = (
            "from bcoder_core import telemetry\n"
            "from bcoder_core.errors import BcoderError\n"
            "try:\n"
            f"    telemetry.serve({port}, '127.0.0.1')\n"
            "except BcoderError as exc:\n"
            "    print(exc)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
        )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"metrics server on 127.0.0.1:{port}: Address already in use"


def test_end_of_stage_waits_for_a_regular_scraper(monkeypatch: pytest.MonkeyPatch) -> None:
    port = telemetry.serve(0, "127.0.0.1")
    # Fresh scrape bookkeeping for this test (restored afterwards, so no later test waits).
    for name, fresh in (("started", 0), ("finished", 0), ("last_finished_at", 0.0)):
        monkeypatch.setattr(telemetry._TRACKER, name, fresh)
    # Nobody scrapes: the end of a stage does not wait.
    assert telemetry.wait_for_final_scrape(timeout=5) is False

    seen: list[str] = []
    stop = threading.Event()

    def scraper() -> None:  # a Prometheus stand-in: scrape every 0.3 s
        while not stop.is_set():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                seen.append(response.read().decode())
            stop.wait(0.3)

    thread = threading.Thread(target=scraper, daemon=True)
    thread.start()
    try:
        while len(seen) < 2:
            time.sleep(0.05)
        telemetry.record_stage_completed("final-scrape-test")
        # The stage's end was scraped before record_stage_completed returned.
        assert any('bcoder_stage_running{stage="final-scrape-test"} 0.0' in text for text in seen)
    finally:
        stop.set()
        thread.join(timeout=10)
