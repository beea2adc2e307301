"""Pieces the three training loops share: run setup, precision, DDP wrapping, micro-batches, logging.

The loops themselves (``sft.py``, ``phi.py``, ``theta.py``) stay explicit; this module holds only
what would otherwise be copied three times.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bcoder_core.config import TrainConfig
from bcoder_core.errors import BcoderError
from bcoder_core.train.dist import DistInfo, mean_over_ranks, sum_over_ranks

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


def validate_common(cfg: TrainConfig) -> None:
    """Checks a type checker cannot make (one error line each)."""
    for key, value, low in (
        ("batch_size", cfg.batch_size, 1),
        ("grad_accum", cfg.grad_accum, 1),
        ("max_steps", cfg.max_steps, 1),
        ("save_every", cfg.save_every, 0),
        ("keep_checkpoints", cfg.keep_checkpoints, 0),
        ("log_every", cfg.log_every, 1),
        ("num_workers", cfg.num_workers, 0),
    ):
        if value < low:
            raise BcoderError(f"config: {key} must be >= {low}, got {value}")
    if not cfg.output:
        raise BcoderError("config: output must name a directory or s3:// prefix")
    if not cfg.model.init and not cfg.model.t5_config:
        raise BcoderError("config: set model.init (a checkpoint) or model.t5_config (random init)")
    if cfg.optim.lr <= 0:
        raise BcoderError(f"config: optim.lr must be > 0, got {cfg.optim.lr}")


def use_bf16(cfg: TrainConfig, info: DistInfo) -> bool:
    """bf16 autocast on CUDA ("auto"/"bf16"), fp32 on CPU (DESIGN §5)."""
    if info.device.type != "cuda":
        return False
    return cfg.precision in ("auto", "bf16")


def autocast(enabled: bool, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast when ``enabled``, else a no-op."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


class LossModule(nn.Module):
    """Wraps model + loss so that DistributedDataParallel sees the loss computation as forward().

    The B-Coder losses call model methods (``phi_values``, ``theta_outputs``), not ``forward``;
    DDP only synchronises gradients for work done inside its ``forward``, so the loss goes there.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[[nn.Module, dict], tuple[torch.Tensor, dict]]):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        return self.loss_fn(self.model, batch)


def wrap_ddp(module: nn.Module, info: DistInfo, cfg: TrainConfig) -> nn.Module:
    """DDP around ``module`` when distributed, else the module itself."""
    if not info.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [info.local_rank] if info.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=cfg.ddp_find_unused)


def no_sync(module: nn.Module, last: bool) -> contextlib.AbstractContextManager:
    """Skip DDP's gradient all-reduce on every micro-batch of an accumulation but the last."""
    if last or not hasattr(module, "no_sync"):
        return contextlib.nullcontext()
    return module.no_sync()


def split_micro(items: Sequence[Any], parts: int) -> list[list[Any]]:
    """Split this rank's part of the global batch into ``parts`` micro-batches, strided.

    Strided (``items[j::parts]``) so that micro-batch j of rank r holds global positions
    ``r + j·W (mod W·A)``: a run with W ranks and accumulation A then sees exactly the micro-batches
    of a single process with accumulation W·A (tests/test_train_ddp.py relies on it).
    """
    return [list(items[j::parts]) for j in range(parts)]


def to_device(batch: dict, device: torch.device) -> dict:
    """Move every tensor of a batch to ``device``."""
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def global_grad_norm(params: Sequence[nn.Parameter], clip: float) -> float:
    """The global gradient norm (clipped to ``clip`` when > 0); gradients are already all-reduced."""
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return 0.0
    max_norm = clip if clip > 0 else math.inf
    return float(torch.nn.utils.clip_grad_norm_(grads, max_norm, foreach=True))


def count_tokens(batch: dict) -> int:
    """Prompt + program tokens in a batch (what tokens/s counts)."""
    n = int(batch["attention_mask"].sum())
    return n + int((batch["labels"] != -100).sum())


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

    def step(self, step: int, *, stats: dict[str, float], tokens: int, seconds: float, lr: float,
             grad_norm: float) -> None:  # fmt: skip
        """Record optimiser step ``step`` (1-based, after the update)."""
        from bcoder_core import telemetry

        stats = {**stats, "grad_norm": grad_norm}
        for k, v in stats.items():
            self._window.setdefault(k, []).append(float(v))
        self._tokens += tokens
        if self.info.is_main:
            losses = {k: v for k, v in stats.items() if k.startswith("loss")}
            telemetry.record_step(
                self.stage,
                tokens=tokens * self.info.world_size,
                seconds=seconds,
                losses={(k.removeprefix("loss_") if k != "loss" else "total"): v for k, v in losses.items()},
                q_mean=stats.get("q_mean"),
                v_mean=stats.get("v_mean"),
                adv_mean=stats.get("adv_mean"),
                grad_norm=grad_norm,
                lr=lr,
            )
        if step % self.log_every == 0 or step == self.max_steps:
            self._flush(step, lr)

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


