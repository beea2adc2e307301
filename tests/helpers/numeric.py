"""Float comparisons that fit float32 at the values' scale.

A numeric test must fail on a wrong formula, never on another CPU: two float32 computations of the
same quantity (a batched pass against a one-at-a-time one, one BLAS against another) differ by a few
units in the last place of the *largest* value involved, so an absolute tolerance must grow with the
magnitudes. A wrong formula is off by far more than that (a missing term, a sign, a γ).
"""

from __future__ import annotations

from typing import Any

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)
ULPS = 64
"""Units in the last place of the largest magnitude allowed between two float32 computations."""


def f32_tolerance(*values: Any, ulps: int = ULPS) -> float:
    """Absolute tolerance for comparing float32 results whose magnitudes are those of ``values``."""
    scale = max([1.0] + [float(np.max(np.abs(np.asarray(_numpy(v), dtype=np.float64)))) for v in values])
    return ulps * EPS32 * scale


def assert_close_f32(actual: Any, expected: Any, *, ulps: int = ULPS) -> None:
    """``actual`` equals ``expected`` up to float32 rounding at their scale (elementwise)."""
    a, e = np.asarray(_numpy(actual), dtype=np.float64), np.asarray(_numpy(expected), dtype=np.float64)
    np.testing.assert_allclose(a, e, rtol=0, atol=f32_tolerance(a, e, ulps=ulps))


def _numpy(value: Any) -> Any:
    if hasattr(value, "detach"):  # a torch tensor
        return value.detach().cpu().double().numpy()
    return value
