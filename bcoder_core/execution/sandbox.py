"""Isolation of untrusted programs (DESIGN §4).

Two layers on one machine:

* the **boundary** around the whole worker process: nothing (``process``), bubblewrap (``bwrap``:
  new user-visible namespaces for mounts, network, PIDs, IPC, UTS; a read-only view of the system
  directories only; private tmpfs for /tmp) or gVisor (``gvisor``: ``runsc --network=none do``, a
  user-space kernel between the worker and the host). :func:`worker_command` builds the command line.

* **per program**, inside the boundary, done by the worker itself:
  - once per worker (:func:`setup_worker`): a new network namespace (only a loopback that is down),
    a new mount namespace with private tmpfs over every world-writable directory (/tmp, /var/tmp,
    /dev/shm, /run/lock) and over directories that hold secrets (/root, /home) with only the Python
    installation bound back in, new IPC and UTS namespaces, non-dumpable (no ptrace, no core, its
    /proc files are root's), a child subreaper (orphans of a program come back to the worker);
  - for every program process (:func:`enter_child`): a new session and process group, a fresh
    temporary working directory, rlimits (address space relative to the worker's own size, CPU
    seconds, processes, file size, open files, no core files), a scrubbed environment, no new
    privileges, a parent-death signal, and a different unprivileged user per worker slot when the
    worker runs as root (so that ``kill -9 -1`` or a fork bomb of one program cannot touch the worker,
    another worker's programs, or any other process);
  - after every program process (:func:`kill_strays`): SIGKILL to its process group, to every process
    of the slot's user (which catches double-forked daemons that left the group), and to every
    orphan re-parented to the worker; then all are reaped.

Everything that cannot be had here (no root, no namespaces inside a container that forbids them) is
skipped and recorded in the isolation report that the worker sends back; the executor logs it.

Residual risks, stated honestly:

* Without root, programs run as the worker's own user: they can signal the worker, and only the
  process group and orphan sweeps clean up after them. Use ``bwrap`` or ``gvisor`` (or run as root
  inside the container) for hostile code.
* In ``process`` mode the program sees the host's file system read-only as its user sees it: files
  readable by everyone (for example a problem file with hidden tests) can be read. ``bwrap`` shows
  only the system directories and the Python installation.
* For assert-based problems the assertions necessarily run in the program's own process; a
  determined program can forge the harness's messages on the private channel or neutralise ``assert``
  (the same is true of every assert-based harness, HumanEval's included). Call-based and stdin problems
  are compared in the trusted parent, on plain data, against expected values the program never sees.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import resource
import shutil
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 0x2
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38

WORLD_WRITABLE_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/var/lock")
SECRET_DIRS = ("/root", "/home")
SAFE_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "HOME": "/tmp",
    "PYTHONHASHSEED": "0",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONIOENCODING": "utf-8",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}

_libc = None


def libc():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    return _libc


def _call(name: str, *args) -> int:
    """Call a libc function; 0 on success, else the errno."""
    fn = getattr(libc(), name)
    if fn(*args) != 0:
        return ctypes.get_errno() or errno.EPERM
    return 0


def prctl(option: int, arg: int) -> int:
    return _call(
        "prctl",
        ctypes.c_int(option),
        ctypes.c_ulong(arg),
        ctypes.c_ulong(0),
        ctypes.c_ulong(0),
        ctypes.c_ulong(0),
    )


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> int:
    def enc(s):
        return s.encode() if s is not None else None

    return _call("mount", enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data))


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


# ------------------------------------------------------------------------------------------ boundary


def python_paths() -> list[str]:
    """Directories the worker's Python needs (the installation and what is on ``sys.path``)."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    for p in sys.path:
        if p and os.path.isdir(p):
            paths.add(os.path.realpath(p))
    return sorted(paths)


def package_root() -> str:
    """The directory holding the ``bcoder_core`` package (put on the worker's PYTHONPATH)."""
    return str(Path(__file__).resolve().parents[2])


def worker_env() -> dict[str, str]:
    """The worker's environment: nothing of the caller's (no credentials), only what Python needs."""
    env = dict(SAFE_ENV)
    env["PYTHONPATH"] = package_root()
    return env


def bwrap_args() -> list[str]:
    """bubblewrap arguments: only system directories and the Python installation, read-only."""
    if os.geteuid() == 0:
        # As root, ``--unshare-all`` would add a user namespace that maps uid 0 alone, and the worker
        # could no longer run programs as another user. Every other namespace is unshared; the worker
        # keeps the capabilities it needs to switch users (bwrap drops them all by default).
        args = [
            "bwrap",
            "--unshare-ipc",
            "--unshare-pid",
            "--unshare-net",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--cap-add",
            "ALL",
        ]
    else:
        args = ["bwrap", "--unshare-all"]
    args += ["--die-with-parent", "--new-session"]
    binds = []
    for d in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc"):
        if os.path.exists(d):
            binds.append(d)
    for p in [*python_paths(), str(Path(package_root()) / "bcoder_core")]:
        if not any(p == b or p.startswith(b.rstrip("/") + "/") for b in binds):
            binds.append(p)
    # The private /tmp and /var/tmp come first: bwrap applies mounts in order, so a package or Python
    # installed under /tmp (a CI checkout, say) is bound back on top of the empty tmpfs, not hidden by it.
    args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/var/tmp"]
    for b in binds:
        if os.path.islink(b):
            args += ["--symlink", os.readlink(b), b]
        else:
            args += ["--ro-bind", b, b]
    args += ["--chdir", "/tmp"]
    return args


