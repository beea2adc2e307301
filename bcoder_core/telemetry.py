"""Prometheus metrics of every stage (DESIGN §6).

All metrics live in one dedicated :data:`REGISTRY` (plus the standard process and platform
collectors), never in prometheus-client's global default registry, so tests can read exact values
with ``REGISTRY.get_sample_value(name, labels)`` and nothing else in the process leaks in.

Rank 0 of a training job calls :func:`serve` once; the other stage commands (sample, annotate,
rank) run inside :func:`stage_run`, which serves when ``$BCODER_METRICS_PORT`` is set (the Jobs in
``k8s/`` set it) and records the stage's start and end; Prometheus scrapes ``/metrics`` on the port
named ``metrics`` (default 9090, see ``k8s/monitoring/podmonitor.yaml``). Every ``record_*``
call is a few dictionary look-ups and additions under a lock, so stages call them unconditionally
(on every rank, served or not). The end of a stage (:func:`record_stage_completed` /
:func:`record_stage_failed`) waits, when a Prometheus scrapes this process regularly, for one more
scrape (at most 30 s) so that the outcome is recorded before the process exits.

Conventions: one prefix ``bcoder_``; base units (``_seconds``, ``_bytes``); counters end in
``_total``; labels come only from ``stage`` (sft, phi, theta, sample, annotate, rank, execute,
evaluate, data, pipeline, ...), ``term`` (loss term) and ``verdict`` (DESIGN §3.3) — never a
problem id, sample id or anything else unbounded.

Exported metric families (``METRIC_NAMES`` lists them; the monitoring rules and the dashboard may
use only these, which ``tests/test_monitoring.py`` checks):

=============================================  =========  ===============  ==========================
name                                           type       labels           set by
=============================================  =========  ===============  ==========================
bcoder_steps_total                             counter    stage            record_step
bcoder_tokens_total                            counter    stage            record_step
bcoder_step_duration_seconds                   histogram  stage            record_step
bcoder_loss                                    gauge      stage, term      record_step (last value)
bcoder_q_mean                                  gauge      stage            record_step
bcoder_v_mean                                  gauge      stage            record_step
bcoder_advantage_mean                          gauge      stage            record_step
bcoder_grad_norm                               gauge      stage            record_step
bcoder_learning_rate                           gauge      stage            record_step
bcoder_gpu_memory_allocated_bytes              gauge      -                record_step (CUDA only)
bcoder_gpu_memory_reserved_bytes               gauge      -                record_step (CUDA only)
bcoder_gpu_memory_peak_allocated_bytes         gauge      -                record_step (CUDA only)
bcoder_programs_executed_total                 counter    verdict          record_execution
bcoder_execution_duration_seconds              histogram  verdict          record_execution
bcoder_samples_generated_total                 counter    -                record_samples
bcoder_checkpoint_save_duration_seconds        histogram  stage            record_checkpoint
                                                                           (``_count``: saves)
bcoder_stage_running                           gauge      stage            1 from record_stage_started
                                                                           or the first step, 0 at the end
bcoder_stage_start_time_seconds                gauge      stage            record_stage_started
bcoder_stage_last_success_time_seconds         gauge      stage            record_stage_completed
bcoder_stage_failures_total                    counter    stage            record_stage_failed
bcoder_stage_last_failure_time_seconds         gauge      stage            record_stage_failed
=============================================  =========  ===============  ==========================

Times (``*_time_seconds``) are Unix timestamps in seconds.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily

from bcoder_core.errors import BcoderError

DEFAULT_PORT = 9090
#: Set in a pod's environment (``k8s/*-job.yaml``): the port a non-training stage serves metrics on.
METRICS_PORT_ENV = "BCODER_METRICS_PORT"

disable_created_metrics()  # no *_created series: they double the series count and nothing reads them

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

# Step times range from ~10 ms (tiny CPU model) to tens of seconds (CodeT5-large, long sequences).
_STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0)
# One program's execution: most finish in well under a second; time-outs sit at the limit (4 s default).
_EXEC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
# Checkpoint saves: a tiny model in well under a second, CodeT5-large + optimiser to S3 in minutes.
_CKPT_BUCKETS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


def _per_stage(kind: type, name: str, doc: str, **kw: object):
    """A metric with one ``stage`` label in this module's registry (every training metric is one)."""
    return kind(name, doc, ["stage"], registry=REGISTRY, **kw)


