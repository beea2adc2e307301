"""Public API of the executor: :func:`execute_samples`, :class:`ExecutionConfig`, verdicts and rewards.

A pool of worker processes (``worker.py``; each a pre-imported zygote inside the chosen boundary,
see ``sandbox.py``) runs programs; this process keeps the problems, the expected outputs and the
results, and decides every verdict from what the workers report. Worker output is JSON only (never
pickle), so even a compromised sandbox cannot run code here.

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
program. A crash of the framework (a worker dies, the protocol breaks) raises :class:`ExecutionError`;
it is never written down as a program's verdict.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import queue
import select
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from bcoder_core.errors import BcoderError
from bcoder_core.execution import compare, sandbox
from bcoder_core.execution.child import APPS_PRELUDE, APPS_PRELUDE_NUMPY

log = logging.getLogger(__name__)

REWARDS: dict[str, float] = {
    "passed": 1.0,
    "failed": -0.3,
    "runtime_error": -0.6,
    "timeout": -0.6,
    "compile_error": -1.0,
}
VERDICTS: tuple[str, ...] = tuple(REWARDS)
RESULT_KEYS = (
    "problem_id",
    "sample_id",
    "verdict",
    "reward",
    "tests_passed",
    "tests_total",
    "duration_s",
    "detail",
)
DETAIL_MAX = 200


class ExecutionError(RuntimeError):
    """The execution framework itself failed (not the program): the run must stop, loudly."""


@dataclass(frozen=True)
class ExecutionConfig:
    """How programs are executed."""

    timeout_s: float = 4.0
    """Wall-clock limit per test (and for loading the program)."""
    memory_mb: int = 1024
    """Address space a program may use beyond the worker's own size (RLIMIT_AS)."""
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    """Worker processes running programs in parallel."""
    sandbox: Literal["process", "bwrap", "gvisor"] = "process"
    """Boundary around the workers: none, bubblewrap, or gVisor (``runsc do``)."""
    compare: Literal["strict", "apps"] = "strict"
    """Output comparison: strict (DESIGN §4) or the original APPS harness's lenient cascade."""
    tests: Literal["hidden", "example"] = "hidden"
    """Which tests of each problem to run."""
    max_output_bytes: int = 4 * 1024 * 1024
    """Output (stdout of a test, or a returned value as JSON) beyond this is a failed test."""
    program_timeout_s: float = 60.0
    """Wall-clock limit for all tests of one program together."""
    max_processes: int = 64
    """RLIMIT_NPROC of a program's user (its processes and threads)."""
    max_file_mb: int = 64
    """RLIMIT_FSIZE: the largest file a program may write."""
    max_open_files: int = 256
    """RLIMIT_NOFILE."""
    uid_base: int = 900_000
    """First of the unprivileged user ids given to worker slots (when running as root)."""

    def __post_init__(self) -> None:
        checks = [
            (self.timeout_s > 0, "timeout_s must be > 0"),
            (self.program_timeout_s > 0, "program_timeout_s must be > 0"),
            (self.memory_mb > 0, "memory_mb must be > 0"),
            (self.workers >= 1, "workers must be >= 1"),
            (self.sandbox in sandbox.SANDBOXES, f"sandbox must be one of {', '.join(sandbox.SANDBOXES)}"),
            (
                self.compare in compare.COMPARE_MODES,
                f"compare must be one of {', '.join(compare.COMPARE_MODES)}",
            ),
            (self.tests in ("hidden", "example"), "tests must be 'hidden' or 'example'"),
            (self.max_output_bytes > 0, "max_output_bytes must be > 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise BcoderError(f"execution config: {msg}")


def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= DETAIL_MAX else text[: DETAIL_MAX - 1] + "…"


# ------------------------------------------------------------------------------------ uid allocation

_LOCK_DIR = "/tmp/.bcoder-uid-locks"


class _UidLease:
    """Unique unprivileged uids for this process's workers, held with flock across processes, so that
    one run's clean-up sweep (kill every process of a uid) never touches another run's programs."""

    def __init__(self, base: int, n: int):
        self.uids: list[int] = []
        self._fds: list[int] = []
        os.makedirs(_LOCK_DIR, mode=0o700, exist_ok=True)
        uid = base
        while len(self.uids) < n:
            if uid > base + 100_000:
                raise ExecutionError("no free worker uid to lease")
            fd = os.open(os.path.join(_LOCK_DIR, str(uid)), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
            else:
                self.uids.append(uid)
                self._fds.append(fd)
            uid += 1

    def release(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()


# ------------------------------------------------------------------------------------------- workers


class _WorkerProcess:
    def __init__(self, config: ExecutionConfig, uid: int | None):
        wconf = {
            "uid": uid,
            "memory_mb": config.memory_mb,
            "nproc": config.max_processes,
            "fsize_mb": config.max_file_mb,
            "nofile": config.max_open_files,
            "preload_numpy": config.compare == "apps",
            # runsc do puts a copy-on-write overlay over the host's files: nothing written reaches the host.
            "fs_overlay": config.sandbox == "gvisor",
        }
        self.cmd = sandbox.worker_command(config.sandbox, [json.dumps(wconf)])
        self.proc = subprocess.Popen(
            self.cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=sandbox.worker_env(),
            start_new_session=True,
            close_fds=True,
            cwd="/",
        )
        self.rfd = self.proc.stdout.fileno()
        self.wfd = self.proc.stdin.fileno()
        self.isolation: dict = {}

    def wait_hello(self) -> None:
        try:
            hello = self.recv(timeout=120.0)
        except ExecutionError as exc:
            raise ExecutionError(
                f"cannot start an execution worker ({' '.join(self.cmd[:2])} …): {exc}"
            ) from None
        if hello.get("k") != "hello":
            raise ExecutionError(f"worker sent {hello.get('k')!r} instead of hello")
        self.isolation = hello.get("isolation", {})

    def send(self, msg: dict) -> None:
        data = json.dumps(msg).encode()
        try:
            self.proc.stdin.write(struct.pack(">I", len(data)) + data)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise ExecutionError(f"execution worker died ({self._status()}): {exc}") from None

    def _status(self) -> str:
        rc = self.proc.poll()
        return "still running" if rc is None else f"exit status {rc}"

    def _read_exact(self, n: int, deadline: float) -> bytes:
        chunks, got = [], 0
        while got < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ExecutionError("execution worker stopped answering (watchdog)")
            r, _, _ = select.select([self.rfd], [], [], remaining)
            if not r:
                continue
            b = os.read(self.rfd, min(n - got, 1 << 20))
            if not b:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=2)
                raise ExecutionError(
                    f"execution worker died ({self._status()}); command: {' '.join(self.cmd[:3])} …"
                )
            chunks.append(b)
            got += len(b)
        return b"".join(chunks)

    def recv(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        (n,) = struct.unpack(">I", self._read_exact(4, deadline))
        if n > 1 << 30:
            raise ExecutionError("execution worker sent an oversized frame")
        try:
            msg = json.loads(self._read_exact(n, deadline))
        except ValueError as exc:
            raise ExecutionError(f"execution worker sent invalid JSON: {exc}") from None
        if not isinstance(msg, dict):
            raise ExecutionError("execution worker sent a non-object frame")
        return msg

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.send({"op": "exit"})
        with contextlib.suppress(Exception):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, 9)
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(Exception):
            self.proc.stdout.close()


# ----------------------------------------------------------------------------------------- jobs


def _tests_of(problem, which: str) -> dict:
    tests = problem.tests if which == "hidden" else problem.example_tests
    return tests or {}


def build_job(problem, code: str, config: ExecutionConfig) -> tuple[dict, list]:
    """The message for the worker and the expected outputs kept here (the worker never gets them)."""
    tests = _tests_of(problem, config.tests)
    job: dict[str, Any] = {
        "op": "run",
        "format": problem.format,
        "code": code,
        "timeout_s": float(config.timeout_s),
        "program_timeout_s": float(config.program_timeout_s),
        "max_output": int(config.max_output_bytes),
        "prelude": None,
    }
    expected: list = []
    if problem.format == "stdin":
        job["inputs"] = [
            "\n".join(map(str, x)) if isinstance(x, list) else str(x) for x in tests.get("inputs", [])
        ]
        expected = list(tests.get("outputs", []))
        if config.compare == "apps":
            job["prelude"] = APPS_PRELUDE_NUMPY
    elif problem.format == "call":
        inputs = list(tests.get("inputs", []))
        if config.compare == "apps":
            inputs = [compare.apps_call_inputs(x) if isinstance(x, list) else x for x in inputs]
        job["inputs"] = inputs
        job["fn_name"] = problem.fn_name
        job["prelude"] = APPS_PRELUDE_NUMPY if config.compare == "apps" else APPS_PRELUDE
        expected = list(tests.get("outputs", []))
    elif problem.format == "assert":
        job["asserts"] = list(tests.get("asserts", []))
        job["setup"] = tests.get("setup") or ""
        expected = [None] * len(job["asserts"])
    else:  # pragma: no cover - Problem validates its format
        raise BcoderError(f"problem {problem.id!r}: unknown format {problem.format!r}")
    return job, expected


def _judge(
    problem, sample: dict, job: dict, expected: list, msgs: list[dict], end: dict, config: ExecutionConfig
) -> dict:
    total = len(expected)
    result = {
        "problem_id": sample["problem_id"],
        "sample_id": sample["sample_id"],
        "verdict": "passed",
        "reward": 0.0,
        "tests_passed": 0,
        "tests_total": total,
        "duration_s": round(float(end.get("seconds", 0.0)), 4),
        "detail": "",
    }

    def done(verdict: str, detail: str) -> dict:
        result["verdict"] = verdict
        result["reward"] = REWARDS[verdict]
        result["detail"] = _short(detail)
        return result

    if end.get("compile_error"):
        return done("compile_error", end["compile_error"])
    load_error = end.get("load_error")
    if load_error:
        if load_error == "timeout":
            return done("timeout", f"loading the program exceeded the time limit of {config.timeout_s:g} s")
        return done("runtime_error", f"loading the program: {load_error}")
    passed = 0
    first_wrong = first_error = first_timeout = None
    seen = set()
    for m in msgs:
        i = m.get("i")
        if not isinstance(i, int) or not 0 <= i < total or i in seen:
            raise ExecutionError(f"worker reported an unexpected test index {i!r}")
        seen.add(i)
        status = m.get("status")
        if status == "ok":
            if problem.format == "stdin":
                ok = compare.stdout_equal(m.get("stdout", ""), expected[i], config.compare)
            elif problem.format == "call":
                try:
                    value = json.loads(m.get("value", "null"))
                except (ValueError, RecursionError):
                    value = {"__bcoder_unrepresentable__": "invalid JSON"}
                ok = compare.value_equal(value, expected[i], config.compare)
            else:
                ok = True
            if ok:
                passed += 1
            elif first_wrong is None:
                first_wrong = f"test {i}: wrong answer"
        elif status == "fail":
            if first_wrong is None:
                err = m.get("error", "")
                first_wrong = f"test {i}: assertion failed" + (
                    f" ({err})" if err and err != "AssertionError" else ""
                )
        elif status == "overflow":
            if first_wrong is None:
                first_wrong = f"test {i}: output exceeds {config.max_output_bytes} bytes"
        elif status == "timeout":
            if first_timeout is None:
                first_timeout = f"test {i}: exceeded the time limit of {config.timeout_s:g} s"
        elif status == "error":
            if first_error is None:
                first_error = f"test {i}: {m.get('error') or 'runtime error'}"
        else:
            raise ExecutionError(f"worker reported an unknown test status {status!r}")
    result["tests_passed"] = passed
    aborted = end.get("aborted")
    if aborted == "program_timeout" or (aborted and aborted.startswith("program time limit")):
        return done("timeout", f"program exceeded its total time limit of {config.program_timeout_s:g} s")
    if first_timeout:
        return done("timeout", first_timeout)
    if aborted == "timeout":
        return done("timeout", f"exceeded the time limit of {config.timeout_s:g} s")
    if first_error:
        return done("runtime_error", first_error)
    if aborted:
        return done("runtime_error", aborted if aborted != "error" else "the program ended the process")
    if len(seen) < total:
        return done("runtime_error", f"only {len(seen)} of {total} tests ran")
    if first_wrong:
        return done("failed", first_wrong)
    return done("passed", "" if total else "no tests: compiled only")


# ------------------------------------------------------------------------------------------- pool


def _record_telemetry(verdict: str, seconds: float) -> None:
    try:
        from bcoder_core import telemetry
    except ImportError:  # pragma: no cover - telemetry is optional for the executor
        return
    with contextlib.suppress(Exception):
        telemetry.record_execution(verdict, seconds)


_DONE = object()


class Executor:
    """A started pool of workers; use :meth:`run` or :func:`execute_samples`."""

    def __init__(self, config: ExecutionConfig):
        self.config = config
        self._lease: _UidLease | None = None
        self._workers: list[_WorkerProcess] = []
        uids: list[int | None] = [None] * config.workers
        if os.geteuid() == 0:
            self._lease = _UidLease(config.uid_base, config.workers)
            uids = list(self._lease.uids)
        try:
            # Started from this thread, not helper threads: bwrap's --die-with-parent (PR_SET_PDEATHSIG)
            # fires when the thread that started it ends.
            for uid in uids:
                self._workers.append(_WorkerProcess(self.config, uid))
            for w in self._workers:
                w.wait_hello()
        except BaseException:
            self.close()
            raise
        self.isolation = self._workers[0].isolation if self._workers else {}
        self._report_isolation()

    def _report_isolation(self) -> None:
        iso = self.isolation
        missing = [
            name
            for name, ok in (
                ("network namespace", iso.get("netns")),
                ("mount namespace", iso.get("mountns")),
                ("separate user", iso.get("user") is not None),
            )
            if not ok
        ]
        if missing:
            log.warning(
                "execution sandbox %s: running without %s (not permitted here)",
                self.config.sandbox,
                ", ".join(missing),
            )

    def close(self) -> None:
        for w in self._workers:
            w.close()
        self._workers.clear()
        if self._lease is not None:
            self._lease.release()
            self._lease = None

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run_one(self, worker: _WorkerProcess, problem, sample: dict) -> dict:
        job, expected = build_job(problem, sample["code"], self.config)
        job["id"] = 1
        worker.send(job)
        watchdog = self.config.program_timeout_s + self.config.timeout_s + 60.0
        msgs: list[dict] = []
        while True:
            m = worker.recv(timeout=watchdog)
            if m.get("k") == "test":
                msgs.append(m)
            elif m.get("k") == "end":
                break
            else:
                raise ExecutionError(f"worker sent an unexpected message {m.get('k')!r}")
        result = _judge(problem, sample, job, expected, msgs, m, self.config)
        _record_telemetry(result["verdict"], result["duration_s"])
        return result

    def run(
        self,
        problems: Mapping[str, Any],
        samples: Iterable[dict],
        progress: Callable[[dict], None] | None = None,
    ) -> Iterator[dict]:
        jobs: queue.Queue = queue.Queue(maxsize=4 * len(self._workers))
        results: queue.Queue = queue.Queue()
        stop = threading.Event()

        def feeder() -> None:
            try:
                for sample in samples:
                    if stop.is_set():
                        return
                    problem = _check_sample(sample, problems)
                    while not stop.is_set():
                        try:
                            jobs.put((problem, sample), timeout=0.2)
                            break
                        except queue.Full:
                            continue
            except BaseException as exc:
                results.put(exc)
            finally:
                for _ in self._workers:
                    while not stop.is_set():
                        try:
                            jobs.put(_DONE, timeout=0.2)
                            break
                        except queue.Full:
                            continue

        def runner(worker: _WorkerProcess) -> None:
            try:
                while not stop.is_set():
                    try:
                        item = jobs.get(timeout=0.2)
                    except queue.Empty:
                        continue
                    if item is _DONE:
                        return
                    problem, sample = item
                    results.put(self.run_one(worker, problem, sample))
            except BaseException as exc:
                results.put(
                    exc
                    if isinstance(exc, (ExecutionError, BcoderError))
                    else ExecutionError(f"executor failure: {type(exc).__name__}: {exc}")
                )
            finally:
                results.put(_DONE)

        threads = [threading.Thread(target=feeder, daemon=True, name="bcoder-exec-feeder")]
        threads += [
            threading.Thread(target=runner, args=(w,), daemon=True, name="bcoder-exec-runner")
            for w in self._workers
        ]
        for t in threads:
            t.start()
        running = len(self._workers)
        try:
            while running:
                item = results.get()
                if item is _DONE:
                    running -= 1
                    continue
                if isinstance(item, BaseException):
                    raise item
                if progress is not None:
                    progress(item)
                yield item
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=0.1)


def _check_sample(sample: Any, problems: Mapping[str, Any]):
    if not isinstance(sample, dict):
        raise BcoderError(f"sample is not a JSON object: {str(sample)[:80]!r}")
    for key in ("problem_id", "sample_id", "code"):
        if key not in sample:
            raise BcoderError(
                f"sample {sample.get('problem_id')!r}/{sample.get('sample_id')!r}: missing field {key!r}"
            )
    if not isinstance(sample["code"], str):
        raise BcoderError(f"sample {sample['problem_id']!r}/{sample['sample_id']!r}: code is not a string")
    problem = problems.get(sample["problem_id"])
    if problem is None:
        raise BcoderError(
            f"sample {sample['sample_id']!r} refers to unknown problem id {sample['problem_id']!r}"
        )
    return problem


def execute_samples(
    problems: Mapping[str, Any],
    samples: Iterable[dict],
    config: ExecutionConfig,
    progress: Callable[[dict], None] | None = None,
) -> Iterator[dict]:
    """Execute every sample against its problem's tests; yield result dicts (DESIGN §3.3) as they complete.

    ``problems`` maps problem id to :class:`~bcoder_core.problems.Problem`. Results come in completion
    order. A sample naming an unknown problem raises :class:`BcoderError`; a failure of the framework
    raises :class:`ExecutionError`.
    """
    executor = Executor(config)
    try:
        yield from executor.run(problems, samples, progress)
    finally:
        executor.close()


def config_dict(config: ExecutionConfig) -> dict:
    return asdict(config)
