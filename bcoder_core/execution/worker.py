"""The execution worker: a pre-imported zygote that forks one isolated child per program (per test for
stdin programs), enforces time and output limits, and streams raw outcomes to the parent.

Started by the executor as ``python -m bcoder_core.execution.worker SETTINGS_JSON``
(:class:`~protocol.WorkerSettings`), possibly inside bubblewrap or gVisor. It speaks
:mod:`bcoder_core.execution.protocol` on its stdin/stdout (moved to private descriptors at start; the
standard descriptors become /dev/null and stderr): it gets :class:`~protocol.RunJob` messages and
answers each with :class:`~protocol.TestReport` messages and one :class:`~protocol.JobEnd`. The
worker never sees expected outputs: it sends what programs printed or returned, and the parent compares.
What a child did is worked out from what it wrote by :mod:`bcoder_core.execution.replay`.
"""

from __future__ import annotations

import ast
import contextlib
import os
import select
import signal
import sys
import time

from bcoder_core.execution import child, protocol, replay, sandbox

# Modules programs commonly import, loaded once here so that children get them for free.
_PRELOAD = [
    "array",
    "bisect",
    "builtins",
    "collections",
    "copy",
    "dataclasses",
    "datetime",
    "decimal",
    "enum",
    "fractions",
    "functools",
    "heapq",
    "io",
    "itertools",
    "json",
    "math",
    "numbers",
    "operator",
    "random",
    "re",
    "statistics",
    "string",
    "sys",
    "threading",
    "time",
    "types",
    "typing",
    "atexit",
    "traceback",
    "unicodedata",
]


class _Stream:
    """What one of a child's output pipes delivered, up to ``cap`` bytes (beyond it, ``over``)."""

    def __init__(self, cap: int, *, fatal: bool = False, nonce: str | None = None):
        self.cap = cap
        self.fatal = fatal
        """Overflowing it ends the program (its stdout)."""
        self.data = bytearray()
        self.size = 0
        self.over = False
        self.nonce = nonce
        """Set for the harness channel: complete lines are parsed as they arrive, into ``lines``."""
        self.lines: list[tuple[float, protocol.ChannelMessage | None]] = []

    def feed(self, chunk: bytes) -> None:
        if self.over:
            return
        self.data += chunk
        self.size += len(chunk)
        self.over = self.size > self.cap
        if self.nonce is not None:
            cut = self.data.rfind(b"\n")
            if cut >= 0:
                now = time.monotonic()
                complete, self.data = self.data[:cut], self.data[cut + 1 :]
                self.lines += [
                    (now, protocol.parse_channel_line(ln, self.nonce)) for ln in complete.split(b"\n")
                ]

    def close_lines(self) -> None:
        """The last line, when the process ended before writing its newline."""
        if self.nonce is not None and self.data:
            self.lines.append((time.monotonic(), protocol.parse_channel_line(bytes(self.data), self.nonce)))
            self.data.clear()