STEPS = _per_stage(Counter, "bcoder_steps", "Optimiser steps taken.")
TOKENS = _per_stage(Counter, "bcoder_tokens", "Program (target) tokens processed by optimiser steps.")
STEP_DURATION = _per_stage(
    Histogram,
    "bcoder_step_duration_seconds",
    "Wall time of one optimiser step (including gradient accumulation).",
    buckets=_STEP_BUCKETS,
)
LOSS = Gauge(
    "bcoder_loss",
    "Loss of the last step, per term (total, td, adv, ce, ...).",
    ["stage", "term"],
    registry=REGISTRY,
)
Q_MEAN = _per_stage(Gauge, "bcoder_q_mean", "Mean Q(s_t, a_t) over the tokens of the last step.")
V_MEAN = _per_stage(Gauge, "bcoder_v_mean", "Mean V(s_t) over the tokens of the last step.")
ADV_MEAN = _per_stage(
    Gauge, "bcoder_advantage_mean", "Mean advantage A(s_t, a_t) over the tokens of the last step."
)
GRAD_NORM = _per_stage(Gauge, "bcoder_grad_norm", "Global gradient norm of the last step (before clipping).")
LEARNING_RATE = _per_stage(Gauge, "bcoder_learning_rate", "Learning rate of the last step.")
PROGRAMS_EXECUTED = Counter(
    "bcoder_programs_executed", "Programs executed, by verdict.", ["verdict"], registry=REGISTRY
)
EXECUTION_DURATION = Histogram(
    "bcoder_execution_duration_seconds",
    "Wall time to execute one program against its tests, by verdict.",
    ["verdict"],
    buckets=_EXEC_BUCKETS,
    registry=REGISTRY,
)
SAMPLES = Counter("bcoder_samples_generated", "Programs generated by sampling.", registry=REGISTRY)
CHECKPOINT_DURATION = _per_stage(
    Histogram,
    "bcoder_checkpoint_save_duration_seconds",
    "Wall time of one checkpoint save (write and publish); the _count series counts saves.",
    buckets=_CKPT_BUCKETS,
)
STAGE_RUNNING = _per_stage(Gauge, "bcoder_stage_running", "1 while the stage runs in this process, else 0.")
STAGE_START = _per_stage(
    Gauge, "bcoder_stage_start_time_seconds", "Unix time the stage started in this process."
)
STAGE_SUCCESS = _per_stage(
    Gauge, "bcoder_stage_last_success_time_seconds", "Unix time the stage last completed successfully."
)
STAGE_FAILURES = _per_stage(Counter, "bcoder_stage_failures", "Stage runs that ended in an error.")
STAGE_FAILURE_TIME = _per_stage(
    Gauge, "bcoder_stage_last_failure_time_seconds", "Unix time the stage last failed."
)


_GPU_HELP = {
    "bcoder_gpu_memory_allocated_bytes": "CUDA memory held by tensors on this process's device.",
    "bcoder_gpu_memory_reserved_bytes": "CUDA memory reserved by PyTorch's caching allocator.",
    "bcoder_gpu_memory_peak_allocated_bytes": "Peak CUDA memory held by tensors since the start.",
}


