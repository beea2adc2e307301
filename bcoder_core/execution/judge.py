"""The trusted half of a run: the job sent to a worker, and the verdict decided from what came back.

Verdicts, by precedence (the first that applies):

1. ``compile_error`` — the program does not compile (``compile()`` in the worker, before anything runs).
2. ``timeout`` — a test (or loading the program) exceeded the per-test wall limit, the per-program
   limit was reached, or the CPU-seconds limit killed it. Tests after a time-out are not run.
3. ``runtime_error`` — loading the program raised or ended the process, a test raised (anything but
   an ``AssertionError`` of an assert-based test), exited with a non-zero status or a signal, or the
   harness channel was corrupted.
4. ``failed`` — every test ran, at least one gave a wrong answer (a failed assertion, a wrong output,
   or an output larger than ``max_output_bytes``).
5. ``passed`` — every test passed (also when the test set is empty: then only compilation is checked).

``tests_passed`` counts the tests that passed, whatever the verdict; ``tests_total`` is the number of
tests of the chosen set (hidden or example). ``duration_s`` is the wall time the worker spent on the
program.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bcoder_core.errors import BcoderError
from bcoder_core.execution.checks import ParentTest, decode_values, judge_values, parent_test
from bcoder_core.execution.child import APPS_PRELUDE, APPS_PRELUDE_NUMPY
from bcoder_core.execution.compare import COMPARE_MODES
from bcoder_core.execution.config import ExecutionConfig
from bcoder_core.execution.protocol import ExecutionError, JobEnd, RunJob, TestReport

REWARDS: dict[str, float] = {
    "passed": 1.0,
    "failed": -0.3,
    "runtime_error": -0.6,
    "timeout": -0.6,
    "compile_error": -1.0,
}
VERDICTS: tuple[str, ...] = tuple(REWARDS)
DETAIL_MAX = 200


@dataclass(frozen=True)
class ExecutionResult:
    """One sample's result (DESIGN §3.3); :meth:`as_dict` is the record written to results files."""

    problem_id: Any
    sample_id: Any
    verdict: str
    reward: float
    tests_passed: int
    tests_total: int
    duration_s: float
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


RESULT_KEYS: tuple[str, ...] = tuple(ExecutionResult.__dataclass_fields__)


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= DETAIL_MAX else text[: DETAIL_MAX - 1] + "…"


def build_job(problem, code: str, config: ExecutionConfig, job_id: int = 1) -> tuple[RunJob, list]:
    """The message for the worker, and the expected outputs kept here (the worker never gets them)."""
    tests = (problem.tests if config.tests == "hidden" else problem.example_tests) or {}
    mode = COMPARE_MODES[config.compare]
    common = {
        "job_id": job_id,
        "format": problem.format,
        "code": code,
        "timeout_s": float(config.timeout_s),
        "program_timeout_s": float(config.program_timeout_s),
        "max_output": int(config.max_output_bytes),
    }
    if problem.format == "stdin":
        inputs = ["\n".join(map(str, x)) if isinstance(x, list) else str(x) for x in tests.get("inputs", [])]
        prelude = APPS_PRELUDE_NUMPY if mode.apps_environment else None
        return RunJob(**common, inputs=inputs, prelude=prelude), list(tests.get("outputs", []))
    if problem.format == "call":
        inputs = [mode.call_inputs(x) if isinstance(x, list) else x for x in tests.get("inputs", [])]
        prelude = APPS_PRELUDE_NUMPY if mode.apps_environment else APPS_PRELUDE
        job = RunJob(**common, inputs=inputs, fn_name=problem.fn_name, prelude=prelude)
        return job, list(tests.get("outputs", []))
    if problem.format == "assert":
        # The tests of a common shape are decided here: the worker gets the expressions to evaluate and
        # none of the expected values (checks.py); the rest run as assertions in the program's process.
        asserts: list = []
        expected: list = []
        for source in tests.get("asserts", []):
            decided = parent_test(source) if isinstance(source, str) else None
            asserts.append({"eval": list(decided.exprs)} if decided else source)
            expected.append(decided)
        return RunJob(**common, asserts=asserts, setup=tests.get("setup") or ""), expected
    raise BcoderError(f"problem {problem.id!r}: unknown format {problem.format!r}")  # pragma: no cover


