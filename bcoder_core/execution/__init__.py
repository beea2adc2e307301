"""Sandboxed execution of generated programs against unit tests (DESIGN §4).

Public API: :func:`execute_samples`, :class:`Executor`, :class:`ExecutionConfig`, :data:`REWARDS`,
:data:`VERDICTS`, :class:`ExecutionError`; the ``bcoder execute`` stage is
:func:`bcoder_core.execution.run.run_execute`.

Layout: ``config`` (ExecutionConfig), ``sandbox`` (boundaries, per-program isolation, the
``SANDBOXES`` registry), ``compare`` (output comparison, the ``COMPARE_MODES`` registry),
``protocol`` (framing and typed messages), ``worker`` (the sandboxed worker), ``zygote`` (the lean
process that forks each program), ``child`` (the harness inside a program's process), ``values``
(what that harness writes: typed values, channel lines), ``replay`` (what a child did, from what it
wrote), ``judge`` (jobs and verdicts), ``executor`` (the worker pool), ``run`` (the execute stage:
files, resume, shards).
"""

from importlib import import_module

_EXPORTS = {
    "ExecutionConfig": "config",
    "Executor": "executor",
    "execute_samples": "executor",
    "RESULT_KEYS": "judge",
    "REWARDS": "judge",
    "VERDICTS": "judge",
    "ExecutionError": "protocol",
}
"""Loaded on first use (PEP 562): the sandboxed worker imports only what it runs (``worker``, ``child``,
``sandbox``, …), never the executor, the config tree or YAML. Every shared library a worker maps makes
each fork of a program slower, under gVisor most of all (DESIGN §4)."""

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
