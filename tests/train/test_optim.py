"""The value-head learning-rate multiplier: the heads train faster, nothing else changes."""

from __future__ import annotations

import torch
from torch import nn

from bcoder_core.config import OptimConfig
from bcoder_core.train.optim import make_optimizer, make_scheduler


def _step(mult: float) -> tuple[nn.Linear, nn.Linear, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    body, head = nn.Linear(4, 4), nn.Linear(4, 1)
    before_body, before_head = body.weight.detach().clone(), head.bias.detach().clone()
    cfg = OptimConfig(lr=1e-3, weight_decay=0.0, schedule="linear", value_head_lr_mult=mult)
    opt = make_optimizer([*body.parameters(), *head.parameters()], cfg, head.parameters())
    sched = make_scheduler(opt, cfg, max_steps=10)
    head(body(torch.randn(8, 4))).pow(2).mean().backward()
    opt.step()
    sched.step()
    return body, head, before_body, before_head


def test_value_heads_get_their_own_learning_rate():
    body1, head1, b0, h0 = _step(1.0)
    body30, head30, _, _ = _step(30.0)
    # Adam's first step moves every parameter by about lr; the head by lr × mult.
    assert torch.allclose((head1.bias - h0).abs(), torch.full_like(h0, 1e-3), rtol=1e-3)
    assert torch.allclose((head30.bias - h0).abs(), torch.full_like(h0, 3e-2), rtol=1e-3)
    assert torch.equal(body1.weight, body30.weight)  # the rest of the model is untouched by the knob
    assert not torch.equal(body1.weight, b0)


def test_schedule_scales_the_head_group_too():
    cfg = OptimConfig(lr=1e-3, schedule="linear", value_head_lr_mult=10.0)
    body, head = nn.Linear(2, 2), nn.Linear(2, 1)
    opt = make_optimizer([*body.parameters(), *head.parameters()], cfg, head.parameters())
    sched = make_scheduler(opt, cfg, max_steps=4)
    for _ in range(2):
        opt.step()
        sched.step()
    lrs = [g["lr"] for g in opt.param_groups]
    assert lrs[-1] == lrs[0] * 10.0 and lrs[0] == 0.5e-3
