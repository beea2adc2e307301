"""Output comparison (DESIGN §4): ``strict`` (the default) and ``apps`` (the original APPS cascade).

Everything here runs in the trusted parent process on data the sandboxed program produced: plain
strings (stdin programs' stdout) and plain JSON values (call-based programs' return values, already
turned into JSON types inside the child). Nothing here executes program code, so a returned object
with a rigged ``__eq__`` cannot influence a verdict.

strict, stdin
    Strip trailing whitespace on every line and drop trailing blank lines on both sides; equal texts
    match. Otherwise the texts must have the same number of lines and, line by line, the same number
    of whitespace-separated tokens, each token equal or both parse as floats within 1e-6 relative or
    absolute tolerance. Lines out of order or duplicated are wrong answers.

strict, call
    The returned value, as JSON (tuples as lists, dict keys as JSON strings), equals the expected value
    with floats compared within 1e-6 relative/absolute; or, the APPS convention, the expected value is a
    one-element list whose element matches.

apps
    Reproduces ``eval/testing_util.py`` of the APPS repository (Hendrycks et al., 2021), including its
    leniency: whole-output strip compare, per-line strip compare, numeric ``allclose`` compare (rtol 1e-5,
    atol 1e-8), then an unordered comparison of the sets of per-line token sets, also after rounding
    numbers to 3 decimals. Call-based: ``output == expected`` or ``output == expected[0]``, tuples as
    lists, the first-level tuple rule, exact floats. Use it only for numbers that must be comparable with
    published ones; reports say which mode produced them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

FLOAT_TOL = 1e-6


# ----------------------------------------------------------------------------------------------- strict


def _normalize_lines(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _float_token(tok: str) -> float | None:
    try:
        value = float(tok)
    except ValueError:
        return None
    return value


def floats_close(a: float, b: float, tol: float = FLOAT_TOL) -> bool:
    """Equal within ``tol`` absolute or relative (NaN equals nothing, infinities only themselves)."""
    if math.isnan(a) or math.isnan(b):
        return False
    if math.isinf(a) or math.isinf(b):
        return a == b
    diff = abs(a - b)
    return diff <= tol or diff <= tol * max(abs(a), abs(b))


def _tokens_match(got: str, want: str) -> bool:
    if got == want:
        return True
    g, w = _float_token(got), _float_token(want)
    if g is None or w is None:
        return False
    return floats_close(g, w)


def strict_stdout_equal(output: str, expected: str) -> bool:
    """The strict comparison of a stdin program's output with the expected output."""
    got, want = _normalize_lines(output), _normalize_lines(expected)
    if got == want:
        return True
    if len(got) != len(want):
        return False
    for gl, wl in zip(got, want, strict=True):
        if gl == wl:
            continue
        gt, wt = gl.split(), wl.split()
        if len(gt) != len(wt):
            return False
        if not all(_tokens_match(a, b) for a, b in zip(gt, wt, strict=True)):
            return False
    return True


def _values_equal(got: Any, want: Any) -> bool:
    """Structural equality of JSON values, floats within tolerance, bool never equal to a number."""
    if isinstance(got, bool) or isinstance(want, bool):
        return isinstance(got, bool) and isinstance(want, bool) and got == want
    if isinstance(got, (int, float)) and isinstance(want, (int, float)):
        if isinstance(got, int) and isinstance(want, int):
            return got == want
        return floats_close(float(got), float(want))
    if isinstance(got, list) and isinstance(want, list):
        return len(got) == len(want) and all(_values_equal(a, b) for a, b in zip(got, want, strict=True))
    if isinstance(got, dict) and isinstance(want, dict):
        return got.keys() == want.keys() and all(_values_equal(got[k], want[k]) for k in got)
    if type(got) is not type(want):
        return False
    return got == want


def strict_value_equal(output: Any, expected: Any) -> bool:
    """The strict comparison of a call-based program's returned value (as JSON) with the expected one."""
    if _values_equal(output, expected):
        return True
    return isinstance(expected, list) and len(expected) == 1 and _values_equal(output, expected[0])


# ------------------------------------------------------------------------------------------------- apps


def _allclose(a: list[float], b: list[float]) -> bool:
    """numpy.allclose(a, b) with its defaults (rtol=1e-5, atol=1e-8, NaN unequal)."""
    for x, y in zip(a, b, strict=True):
        if math.isinf(x) or math.isinf(y):
            if x != y:
                return False
            continue
        if math.isnan(x) or math.isnan(y) or abs(x - y) > 1e-8 + 1e-5 * abs(y):
            return False
    return True


