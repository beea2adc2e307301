"""The executor: a pool of sandboxed workers that runs samples; :func:`execute_samples`, :class:`Executor`.

A pool of worker processes (``worker.py``, each inside the chosen boundary with its zygote,
``zygote.py``, which forks the programs; see ``sandbox.py``) runs programs; this process keeps the problems, the expected outputs and the
results, and decides every verdict (``judge.py``) from what the workers report (``protocol.py``).
Worker output is JSON only (never pickle), so even a compromised sandbox cannot run code here.
A crash of the framework (a worker dies, the protocol breaks) raises :class:`ExecutionError`; it is
never written down as a program's verdict.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import logging
import os
import queue
import select
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from bcoder_core.errors import BcoderError
from bcoder_core.execution import protocol, sandbox
from bcoder_core.execution.compare import COMPARE_MODES
from bcoder_core.execution.config import ExecutionConfig
from bcoder_core.execution.judge import build_job, judge
from bcoder_core.execution.protocol import ExecutionError

log = logging.getLogger(__name__)

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
    """One worker: its process, and this side of the protocol (with a watchdog on every read)."""

    def __init__(self, config: ExecutionConfig, uid: int | None):
        settings = protocol.WorkerSettings(
            uid=uid,
            memory_mb=config.memory_mb,
            max_processes=config.max_processes,
            max_file_mb=config.max_file_mb,
            max_open_files=config.max_open_files,
            preload_numpy=COMPARE_MODES[config.compare].apps_environment,
            fs_overlay=sandbox.SANDBOXES[config.sandbox].fs_overlay,
        )
        self.cmd = sandbox.worker_command(config.sandbox, [settings.to_json()])
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
        self.isolation: dict = {}
        self._deadline = 0.0

    def wait_hello(self) -> None:
        try:
            hello = self.recv(timeout=120.0)
        except ExecutionError as exc:
            raise ExecutionError(
                f"cannot start an execution worker ({' '.join(self.cmd[:2])} …): {exc}"
            ) from None
        if not isinstance(hello, protocol.Hello):
            raise ExecutionError(f"worker sent {hello.TYPE!r} instead of hello")
        self.isolation = hello.isolation

    def send(self, msg: protocol.Message) -> None:
        try:
            self.proc.stdin.write(protocol.encode_frame(msg))
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise ExecutionError(f"execution worker died ({self._status()}): {exc}") from None

    def _status(self) -> str:
        rc = self.proc.poll()
        return "still running" if rc is None else f"exit status {rc}"

    def _read_exact(self, n: int) -> bytes:
        chunks, got = [], 0
        while got < n:
            remaining = self._deadline - time.monotonic()
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

    def recv(self, timeout: float) -> protocol.Message:
        self._deadline = time.monotonic() + timeout
        try:
            msg = protocol.read_frame(self._read_exact)
        except protocol.ProtocolError as exc:
            raise ExecutionError(f"execution worker broke the protocol: {exc}") from None
        if msg is None:  # pragma: no cover - _read_exact raises at the end of the stream
            raise ExecutionError("execution worker closed its output")
        return msg

    def ask_to_stop(self) -> None:
        with contextlib.suppress(Exception):
            self.send(protocol.Shutdown())
        with contextlib.suppress(Exception):
            self.proc.stdin.close()

    def close(self) -> None:
        self.ask_to_stop()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, 9)
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(Exception):
            self.proc.stdout.close()


# ------------------------------------------------------------------------------------------- pool


def _record_telemetry(verdict: str, seconds: float) -> None:
    try:
        from bcoder_core import telemetry
    except ImportError:  # pragma: no cover - telemetry is optional for the executor
        return
    with contextlib.suppress(Exception):
        telemetry.record_execution(verdict, seconds)


_DONE = object()
PIPELINE = 2
"""Programs sent ahead to each worker (the one it runs and the next)."""


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
        if not str(iso.get("fs_view", "")).startswith("allow-list"):
            missing.append(
                f"the allow-listed file-system view ({iso.get('fs_view')}: programs see the host's files)"
            )
        if not iso.get("pidns"):
            missing.append("a PID namespace (programs can list the host's processes)")
        if missing:
            log.warning(
                "execution sandbox %s: running without %s (not permitted here)",
                self.config.sandbox,
                ", ".join(missing),
            )

    def close(self) -> None:
        for w in self._workers:  # all at once: each sandbox takes its time to end
            w.ask_to_stop()
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

    def submit(self, worker: _WorkerProcess, problem, sample: dict) -> tuple:
        """Send one program to ``worker``; what :meth:`collect` needs for its result."""
        job, expected = build_job(problem, sample["code"], self.config)
        worker.send(job)
        return job, expected, problem, sample

    def collect(self, worker: _WorkerProcess, submitted: tuple) -> dict:
        """The result of the oldest program sent to ``worker`` (its reports, then its end)."""
        job, expected, problem, sample = submitted
        # Per message: a job may wait behind the one before it, but each message comes within this.
        watchdog = self.config.program_timeout_s + self.config.timeout_s + 60.0
        reports: list[protocol.TestReport] = []
        while True:
            msg = worker.recv(timeout=watchdog)
            if isinstance(msg, protocol.TestReport):
                reports.append(msg)
            elif isinstance(msg, protocol.JobEnd) and msg.job_id == job.job_id:
                break
            else:
                raise ExecutionError(f"worker sent an unexpected {msg.TYPE!r} message")
        result = judge(problem, sample, expected, reports, msg, self.config)
        _record_telemetry(result.verdict, result.duration_s)
        return result.as_dict()

    def run_one(self, worker: _WorkerProcess, problem, sample: dict) -> dict:
        return self.collect(worker, self.submit(worker, problem, sample))

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
            # Up to PIPELINE programs at a worker: it starts the next one the moment one ends, without
            # waiting for this thread to judge the last and send another (the worker reads one job at
            # a time; its results come back in order).
            pending: collections.deque = collections.deque()
            done = False
            try:
                while not stop.is_set():
                    while not done and len(pending) < PIPELINE:
                        try:
                            item = jobs.get_nowait() if pending else jobs.get(timeout=0.2)
                        except queue.Empty:
                            break
                        if item is _DONE:
                            done = True
                            break
                        pending.append(self.submit(worker, *item))
                    if pending:
                        results.put(self.collect(worker, pending.popleft()))
                    elif done:
                        return
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