def gvisor_args() -> list[str]:
    """``runsc do`` with no network. The default platform (ptrace/systrap): KVM hangs on this kind of host."""
    args = ["runsc", "--network=none"]
    if os.geteuid() != 0:
        args += ["--rootless"]
    extra = os.environ.get("BCODER_RUNSC_FLAGS", "").split()
    return [*args, *extra, "do"]


@dataclass(frozen=True)
class Boundary:
    """A kind of boundary around the workers, registered under ``name`` in :data:`SANDBOXES`."""

    name: str
    prefix: Callable[[], list[str]] | None
    """The command line the worker's command is appended to; None: the worker runs directly."""
    binary: str | None = None
    """An executable that must be on PATH, with the package it comes from."""
    package: str = ""
    fs_overlay: bool = False
    """Nothing the worker writes reaches the host's files (the worker may then open directories up)."""


SANDBOXES: dict[str, Boundary] = {}
"""Every boundary by name: ``ExecutionConfig.sandbox`` and ``--sandbox`` accept exactly these."""


def register_sandbox(boundary: Boundary) -> Boundary:
    SANDBOXES[boundary.name] = boundary
    return boundary


register_sandbox(Boundary("process", None))
register_sandbox(Boundary("bwrap", bwrap_args, binary="bwrap", package="bubblewrap"))
# runsc do puts a copy-on-write overlay over the host's files: nothing written reaches the host.
register_sandbox(Boundary("gvisor", gvisor_args, binary="runsc", package="gVisor", fs_overlay=True))


def worker_command(sandbox: str, worker_args: list[str]) -> list[str]:
    """The command line that starts one worker inside the chosen boundary."""
    from bcoder_core.errors import BcoderError

    boundary = SANDBOXES.get(sandbox)
    if boundary is None:
        raise BcoderError(f"unknown sandbox {sandbox!r} (choose one of {', '.join(SANDBOXES)})")
    if boundary.binary and not shutil.which(boundary.binary):
        raise BcoderError(
            f"--sandbox {sandbox}: the {boundary.binary} ({boundary.package}) binary is not on PATH"
        )
    # The environment (worker_env) carries PYTHONPATH to this package and nothing else.
    py = [sys.executable, "-m", "bcoder_core.execution.worker", *worker_args]
    return [*boundary.prefix(), *py] if boundary.prefix else py


# ------------------------------------------------------------------------------------ worker set-up


