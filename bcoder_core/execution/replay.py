"""What a program's process did, from what the worker saw of it: pure functions, no I/O.

The worker runs each program in a child process and records what came out: the lines the harness
wrote on the private channel (with their arrival times), stdout/stderr, how the wait ended and the
exit status. These functions turn that record into the :class:`~protocol.TestReport` messages sent to
the parent. The channel is written by the harness *inside* the program's process, so the program can
write on it too: only a well-formed sequence for this job (nonce, order, indices) counts, and
anything else ends the program as a runtime error.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from bcoder_core.execution.protocol import ChannelMessage, TestReport, parse_channel_line

SIG_NAMES = {getattr(signal, n): n for n in dir(signal) if n.startswith("SIG") and not n.startswith("SIG_")}
TIMEOUT_SIGNALS = frozenset({signal.SIGXCPU})
"""Signals that mean the CPU-seconds limit was hit (a time-out, not a crash)."""
GARBAGE = "the program wrote garbage on the harness channel"
ERROR_MAX = 300

Ending = Literal["exited", "timeout", "overflow"]
"""How the worker's wait for a child ended: it exited, its deadline passed, or its stdout overflowed."""


def describe_status(status: int | None) -> str:
    if status is None:
        return "did not exit"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return f"killed by signal {SIG_NAMES.get(sig, sig)}"
    return f"exit status {os.WEXITSTATUS(status)}"


def _cpu_limit_hit(status: int | None) -> bool:
    return status is not None and os.WIFSIGNALED(status) and os.WTERMSIG(status) in TIMEOUT_SIGNALS


def _last_line(data: bytes) -> str:
    text = data.decode("utf-8", "replace").strip()
    return text.splitlines()[-1][:ERROR_MAX] if text else ""


def stdin_test_report(
    index: int,
    *,
    ending: Ending,
    status: int | None,
    channel: bytes,
    nonce: str,
    stdout: bytes,
    stderr: bytes,
    seconds: float,
) -> TestReport:
    """One test of a stdin program (one process per test).

    The exit status decides success; the channel only adds the error of an exception the harness
    caught. Lines that are not the harness's are ignored: a forged "ok" cannot change an exit status.
    """
    seconds = round(seconds, 6)
    if ending == "timeout":
        return TestReport(index, "timeout", seconds)
    if ending == "overflow":
        return TestReport(index, "overflow", seconds)
    if _cpu_limit_hit(status):
        return TestReport(index, "timeout", seconds)
    exit_msg = None
    for line in channel.split(b"\n"):
        m = parse_channel_line(line, nonce) if line.strip() else None
        if m is not None and m.kind == "exit":
            exit_msg = m
            break
    if exit_msg is not None and exit_msg.status == "error":
        return TestReport(index, "error", seconds, error=str(exit_msg.error or "")[:ERROR_MAX])
    if status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        return TestReport(index, "ok", seconds, stdout=stdout.decode("utf-8", "replace"))
    return TestReport(index, "error", seconds, error=_last_line(stderr) or describe_status(status))


@dataclass(frozen=True)
class Replay:
    """What a call- or assert-based program did (one process for all its tests)."""

    tests: list[TestReport] = field(default_factory=list)
    load_error: str | None = None
    aborted: str | None = None


def replay_channel(
    lines: Sequence[tuple[float, ChannelMessage | None]],
    *,
    n_tests: int,
    returns_value: bool | Sequence[bool],
    started: float,
    ending: Ending,
    status: int | None,
    ended_at: float,
) -> Replay:
    """Replay the harness channel of one call/assert program.

    ``lines``: each line read from the channel, as :func:`~protocol.parse_channel_line` read it (None:
    not the harness's), with the monotonic time it arrived; the last one may have lacked its newline
    (the process ended mid-write). ``returns_value``: call format (an ``ok`` test
    carries the returned value), or per test (assert format: the tests decided in the parent carry their
    values, also a prefix of them with ``fail``/``error``); ``started``: when the process was started; ``ending``, ``status``,
    ``ended_at``: how and when the wait for it ended and its wait status.

    The expected sequence is ``loaded``, then ``test`` 0, 1, … ``n_tests - 1``, then ``done``; or one
    ``load_error``. The first line that does not fit ends the replay. A test's seconds run from the
    previous ``loaded`` / ``test`` line.
    """
    tests: list[TestReport] = []
    loaded = done = False
    last = started

    def broken(why: str) -> Replay:
        return Replay(tests, aborted=why) if loaded else Replay(tests, load_error=why)

    for at, m in lines:
        if m is None:
            return broken(GARBAGE)
        if m.kind == "load_error" and not loaded:
            return Replay(tests, load_error=str(m.error or "")[:ERROR_MAX])
        if m.kind == "loaded" and not loaded:
            loaded, last = True, at
            continue
        if m.kind == "done" and loaded and not done and len(tests) == n_tests:
            done = True
            continue
        expected = m.kind == "test" and loaded and not done and type(m.index) is int
        if not (expected and m.index == len(tests) < n_tests):
            return broken(GARBAGE)
        if m.status not in ("ok", "fail", "error", "overflow"):
            return broken(GARBAGE)
        value = None
        carries = returns_value if isinstance(returns_value, bool) else returns_value[m.index]
        if carries and (m.status == "ok" or m.value is not None):
            if not isinstance(m.value, str):
                return broken(GARBAGE)
            value = m.value
        error = str(m.error)[:ERROR_MAX] if m.error else None
        tests.append(TestReport(m.index, m.status, round(at - last, 6), value=value, error=error))
        last = at
    if done:
        return Replay(tests)
    unfinished = loaded and len(tests) < n_tests
    if ending == "timeout":
        if not loaded:
            return Replay(tests, load_error="timeout")
        if unfinished:
            tests.append(TestReport(len(tests), "timeout", round(ended_at - last, 6)))
        return Replay(tests, aborted="timeout")
    if _cpu_limit_hit(status):
        if unfinished:
            tests.append(TestReport(len(tests), "timeout", 0.0))
        return Replay(tests, aborted="timeout")
    why = f"the program ended the process ({describe_status(status)})"
    if not loaded:
        return Replay(tests, load_error=why)
    if unfinished:
        tests.append(TestReport(len(tests), "error", 0.0, error=why))
        return Replay(tests, aborted="error")
    return Replay(tests, aborted=why)
