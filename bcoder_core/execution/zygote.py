"""The zygote: the one process that forks programs, lean and idle (DESIGN §4, *Decision*).

The worker (:mod:`~bcoder_core.execution.worker`) starts it once, inside the boundary and after its own
isolation set-up (namespaces, the allow-listed view), as a fresh ``python -S -I`` that holds only the
harness (:mod:`~bcoder_core.execution.child`, :mod:`~bcoder_core.execution.values`, this module) and
the modules programs commonly import. On each request from the worker it forks one child, which reads
its job, becomes an isolated program process (:func:`enter`) and runs the harness; the zygote itself
waits for that child and reports its wait status. It never holds a program, a test or anything a
program sent: the job reaches the child alone (a memfd it reads after the fork), so a program's own
memory, copied from the zygote, holds no other candidate's code.

Why a separate process rather than forking from the worker: under gVisor (ptrace platform) a fork
costs in proportion to the mappings and the copy-on-write memory of the process that forks, and every
page either side writes while both live is copied (in 2 MiB units). A zygote that holds few shared
libraries, a small heap, and sleeps while its child runs makes each program's fork cheaper; the
worker's own activity (protocol, pipes, clean-up) no longer touches memory shared with a program.

Messages, over a ``SOCK_SEQPACKET`` socket pair, JSON: worker -> zygote ``{"targets": [fd numbers],
"workdir": ..., "chan_fd": n, "cpu_s": n}`` with the descriptors (the job's memfd first, then one per
target) attached; zygote -> worker ``{"ready": pid, "vm_size": bytes}`` once, then per request
``{"pid": n}`` (only where the worker is not PID 1 of its own namespace: it then needs the program's
process group to kill it) and, once the child is reaped, ``{"pid": n, "status": wait status}`` (or
``{"error": ...}`` when it could not fork). The job memfd holds the program's code objects, compiled by
the worker (``marshal``, the same interpreter), and is sealed: nothing can change it once written.
"""

from __future__ import annotations

import _socket
import json
import marshal
import os
import resource
import signal
import sys

from bcoder_core.execution import child

MODULES = ("bcoder_core.execution.values", "bcoder_core.execution.child", "bcoder_core.execution.zygote")
"""The harness modules the zygote is given (in import order); ``bcoder_core`` and
``bcoder_core.execution`` are empty packages there."""

BOOT = """
import os, sys, marshal, types
def _boot():
    src_fd, sock_fd, settings = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    chunks = []
    while True:
        b = os.read(src_fd, 1 << 20)
        if not b:
            break
        chunks.append(b)
    os.close(src_fd)
    sources = marshal.loads(b"".join(chunks))
    for name in ("bcoder_core", "bcoder_core.execution"):
        pkg = types.ModuleType(name)
        pkg.__path__ = []
        pkg.__package__ = name
        sys.modules[name] = pkg
    for name, code in sources:
        parent, _, short = name.rpartition(".")
        mod = types.ModuleType(name)
        mod.__package__ = parent
        mod.__file__ = code.co_filename
        sys.modules[name] = mod
        exec(code, mod.__dict__)
        setattr(sys.modules[parent], short, mod)
    sys.modules["bcoder_core.execution.zygote"].main(sock_fd, settings)
_boot()
"""
"""Run as ``python -S -I -c BOOT CODE_FD SOCKET_FD SETTINGS_JSON``: the modules' code objects (marshal;
the same interpreter) come from a memfd the worker wrote while it could still read the package (before
its root became the allow-listed view, which does not hold the checkout)."""

PRELOAD = (
    "bisect",
    "collections",
    "functools",
    "heapq",
    "itertools",
    "math",
    "operator",
    "re",
    "string",
    "typing",
)
"""Modules programs commonly import, loaded once here so that children get them for free. Few on
purpose: each shared library and each page of heap here is copied into every program's process. Not
``random`` (nor ``threading``): their at-fork hooks would run, and write, in every child."""

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
_RESET_SIGNALS = (
    signal.SIGCHLD,
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGALRM,
    signal.SIGUSR1,
)


def sources() -> bytes:
    """The code objects of :data:`MODULES`, as ``marshal`` data of (module name, code) pairs, loaded
    from this package (its cached bytecode where fresh) by the worker while the host's files are still
    in view."""
    from importlib.machinery import SourceFileLoader

    here = os.path.dirname(os.path.abspath(__file__))
    out = []
    for name in MODULES:
        path = os.path.join(here, name.rpartition(".")[2] + ".py")
        out.append((name, SourceFileLoader(name, path).get_code(name)))
    return marshal.dumps(out)


def _prctl_fn():
    """libc's prctl, only where it is needed (no PID namespace, or not root): ctypes adds shared
    libraries to the zygote, and so to every fork."""
    import ctypes

    fn = ctypes.CDLL(None, use_errno=True).prctl

    def prctl(option: int, arg: int) -> None:
        fn(ctypes.c_int(option), ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))

    return prctl