@dataclass(frozen=True)
class TrainResult:
    """What a training run returns: where the model went and the logged loss curve."""

    final: str
    """URI of the exported model (``<output>/final``)."""
    history: list[dict[str, float]]
    """One entry per log window of this process's run: ``step`` and the rank-averaged means of the
    loss terms and statistics over the window."""


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


# --------------------------------------------------------------------------------------------------
# Model initialisation
# --------------------------------------------------------------------------------------------------


def resolve_init(cfg: TrainConfig, seed: int, scratch: str, **shape_overrides: Any) -> str:
    """Local directory (or Hugging Face id) of the starting T5 checkpoint.

    ``model.init`` is a local directory, an artifact URI (fetched and verified), or a Hugging Face
    id (anything that is neither; transformers resolves it). Without ``init``, a T5 of the shape
    ``model.t5_config`` (a JSON file or a name in configs/models/, with ``shape_overrides`` such as
    ``vocab_size``) gets random weights seeded by ``seed`` and is saved under ``scratch``, so every
    stage loads its model the same way (and every rank builds the same weights).
    """
    from pathlib import Path

    from bcoder_core import storage

    init = cfg.model.init
    if init:
        if "://" in init or Path(init).exists() or init.startswith(("/", ".")):
            return str(storage.input_path(init))
        return init
    from bcoder_core.model.build import model_config, save_random_checkpoint

    shape = model_config(cfg.model.t5_config, **shape_overrides)
    return str(save_random_checkpoint(shape, Path(scratch) / "random-init", seed=seed))


def resolve_tokenizer_spec(cfg: TrainConfig, init_dir: str) -> str:
    """The tokenizer to load: "auto" means the one saved with the init checkpoint, else "codet5"."""
    from pathlib import Path

    spec = cfg.model.tokenizer
    if spec != "auto":
        return spec
    if (Path(init_dir) / "tokenizer_config.json").is_file():
        return init_dir
    return "codet5"


class Prefetcher:
    """Loads (reads + collates) the batches of the next steps in background threads.

    With ``workers`` = 0 a batch is loaded when asked for. Otherwise, while step k trains, the
    batches of steps k+1 … k+2·workers are loaded by a thread pool. Which records a step sees never
    changes: batches are pure functions of the step (``upcoming(step)`` gives the indices, computed
    on the calling thread), so prefetching cannot disturb exact resume. ``load`` must be safe to call
    from several threads (open one store reader per thread).
    """

    def __init__(self, load: Callable[[list[int]], Any], upcoming: Callable[[int], list[int]], *,
                 workers: int, last_step: int) -> None:  # fmt: skip
        from concurrent.futures import ThreadPoolExecutor

        self.load, self.upcoming, self.last_step = load, upcoming, last_step
        self.depth = 2 * workers
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="bcoder-data") if workers else None
        self.pending: dict[int, Any] = {}

    def get(self, step: int, indices: list[int]) -> Any:
        """The loaded batch of ``step`` (whose indices are ``indices``); schedules the next ones."""
        if self.pool is None:
            return self.load(indices)
        future = self.pending.pop(step, None)
        for s in range(step + 1, min(step + 1 + self.depth, self.last_step)):
            if s not in self.pending:
                self.pending[s] = self.pool.submit(self.load, self.upcoming(s))
        return future.result() if future is not None else self.load(indices)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def store_loader(path: Any, grad_accum: int, pad_id: int) -> Callable[[list[int]], list[dict]]:
    """A thread-safe ``load(indices)`` for :class:`Prefetcher`: records of the transition store at
    ``path`` (one reader per thread), split into ``grad_accum`` micro-batches and collated."""
    import threading

    from bcoder_core.rl.transitions import collate, open_store

    local = threading.local()

    def load(indices: list[int]) -> list[dict]:
        reader = getattr(local, "store", None)
        if reader is None:
            reader = local.store = open_store(path)
        records = reader.get_many(indices)
        return [collate(part, pad_id) for part in split_micro(records, grad_accum)]

    return load
