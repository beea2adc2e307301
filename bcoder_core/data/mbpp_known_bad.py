"""MBPP tasks whose own reference solution fails its own tests (a known upstream problem).

The data is never edited (DESIGN §3.1 and the data README): this list documents the tasks instead,
so that calibration runs (``bcoder execute`` on the reference solutions) can tell an expected
failure from a regression of the executor, and so that a user can exclude the tasks if they wish.

Keys are MBPP ``task_id`` values, values a one-line reason. The list is filled from the executor's
calibration run over all 974 reference solutions (strict comparison, default limits); a task belongs
here only when its *reference solution* fails under a correct harness, i.e. the test or the
solution in the file is wrong, not when the harness is.
"""

from __future__ import annotations

MBPP_KNOWN_BAD: dict[int, str] = {
    # task_id: "why the reference solution fails its own tests",
}


def is_known_bad(problem_id: str) -> bool:
    """True for ``mbpp/<task_id>`` ids listed above."""
    prefix = "mbpp/"
    if not problem_id.startswith(prefix) or not problem_id[len(prefix) :].isdigit():
        return False
    return int(problem_id[len(prefix) :]) in MBPP_KNOWN_BAD