def vm_size_bytes() -> int:
    """This process's virtual memory size (the base of the programs' address-space limit)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 256 * 1024 * 1024


def enter(
    *, workdir: str, uid: int | None, limits: dict, fds: dict[int, int], env: dict[str, str], prctl=None
) -> None:
    """In a freshly forked child, before any untrusted code: become an isolated program process.

    A new session and process group; default signal dispositions; ``fds`` (target number -> received
    descriptor) put in place and every other descriptor closed (the zygote's socket included); the
    working directory; rlimits (address space, CPU seconds, file size, open files, processes, no core
    files); another user (as root); a scrubbed environment. ``no_new_privs`` is inherited from the
    worker. ``prctl`` (fall-backs only): no new privileges and a parent-death signal here too.
    """
    os.setsid()
    for sig in _RESET_SIGNALS:
        if signal.getsignal(sig) not in (signal.SIG_DFL, None):
            signal.signal(sig, signal.SIG_DFL)
    # Stage every descriptor above all the numbers involved, so that none clobbers another.
    high = max([2, *fds, *fds.values()]) + 1
    staged = {}
    for k, (target, src) in enumerate(fds.items()):
        os.dup2(src, high + k)
        staged[target] = high + k
    for target, dup in staged.items():
        os.dup2(dup, target)
    low = 0
    for k in sorted(staged):
        if k > low:
            os.closerange(low, k)
        low = k + 1
    os.closerange(low, 1 << 20)
    os.chdir(workdir)
    mem = limits.get("as_bytes")
    if mem:
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    cpu = limits.get("cpu_s")
    if cpu:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    for lim, key in (
        (resource.RLIMIT_FSIZE, "fsize_bytes"),
        (resource.RLIMIT_NOFILE, "nofile"),
        (resource.RLIMIT_NPROC, "nproc"),
    ):
        value = limits.get(key)
        if value:
            try:  # noqa: SIM105
                resource.setrlimit(lim, (value, value))
            except (ValueError, OSError):
                pass
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    if prctl is not None:
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # after the user change, which clears it
    if os.environ != env:  # the zygote runs with the programs' environment already
        os.environ.clear()
        os.environ.update(env)
    os.umask(0o077)


def _read_job(fd: int) -> dict:
    """The job the worker wrote in a sealed memfd (``marshal``: code objects compiled by the worker, which
    runs this same interpreter; ``pread``: the file offset is shared with the worker's)."""
    chunks, off = [], 0
    while True:
        b = os.pread(fd, 1 << 20, off)
        if not b:
            break
        chunks.append(b)
        off += len(b)
    return marshal.loads(b"".join(chunks))


def _run_child(req: dict, fds: list[int], settings: dict, prctl) -> None:
    """The forked child: never returns."""
    try:
        job = _read_job(fds[0])
        workdir = str(req["workdir"])
        env = settings["env"]
        limits = dict(settings["limits"])
        limits["cpu_s"] = int(req["cpu_s"])
        enter(
            workdir=workdir,
            uid=settings.get("uid"),
            limits=limits,
            fds=dict(zip((int(t) for t in req["targets"]), fds[1:], strict=True)),
            env=env,
            prctl=prctl,
        )
        child.start(job, int(req["chan_fd"]))
    except BaseException:
        pass
    finally:
        os._exit(70)


def _fds_of(ancdata) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            usable = len(data) - len(data) % 4
            fds += [int.from_bytes(data[i : i + 4], sys.byteorder, signed=True) for i in range(0, usable, 4)]
    return fds


def _site_builtins() -> None:
    """What ``site`` adds to builtins, which programs use as scripts do (``exit()``, ``quit()``): the
    zygote runs with ``-S``."""
    import _sitebuiltins
    import builtins

    builtins.exit = _sitebuiltins.Quitter("exit", "Ctrl-D (i.e. EOF)")
    builtins.quit = _sitebuiltins.Quitter("quit", "Ctrl-D (i.e. EOF)")
    builtins.help = _sitebuiltins._Helper()
    builtins.copyright = builtins.credits = builtins.license = _sitebuiltins._Printer("copyright", "")


def main(sock_fd: int, settings_json: str) -> None:
    settings = json.loads(settings_json)
    _site_builtins()
    for d in settings.get("site_dirs", []):
        if d not in sys.path:
            sys.path.append(d)
    for name in settings.get("preload", PRELOAD):
        try:  # noqa: SIM105
            __import__(name)
        except ImportError:
            pass
    prctl = _prctl_fn() if settings.get("prctl") else None
    if prctl is not None:
        prctl(PR_SET_DUMPABLE, 0)  # same user as the programs here: no ptrace, /proc files root's
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET, 0, sock_fd)
    limits = dict(settings["limits"])
    import gc

    gc.collect()
    gc.freeze()  # a collection in a child never walks (and copies) the zygote's objects
    limits["as_bytes"] = vm_size_bytes() + int(settings["budget_bytes"])
    settings["limits"] = limits
    sock.send(json.dumps({"ready": os.getpid(), "vm_size": vm_size_bytes()}).encode())
    report_pid = bool(settings.get("report_pid"))
    anc_size = _socket.CMSG_SPACE(64 * 4)
    while True:
        msg, ancdata, _flags, _addr = sock.recvmsg(1 << 16, anc_size)
        fds = _fds_of(ancdata)
        if not msg:
            return  # the worker is gone
        try:
            req = json.loads(msg)
            if len(fds) != len(req["targets"]) + 1:
                raise ValueError(f"{len(fds)} descriptors for {len(req['targets'])} targets")
            pid = os.fork()
        except Exception as exc:
            for fd in fds:
                os.close(fd)
            sock.send(json.dumps({"error": f"{type(exc).__name__}: {exc}"[:300]}).encode())
            continue
        if pid == 0:
            _run_child(req, fds, settings, prctl)
        # Nothing but the wait while the child lives (every page written here meanwhile would be
        # copied, under gVisor in 2 MiB units); the pid only where the worker needs it to kill the
        # program (no PID namespace: its process group).
        if report_pid:
            sock.send(b'{"pid": %d}' % pid)
        _, status = os.waitpid(pid, 0)
        for fd in fds:
            os.close(fd)
        sock.send(b'{"pid": %d, "status": %d}' % (pid, status))