def apps_stdout_equal(output: str, expected: Any) -> bool:
    """The APPS harness's cascade for standard-input problems.

    ``output`` is the captured stdout (APPS splits it into lines); ``expected`` is the test's output
    (a string, or a list of strings that APPS joins with newlines).
    """
    out_lines = output.splitlines()
    gt = "\n".join(expected) if isinstance(expected, list) else str(expected)

    # 1. whole text, stripped; then each line stripped.
    if "\n".join(out_lines).strip() == gt.strip():
        return True
    if "\n".join(s.strip() for s in out_lines).strip() == gt.strip():
        return True
    # 2. the expected text as non-empty stripped lines, against the raw lines and the non-empty lines.
    gt_lines = [s.strip() for s in gt.split("\n") if s]
    if out_lines == gt_lines:
        return True
    out_nonempty = [s for s in out_lines if s]
    if out_nonempty == gt_lines:
        return True
    # 3. all numbers, numerically close.
    try:
        out_f = [float(s) for s in out_nonempty]
        gt_f = [float(s) for s in gt_lines]
        if len(out_f) == len(gt_f) and _allclose(out_f, gt_f):
            return True
    except ValueError:
        pass
    # 4. unordered: the set of per-line token sets (as APPS, lines and tokens lose order and multiplicity).
    gt_sets = [set(s.split()) for s in gt_lines]
    out_sets = [set(s.split()) for s in out_nonempty]
    out_sets = [s for s in out_sets if s]
    if {frozenset(s) for s in out_sets} == {frozenset(s) for s in gt_sets}:
        return True
    # 5. the same after rounding numbers to 3 decimals.
    try:
        got = {frozenset(round(float(t), 3) for t in s) for s in out_sets}
        want = {frozenset(round(float(t), 3) for t in s) for s in gt_sets}
        return got == want
    except (ValueError, OverflowError):
        return False


def _int_keys(value: Any) -> Any:
    """APPS undoes JSON's string dict keys (``{int(k): v}``) for a dict or a one-element list of one."""
    try:
        if isinstance(value, dict):
            return [{int(k): v for k, v in value.items()}]
        if isinstance(value, list) and value and isinstance(value[0], dict):
            return [{int(k): v for k, v in value[0].items()}]
    except (ValueError, TypeError):
        pass
    return value


def apps_call_inputs(inputs: list) -> list:
    """The APPS harness's transformation of call-based inputs (int keys for a leading dict)."""
    try:
        if isinstance(inputs[0], dict):
            return [{int(k): v for k, v in inputs[0].items()}]
    except (ValueError, TypeError, IndexError, KeyError):
        pass
    return inputs


def apps_value_equal(output: Any, expected: Any) -> bool:
    """The APPS harness's comparison of a call-based program's returned value (JSON, tuples as lists)."""
    expected = _int_keys(expected)
    if isinstance(output, dict):
        # JSON turned the program's int keys into strings; APPS compared the real dict.
        with contextlib.suppress(ValueError):
            output = {int(k): v for k, v in output.items()}
    if output == expected:
        return True
    return bool(isinstance(expected, list) and expected and output == expected[0])


# --------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class CompareMode:
    """A comparison mode, registered under ``name`` in :data:`COMPARE_MODES`."""

    name: str
    stdout_equal: Callable[[str, Any], bool]
    """A stdin program's output against a test's expected output (a string or a list of lines)."""
    value_equal: Callable[[Any, Any], bool]
    """A call-based program's returned value (as JSON) against the expected one."""
    call_inputs: Callable[[list], list] = list
    """How a call-based test's argument list is transformed before the call."""
    apps_environment: bool = False
    """Programs run in the APPS harness's environment: its prelude, numpy included, also for stdin
    programs (the worker then preloads numpy, which makes every fork slower)."""


COMPARE_MODES: dict[str, CompareMode] = {}
"""Every comparison mode by name: ``ExecutionConfig.compare`` and ``--compare`` accept exactly these."""


def register_compare_mode(mode: CompareMode) -> CompareMode:
    COMPARE_MODES[mode.name] = mode
    return mode


def _strict_stdout(output: str, expected: Any) -> bool:
    if isinstance(expected, list):
        expected = "\n".join(str(x) for x in expected)
    return strict_stdout_equal(output, str(expected))


register_compare_mode(CompareMode("strict", _strict_stdout, strict_value_equal))
register_compare_mode(
    CompareMode("apps", apps_stdout_equal, apps_value_equal, apps_call_inputs, apps_environment=True)
)


def stdout_equal(output: str, expected: Any, mode: str = "strict") -> bool:
    return COMPARE_MODES[mode].stdout_equal(output, expected)


def value_equal(output: Any, expected: Any, mode: str = "strict") -> bool:
    return COMPARE_MODES[mode].value_equal(output, expected)
