"""Logging and telemetry glue of the training stages: rank-0 log lines, the per-step log and metrics,
and the stage's start/completion/failure records."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bcoder_core.config import TrainConfig
from bcoder_core.train.dist import DistInfo, mean_over_ranks, sum_over_ranks

if TYPE_CHECKING:
    from bcoder_core.train.step import StepResult

log = logging.getLogger("bcoder.train")


def setup_logging(info: DistInfo) -> None:
    """Log lines on rank 0 only (other ranks keep warnings), to stderr, one line per event."""
    level = logging.INFO if info.is_main else logging.WARNING
    root = logging.getLogger("bcoder")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


@dataclass
class StepLogger:
    """Collects per-step stats; rank 0 prints one line every ``log_every`` steps and feeds telemetry."""

    stage: str
    info: DistInfo
    max_steps: int
    log_every: int
    start_step: int = 0
    _window: dict[str, list[float]] = field(default_factory=dict)
    _tokens: int = 0
    _t_window: float = field(default_factory=time.perf_counter)
    _t_start: float = field(default_factory=time.perf_counter)
    history: list[dict[str, float]] = field(default_factory=list)

    def step(self, step: int, done: StepResult) -> None:
        """Record optimiser step ``step`` (1-based, after the update)."""
        from bcoder_core import telemetry

        stats = {**done.stats, "grad_norm": done.grad_norm}
        for k, v in stats.items():
            self._window.setdefault(k, []).append(float(v))
        self._tokens += done.tokens
        if self.info.is_main:
            losses = {k: v for k, v in stats.items() if k.startswith("loss")}
            telemetry.record_step(
                self.stage,
                tokens=done.tokens * self.info.world_size,
                seconds=done.seconds,
                losses={(k.removeprefix("loss_") if k != "loss" else "total"): v for k, v in losses.items()},
                q_mean=stats.get("q_mean"),
                v_mean=stats.get("v_mean"),
                adv_mean=stats.get("adv_mean"),
                grad_norm=done.grad_norm,
                lr=done.lr,
            )
        if step % self.log_every == 0 or step == self.max_steps:
            self._flush(step, done.lr)

    def _flush(self, step: int, lr: float) -> None:
        means = {k: sum(v) / len(v) for k, v in self._window.items()}
        means = mean_over_ranks(self.info, means)
        tokens = sum_over_ranks(self.info, float(self._tokens))
        now = time.perf_counter()
        tok_s = tokens / max(now - self._t_window, 1e-9)
        done = step - self.start_step
        eta = (now - self._t_start) / max(done, 1) * (self.max_steps - step)
        self.history.append({"step": step, **means})
        if self.info.is_main:
            parts = " ".join(f"{k}={v:.4g}" for k, v in means.items())
            log.info(
                "%s step %d/%d (%d%%) %s lr=%.3g tok/s=%.0f eta=%s",
                self.stage, step, self.max_steps, 100 * step // self.max_steps, parts, lr, tok_s,
                _fmt_duration(eta),
            )  # fmt: skip
        self._window.clear()
        self._tokens = 0
        self._t_window = now


def _fmt_duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


@contextlib.contextmanager
def stage_telemetry(stage: str, info: DistInfo, cfg: TrainConfig) -> Iterator[None]:
    """Serve metrics (rank 0) and record the stage's start, completion or failure."""
    from bcoder_core import telemetry

    if info.is_main and cfg.metrics.enable:
        port = telemetry.serve(cfg.metrics.port)
        log.info("%s: metrics on :%d/metrics", stage, port)
    if info.is_main:
        telemetry.record_stage_started(stage)
    try:
        yield
    except BaseException:
        if info.is_main:
            telemetry.record_stage_failed(stage)
        raise
    if info.is_main:
        telemetry.record_stage_completed(stage)