class _GpuMemoryCollector:
    """CUDA memory of this process's device, exported only once a step ran with CUDA initialised."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def describe(self):
        return [GaugeMetricFamily(name, doc) for name, doc in _GPU_HELP.items()]

    def collect(self):
        values = dict(self.values)
        return [
            GaugeMetricFamily(name, doc, value=values[name])
            for name, doc in _GPU_HELP.items()
            if name in values
        ]


_GPU = _GpuMemoryCollector()
REGISTRY.register(_GPU)

#: Every ``bcoder_*`` metric family this module exports (histograms expose _bucket/_sum/_count,
#: counters end in _total on the wire).
METRIC_NAMES: tuple[str, ...] = tuple(
    sorted({m.name for m in REGISTRY.collect() if m.name.startswith("bcoder_")} | set(_GPU_HELP))
)


def _series_names() -> frozenset[str]:
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    families = [*REGISTRY.collect(), *_GPU.describe()]
    return frozenset(
        f.name + suffix for f in families if f.name.startswith("bcoder_") for suffix in suffixes[f.type]
    )


#: Every ``bcoder_*`` series name that appears on /metrics (what rules and dashboards may use).
SERIES_NAMES: frozenset[str] = _series_names()


class _ScrapeTracker:
    """The registry as served over HTTP; counts scrapes so that a stage's end can wait for one."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.started = 0
        self.finished = 0  # index of the latest scrape (by start order) that has finished
        self.last_finished_at = 0.0  # time.monotonic() of the latest finished scrape

    def collect(self):
        with self._cond:
            self.started += 1
            index = self.started
        yield from REGISTRY.collect()
        with self._cond:
            self.finished = max(self.finished, index)
            self.last_finished_at = time.monotonic()
            self._cond.notify_all()

    def restricted_registry(self, names):
        return REGISTRY.restricted_registry(names)

    def wait_for_next_scrape(self, timeout: float) -> bool:
        """Wait until a scrape that starts after this call has finished; False on time-out."""
        with self._cond:
            # Only a regular scraper is worth waiting for: seen at least twice, lately.
            if self.finished < 2 or time.monotonic() - self.last_finished_at > timeout:
                return False
            after = self.started
            return self._cond.wait_for(lambda: self.finished > after, timeout=timeout)


_TRACKER = _ScrapeTracker()
_server_lock = threading.Lock()
_server: tuple[object, int] | None = None  # (http server, bound port)


def serve(port: int = DEFAULT_PORT, addr: str = "0.0.0.0") -> int:
    """Serve ``/metrics`` of :data:`REGISTRY` over HTTP in a daemon thread; return the bound port.

    Idempotent: later calls return the port of the server already running (whatever ``port`` they
    ask for). Only rank 0 serves: under ``torchrun`` (``RANK`` set and not 0) this does nothing and
    returns 0. ``port=0`` binds a free port (tests). A port in use is a one-line ``BcoderError``.
    """
    global _server
    if int(os.environ.get("RANK", "0") or 0) != 0:
        return 0
    with _server_lock:
        if _server is not None:
            return _server[1]
        try:
            httpd, _thread = start_http_server(port, addr=addr, registry=_TRACKER)
        except OSError as exc:
            raise BcoderError(f"metrics server on {addr}:{port}: {exc.strerror or exc}") from None
        bound = int(httpd.server_port)
        _server = (httpd, bound)
        return bound


def record_step(
    stage: str,
    *,
    tokens: int,
    seconds: float,
    losses: dict[str, float],
    q_mean: float | None = None,
    v_mean: float | None = None,
    adv_mean: float | None = None,
    grad_norm: float | None = None,
    lr: float | None = None,
) -> None:
    """One optimiser step of ``stage``: counts it, its tokens and time, and the last values.

    ``losses`` maps a term name (``total``, ``td``, ``adv``, ``ce``, ...) to its value; a NaN or
    infinite value is recorded as such (the ``BcoderLossNotFinite`` alert fires on it).
    """
    STEPS.labels(stage).inc()
    TOKENS.labels(stage).inc(max(0, int(tokens)))
    STEP_DURATION.labels(stage).observe(max(0.0, float(seconds)))
    STAGE_RUNNING.labels(stage).set(1)
    for term, value in losses.items():
        LOSS.labels(stage, term).set(_as_float(value))
    for gauge, value in (
        (Q_MEAN, q_mean),
        (V_MEAN, v_mean),
        (ADV_MEAN, adv_mean),
        (GRAD_NORM, grad_norm),
        (LEARNING_RATE, lr),
    ):
        if value is not None:
            gauge.labels(stage).set(_as_float(value))
    _record_gpu_memory()


def record_checkpoint(stage: str, seconds: float) -> None:
    """One checkpoint save of ``stage`` that took ``seconds`` (write + publish)."""
    CHECKPOINT_DURATION.labels(stage).observe(max(0.0, float(seconds)))


