"""Sandboxed execution of generated programs against unit tests (DESIGN §4).

Public API: :func:`execute_samples`, :class:`Executor`, :class:`ExecutionConfig`, :data:`REWARDS`,
:data:`VERDICTS`, :class:`ExecutionError`; the ``bcoder execute`` stage is
:func:`bcoder_core.execution.run.run_execute`.

Layout: ``config`` (ExecutionConfig), ``sandbox`` (boundaries, per-program isolation, the
``SANDBOXES`` registry), ``compare`` (output comparison, the ``COMPARE_MODES`` registry),
``protocol`` (framing and typed messages), ``worker`` (the sandboxed zygote), ``child`` (the harness
inside a program's process), ``replay`` (what a child did, from what it wrote), ``judge`` (jobs and
verdicts), ``executor`` (the worker pool), ``run`` (the execute stage: files, resume, shards).
"""

from bcoder_core.execution.config import ExecutionConfig
from bcoder_core.execution.executor import Executor, execute_samples
from bcoder_core.execution.judge import RESULT_KEYS, REWARDS, VERDICTS
from bcoder_core.execution.protocol import ExecutionError

__all__ = [
    "RESULT_KEYS",
    "REWARDS",
    "VERDICTS",
    "ExecutionConfig",
    "ExecutionError",
    "Executor",
    "execute_samples",
]
