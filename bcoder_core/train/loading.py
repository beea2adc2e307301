"""Data loading of the training loops: this rank's batches, prefetched in background threads.

Shared by the stages: the global batch size, the ρ_real sampler over a transition store (phi,
theta), a thread-safe loader of store records, and the :class:`Prefetcher` every loop reads from.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from bcoder_core.config import PhiConfig, ThetaConfig, TrainConfig
from bcoder_core.train.dist import DistInfo
from bcoder_core.train.logs import log
from bcoder_core.train.samplers import BatchSampler, MixedBatchSampler
from bcoder_core.train.step import split_micro


def global_batch_size(cfg: TrainConfig, info: DistInfo) -> int:
    """Records per optimiser step over all ranks and micro-batches."""
    return cfg.batch_size * cfg.grad_accum * info.world_size


def mixed_sampler(store: Any, cfg: PhiConfig | ThetaConfig, info: DistInfo, stage: str) -> MixedBatchSampler:
    """This rank's sampler of ``store``'s records, global batches mixed to rho_real ground truth
    (DESIGN §2.7); logs what the stage trains on."""
    global_batch = global_batch_size(cfg, info)
    sampler = MixedBatchSampler(
        store, global_batch, cfg.rho_real, cfg.seed, rank=info.rank, world_size=info.world_size,
        grad_accum=cfg.grad_accum, bucketing=cfg.length_bucketing, bucket_window=cfg.bucket_window,
    )  # fmt: skip
    log.info(
        "%s: %d programs (%d ground truth, %d generated), global batch %d = %d x %d x %d ranks, "
        "length bucketing %s",
        stage, len(store), store.num_gt, store.num_generated, global_batch, cfg.batch_size,
        cfg.grad_accum, info.world_size, bucketing_label(cfg),
    )  # fmt: skip
    return sampler


def bucketing_label(cfg: TrainConfig) -> str:
    """How the log names the length bucketing of ``cfg``."""
    if cfg.length_bucketing == "window":
        return f"window ({cfg.bucket_window} batches)"
    return cfg.length_bucketing


def store_loader(store: Any, grad_accum: int, pad_id: int) -> Callable[[list[int]], list[dict]]:
    """A thread-safe ``load(indices)`` for :class:`Prefetcher`: records of the transition store
    ``store`` (one reader per thread), split into ``grad_accum`` micro-batches and collated (the
    sampler's layout of the global batch makes the split length-grouped when bucketing is on)."""
    from bcoder_core.rl.transitions import collate

    local = threading.local()

    def load(indices: list[int]) -> list[dict]:
        reader = getattr(local, "store", None)
        if reader is None:
            reader = local.store = store.reopen()
        records = reader.get_many(indices)
        return [collate(part, pad_id) for part in split_micro(records, grad_accum)]

    return load


def store_prefetcher(store: Any, sampler: BatchSampler, cfg: TrainConfig, pad_id: int) -> Prefetcher:
    """The :class:`Prefetcher` of a transition-store stage (phi, theta): this rank's part of each global
    batch, as collated micro-batches."""
    load = store_loader(store, cfg.grad_accum, pad_id)
    return Prefetcher(load, sampler, workers=cfg.num_workers, last_step=cfg.max_steps)


class Prefetcher:
    """Loads (reads + collates) the batches of the next steps in background threads.

    With ``workers`` = 0 a batch is loaded when asked for. Otherwise, while step k trains, the
    batches of steps k+1 … k+2·workers are loaded by a thread pool. Which records a step sees never
    changes: batches are pure functions of the step (``sampler.batch(step)`` gives the indices,
    computed on the calling thread), so prefetching cannot disturb exact resume. ``load`` must be
    safe to call from several threads (open one store reader per thread). A context manager: the
    pool shuts down on leaving the block.
    """

    def __init__(self, load: Callable[[list[int]], Any], sampler: BatchSampler, *, workers: int,
                 last_step: int) -> None:  # fmt: skip
        from concurrent.futures import ThreadPoolExecutor

        self.load, self.sampler, self.last_step = load, sampler, last_step
        self.depth = 2 * workers
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="bcoder-data") if workers else None
        self.pending: dict[int, Any] = {}

    def get(self, step: int) -> Any:
        """The loaded batch of ``step``, the sampler's next; schedules the ones after it."""
        indices = next(self.sampler)
        if self.pool is None:
            return self.load(indices)
        future = self.pending.pop(step, None)
        for s in range(step + 1, min(step + 1 + self.depth, self.last_step)):
            if s not in self.pending:
                self.pending[s] = self.pool.submit(self.load, self.sampler.batch(s))
        return future.result() if future is not None else self.load(indices)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self.close()