def _test_passed(problem, report: TestReport, expected: Any, compare: str) -> bool:
    if problem.format == "stdin":
        return COMPARE_MODES[compare].stdout_equal(report.stdout or "", expected)
    if problem.format == "call":
        try:
            value = json.loads(report.value or "null")
        except (ValueError, RecursionError):
            value = {"__bcoder_unrepresentable__": "invalid JSON"}
        return COMPARE_MODES[compare].value_equal(value, expected)
    if isinstance(expected, ParentTest):
        return judge_values(expected, decode_values(report.value))[0]
    return True


def _verdict(
    problem, expected: list, reports: Sequence[TestReport], end: JobEnd, config: ExecutionConfig
) -> tuple[str, str, int]:
    """(verdict, detail, tests passed), by the precedence of the module docstring."""
    if end.compile_error:
        return "compile_error", end.compile_error, 0
    if end.load_error == "timeout":
        return "timeout", f"loading the program exceeded the time limit of {config.timeout_s:g} s", 0
    if end.load_error:
        return "runtime_error", f"loading the program: {end.load_error}", 0
    total = len(expected)
    passed = 0
    wrong = error = timeout = None
    seen: set[int] = set()
    for r in reports:
        i = r.index
        if not 0 <= i < total or i in seen:
            raise ExecutionError(f"worker reported an unexpected test index {i!r}")
        seen.add(i)
        decided = expected[i] if isinstance(expected[i], ParentTest) else None
        if decided is not None and r.status in ("fail", "error"):
            # The values before the one that raised: a wrong one among them is where the assertions,
            # run in order, would have stopped.
            _, first_wrong = judge_values(decided, decode_values(r.value))
            if first_wrong is not None:
                wrong = wrong or f"test {i}: assertion failed (check {first_wrong})"
                continue
        if r.status == "ok":
            if _test_passed(problem, r, expected[i], config.compare):
                passed += 1
            else:
                wrong = wrong or f"test {i}: " + ("assertion failed" if decided else "wrong answer")
        elif r.status == "fail":
            why = f" ({r.error})" if r.error and r.error != "AssertionError" else ""
            wrong = wrong or f"test {i}: assertion failed{why}"
        elif r.status == "overflow":
            wrong = wrong or f"test {i}: output exceeds {config.max_output_bytes} bytes"
        elif r.status == "timeout":
            timeout = timeout or f"test {i}: exceeded the time limit of {config.timeout_s:g} s"
        else:
            error = error or f"test {i}: {r.error or 'runtime error'}"
    aborted = end.aborted
    if aborted == "program_timeout" or (aborted and aborted.startswith("program time limit")):
        return "timeout", f"program exceeded its total time limit of {config.program_timeout_s:g} s", passed
    if timeout:
        return "timeout", timeout, passed
    if aborted == "timeout":
        return "timeout", f"exceeded the time limit of {config.timeout_s:g} s", passed
    if error:
        return "runtime_error", error, passed
    if aborted:
        return "runtime_error", aborted if aborted != "error" else "the program ended the process", passed
    if len(seen) < total:
        return "runtime_error", f"only {len(seen)} of {total} tests ran", passed
    if wrong:
        return "failed", wrong, passed
    return "passed", "" if total else "no tests: compiled only", passed


def judge(
    problem, sample: dict, expected: list, reports: Sequence[TestReport], end: JobEnd, config: ExecutionConfig
) -> ExecutionResult:
    """The result of one sample from the worker's reports; a report that cannot be right (an index out
    of range or repeated) is a framework failure, :class:`ExecutionError`."""
    verdict, detail, passed = _verdict(problem, expected, reports, end, config)
    return ExecutionResult(
        problem_id=sample["problem_id"],
        sample_id=sample["sample_id"],
        verdict=verdict,
        reward=REWARDS[verdict],
        tests_passed=passed,
        tests_total=len(expected),
        duration_s=round(float(end.seconds), 4),
        detail=_short(detail),
    )
