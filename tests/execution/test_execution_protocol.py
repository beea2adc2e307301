"""The executor-worker protocol (framing, typed messages) and the pure replay of a child's channel."""

from __future__ import annotations

import io
import json
import os
import signal
import struct

import pytest

from bcoder_core.errors import ConfigError
from bcoder_core.execution import ExecutionConfig, ExecutionError
from bcoder_core.execution.compare import COMPARE_MODES, CompareMode
from bcoder_core.execution.protocol import (
    MAX_FRAME,
    ChannelMessage,
    Hello,
    JobEnd,
    ProtocolError,
    RunJob,
    Shutdown,
    TestReport,
    WorkerSettings,
    channel_line,
    decode_message,
    encode_frame,
    parse_channel_line,
    read_frame,
)
from bcoder_core.execution.replay import GARBAGE, replay_channel, stdin_test_report
from bcoder_core.execution.sandbox import SANDBOXES, Boundary, worker_command

NONCE = "n" * 32
EXITED_0 = 0  # a wait status: exit status 0
EXITED_1 = 1 << 8
KILLED_XCPU = signal.SIGXCPU
KILLED_9 = signal.SIGKILL


def frames(*chunks: bytes):
    """read_exact over a byte string, as a pipe delivers it."""
    stream = io.BytesIO(b"".join(chunks))
    return lambda n: stream.read(n)


# ------------------------------------------------------------------------------------------- framing

MESSAGES = [
    RunJob(1, "stdin", "print(1)", 4.0, 60.0, 100, inputs=["1\n"]),
    RunJob(2, "assert", "x = 1", 1.0, 2.0, 10, asserts=["assert x"], setup="y = 2", prelude="import sys"),
    Shutdown(),
    Hello(7, {"netns": True, "hidden": ["/root"]}),
    TestReport(0, "ok", 0.5, stdout="3\n"),
    TestReport(3, "error", error="ValueError: x"),
    JobEnd(1, 0.25, aborted="timeout"),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: m.TYPE)
def test_every_message_round_trips(msg):
    read = frames(encode_frame(msg))
    assert read_frame(read) == msg
    assert read_frame(read) is None  # a clean end of stream


def test_wire_is_json_with_readable_names():
    data = encode_frame(TestReport(0, "ok", 1.0, value="[1]"))
    (n,) = struct.unpack(">I", data[:4])
    assert n == len(data) - 4
    assert json.loads(data[4:]) == {
        "type": "test",
        "index": 0,
        "status": "ok",
        "seconds": 1.0,
        "stdout": None,
        "value": "[1]",
        "error": None,
    }


def test_several_frames_in_one_stream():
    read = frames(*(encode_frame(m) for m in MESSAGES))
    assert [read_frame(read) for _ in MESSAGES] == MESSAGES


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\x00\x00", "truncated frame header"),
        (struct.pack(">I", 10) + b'{"type"', "truncated frame"),
        (struct.pack(">I", MAX_FRAME + 1), "oversized frame"),
        (struct.pack(">I", 3) + b"{x}", "invalid JSON"),
        (struct.pack(">I", 2) + b"[]", "not a JSON object"),
        (struct.pack(">I", 4) + b"\xff\xfe{}", "invalid JSON"),
    ],
)
def test_malformed_frames_are_protocol_errors(data, match):
    with pytest.raises(ProtocolError, match=match):
        read_frame(frames(data))


def test_a_protocol_error_is_an_execution_error():
    assert issubclass(ProtocolError, ExecutionError)


def test_deep_json_is_a_protocol_error_not_a_crash():
    body = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(ProtocolError):
        read_frame(frames(struct.pack(">I", len(body)), body))


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ({"type": "pickle", "data": "gASV"}, "unknown message type"),
        ({"index": 0, "status": "ok"}, "unknown message type"),
        ({"type": "test", "index": 0}, "lacks 'status'"),
        ({"type": "test", "index": "0", "status": "ok"}, "index has the wrong type"),
        ({"type": "test", "index": True, "status": "ok"}, "index has the wrong type"),
        ({"type": "test", "index": 0, "status": "passed"}, "unknown test status"),
        ({"type": "test", "index": 0, "status": "ok", "verdict": "passed"}, "unknown fields"),
        ({"type": "test", "index": 0, "status": "ok", "value": 3}, "value has the wrong type"),
        ({"type": "end", "job_id": 1, "seconds": "fast"}, "seconds has the wrong type"),
        ({"type": "hello", "pid": 1, "isolation": []}, "isolation has the wrong type"),
        ({"type": "__init__"}, "unknown message type"),
    ],
)
def test_forged_messages_are_rejected(obj, match):
    with pytest.raises(ProtocolError, match=match):
        decode_message(obj)


