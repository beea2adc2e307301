"""Sandboxed execution of generated programs against unit tests (DESIGN §4).

Public API: :func:`execute_samples`, :class:`ExecutionConfig`, :data:`REWARDS`, :data:`VERDICTS`,
:class:`ExecutionError`.
"""

from bcoder_core.execution.executor import (
    RESULT_KEYS,
    REWARDS,
    VERDICTS,
    ExecutionConfig,
    ExecutionError,
    Executor,
    execute_samples,
)

__all__ = [
    "RESULT_KEYS",
    "REWARDS",
    "VERDICTS",
    "ExecutionConfig",
    "ExecutionError",
    "Executor",
    "execute_samples",
]