def _bind_back(hidden: str, needed: list[str], stage_root: str, report: dict) -> None:
    """Mount a tmpfs over ``hidden`` and bind the ``needed`` paths below it back in place."""
    stages = []
    for k, path in enumerate(needed):
        stage = os.path.join(stage_root, str(k))
        os.makedirs(stage, exist_ok=True)
        if _mount(path, stage, None, MS_BIND | MS_REC, None):
            report.setdefault("failed", []).append(f"bind {path}")
            return
        stages.append((stage, path))
    if _mount("tmpfs", hidden, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755"):
        report.setdefault("failed", []).append(f"tmpfs {hidden}")
        for stage, _ in stages:
            _call("umount2", stage.encode(), MNT_DETACH)
        return
    for stage, path in stages:
        os.makedirs(path, exist_ok=True)
        _mount(stage, path, None, MS_BIND | MS_REC, None)
        _call("umount2", stage.encode(), MNT_DETACH)
    report.setdefault("hidden", []).append(hidden)


def _open_traverse(path: str, report: dict) -> None:
    """Add o+x to the ancestors of ``path`` that lack it. Only where writes never reach the host (the
    copy-on-write overlay of ``runsc do``), as the fall-back when bind mounts are not available."""
    p = Path(path)
    for anc in [*reversed(p.parents), p]:
        try:
            st = os.stat(anc)
            if not st.st_mode & 0o001:
                os.chmod(anc, (st.st_mode & 0o7777) | 0o001)
                report.setdefault("traversable", []).append(str(anc))
        except OSError:
            report.setdefault("failed", []).append(f"chmod {anc}")


def setup_worker(*, tmp_size_mb: int = 512, fs_overlay: bool = False) -> dict:
    """Isolate this worker once (namespaces, private /tmp, hidden secrets). Returns what was achieved."""
    report: dict = {"root": os.geteuid() == 0}
    # Orphans of a program re-parent to the worker, never above it: every process a program starts stays
    # in the worker's subtree, where kill_strays finds it.
    report["subreaper"] = prctl(PR_SET_CHILD_SUBREAPER, 1) == 0 and os.path.exists(
        f"/proc/self/task/{os.getpid()}/children"
    )
    report["netns"] = _call("unshare", CLONE_NEWNET) == 0
    report["ipc_uts_ns"] = _call("unshare", CLONE_NEWIPC | CLONE_NEWUTS) == 0
    report["mountns"] = _call("unshare", CLONE_NEWNS) == 0
    if report["mountns"]:
        _mount(None, "/", None, MS_REC | MS_PRIVATE, None)  # gVisor answers EINVAL: it has no propagation
        tmpfs = []
        for d in WORLD_WRITABLE_DIRS:
            if not os.path.isdir(d) or os.path.islink(d):
                continue
            if _mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmp_size_mb}m,mode=1777") == 0:
                tmpfs.append(d)
        report["private_tmp"] = tmpfs
        needed = [*python_paths(), str(Path(package_root()) / "bcoder_core")]
        stage_root = "/tmp/.bcoder-stage"
        if "/tmp" in tmpfs:
            for hidden in SECRET_DIRS:
                if not os.path.isdir(hidden) or os.path.islink(hidden):
                    continue
                under = [p for p in needed if p == hidden or p.startswith(hidden.rstrip("/") + "/")]
                if hidden in under:
                    continue  # Python lives right there: cannot hide it
                _bind_back(hidden, under, os.path.join(stage_root, hidden.strip("/")), report)
                if hidden not in report.get("hidden", []) and fs_overlay:
                    for p in under:
                        _open_traverse(p, report)
            with contextlib.suppress(OSError):
                shutil.rmtree(stage_root)
    # No ptrace of the worker, its /proc files (environ, mem, fds) become root's.
    report["nondumpable"] = prctl(PR_SET_DUMPABLE, 0) == 0
    return report


def can_switch_user(uid: int) -> bool:
    """Root, and ``uid`` exists in this user namespace."""
    if os.geteuid() != 0:
        return False
    try:
        with open("/proc/self/uid_map") as f:
            for line in f:
                inside, _outside, count = (int(x) for x in line.split())
                if inside <= uid < inside + count:
                    return True
    except (OSError, ValueError):
        return True
    return False


# ---------------------------------------------------------------------------------- per program


def make_workdir(base: str, uid: int | None) -> str:
    import tempfile

    path = tempfile.mkdtemp(prefix="prog-", dir=base)
    if uid is not None:
        os.chown(path, uid, uid)
    os.chmod(path, 0o700)
    return path


def remove_workdir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def enter_child(
    *, workdir: str, uid: int | None, limits: dict, fds: dict[int, int], env: dict[str, str]
) -> None:
    """In a freshly forked child, before any untrusted code: become an isolated program process.

    ``fds`` maps target fd numbers to the fds to place there (stdin/stdout/stderr/private channel);
    every other descriptor is closed.
    """
    os.setsid()
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_DFL)
    with contextlib.suppress(ValueError, OSError):
        signal.set_wakeup_fd(-1)
    # Put the wanted descriptors in place without clobbering one another, then close the rest.
    import fcntl

    tmp = {target: fcntl.fcntl(src, fcntl.F_DUPFD, 1000) for target, src in fds.items()}
    for target, dup in tmp.items():
        os.dup2(dup, target, inheritable=True)
    keep = sorted(tmp)
    low = 0
    for k in keep:
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
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(lim, (value, value))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # after the user change, which clears it
    os.environ.clear()
    os.environ.update(env)
    os.umask(0o077)


def _children_of_self() -> list[int]:
    pids: list[int] = []
    try:
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/children") as f:
                    pids += [int(x) for x in f.read().split()]
            except OSError:
                continue
    except OSError:
        pass
    return pids


def reap() -> None:
    """Collect every exited child (the program's and re-parented orphans)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def kill_strays(
    pgid: int, uid: int | None, *, subreaper: bool = True, keep: frozenset[int] = frozenset()
) -> None:
    """Kill everything a program may have left behind, then reap it.

    The program's process group first; then, with the worker a child subreaper, every process left in
    the worker's subtree (a daemon that left the group with setsid() is re-parented to the worker when
    its parent dies), repeatedly until none is left. Without a subreaper, every process of the slot's
    user is killed instead (a helper that becomes that user and signals -1).
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    if uid is not None and not subreaper:
        # Every process of the slot's user: a helper that becomes that user and signals -1.
        pid = os.fork()
        if pid == 0:
            try:
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
                os.kill(-1, signal.SIGKILL)
            finally:
                os._exit(0)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    for _ in range(50):
        strays = [p for p in _children_of_self() if p not in keep]
        if not strays:
            break
        for p in strays:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, signal.SIGKILL)
        for p in strays:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(p, 0)
    reap()
