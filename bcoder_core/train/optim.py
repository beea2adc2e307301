"""AdamW and the learning-rate schedules of the paper (DESIGN §2.4, §2.5).

phi: constant lr 1e-5; theta: peak 3e-5 with linear decay to 0, no warm-up. Weight decay applies
to matrices only (biases and norm weights are excluded, the usual transformer convention).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from bcoder_core.config import OptimConfig


def make_optimizer(
    params: Iterable[nn.Parameter], cfg: OptimConfig, value_heads: Iterable[nn.Parameter] = ()
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; 1-d tensors (biases, layer norms) get no weight decay.

    ``value_heads`` (a subset of ``params``) train at ``lr × cfg.value_head_lr_mult``.
    """
    heads = {id(p) for p in value_heads} if cfg.value_head_lr_mult != 1.0 else set()
    decay, no_decay, head = [], [], []
    for p in params:
        if not p.requires_grad:
            continue
        if id(p) in heads:
            head.append(p)
        else:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if head:
        groups.append({"params": head, "weight_decay": 0.0, "lr": cfg.lr * cfg.value_head_lr_mult})
    # foreach is the fast path on both CPU and CUDA; fused would be faster on CUDA but is not
    # bit-identical across restarts on every build, and exact resume matters more here.
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, foreach=True)


def lr_factor(step: int, cfg: OptimConfig, max_steps: int) -> float:
    """Multiplier of the peak lr for optimiser step ``step`` (0-based): warm-up, then constant|linear."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    # Linear decay from the peak at the end of warm-up to 0 after the last step.
    span = max(1, max_steps - cfg.warmup_steps)
    return max(0.0, 1.0 - (step - cfg.warmup_steps) / span)


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, max_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR applying :func:`lr_factor`; its state (last step) goes into checkpoints."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg, max_steps))
