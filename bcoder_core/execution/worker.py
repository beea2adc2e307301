"""The execution worker: the trusted side of the boundary. It runs programs through its zygote, enforces
time and output limits, cleans up after every program, and streams raw outcomes to the parent.

Started by the executor as ``python -S -m bcoder_core.execution.worker SETTINGS_JSON``
(:class:`~protocol.WorkerSettings`), possibly inside bubblewrap or gVisor. It speaks
:mod:`bcoder_core.execution.protocol` on its stdin/stdout (moved to private descriptors at start; the
standard descriptors become /dev/null and stderr): it gets :class:`~protocol.RunJob` messages and
answers each with :class:`~protocol.TestReport` messages and one :class:`~protocol.JobEnd`. The
worker never sees expected outputs: it sends what programs printed or returned, and the parent compares.
What a child did is worked out from what it wrote by :mod:`bcoder_core.execution.replay`.

The worker isolates itself once (:func:`sandbox.setup_worker`: it becomes PID 1 of its own PID
namespace, its root the allow-listed view), then starts the zygote (:mod:`~bcoder_core.execution.zygote`)
and never forks a program itself: per program (per test for stdin programs) it writes the job into a
memfd, creates the program's pipes and asks the zygote for a child. After every program it kills every
process of its namespace but itself and the zygote, reaps them, and gives the next program a fresh
private /tmp.
"""

from __future__ import annotations

import _socket
import contextlib
import fcntl
import json
import marshal
import os
import select
import signal
import sys
import time

from bcoder_core.execution import child, protocol, replay, sandbox, zygote

_PRELOAD_NUMPY = "numpy"


class ZygoteError(protocol.ExecutionError):
    """The zygote died or broke its protocol (a framework failure, never a verdict)."""


def _sealed_memfd(name: str, data: bytes) -> int:
    """A memfd holding ``data``, sealed against any change (under gVisor a program can open the worker's
    descriptors through /proc/1/fd: it may read its own job there, never rewrite it), offset 0."""
    fd = os.memfd_create(name, os.MFD_ALLOW_SEALING)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    seals = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


