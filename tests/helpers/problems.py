"""Hand-built problems for the execution and evaluation tests (one constructor, the usual defaults)."""

from __future__ import annotations

from typing import Any

from bcoder_core.problems import Problem


def make_problem(pid: str, fmt: str, tests: dict[str, Any], *, source: str = "t", **kw: Any) -> Problem:
    """A problem of the ``test`` split with an empty question, unless ``kw`` says otherwise."""
    fields: dict[str, Any] = {"split": "test", "question": "", **kw}
    return Problem(id=pid, source=source, format=fmt, tests=tests, **fields)


def stdin_problem(pid: str = "p", inputs=("1 2\n",), outputs=("3\n",), **kw: Any) -> Problem:
    return make_problem(pid, "stdin", {"inputs": list(inputs), "outputs": list(outputs)}, **kw)


def call_problem(pid: str = "c", fn: str = "f", inputs=([1, 2],), outputs=([3],), **kw: Any) -> Problem:
    tests = {"inputs": list(inputs), "outputs": list(outputs)}
    return make_problem(pid, "call", tests, fn_name=fn, **kw)


def assert_problem(pid: str = "a", asserts=("assert f(1) == 2",), setup: str = "", **kw: Any) -> Problem:
    return make_problem(pid, "assert", {"asserts": list(asserts), "setup": setup}, **kw)
