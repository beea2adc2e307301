"""The upper-bound transform of the value heads (DESIGN §2.2, paper App. G.1).

Returns are at most ``R_max`` (= 1, the reward of a passing program). A value head's raw output ``u``
is mapped to

    V = R_max − softabs(u),     softabs(u) = (softplus(u) + softplus(−u)) / 2 − ln 2

and (softplus(u) + softplus(−u)) / 2 = log(2·cosh(u/2)), so softabs(u) = log cosh(u/2) ≥ 0 with
softabs(0) = 0: a zero-initialised head starts at V = R_max (optimistic). **Decision** (DESIGN):
``− ln 2``, not the printed ``+ ln 2``.

Computed as ``logaddexp(u/2, −u/2) − ln 2``: stable for any |u| (no exp overflow), smooth, with the
exact derivative tanh(u/2)/2 everywhere (0 at u = 0).
"""

from __future__ import annotations

import math

import torch

__all__ = ["LN2", "R_MAX", "bound", "softabs"]

LN2 = math.log(2.0)
R_MAX = 1.0


def softabs(u: torch.Tensor) -> torch.Tensor:
    """log cosh(u/2) = (softplus(u) + softplus(−u))/2 − ln 2, elementwise, ≥ 0, zero at u = 0."""
    half = u * 0.5
    return torch.logaddexp(half, -half) - LN2


def bound(u: torch.Tensor, r_max: float = R_MAX) -> torch.Tensor:
    """V = r_max − softabs(u): a value that is never above ``r_max``."""
    return r_max - softabs(u)