class _Zygote:
    """The worker's side of the zygote: start it, ask it for children, read their wait statuses."""

    def __init__(self, sources: bytes, settings: dict, *, pdeathsig: bool):
        ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        src = os.memfd_create("bcoder-zygote", 0)
        view = memoryview(sources)
        while view:
            view = view[os.write(src, view) :]
        os.lseek(src, 0, os.SEEK_SET)
        keep = sorted({0, 1, 2, src, theirs.fileno()})
        argv = [
            sys.executable,
            "-S",
            "-I",
            "-c",
            zygote.BOOT,
            str(src),
            str(theirs.fileno()),
            json.dumps(settings),
        ]
        pid = os.fork()
        if pid == 0:
            try:
                for fd in keep:
                    os.set_inheritable(fd, True)
                low = 0
                for fd in keep:
                    if fd > low:
                        os.closerange(low, fd)
                    low = fd + 1
                os.closerange(low, 1 << 20)
                if pdeathsig:  # no PID namespace to end it with the worker
                    sandbox.prctl(sandbox.PR_SET_PDEATHSIG, signal.SIGKILL)
                os.chdir("/")
                os.execve(sys.executable, argv, dict(sandbox.SAFE_ENV))
            finally:
                os._exit(127)
        os.close(src)
        theirs.close()
        self.sock = ours
        self.pid = pid
        self.report_pid = bool(settings.get("report_pid"))
        ready = self.recv(timeout=120.0)
        if ready.get("ready") != pid:
            raise ZygoteError(f"the zygote did not start: {str(ready)[:200]}")
        self.vm_size = int(ready.get("vm_size") or 0)

    def recv(self, timeout: float) -> dict:
        r, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        if not r:
            raise ZygoteError("the zygote stopped answering")
        try:
            data = self.sock.recv(1 << 16)
        except OSError as exc:
            raise ZygoteError(f"the zygote is gone: {exc}") from None
        if not data:
            raise ZygoteError("the zygote is gone")
        try:
            msg = json.loads(data)
        except ValueError:
            raise ZygoteError("the zygote broke its protocol") from None
        if not isinstance(msg, dict):
            raise ZygoteError("the zygote broke its protocol")
        return msg

    def spawn(self, job_fd: int, fds: dict[int, int], *, workdir: str, chan_fd: int, cpu_s: int) -> int:
        """One child of the zygote running the job of ``job_fd`` with ``fds`` (target -> descriptor)."""
        req = {"targets": list(fds), "workdir": workdir, "chan_fd": chan_fd, "cpu_s": cpu_s}
        fd_bytes = b"".join(fd.to_bytes(4, sys.byteorder) for fd in [job_fd, *fds.values()])
        self.sock.sendmsg([json.dumps(req).encode()], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fd_bytes)])
        if not self.report_pid:
            return 0  # the program's pid comes with its status
        msg = self.recv(timeout=60.0)
        if "error" in msg or not isinstance(msg.get("pid"), int):
            raise ZygoteError(f"the zygote could not start a program: {str(msg.get('error', msg))[:200]}")
        return msg["pid"]

    def status(self, pid: int, timeout: float) -> int:
        """The wait status of the program (reaped by the zygote); ``pid`` 0: whichever it started."""
        msg = self.recv(timeout)
        if "error" in msg:
            raise ZygoteError(f"the zygote could not start a program: {str(msg['error'])[:200]}")
        if (pid and msg.get("pid") != pid) or not isinstance(msg.get("status"), int):
            raise ZygoteError(f"the zygote broke its protocol: {str(msg)[:200]}")
        return msg["status"]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


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
        self.zygote: _Zygote | None = None

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
    def zygote_settings(self) -> dict:
        import site

        preload = list(zygote.PRELOAD) + ([_PRELOAD_NUMPY] if self.settings.preload_numpy else [])
        return {
            "uid": self.uid,
            "limits": {
                "nproc": self.settings.max_processes,
                "fsize_bytes": self.settings.max_file_mb * 1024 * 1024,
                "nofile": self.settings.max_open_files,
            },
            # The address space a program may use beyond the zygote's own size; the rest of its memory
            # budget is its private /tmp (files there are memory too).
            "budget_bytes": (self.settings.memory_mb - self.tmp_mb) * 1024 * 1024,
            "env": dict(sandbox.SAFE_ENV),  # the zygote's own (HOME and TMPDIR: the private /tmp)
            "site_dirs": [d for d in site.getsitepackages() if os.path.isdir(d)],
            "preload": preload,
            # Without a PID namespace (or as another user than root) the parent-death signal and the
            # non-dumpable flag are set by prctl in the zygote and its children.
            "prctl": not (self.isolation.get("pidns") and os.geteuid() == 0),
            # With the worker PID 1 of its namespace, a program ends with every process of it but the
            # worker and the zygote: its pid is not needed before it ends.
            "report_pid": not self.isolation.get("pidns"),
        }

    def spawn(
        self, job: protocol.RunJob, job_fd: int, workdir: str, fds: dict[int, int], chan_fd: int
    ) -> int:
        """A child of the zygote that runs ``job`` (written in ``job_fd``) with ``fds`` in place."""
        return self.zygote.spawn(
            job_fd, fds, workdir=workdir, chan_fd=chan_fd, cpu_s=int(job.program_timeout_s) + 2
        )

    def watch(self, pid: int, streams: dict[int, _Stream], deadline_fn) -> tuple[replay.Ending, int | None]:
        """Wait for ``pid`` while draining ``streams`` (fd -> stream); returns how it ended and its
        wait status. ``deadline_fn()`` gives the current absolute deadline (it moves as tests complete)."""
        poller = select.poll()
        for fd in streams:
            poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        zfd = self.zygote.sock.fileno()
        poller.register(zfd, select.POLLIN | select.POLLHUP | select.POLLERR)
        open_fds = set(streams)
        while True:
            remaining = deadline_fn() - time.monotonic()
            if remaining <= 0:
                return "timeout", None
            for fd, _ev in poller.poll(min(remaining, 1.0) * 1000):
                if fd == zfd:
                    # The child is reaped (by the zygote): drain what it wrote last in finish().
                    return "exited", self.program_status(pid, timeout=10.0)
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
            self.kill_program(pid)
            status = self.program_status(pid, timeout=30.0)
        self.kill_program(pid)
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

    def program_status(self, pid: int, timeout: float) -> int:
        """The program's wait status, from the zygote. Where programs run as the worker's own user (no
        root) a program can kill the zygote: then the program is killed (its status: killed by SIGKILL)
        and the zygote started again. Elsewhere a dead zygote is a failure of the framework (raised),
        never a verdict."""
        try:
            return self.zygote.status(pid, timeout)
        except ZygoteError:
            if self.uid is not None or os.geteuid() == 0:
                raise
        if pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        self.zygote.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.zygote.pid, 0)
        print("bcoder worker: a program killed the zygote; starting another", file=sys.stderr)
        self.zygote = self.start_zygote()
        return signal.SIGKILL  # the wait status of a process killed by SIGKILL

    def start_zygote(self) -> _Zygote:
        return _Zygote(self.sources, self.zygote_settings(), pdeathsig=not self.isolation.get("pidns"))

    def kill_program(self, pid: int) -> None:
        """SIGKILL the program and everything it started, and reap what comes to the worker.

        With the worker PID 1 of its own namespace: every process of the namespace but the worker and
        the zygote (:func:`sandbox.kill_namespace`), whatever its user, session or parent. Otherwise the
        program's process group, then the orphans re-parented to the worker (a child subreaper) or
        every process of the slot's user (:func:`sandbox.kill_strays`)."""
        keep = frozenset({self.zygote.pid})
        if self.isolation.get("pidns"):
            gone = sandbox.kill_namespace(keep)
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
            gone = sandbox.kill_strays(
                pid, self.uid, subreaper=bool(self.isolation.get("subreaper")), keep=keep
            )
        if self.zygote.pid in gone and (self.uid is not None or os.geteuid() == 0):
            # Programs run as another user: they cannot have killed it (else program_status starts
            # another one when its end shows on the socket).
            raise ZygoteError("the zygote died")

    # ---------------------------------------------------------------------------------------- jobs
    def run_job(self, job: protocol.RunJob) -> None:
        start = time.monotonic()
        try:
            code = child.compile_program(job.code, job.format)
            prelude = compile(job.prelude, "prelude.py", "exec") if job.prelude else None
        except BaseException as exc:  # SyntaxError, ValueError (NUL bytes), MemoryError, RecursionError
            self.send(
                protocol.JobEnd(
                    job.job_id, time.monotonic() - start, compile_error=child.compile_message(exc)
                )
            )
            return
        setup, tests = None, []
        if job.format == "assert":
            try:
                setup = compile(job.setup, "setup.py", "exec") if job.setup else None
                tests = child.compile_tests(job.asserts or [])
            except (ValueError, SyntaxError) as exc:
                msg = str(exc) if isinstance(exc, ValueError) else f"test setup: {child.compile_message(exc)}"
                self.send(protocol.JobEnd(job.job_id, time.monotonic() - start, load_error=msg))
                return
        nonce = os.urandom(16).hex()
        job_fd = self.job_file(job, nonce, code, prelude, setup, tests)
        workdir = sandbox.make_workdir(self.base_dir, self.uid)
        try:
            if job.format == "stdin":
                aborted, load_error = self.run_stdin(job, job_fd, nonce, workdir, start), None
            else:
                outcome = self.run_inproc(job, job_fd, nonce, workdir, start)
                aborted, load_error = outcome.aborted, outcome.load_error
                for report in outcome.tests:
                    self.send(report)
        finally:
            os.close(job_fd)
            self.fresh_private_tmp(workdir)
        self.send(
            protocol.JobEnd(job.job_id, time.monotonic() - start, load_error=load_error, aborted=aborted)
        )

    def job_file(self, job: protocol.RunJob, nonce: str, code, prelude, setup, tests: list) -> int:
        """A memfd with what the program's process needs of ``job``: its code objects, compiled here once
        (``marshal``: the zygote runs this same interpreter; the child loads them without compiling),
        the arguments of a call-based program (stdin texts go one by one to each test's process), never
        an expected output."""
        data = {
            "format": job.format,
            "nonce": nonce,
            "code": code,
            "prelude": prelude,
            "setup": setup,
            "tests": tests,
            "fn_name": job.fn_name,
            "inputs": job.inputs if job.format == "call" else None,
            "max_output": job.max_output,
        }
        return _sealed_memfd("job", marshal.dumps(data))

    def fresh_private_tmp(self, workdir: str) -> None:
        """Nothing one program leaves in /tmp reaches the next: a new tmpfs where the view is the worker's
        own (:func:`sandbox.reset_private_tmp`), else the files removed one by one."""
        if self.isolation.get("fs_view", "").startswith("allow-list") and sandbox.reset_private_tmp(
            self.tmp_mb
        ):
            os.mkdir(self.base_dir, 0o711)
            return
        sandbox.remove_workdir(workdir)
        self.wipe_private_tmp()

    def wipe_private_tmp(self) -> None:
        """Empty the worker's private /tmp-like directories: nothing one program leaves reaches the next."""
        for d in self.isolation.get("private_tmp", ()):
            try:
                entries = list(os.scandir(d))
            except OSError:
                continue
            for e in entries:
                if e.path != self.base_dir:
                    sandbox.remove_tree(e.path)

    def _chan_fd(self) -> int:
        # A number the program cannot know in advance: it has to search for the channel to forge on it.
        return 200 + int.from_bytes(os.urandom(2), "big") % 700

    def run_stdin(
        self, job: protocol.RunJob, job_fd: int, nonce: str, workdir: str, start: float
    ) -> str | None:
        """One process per test, each report sent as it completes; returns why the rest did not run."""
        program_deadline = start + job.program_timeout_s
        for i, text in enumerate(job.inputs or []):
            if time.monotonic() >= program_deadline:
                return f"program time limit of {job.program_timeout_s:g} s reached before test {i}"
            t0 = time.monotonic()
            in_fd = _sealed_memfd("stdin", str(text).encode("utf-8", "surrogateescape"))
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            chan_r, chan_w = os.pipe()
            chan_fd = self._chan_fd()
            fds = {0: in_fd, 1: out_w, 2: err_w, chan_fd: chan_w}
            try:
                pid = self.spawn(job, job_fd, workdir, fds, chan_fd)
            finally:
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
        self, job: protocol.RunJob, job_fd: int, nonce: str, workdir: str, start: float
    ) -> replay.Replay:
        """call / assert: one child runs the program once and then every test, reporting as it goes."""
        n_tests = len(job.inputs or []) if job.format == "call" else len(job.asserts or [])
        chan_fd = self._chan_fd()
        chan_r, chan_w = os.pipe()
        null = os.open(os.devnull, os.O_RDWR)
        t0 = time.monotonic()
        try:
            pid = self.spawn(job, job_fd, workdir, {0: null, 1: null, 2: null, chan_fd: chan_w}, chan_fd)
        finally:
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
        # The zygote's sources, read while the host's files are in view (the view does not hold them).
        self.sources = zygote.sources()
        # A cgroup, where there is one to have, bounds everything the worker and its programs hold: the
        # worker itself, the zygote, one program at a time (its processes, its tmpfs files), some slack.
        cgroup_limit = zygote.vm_size_bytes() + (self.settings.memory_mb + 64) * 1024 * 1024
        self.isolation = sandbox.setup_worker(
            tmp_size_mb=self.tmp_mb, memory_limit_bytes=cgroup_limit, fs_overlay=self.settings.fs_overlay
        )
        self.uid = self.uid if self.uid is not None and sandbox.can_switch_user(self.uid) else None
        self.isolation["user"] = self.uid
        # Inherited by the zygote and every program: no execve can gain privileges (set-uid files).
        self.isolation["no_new_privs"] = sandbox.prctl(sandbox.PR_SET_NO_NEW_PRIVS, 1) == 0
        self.base_dir = sandbox.make_private_dir("/tmp", "bcoder-work-", 0o711)
        self.zygote = self.start_zygote()
        self.isolation["zygote_pid"] = self.zygote.pid
        self.isolation["vm_size_mb"] = self.zygote.vm_size // (1024 * 1024)
        self.send(protocol.Hello(os.getpid(), self.isolation))
        try:
            while True:
                job = self.recv()
                if not isinstance(job, protocol.RunJob):
                    break
                self.run_job(job)
        finally:
            self.zygote.close()


def _site_packages_on_path() -> None:
    """The worker starts with ``-S``: site-packages goes on ``sys.path`` without running its ``.pth``
    hooks (programs may import the ``sandbox.CHILD_PACKAGES`` found there)."""
    import site

    for d in site.getsitepackages():
        if os.path.isdir(d) and d not in sys.path:
            sys.path.append(d)


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
    _site_packages_on_path()
    Worker(rfd, wfd, settings).serve()


if __name__ == "__main__":
    main()