def record_execution(verdict: str, seconds: float) -> None:
    """One program executed with ``verdict`` (passed, failed, runtime_error, timeout, compile_error)."""
    PROGRAMS_EXECUTED.labels(verdict).inc()
    EXECUTION_DURATION.labels(verdict).observe(max(0.0, float(seconds)))


def record_samples(n: int) -> None:
    """``n`` programs generated by sampling."""
    SAMPLES.inc(max(0, int(n)))


def record_stage_started(stage: str, *, steps: bool = True) -> None:
    """``stage`` starts in this process: running = 1, start time now, its step counter exported at 0.

    Calling it is optional (the first ``record_step`` also marks the stage running), but it lets
    the "training stalled" alert see a stage that hangs before its first step. ``steps=False`` for
    a stage without optimiser steps (sample, annotate, rank): no step counter, so the stalled alert
    (running and no step for 15 minutes) never takes a long sampling pass for a hang.
    """
    STAGE_RUNNING.labels(stage).set(1)
    STAGE_START.labels(stage).set(time.time())
    if steps:
        STEPS.labels(stage)  # create the series at 0
    STAGE_FAILURES.labels(stage)


@contextlib.contextmanager
def stage_run(stage: str) -> Iterator[None]:
    """Run a non-training stage command: serve ``/metrics`` on ``$BCODER_METRICS_PORT`` when it is set,
    and record the stage's start, then its success or failure (any exception, re-raised)."""
    port = os.environ.get(METRICS_PORT_ENV, "").strip()
    if port:
        try:
            number = int(port)
        except ValueError:
            raise BcoderError(f"{METRICS_PORT_ENV}={port!r}: expected a port number") from None
        serve(number)
    record_stage_started(stage, steps=False)
    try:
        yield
    except BaseException:
        record_stage_failed(stage)
        raise
    record_stage_completed(stage)


def record_stage_completed(stage: str) -> None:
    """``stage`` finished successfully: last-success time now, running = 0.

    The process usually exits right after; see :func:`wait_for_final_scrape`.
    """
    STAGE_SUCCESS.labels(stage).set(time.time())
    STAGE_RUNNING.labels(stage).set(0)
    wait_for_final_scrape()


def record_stage_failed(stage: str) -> None:
    """``stage`` ended in an error: failures + 1, last-failure time now, running = 0.

    The process usually exits right after; see :func:`wait_for_final_scrape`.
    """
    STAGE_FAILURES.labels(stage).inc()
    STAGE_FAILURE_TIME.labels(stage).set(time.time())
    STAGE_RUNNING.labels(stage).set(0)
    wait_for_final_scrape()


def wait_for_final_scrape(timeout: float | None = None) -> bool:
    """Block until Prometheus has scraped the current values once more, so that the end of a stage
    (success or failure) is seen before the process exits.

    Only waits when this process serves metrics and is scraped regularly (at least twice, the last
    time within ``timeout``; never in local runs nobody scrapes); at most ``timeout`` seconds (default ``$BCODER_METRICS_FINAL_SCRAPE_S`` or 30,
    two scrape intervals of the shipped PodMonitor). Returns True if a scrape happened.
    """
    if _server is None:
        return False
    if timeout is None:
        timeout = float(os.environ.get("BCODER_METRICS_FINAL_SCRAPE_S", "30"))
    scraped = _TRACKER.wait_for_next_scrape(timeout)
    if scraped:
        time.sleep(0.2)  # the scrape's response is still being written by the server thread
    return scraped


def _as_float(value: object) -> float:
    try:
        return float(value)  # tensors with one element, numpy scalars, ints
    except (TypeError, ValueError):
        return math.nan


def _record_gpu_memory() -> None:
    """CUDA memory of the current device, if torch is already loaded and CUDA is in use."""
    torch = sys.modules.get("torch")  # never import torch here: the evaluator image has none
    if torch is None:
        return
    try:
        if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
            return
        _GPU.values = {
            "bcoder_gpu_memory_allocated_bytes": float(torch.cuda.memory_allocated()),
            "bcoder_gpu_memory_reserved_bytes": float(torch.cuda.memory_reserved()),
            "bcoder_gpu_memory_peak_allocated_bytes": float(torch.cuda.max_memory_allocated()),
        }
    except Exception:  # metrics never break a training step
        return
