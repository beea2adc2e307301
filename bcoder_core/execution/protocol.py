"""What the executor, its workers and the programs' harness say to one another, and how it is framed.

Two channels, both JSON only (never pickle: decoding a message must not be able to run code, and a
compromised sandbox writes whatever bytes it likes):

* **executor <-> worker**, on the worker's stdin/stdout: frames of a 4-byte big-endian length and a
  JSON object ``{"type": ..., <fields>}``. Parent -> worker: :class:`RunJob`, :class:`Shutdown`.
  Worker -> parent: one :class:`Hello` at start, then per job zero or more :class:`TestReport` and
  one :class:`JobEnd`. :func:`decode_message` accepts only a known type with exactly its fields, each
  of its declared type, so a forged or garbled message is a :class:`ProtocolError`, never a verdict.
* **harness -> worker**, on a private pipe inside the sandboxed program: one JSON object per line,
  each carrying the job's nonce (:func:`channel_line`, :func:`parse_channel_line`). The worker reads
  it back with :mod:`bcoder_core.execution.replay`.
"""

from __future__ import annotations

import dataclasses
import json
import struct
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Union

from bcoder_core.execution.values import channel_line  # noqa: F401 (the harness side of the channel)

HEADER = struct.Struct(">I")
MAX_FRAME = 1 << 30
"""The largest frame body either side accepts (bytes)."""

TEST_STATUSES = ("ok", "fail", "error", "timeout", "overflow")
"""``fail`` is a failed assertion; ``overflow`` an output beyond ``max_output``."""


class ExecutionError(RuntimeError):
    """The execution framework itself failed (not the program): the run must stop, loudly."""


class ProtocolError(ExecutionError):
    """A frame or message that breaks the protocol (truncated, oversized, not JSON, forged)."""


# ------------------------------------------------------------------------------------------ messages


@dataclass(frozen=True)
class RunJob:
    """Parent -> worker: run one program. The expected outputs stay in the parent."""

    TYPE: ClassVar[str] = "run"
    job_id: int
    format: str
    """``stdin``, ``call`` or ``assert``."""
    code: str
    timeout_s: float
    program_timeout_s: float
    max_output: int
    """Bytes of stdout (or of a returned value as JSON) beyond which a test is an ``overflow``."""
    prelude: str | None = None
    """Source run before the program (the APPS imports), or None."""
    inputs: list | None = None
    """stdin texts (``stdin``) or argument lists (``call``)."""
    fn_name: str | None = None
    asserts: list | None = None
    """Per test (``assert``): an assertion's source, run in the program's process; or ``{"eval":
    [expression, ...]}``, a test decided in the parent (:mod:`~bcoder_core.execution.checks`): only the
    expressions to evaluate, never the expected values."""
    setup: str = ""


@dataclass(frozen=True)
class Shutdown:
    """Parent -> worker: exit."""

    TYPE: ClassVar[str] = "exit"


@dataclass(frozen=True)
class Hello:
    """Worker -> parent, once at start: the worker is ready and this is the isolation it achieved."""

    TYPE: ClassVar[str] = "hello"
    pid: int
    isolation: dict


@dataclass(frozen=True)
class TestReport:
    """Worker -> parent: what one test of the program did (raw; the parent compares)."""

    TYPE: ClassVar[str] = "test"
    __test__ = False  # not a pytest test class, despite the name
    index: int
    status: str
    """One of :data:`TEST_STATUSES`."""
    seconds: float = 0.0
    stdout: str | None = None
    """What a stdin program printed (status ``ok``)."""
    value: str | None = None
    """The returned value as JSON text (call format, status ``ok``); the typed values of a test decided
    in the parent (assert format)."""
    error: str | None = None


@dataclass(frozen=True)
class JobEnd:
    """Worker -> parent, last message of a job."""

    TYPE: ClassVar[str] = "end"
    job_id: int
    seconds: float
    compile_error: str | None = None
    load_error: str | None = None
    """Loading the program failed; ``"timeout"`` when it ran out of time doing so."""
    aborted: str | None = None
    """Why the remaining tests did not run: ``"timeout"``, ``"program_timeout"``, ``"error"`` or a
    sentence."""


@dataclass(frozen=True)
class WorkerSettings:
    """The worker's one command-line argument (as JSON): who runs programs and with which limits."""

    uid: int | None = None
    """The unprivileged user programs run as; None: the worker's own."""
    memory_mb: int = 1024
    max_processes: int = 64
    max_file_mb: int = 64
    max_open_files: int = 256
    preload_numpy: bool = False
    fs_overlay: bool = False
    """The boundary puts a copy-on-write overlay over the host's files (writes never reach the host)."""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerSettings:
        return cls(**json.loads(text))


