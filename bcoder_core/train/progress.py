"""Where a run stands, the same in every stage: its resume point, the step log, the checkpoints every
``save_every`` steps, and the final export.

The loops create one :class:`Progress` after their optimiser, hand it every finished step, and end
with its :meth:`Progress.export`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bcoder_core import telemetry
from bcoder_core.config import TrainConfig
from bcoder_core.train import checkpoint
from bcoder_core.train.dist import DistInfo
from bcoder_core.train.logs import StepLogger, log
from bcoder_core.train.samplers import BatchSampler
from bcoder_core.train.step import StepResult, TrainParts


@dataclass(frozen=True)
class TrainResult:
    """What a training run returns: where the model went and the logged loss curve."""

    final: str
    """URI of the exported model (``<output>/final``)."""
    history: list[dict[str, float]]
    """One entry per log window of this process's run: ``step`` and the rank-averaged means of the
    loss terms and statistics over the window."""


class Progress:
    """Resumes the run (or seeds a fresh one), logs each step and saves checkpoints when due.

    ``write_model(path)`` writes what a checkpoint's ``model/`` holds. ``start_step`` is the number of
    optimiser steps already taken (0 for a fresh run).
    """

    def __init__(self, stage: str, info: DistInfo, cfg: TrainConfig, model: Any, parts: TrainParts,
                 sampler: BatchSampler, write_model: Callable[[Path], None],
                 resume_dir: Path | None) -> None:  # fmt: skip
        self.stage, self.info, self.cfg = stage, info, cfg
        self.model, self.parts, self.sampler = model, parts, sampler
        self._write_model = self._then_train(write_model)
        # Optimiser, scheduler, RNG and data position exactly where they were.
        if resume_dir is not None:
            step, data_state = checkpoint.load_training_state(
                resume_dir, info, optimizer=parts.optimizer, scheduler=parts.scheduler
            )
            sampler.load_state_dict(data_state)
            log.info("%s: resumed from %s", stage, checkpoint.step_uri(cfg.output, step))
        else:
            step = 0
            checkpoint.seed_everything(cfg.seed + info.rank)  # distinct dropout masks per rank
        self.start_step = step
        self.logger = StepLogger(stage, info, cfg.max_steps, cfg.log_every, start_step=step)
        self._history = checkpoint.existing_steps(cfg.output, step)

    def _then_train(self, write: Callable[[Path], None]) -> Callable[[Path], None]:
        def write_and_train(path: Path) -> None:
            write(path)
            # Saving may switch shared submodules to eval mode (θ builds an eval-mode HF view sharing
            # its modules), and training goes on after a checkpoint: dropout back on.
            self.model.train()

        return write_and_train

    def after_step(self, step: int, done: StepResult) -> None:
        """Log optimiser step ``step`` (1-based) and save a checkpoint every ``save_every`` steps and
        after the last."""
        cfg = self.cfg
        self.logger.step(step, done)
        if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.max_steps:
            seconds = checkpoint.save_checkpoint(
                self.info, cfg.output, step, stage=self.stage, write_model=self._write_model,
                optimizer=self.parts.optimizer, scheduler=self.parts.scheduler,
                data_state=self.sampler.state_dict(), config=cfg, keep=cfg.keep_checkpoints,
                history=self._history,
            )  # fmt: skip
            if self.info.is_main:
                telemetry.record_checkpoint(self.stage, seconds)
                log.info("%s: saved %s (%.1fs)", self.stage, checkpoint.step_uri(cfg.output, step), seconds)

    def export(self, write_final: Callable[[Path], None]) -> TrainResult:
        """Free DDP, then write ``<output>/final`` with ``write_final``; returns the run's result."""
        self.parts.drop_ddp()
        history = self.logger.history
        final = checkpoint.export_final(
            self.info, self.cfg.output, self._then_train(write_final), self.cfg, history
        )
        log.info("%s: done, model in %s", self.stage, final)
        return TrainResult(final=final, history=history)