def test_int_is_accepted_for_float_fields():
    assert decode_message({"type": "end", "job_id": 1, "seconds": 2}) == JobEnd(1, 2)


def test_worker_settings_round_trip():
    s = WorkerSettings(uid=900_001, memory_mb=512, preload_numpy=True, fs_overlay=True)
    assert WorkerSettings.from_json(s.to_json()) == s


# ------------------------------------------------------------------------------------ channel lines


def test_channel_lines_need_this_jobs_nonce_and_a_known_kind():
    line = channel_line(NONCE, "test", index=0, status="ok", value="1")
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert parse_channel_line(line, NONCE) == ChannelMessage("test", 0, "ok", "1")
    assert parse_channel_line(line, "other") is None
    assert parse_channel_line(channel_line(NONCE, "verdict", v="passed"), NONCE) is None
    assert parse_channel_line(b'{"kind": "loaded"}', NONCE) is None
    assert parse_channel_line(b"garbage", NONCE) is None
    assert parse_channel_line(b"[" * 100_000, NONCE) is None


# ------------------------------------------------------------------------------------------- replay


def msgs(*specs, start: float = 0.0):
    """Channel messages at times start+1, start+2, …; a spec is a dict of fields or None (garbage)."""
    return [(start + k + 1.0, None if m is None else ChannelMessage(**m)) for k, m in enumerate(specs)]


LOADED, DONE = {"kind": "loaded"}, {"kind": "done"}


def test_a_complete_run():
    lines = msgs(
        LOADED,
        {"kind": "test", "index": 0, "status": "ok", "value": "3"},
        {"kind": "test", "index": 1, "status": "error", "error": "ValueError: no"},
        DONE,
    )
    r = replay_channel(
        lines, n_tests=2, returns_value=True, started=0.0, ending="exited", status=EXITED_0, ended_at=5.0
    )
    assert r.load_error is None and r.aborted is None
    assert r.tests == [
        TestReport(0, "ok", 1.0, value="3"),
        TestReport(1, "error", 1.0, error="ValueError: no"),
    ]


def replay(lines, n_tests=2, ending="exited", status=EXITED_0, returns_value=False):
    return replay_channel(
        lines,
        n_tests=n_tests,
        returns_value=returns_value,
        started=0.0,
        ending=ending,
        status=status,
        ended_at=10.0,
    )


def test_load_error_and_garbage_before_loading():
    assert replay(msgs({"kind": "load_error", "error": "NameError: f"})).load_error == "NameError: f"
    r = replay(msgs(None, LOADED))
    assert r.load_error == GARBAGE and r.tests == []


@pytest.mark.parametrize(
    "bad",
    [
        None,  # not the harness's line (no nonce, torn, not JSON)
        {"kind": "test", "index": 2, "status": "ok"},  # out of order
        {"kind": "test", "index": 1, "status": "passed"},  # unknown status
        {"kind": "test", "index": True, "status": "ok"},  # True == 1, but not an index
        {"kind": "loaded"},  # twice
        {"kind": "done"},  # before the last test
        {"kind": "exit", "status": "ok"},  # a stdin program's message
    ],
)
def test_anything_out_of_sequence_ends_the_program(bad):
    lines = msgs(LOADED, {"kind": "test", "index": 0, "status": "ok"}, bad, DONE)
    r = replay(lines)
    assert r.aborted == GARBAGE and r.load_error is None
    assert all(t.status == "ok" for t in r.tests) and len(r.tests) <= 1


def test_forged_messages_after_done_are_garbage():
    tests = [{"kind": "test", "index": i, "status": "ok"} for i in range(2)]
    r = replay(msgs(LOADED, *tests, DONE, {"kind": "test", "index": 2, "status": "ok"}))
    assert r.aborted == GARBAGE


def test_call_results_must_carry_a_value():
    r = replay(
        msgs(LOADED, {"kind": "test", "index": 0, "status": "ok", "value": 3}, DONE), returns_value=True
    )
    assert r.aborted == GARBAGE and r.tests == []