class Worker:
    def __init__(self, rfd: int, wfd: int, settings: protocol.WorkerSettings):
        self.rfd, self.wfd = rfd, wfd
        self.settings = settings
        self.uid = settings.uid
        self.isolation: dict = {}
        self.tmp_mb = sandbox.tmp_budget_mb(settings.memory_mb)
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        os.set_blocking(self.wake_r, False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)

    # ------------------------------------------------------------------------------------ protocol
    def recv(self) -> protocol.Message | None:
        """The next message from the parent; None when it is gone or broke the protocol (then exit)."""
        try:
            return protocol.read_frame(self._read_exact)
        except protocol.ProtocolError:
            return None

    def _read_exact(self, n: int) -> bytes:
        chunks, got = [], 0
        while got < n:
            b = os.read(self.rfd, min(n - got, 1 << 20))
            if not b:
                break
            chunks.append(b)
            got += len(b)
        return b"".join(chunks)

    def send(self, msg: protocol.Message) -> None:
        buf = memoryview(protocol.encode_frame(msg))
        while buf:
            buf = buf[os.write(self.wfd, buf) :]

    # ------------------------------------------------------------------------------------ children
    def limits(self, program_timeout_s: float) -> dict:
        return {
            # The budget is shared with the private /tmp (files there are memory too).
            "as_bytes": sandbox.vm_size_bytes() + (self.settings.memory_mb - self.tmp_mb) * 1024 * 1024,
            "cpu_s": int(program_timeout_s) + 2,
            "nproc": self.settings.max_processes,
            "fsize_bytes": self.settings.max_file_mb * 1024 * 1024,
            "nofile": self.settings.max_open_files,
        }

    def spawn(self, job: protocol.RunJob, workdir: str, fds: dict[int, int], target, *args) -> int:
        """Fork an isolated child that calls ``target(*args)`` (which never returns)."""
        limits = self.limits(job.program_timeout_s)
        env = dict(sandbox.SAFE_ENV)
        env["HOME"] = workdir
        env["TMPDIR"] = workdir
        pid = os.fork()
        if pid == 0:
            try:
                sandbox.enter_child(workdir=workdir, uid=self.uid, limits=limits, fds=fds, env=env)
                target(*args)
            except BaseException:
                pass
            finally:
                os._exit(70)
        return pid

    def watch(self, pid: int, streams: dict[int, _Stream], deadline_fn) -> tuple[replay.Ending, int | None]:
        """Wait for ``pid`` while draining ``streams`` (fd -> stream); returns how it ended and its
        wait status. ``deadline_fn()`` gives the current absolute deadline (it moves as tests complete)."""
        poller = select.poll()
        for fd in streams:
            poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        poller.register(self.wake_r, select.POLLIN)
        open_fds = set(streams)
        while True:
            try:
                wpid, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                wpid, status = pid, 0
            if wpid == pid:
                return "exited", status
            remaining = deadline_fn() - time.monotonic()
            if remaining <= 0:
                return "timeout", None
            for fd, _ev in poller.poll(min(remaining, 1.0) * 1000):
                if fd == self.wake_r:
                    with contextlib.suppress(BlockingIOError):
                        while os.read(self.wake_r, 512):
                            pass
                    continue
                if fd not in open_fds:
                    continue
                try:
                    data = os.read(fd, 1 << 16)
                except BlockingIOError:
                    continue
                if not data:
                    poller.unregister(fd)
                    open_fds.discard(fd)
                    continue
                stream = streams[fd]
                stream.feed(data)
                if stream.over and stream.fatal:
                    return "overflow", None

    def finish(
        self, pid: int, streams: dict[int, _Stream], ending: replay.Ending, status: int | None
    ) -> tuple[replay.Ending, int | None]:
        """Kill what is left of the program, reap it, and drain what it wrote before that."""
        if status is None:
            for kill in (os.killpg, os.kill):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    kill(pid, signal.SIGKILL)
            try:
                _, status = os.waitpid(pid, 0)
            except ChildProcessError:
                status = None
        sandbox.kill_strays(pid, self.uid, subreaper=bool(self.isolation.get("subreaper")))
        for fd, stream in streams.items():
            while not stream.over:
                try:
                    data = os.read(fd, 1 << 16)
                except OSError:  # BlockingIOError included: nothing more buffered
                    break
                if not data:
                    break
                stream.feed(data)
            if stream.over and stream.fatal and ending == "exited":
                ending = "overflow"
            stream.close_lines()
            os.close(fd)
        return ending, status

    # ---------------------------------------------------------------------------------------- jobs
    def run_job(self, job: protocol.RunJob) -> None:
        start = time.monotonic()
        try:
            code = compile_program(job.code, job.format)
        except BaseException as exc:  # SyntaxError, ValueError (NUL bytes), MemoryError, RecursionError
            self.send(
                protocol.JobEnd(job.job_id, time.monotonic() - start, compile_error=_compile_message(exc))
            )
            return
        prelude = compile(job.prelude, "prelude.py", "exec") if job.prelude else None
        nonce = os.urandom(16).hex()
        workdir = sandbox.make_workdir(self.base_dir, self.uid)
        try:
            if job.format == "stdin":
                aborted, load_error = self.run_stdin(job, nonce, code, prelude, workdir, start), None
            else:
                outcome = self.run_inproc(job, nonce, code, prelude, workdir, start)
                aborted, load_error = outcome.aborted, outcome.load_error
                for report in outcome.tests:
                    self.send(report)
        finally:
            sandbox.remove_workdir(workdir)
            self.wipe_private_tmp()
        self.send(
            protocol.JobEnd(job.job_id, time.monotonic() - start, load_error=load_error, aborted=aborted)
        )

    def wipe_private_tmp(self) -> None:
        """Empty the worker's private /tmp-like directories: nothing one program leaves reaches the next."""
        import shutil

        for d in self.isolation.get("private_tmp", ()):
            try:
                entries = list(os.scandir(d))
            except OSError:
                continue
            for e in entries:
                if e.path == self.base_dir:
                    continue
                try:
                    if e.is_dir(follow_symlinks=False):
                        shutil.rmtree(e.path, ignore_errors=True)
                    else:
                        os.unlink(e.path)
                except OSError:
                    pass

    def _chan_fd(self) -> int:
        # A number the program cannot know in advance: it has to search for the channel to forge on it.
        return 200 + int.from_bytes(os.urandom(2), "big") % 700

    def run_stdin(
        self, job: protocol.RunJob, nonce: str, code, prelude, workdir: str, start: float
    ) -> str | None:
        """One process per test, each report sent as it completes; returns why the rest did not run."""
        program_deadline = start + job.program_timeout_s
        for i, text in enumerate(job.inputs or []):
            if time.monotonic() >= program_deadline:
                return f"program time limit of {job.program_timeout_s:g} s reached before test {i}"
            t0 = time.monotonic()
            in_fd = os.memfd_create("stdin", 0)
            view = memoryview(str(text).encode("utf-8", "surrogateescape"))
            while view:
                view = view[os.write(in_fd, view) :]
            os.lseek(in_fd, 0, os.SEEK_SET)
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            chan_r, chan_w = os.pipe()
            chan_fd = self._chan_fd()
            fds = {0: in_fd, 1: out_w, 2: err_w, chan_fd: chan_w}
            pid = self.spawn(job, workdir, fds, child.run_stdin, nonce, code, prelude, chan_fd)
            for fd in (in_fd, out_w, err_w, chan_w):
                os.close(fd)
            for fd in (out_r, err_r, chan_r):
                os.set_blocking(fd, False)
            out, err, chan = _Stream(job.max_output, fatal=True), _Stream(4096), _Stream(4096)
            streams = {out_r: out, err_r: err, chan_r: chan}
            deadline = min(t0 + job.timeout_s, program_deadline)
            ending, status = self.finish(pid, streams, *self.watch(pid, streams, lambda d=deadline: d))
            report = replay.stdin_test_report(
                i,
                ending=ending,
                status=status,
                channel=bytes(chan.data),
                nonce=nonce,
                stdout=bytes(out.data),
                stderr=bytes(err.data),
                seconds=time.monotonic() - t0,
            )
            self.send(report)
            if report.status == "timeout":
                return "program_timeout" if deadline >= program_deadline else "timeout"
        return None

    def run_inproc(
        self, job: protocol.RunJob, nonce: str, code, prelude, workdir: str, start: float
    ) -> replay.Replay:
        """call / assert: one child runs the program once and then every test, reporting as it goes."""
        n_tests = len(job.inputs or []) if job.format == "call" else len(job.asserts or [])
        chan_fd = self._chan_fd()
        if job.format == "assert":
            setup = compile(job.setup, "setup.py", "exec") if job.setup else None
            asserts = []
            for k, a in enumerate(job.asserts or []):
                try:
                    if isinstance(a, dict):
                        exprs = a.get("eval")
                        if not isinstance(exprs, list) or not all(isinstance(e, str) for e in exprs):
                            raise ValueError("malformed test")
                        asserts.append(tuple(compile(e, f"test_{k}.py", "eval") for e in exprs))
                    else:
                        asserts.append(compile(a, f"test_{k}.py", "exec"))
                except BaseException as exc:
                    return replay.Replay(load_error=f"test {k} does not compile: {_compile_message(exc)}")
            target, args = child.run_assert, (nonce, code, prelude, chan_fd, setup, asserts, job.max_output)
        else:
            target, args = child.run_call, (job, nonce, code, prelude, chan_fd)
        chan_r, chan_w = os.pipe()
        null = os.open(os.devnull, os.O_RDWR)
        t0 = time.monotonic()
        pid = self.spawn(job, workdir, {0: null, 1: null, 2: null, chan_fd: chan_w}, target, *args)
        os.close(chan_w)
        os.close(null)
        os.set_blocking(chan_r, False)
        chan = _Stream((job.max_output + 65536) * max(1, n_tests), nonce=nonce)
        program_deadline = start + job.program_timeout_s

        def deadline() -> float:
            # Each test gets its own time limit, from the last loaded/test message on.
            last = next((t for t, m in reversed(chan.lines) if m and m.kind in ("loaded", "test")), t0)
            return min(last + job.timeout_s, program_deadline)

        ending, status = self.finish(pid, {chan_r: chan}, *self.watch(pid, {chan_r: chan}, deadline))
        return replay.replay_channel(
            chan.lines,
            n_tests=n_tests,
            returns_value=(
                job.format == "call"
                if job.format != "assert"
                else [isinstance(a, dict) for a in job.asserts or []]
            ),
            started=t0,
            ending=ending,
            status=status,
            ended_at=time.monotonic(),
        )

    # ---------------------------------------------------------------------------------------- main
    def serve(self) -> None:
        import tempfile

        # A cgroup, where there is one to have, bounds everything the worker and its programs hold: the
        # worker itself, one program at a time (its processes, its tmpfs files), some slack.
        cgroup_limit = sandbox.vm_size_bytes() // 2 + (self.settings.memory_mb + 64) * 1024 * 1024
        self.isolation = sandbox.setup_worker(
            tmp_size_mb=self.tmp_mb, memory_limit_bytes=cgroup_limit, fs_overlay=self.settings.fs_overlay
        )
        self.uid = self.uid if self.uid is not None and sandbox.can_switch_user(self.uid) else None
        self.isolation["user"] = self.uid
        self.base_dir = tempfile.mkdtemp(prefix="bcoder-work-")
        os.chmod(self.base_dir, 0o711)
        self.isolation["vm_size_mb"] = sandbox.vm_size_bytes() // (1024 * 1024)
        self.send(protocol.Hello(os.getpid(), self.isolation))
        while True:
            job = self.recv()
            if not isinstance(job, protocol.RunJob):
                break
            self.run_job(job)