Message = RunJob | Shutdown | Hello | TestReport | JobEnd
MESSAGE_TYPES: dict[str, type] = {cls.TYPE: cls for cls in (RunJob, Shutdown, Hello, TestReport, JobEnd)}


def _accepts(hint: Any, value: Any) -> bool:
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_accepts(h, value) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    base = origin or hint
    if isinstance(value, bool):  # bool is an int to isinstance; never to the protocol
        return base is bool
    if base is float:
        return isinstance(value, (int, float))
    return isinstance(value, base)


_HINTS: dict[type, dict[str, Any]] = {cls: typing.get_type_hints(cls) for cls in MESSAGE_TYPES.values()}


def to_wire(msg: Message) -> dict[str, Any]:
    return {"type": msg.TYPE, **dataclasses.asdict(msg)}


def decode_message(obj: Any) -> Message:
    """A message from its JSON object; anything but a known type with valid fields is a ProtocolError."""
    if not isinstance(obj, dict):
        raise ProtocolError("a message is not a JSON object")
    cls = MESSAGE_TYPES.get(obj.get("type"))  # type: ignore[arg-type]
    if cls is None:
        raise ProtocolError(f"unknown message type {str(obj.get('type'))[:40]!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    extra = set(obj) - set(fields) - {"type"}
    if extra:
        raise ProtocolError(f"{cls.TYPE} message has unknown fields {sorted(extra)[:5]}")
    hints = _HINTS[cls]
    for name, f in fields.items():
        if name not in obj:
            if f.default is dataclasses.MISSING:
                raise ProtocolError(f"{cls.TYPE} message lacks {name!r}")
            continue
        if not _accepts(hints[name], obj[name]):
            raise ProtocolError(f"{cls.TYPE} message: {name} has the wrong type")
    msg = cls(**{k: v for k, v in obj.items() if k != "type"})
    if isinstance(msg, TestReport) and msg.status not in TEST_STATUSES:
        raise ProtocolError(f"unknown test status {msg.status[:40]!r}")
    return msg


# ------------------------------------------------------------------------------------------- framing


def encode_frame(msg: Message) -> bytes:
    data = json.dumps(to_wire(msg)).encode()
    if len(data) > MAX_FRAME:
        raise ProtocolError(f"a {msg.TYPE} message of {len(data)} bytes exceeds the frame limit")
    return HEADER.pack(len(data)) + data


def decode_frame_body(body: bytes) -> Message:
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"invalid JSON: {str(exc)[:80]}") from None
    return decode_message(obj)


def read_frame(read_exact: Callable[[int], bytes]) -> Message | None:
    """The next message; None at a clean end of stream (before a header).

    ``read_exact(n)`` returns ``n`` bytes, or fewer only at the end of the stream; each side brings
    its own (the parent's has a watchdog).
    """
    head = read_exact(HEADER.size)
    if not head:
        return None
    if len(head) < HEADER.size:
        raise ProtocolError("truncated frame header")
    (n,) = HEADER.unpack(head)
    if n > MAX_FRAME:
        raise ProtocolError(f"oversized frame ({n} bytes)")
    body = read_exact(n)
    if len(body) < n:
        raise ProtocolError(f"truncated frame ({len(body)} of {n} bytes)")
    return decode_frame_body(body)


# --------------------------------------------------------------------------------- harness channel

CHANNEL_KINDS = ("loaded", "load_error", "test", "done", "exit")
"""``loaded`` / ``load_error`` (call, assert), ``test`` per test, ``done`` after the last test;
``exit`` once at the end of a stdin program's process."""


@dataclass(frozen=True)
class ChannelMessage:
    """One line the harness wrote on the private channel."""

    kind: str
    index: Any = None
    """The test number (``test``); unchecked here, the replay checks it."""
    status: Any = None
    value: Any = None
    error: Any = None


def parse_channel_line(line: bytes, nonce: str) -> ChannelMessage | None:
    """The message of one line, or None for anything the harness did not write for this job."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict) or obj.get("nonce") != nonce or obj.get("kind") not in CHANNEL_KINDS:
        return None
    return ChannelMessage(
        kind=obj["kind"],
        index=obj.get("index"),
        status=obj.get("status"),
        value=obj.get("value"),
        error=obj.get("error"),
    )
