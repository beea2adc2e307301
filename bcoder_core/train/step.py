"""One optimiser step, the same in every stage: micro-batches, DDP's all-reduce, clipping, AdamW.

:func:`setup_training` puts the model in train mode on its device and builds the loss module (DDP
around it when distributed), AdamW and the schedule; :func:`train_step` then takes one step.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from bcoder_core.config import TrainConfig
from bcoder_core.train.dist import DistInfo
from bcoder_core.train.optim import make_optimizer, make_scheduler
from bcoder_core.train.setup import autocast, use_bf16

if TYPE_CHECKING:
    from bcoder_core.train.loading import Prefetcher


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
    of a single process with accumulation W·A (tests/test_train_ddp.py relies on it). With length
    bucketing the sampler lays the global batch out so that these are its runs of similar lengths
    (``samplers.deal``).
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


def loss_norm(micro: Sequence[dict], world_size: int, device: torch.device) -> dict[str, float]:
    """The denominators that make a step's loss the token mean of its whole global batch.

    ``tokens``: the global batch's program tokens, ``gt_tokens``: its ground-truth program tokens
    (0 without ``is_gt``), summed over this rank's micro-batches and, when distributed, over the
    ranks (one small all-reduce); both divided by the world size, because DDP averages the ranks'
    gradients. Each micro-batch's loss then is its share of the global token mean and the shares
    sum to it (``rl.losses``: ``loss_norm``), whatever programs share a micro-batch.
    """
    counts = [0, 0]
    for m in micro:
        real = m["labels"] != -100
        counts[0] += int(real.sum())
        if "is_gt" in m:
            counts[1] += int((real & m["is_gt"].bool()[:, None]).sum())
    if world_size > 1:
        import torch.distributed as torch_dist

        t = torch.tensor(counts, dtype=torch.float64, device=device)
        torch_dist.all_reduce(t)
        counts = t.tolist()
    return {"tokens": max(counts[0], 1) / world_size, "gt_tokens": max(counts[1], 1) / world_size}


def count_tokens(batch: dict) -> int:
    """Prompt + program tokens in a batch (what tokens/s counts)."""
    n = int(batch["attention_mask"].sum())
    return n + int((batch["labels"] != -100).sum())


@dataclass
class TrainParts:
    """What a step works with: the loss module (DDP-wrapped when distributed), the trainable parameters,
    AdamW, its schedule, and how to run the micro-batches."""

    net: nn.Module
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    bf16: bool
    grad_accum: int
    grad_clip: float
    world_size: int = 1

    def drop_ddp(self) -> None:
        """Free DDP (and its reducer's hold on the process group) while every rank is still here: a
        gloo group torn down after a peer exited can block its destructor forever."""
        self.net = getattr(self.net, "module", self.net)


def setup_training(model: Any, loss_fn: Callable, stage: str, cfg: TrainConfig, info: DistInfo) -> TrainParts:
    """Move ``model`` (a BCoderModel) to this rank's device in train mode, and build the loss module,
    AdamW over ``stage``'s trainable parameters (value heads at their own lr) and the schedule."""
    model.to(info.device)
    model.train()
    params = list(model.trainable_parameters(stage))
    net = wrap_ddp(LossModule(model, loss_fn), info, cfg)
    optimizer = make_optimizer(params, cfg.optim, model.value_head_parameters(stage))
    scheduler = make_scheduler(optimizer, cfg.optim, cfg.max_steps)
    bf16 = use_bf16(cfg, info)
    return TrainParts(
        net, params, optimizer, scheduler, info.device, bf16, cfg.grad_accum, cfg.optim.grad_clip,
        info.world_size,
    )  # fmt: skip


@dataclass(frozen=True)
class StepResult:
    """What one optimiser step reports to the step log."""

    stats: dict[str, float]
    """The loss terms and mean statistics: token means over the global batch (this rank's share
    of them when distributed: their mean over the ranks is the global one); ``tokens`` and
    ``gt_tokens``: program tokens of this rank's part."""
    tokens: int
    """Prompt + program tokens this rank trained on."""
    grad_norm: float
    lr: float
    """The learning rate the step used."""
    seconds: float
    """Wall time of the step, loading its batch included."""


def accumulate(parts: TrainParts, micro: Sequence[dict]) -> tuple[dict[str, float], int]:
    """Backward of every micro-batch of one step into the parameters' ``.grad``: the gradient of
    the global batch's token-mean loss (:func:`loss_norm`), as one big batch would give it.

    Returns the summed stats (token means of the global batch, this rank's counts) and the
    prompt + program tokens of this rank.
    """
    norm = loss_norm(micro, parts.world_size, parts.device)
    stats_sum: dict[str, float] = {}
    tokens = 0
    for j, part in enumerate(micro):
        tokens += count_tokens(part)  # on the host copy: no device sync
        batch = {**to_device(part, parts.device), "loss_norm": norm}
        with no_sync(parts.net, last=j == len(micro) - 1):  # DDP all-reduces on the last only
            with autocast(parts.bf16, parts.device):
                loss, stats = parts.net(batch)
            loss.backward()  # already this micro-batch's share of the global token mean
        for k, v in stats.items():
            stats_sum[k] = stats_sum.get(k, 0.0) + float(v)
    return stats_sum, tokens


def train_step(parts: TrainParts, loader: Prefetcher, step: int) -> StepResult:
    """Load batch ``step`` (0-based), accumulate its micro-batches' gradients and take one optimiser
    and schedule step."""
    t0 = time.perf_counter()
    micro = loader.get(step)
    parts.optimizer.zero_grad(set_to_none=True)
    stats_sum, tokens = accumulate(parts, micro)
    grad_norm = global_grad_norm(parts.params, parts.grad_clip)
    lr = parts.scheduler.get_last_lr()[0]
    parts.optimizer.step()
    parts.scheduler.step()
    return StepResult(stats_sum, tokens, grad_norm, lr, time.perf_counter() - t0)