class _ModuleReturn(ast.NodeTransformer):
    """``return`` at module level -> ``raise SystemExit`` (functions and classes are left alone)."""

    def visit_FunctionDef(self, node):
        return node

    visit_AsyncFunctionDef = visit_ClassDef = visit_Lambda = visit_FunctionDef

    def visit_Return(self, node):
        new = ast.parse("raise SystemExit").body[0]
        return ast.copy_location(new, node)


def compile_program(source: str, fmt: str):
    """Compile a program. A stdin program may ``return`` at module level to end (the APPS harness runs
    stdin programs inside a function, so APPS solutions and models trained on them do this): that
    ``return`` ends the script like ``sys.exit()``, and nothing else about script semantics changes."""
    try:
        return compile(source, "solution.py", "exec", dont_inherit=True)
    except SyntaxError as exc:
        if fmt != "stdin" or exc.msg != "'return' outside function":
            raise
        tree = _ModuleReturn().visit(ast.parse(source, "solution.py"))
        return compile(ast.fix_missing_locations(tree), "solution.py", "exec", dont_inherit=True)


def _compile_message(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        return f"{type(exc).__name__}: {exc.msg} (line {exc.lineno})"[:300]
    return f"{type(exc).__name__}: {exc}"[:300]


def main() -> None:
    settings = (
        protocol.WorkerSettings.from_json(sys.argv[1]) if len(sys.argv) > 1 else protocol.WorkerSettings()
    )
    # The protocol gets private descriptors: whatever a library prints cannot corrupt a frame.
    rfd, wfd = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(2, 1)
    os.close(null)
    for name in _PRELOAD:
        with contextlib.suppress(ImportError):
            __import__(name)
    if settings.preload_numpy:
        with contextlib.suppress(ImportError):
            import numpy  # noqa: F401
    Worker(rfd, wfd, settings).serve()


if __name__ == "__main__":
    main()