def test_timeout_adds_a_timed_out_test():
    r = replay(msgs(LOADED, {"kind": "test", "index": 0, "status": "ok"}), ending="timeout", status=None)
    assert r.aborted == "timeout"
    assert r.tests[-1] == TestReport(1, "timeout", 8.0)  # from the last message (t=2) to the end (t=10)
    assert replay(msgs(), ending="timeout", status=None).load_error == "timeout"


def test_timeout_after_the_last_test_adds_no_test():
    tests = [{"kind": "test", "index": i, "status": "ok"} for i in range(2)]
    r = replay(msgs(LOADED, *tests), ending="timeout", status=None)
    assert r.aborted == "timeout" and len(r.tests) == 2


def test_cpu_limit_is_a_timeout():
    r = replay(msgs(LOADED), status=KILLED_XCPU)
    assert r.aborted == "timeout" and r.tests == [TestReport(0, "timeout", 0.0)]


def test_process_ending_early():
    assert "exit status 0" in replay(msgs()).load_error
    r = replay(msgs(LOADED, {"kind": "test", "index": 0, "status": "ok"}), status=KILLED_9)
    assert r.aborted == "error" and r.tests[-1].status == "error" and "SIGKILL" in r.tests[-1].error
    tests = [{"kind": "test", "index": i, "status": "ok"} for i in range(2)]
    r = replay(msgs(LOADED, *tests), status=EXITED_1)
    assert r.aborted == "the program ended the process (exit status 1)" and len(r.tests) == 2


def test_long_errors_are_cut():
    r = replay(msgs({"kind": "load_error", "error": "x" * 10_000}))
    assert len(r.load_error) == 300


# ------------------------------------------------------------------------------------- stdin tests


def stdin_report(**kw):
    args = {
        "ending": "exited",
        "status": EXITED_0,
        "channel": b"",
        "nonce": NONCE,
        "stdout": b"3\n",
        "stderr": b"",
        "seconds": 0.1234567,
    }
    return stdin_test_report(0, **{**args, **kw})


def test_stdin_outcomes():
    assert stdin_report() == TestReport(0, "ok", 0.123457, stdout="3\n")
    assert stdin_report(ending="timeout", status=None).status == "timeout"
    assert stdin_report(ending="overflow", status=None).status == "overflow"
    assert stdin_report(status=KILLED_XCPU).status == "timeout"
    err = channel_line(NONCE, "exit", status="error", error="ZeroDivisionError: x")
    assert stdin_report(channel=err, status=EXITED_1).error == "ZeroDivisionError: x"
    r = stdin_report(status=EXITED_1, stderr=b"Traceback\nKeyError: 3\n")
    assert (r.status, r.error) == ("error", "KeyError: 3")
    assert stdin_report(status=KILLED_9).error == "killed by signal SIGKILL"


def test_stdin_forged_exit_cannot_change_the_exit_status():
    forged = b'{"kind": "exit", "status": "ok"}\n' + channel_line("wrong", "exit", status="ok")
    assert stdin_report(channel=forged + b"\xff garbage", status=EXITED_1).status == "error"
    assert stdin_report(channel=b"garbage\n").status == "ok"


def test_wait_statuses_are_decoded_as_linux_does():
    assert os.WIFEXITED(EXITED_1) and os.WEXITSTATUS(EXITED_1) == 1
    assert os.WIFSIGNALED(KILLED_XCPU) and os.WTERMSIG(KILLED_XCPU) == signal.SIGXCPU


# ---------------------------------------------------------------------------------------- registries


def test_config_choices_come_from_the_registries(monkeypatch):
    monkeypatch.setitem(SANDBOXES, "echo", Boundary("echo", lambda: ["env"]))
    monkeypatch.setitem(COMPARE_MODES, "exact", CompareMode("exact", str.__eq__, lambda a, b: a == b))
    config = ExecutionConfig(workers=1, sandbox="echo", compare="exact")
    assert worker_command(config.sandbox, ["{}"])[:2] == ["env", worker_command("process", [])[0]]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"workers": 0}, "workers must be >= 1 (got 0)"),
        ({"timeout_s": 0}, "timeout_s must be > 0 (got 0)"),
        ({"sandbox": "docker"}, "sandbox must be one of process, bwrap, gvisor (got 'docker')"),
        ({"compare": "fuzzy"}, "compare must be one of strict, apps (got 'fuzzy')"),
        ({"tests": "all"}, "tests must be one of hidden, example (got 'all')"),
    ],
)
def test_config_errors_name_the_field(kw, message):
    with pytest.raises(ConfigError) as err:
        ExecutionConfig(**kw)
    assert str(err.value) == message
