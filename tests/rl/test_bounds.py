"""The upper-bound transform V = R_max − softabs(u) (DESIGN §2.2)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bcoder_core.rl.bounds import LN2, R_MAX, bound, softabs


def test_softabs_is_the_design_formula():
    u = torch.linspace(-30, 30, 601, dtype=torch.float64)
    expected = (F.softplus(u, threshold=1e9) + F.softplus(-u, threshold=1e9)) / 2 - math.log(2.0)
    torch.testing.assert_close(softabs(u), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(softabs(u), torch.log(torch.cosh(u / 2)), rtol=0, atol=1e-12)


def test_softabs_zero_at_zero_nonnegative_symmetric():
    assert softabs(torch.zeros(3)).tolist() == [0.0, 0.0, 0.0]
    u = torch.randn(10_000) * 20
    s = softabs(u)
    assert (s >= 0).all()
    torch.testing.assert_close(s, softabs(-u))


def test_bound_caps_at_r_max_and_starts_there():
    assert bound(torch.zeros(2)).tolist() == [R_MAX, R_MAX]
    assert bound(torch.zeros(1), r_max=0.5).item() == 0.5
    u = torch.randn(10_000) * 50
    assert (bound(u) <= R_MAX).all()
    # a passing program's return (1.0) is reachable, unlike the printed "+ ln 2" variant
    assert bound(torch.zeros(1)).item() == 1.0 > 1 - 2 * LN2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_stable_for_huge_inputs(dtype):
    u = torch.tensor([-1e30, -1e4, -88.0, 88.0, 1e4, 1e30], dtype=dtype)
    s = softabs(u)
    assert torch.isfinite(s).all()
    # log cosh(u/2) → |u|/2 − ln 2 for large |u|
    big = u.double().abs()[1:-1]
    torch.testing.assert_close(
        s.double()[1:-1], big / 2 - LN2, rtol=1e-2 if dtype == torch.bfloat16 else 1e-6, atol=0
    )


def test_gradient_is_tanh_half():
    u = torch.linspace(-40, 40, 801, dtype=torch.float64, requires_grad=True)
    bound(u).sum().backward()
    torch.testing.assert_close(u.grad, -torch.tanh(u.detach() / 2) / 2)
    z = torch.zeros(1, requires_grad=True)
    softabs(z).backward()
    assert z.grad.item() == 0.0
