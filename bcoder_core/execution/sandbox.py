"""Isolation of untrusted programs (DESIGN §4).

Two layers on one machine:

* the **boundary** around the whole worker process: nothing (``process``), bubblewrap (``bwrap``:
  new user-visible namespaces for mounts, network, PIDs, IPC, UTS; a read-only view of the system
  directories only; private tmpfs for /tmp) or gVisor (``gvisor``: ``runsc --network=none do``, a
  user-space kernel between the worker and the host). :func:`worker_command` builds the command line.

* **per program**, inside the boundary, done by the worker itself:
  - once per worker (:func:`setup_worker`): a cgroup v2 with ``memory.max`` where one is delegated
    (:func:`join_memory_cgroup`); a new network namespace (only a loopback that is down), new IPC and
    UTS namespaces; a new PID namespace whose PID 1 is the worker (:func:`_enter_pid_namespace`); a
    new mount namespace whose root is an allow-listed, read-only view (:func:`build_view`: the
    interpreter, stdlib, its libraries, ``CHILD_PACKAGES`` of site-packages, a few devices, a fresh
    /proc with ``hidepid=2``, one private tmpfs /tmp sized within the program's memory budget); non-
    dumpable (no ptrace, no core, its /proc files are root's), a child subreaper;
  - for every program process, forked by the worker's zygote (:func:`~bcoder_core.execution.zygote.enter`):
    a new session and process group, a fresh temporary working directory, rlimits (address space
    relative to the zygote's own size, CPU seconds, processes, file size, open files, no core files),
    the programs' environment, no new privileges (inherited from the worker), and a different
    unprivileged user per worker slot when the worker runs as root (so that ``kill -9 -1`` or a fork
    bomb of one program cannot touch the worker, the zygote, another worker's programs, or any other
    process);
  - after every program process: with the worker PID 1 of its namespace, SIGKILL to every process of
    the namespace but the worker and the zygote (:func:`kill_namespace`); elsewhere to its process
    group, to every process of the slot's user or every orphan re-parented to the worker
    (:func:`kill_strays`); then all are reaped, and /tmp is a fresh tmpfs (:func:`reset_private_tmp`).

Everything that cannot be had here (no root, no namespaces inside a container that forbids them) is
skipped and recorded in the isolation report that the worker sends back (``fs_view`` says
``host (fall-back: …)``, ``pidns`` False, ``memory_cgroup`` why not); the executor logs it.

Residual risks, stated honestly:

* Without root, programs run as the worker's own user: they can signal the worker, and only the
  process group and orphan sweeps clean up after them; without namespaces they see the host's file
  system as that user does (the previous deny-list: private /tmp, /root and /home hidden).
* Under gVisor the view's binds cannot be remounted read-only (writes stay in the ``runsc do``
  overlay) and ``hidepid`` is ignored: a program sees PID 1 (the worker) and 2 (the zygote), may read
  their cmdline, environ (no secrets in either) and maps, and may open what their descriptors point to
  through /proc/<pid>/fd except sockets and the host's descriptors (gVisor's /proc checks less than
  Linux's): the worker holds only the running program's own pipes and its job (a sealed memfd).
* Assertions of shapes that :mod:`~bcoder_core.execution.checks` does not decide in the parent run in
  the program's own process; a determined program can forge those results on the private channel.
  Call-based, stdin and parent-decided assert tests are compared in the trusted parent, on plain data,
  against expected values the program never sees.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass

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
    """The C library. The process's own global symbols first (the interpreter links libc): no
    ``ctypes.util``, which would pull ``shutil``, ``subprocess`` and their shared libraries into the
    worker, and so into every fork of a program."""
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        if not all(hasattr(lib, f) for f in ("mount", "unshare", "prctl", "syscall")):
            from ctypes.util import find_library

            lib = ctypes.CDLL(find_library("c") or None, use_errno=True)
        _libc = lib
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


# ------------------------------------------------------------------------------------------ boundary


def python_paths() -> list[str]:
    """Directories the worker's Python needs (the installation and what is on ``sys.path``)."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    for p in sys.path:
        if p and os.path.isdir(p):
            paths.add(os.path.realpath(p))
    # The checkout (on sys.path as the package root, a tests dir under pytest) holds problem sets and
    # fixtures: only its bcoder_core package is ever bound (by the callers), never the rest of it.
    checkout = package_root().rstrip("/")
    return sorted(p for p in paths if p != checkout and not p.startswith(checkout + "/"))


def package_root() -> str:
    """The directory holding the ``bcoder_core`` package (put on the worker's PYTHONPATH)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))


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
    for p in [*python_paths(), os.path.join(package_root(), "bcoder_core")]:
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
    import shutil

    if boundary.binary and not shutil.which(boundary.binary):
        raise BcoderError(
            f"--sandbox {sandbox}: the {boundary.binary} ({boundary.package}) binary is not on PATH"
        )
    # The environment (worker_env) carries PYTHONPATH to this package and nothing else.
    # -S: no site (its .pth hooks import what programs never use); the worker puts site-packages on
    # sys.path itself. Every module with a shared library it loads makes each fork slower.
    py = [sys.executable, "-S", "-m", "bcoder_core.execution.worker", *worker_args]
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
    ancestors = [path]
    while os.path.dirname(ancestors[-1]) != ancestors[-1]:
        ancestors.append(os.path.dirname(ancestors[-1]))
    for anc in reversed(ancestors):
        try:
            st = os.stat(anc)
            if not st.st_mode & 0o001:
                os.chmod(anc, (st.st_mode & 0o7777) | 0o001)
                report.setdefault("traversable", []).append(str(anc))
        except OSError:
            report.setdefault("failed", []).append(f"chmod {anc}")


CLONE_NEWPID = 0x20000000
MS_RDONLY = 0x1
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
VIEW_ROOT = "/tmp"
"""Where the private root is assembled (a tmpfs over it, in the worker's own mount namespace)."""
CHILD_PACKAGES = ("numpy", "numpy.libs", "sortedcontainers")
"""Third-party packages programs may import (the only entries of site-packages in their view)."""
DEVICES = ("null", "zero", "full", "random", "urandom")
CGROUP_ROOT = "/sys/fs/cgroup"


def tmp_budget_mb(memory_mb: int) -> int:
    """The part of a program's memory budget that its private /tmp may hold (the rest is address space):
    files in a tmpfs are memory, so the two together stay within ``memory_mb``."""
    return max(8, memory_mb // 4)


def _site_dirs() -> list[str]:
    import site

    dirs = set(site.getsitepackages())
    dirs |= {p for p in sys.path if p.endswith(("site-packages", "dist-packages"))}
    return sorted({os.path.realpath(d) for d in dirs if os.path.isdir(d)})


def _mapped_files() -> list[str]:
    """Shared objects this process has loaded (the interpreter's libraries, numpy's when preloaded)."""
    found = set()
    with contextlib.suppress(OSError), open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].startswith("/") and ".so" in parts[5]:
                path = parts[5].strip()
                if os.path.isfile(path):
                    found.add(path)
    return sorted(found)


def view_paths() -> tuple[list[str], list[str]]:
    """(paths bound read-only into a program's view, site-packages dirs emptied to the allow-list).

    The interpreter, the standard library and lib-dynload, the shared libraries the interpreter loads
    and the directories they come from (a later import may load a sibling), the loader's cache. Never
    the checkout, the run directory, a data directory, /home, /root, /etc, /run: a program's view holds
    only what running Python needs.
    """
    import sysconfig

    paths = {os.path.realpath(sys.executable), sys.executable}
    for key in ("stdlib", "platstdlib"):
        p = sysconfig.get_paths().get(key)
        if p and os.path.isdir(p):
            paths.add(os.path.realpath(p))
    dynload = os.path.join(sysconfig.get_paths().get("platstdlib", ""), "lib-dynload")
    if os.path.isdir(dynload):
        paths.add(os.path.realpath(dynload))
    sites = _site_dirs()
    for lib in _mapped_files():
        site = next((d for d in sites if lib.startswith(d + "/")), None)
        if site is not None and lib[len(site) + 1 :].split("/")[0] not in CHILD_PACKAGES:
            continue  # a package the worker itself uses (yaml's C extension): not the programs' business
        paths.add(os.path.dirname(lib))
        paths.add(os.path.dirname(os.path.realpath(lib)))
    if os.path.isfile("/etc/ld.so.cache"):
        paths.add("/etc/ld.so.cache")
    # The ELF interpreter under the name executables ask for (a program may start Python again).
    paths.update(p for p in glob.glob("/lib*/ld-linux*.so*") if os.path.isfile(p))
    for d in sites:
        for name in CHILD_PACKAGES:
            if os.path.exists(os.path.join(d, name)):
                paths.add(os.path.join(d, name))
    # A site-packages dir that would come in whole (it lies inside the stdlib dir, or holds a library)
    # is emptied: only CHILD_PACKAGES go back in.
    masked = [d for d in sites if any(d == p or d.startswith(p.rstrip("/") + "/") for p in paths)]
    return sorted(paths), masked


def _in_root(root: str, path: str, *, is_dir: bool) -> str | None:
    """Create the mount point of host ``path`` under ``root``, reproducing the symlinks on the way (a
    library found through /lib -> usr/lib is found the same way inside); its path under ``root``."""
    parts = [p for p in path.split("/") if p]
    host = "/"
    for k, part in enumerate(parts):
        host = os.path.join(host, part)
        inside = root + host
        last = k == len(parts) - 1
        if os.path.islink(host):
            if not os.path.lexists(inside):
                os.symlink(os.readlink(host), inside)
            # Follow the link as written (not its realpath), so that links on its way are made too.
            target = os.path.normpath(os.path.join(os.path.dirname(host), os.readlink(host)))
            rest = "/".join(parts[k + 1 :])
            return _in_root(root, os.path.join(target, rest) if rest else target, is_dir=is_dir)
        if last and not is_dir:
            if not os.path.exists(inside):
                open(inside, "w").close()
        elif not os.path.isdir(inside):
            os.mkdir(inside, 0o755)
    return root + host if parts else root


def _bind_ro(src: str, dst: str) -> bool:
    """A read-only bind mount; False when it could not be had (gVisor refuses the read-only remount:
    there, writes go to the ``runsc do`` overlay, never to the host)."""
    if _mount(src, dst, None, MS_BIND, None):
        return False
    _mount(None, dst, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, None)
    return True


def _pivot(root: str) -> str:
    """Make ``root`` the root of this mount namespace; how (``pivot_root`` or ``chroot``)."""
    import platform

    nr = SYS_PIVOT_ROOT.get(platform.machine())
    old = os.path.join(root, ".old")
    os.mkdir(old, 0o700)
    if nr is not None and libc().syscall(ctypes.c_long(nr), root.encode(), old.encode()) == 0:
        os.chdir("/")
        _call("umount2", b"/.old", MNT_DETACH)
        with contextlib.suppress(OSError):
            os.rmdir("/.old")
        return "pivot_root"
    # gVisor has no pivot_root: chroot, which programs (unprivileged, no CAP_SYS_CHROOT) cannot undo.
    os.chroot(root)
    os.chdir("/")
    with contextlib.suppress(OSError):
        os.rmdir("/.old")
    return "chroot"


def build_view(tmp_mb: int, report: dict) -> bool:
    """Replace this mount namespace's root by an allow-listed, read-only view (DESIGN §4): the paths of
    :func:`view_paths`, a fresh /proc, a few devices, and one private tmpfs of ``tmp_mb`` for /tmp
    (also /var/tmp and /dev/shm). False, with the reason in ``report``, when it could not be built."""
    paths, masked = view_paths()
    root = VIEW_ROOT
    if _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=16m,mode=755"):
        report["fs_view_error"] = "tmpfs for the private root refused"
        return False
    try:
        # Mount points of the masks first: a bind below fills them, a mask would hide later binds.
        for p in sorted(paths, key=lambda x: x.count("/")):
            if not os.path.exists(p):
                continue
            dst = _in_root(root, p, is_dir=os.path.isdir(p))
            if dst is not None and not _bind_ro(os.path.realpath(p), dst):
                report.setdefault("fs_view_failed", []).append(p)
            # Paths go in by depth, so a mask lands before the CHILD_PACKAGES bound below it.
            real = os.path.realpath(p).rstrip("/")
            for d in masked:
                mask = root + d
                inside = d == real or d.startswith(real + "/")
                fresh = inside and os.path.isdir(mask) and not os.path.ismount(mask)
                if fresh and _mount("tmpfs", mask, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755"):
                    raise OSError(f"cannot mask {d}")
        os.makedirs(root + "/tmp", mode=0o755, exist_ok=True)
        if _mount("tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmp_mb}m,mode=1777"):
            raise OSError("tmpfs for /tmp refused")
        os.makedirs(root + "/var", mode=0o755, exist_ok=True)
        os.symlink("/tmp", root + "/var/tmp")
        os.makedirs(root + "/dev", mode=0o755, exist_ok=True)
        for name in DEVICES:
            if os.path.exists(f"/dev/{name}"):
                open(f"{root}/dev/{name}", "w").close()
                _mount(f"/dev/{name}", f"{root}/dev/{name}", None, MS_BIND, None)
        os.symlink("/tmp", root + "/dev/shm")
        for k, name in enumerate(("stdin", "stdout", "stderr")):
            os.symlink(f"/proc/self/fd/{k}", f"{root}/dev/{name}")
        os.symlink("/proc/self/fd", root + "/dev/fd")
        os.mkdir(root + "/proc", 0o555)
        # A fresh proc of this PID namespace; hidepid: a program sees only its own processes.
        proc = "private" if report.get("pidns") else "host pids"
        flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
        if _mount("proc", root + "/proc", "proc", flags, "hidepid=2") == 0:
            report["proc"] = proc + ", hidepid=2"
        elif _mount("proc", root + "/proc", "proc", flags, None) == 0:
            report["proc"] = proc
        else:
            report["proc"] = "none"
    except (OSError, RecursionError, ValueError) as exc:  # RecursionError: a symlink loop
        report["fs_view_error"] = f"{type(exc).__name__}: {exc}"[:200]
        _call("umount2", root.encode(), MNT_DETACH)
        return False
    report["fs_view"] = "allow-list (" + _pivot(root) + ")"
    # Nothing may be added to the root itself afterwards (also by the worker, by mistake).
    _mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, "size=16m,mode=755")
    report["private_tmp"] = ["/tmp"]
    report["tmp_mb"] = tmp_mb
    return True


# ------------------------------------------------------------------------------ memory cgroup (v2)


def join_memory_cgroup(limit_bytes: int, root: str = CGROUP_ROOT) -> str:
    """Move this worker into a cgroup v2 of its own with ``memory.max`` = ``limit_bytes`` (programs,
    their processes and their tmpfs files are charged to it); the cgroup's path, or why not.

    Applies where this process's cgroup (``/proc/self/cgroup``, ``0::``) is on a cgroup v2 hierarchy
    that is writable and has the memory controller enabled for its children (a delegated subtree:
    systemd ``Delegate=yes``, a writable cgroup namespace). Elsewhere (cgroup v1, no memory controller,
    a read-only /sys/fs/cgroup) it does nothing and says so.
    """
    if not os.path.exists(os.path.join(root, "cgroup.controllers")):
        return "unavailable: no cgroup v2 hierarchy at " + root
    own = None
    with contextlib.suppress(OSError), open("/proc/self/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                own = line[3:].strip()
    if own is None:
        return "unavailable: this process is in no cgroup v2"
    base = os.path.join(root, own.lstrip("/"))
    try:
        with open(os.path.join(base, "cgroup.subtree_control")) as f:
            enabled = f.read().split()
        if "memory" not in enabled:
            with open(os.path.join(base, "cgroup.subtree_control"), "w") as f:
                f.write("+memory")
        path = os.path.join(base, f"bcoder-worker-{os.getpid()}")
        os.mkdir(path)
        with open(os.path.join(path, "memory.max"), "w") as f:
            f.write(str(limit_bytes))
        with contextlib.suppress(OSError), open(os.path.join(path, "memory.swap.max"), "w") as f:
            f.write("0")
        with open(os.path.join(path, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    except OSError as exc:
        return f"unavailable: {type(exc).__name__}: {exc}"[:200]
    return path


def leave_memory_cgroup(path: str) -> None:
    """Back to the parent cgroup, and remove the worker's (once its programs are gone)."""
    with contextlib.suppress(OSError):
        with open(os.path.join(os.path.dirname(path), "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
        os.rmdir(path)


# ------------------------------------------------------------------------------------ PID namespace


def _enter_pid_namespace() -> bool:
    """Make the rest of the worker PID 1 of a new PID namespace. This process stays outside as a shim
    that waits for it and exits with its status; when the worker dies, the kernel kills every program
    left in its namespace. False when not permitted (no root, no user namespace)."""
    if _call("unshare", CLONE_NEWPID):
        return False
    pid = os.fork()
    if pid == 0:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        return True
    # The shim: it holds no descriptor of the protocol (the executor sees the worker's end only).
    os.closerange(0, 1 << 20)
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: os.kill(pid, signal.SIGKILL))
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            status = 0
            break
    cgroup = os.environ.get("_BCODER_CGROUP")
    if cgroup:
        leave_memory_cgroup(cgroup)
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)


def setup_worker(*, tmp_size_mb: int = 256, memory_limit_bytes: int = 0, fs_overlay: bool = False) -> dict:
    """Isolate this worker once (namespaces, the allow-listed file-system view, private /tmp, a PID
    namespace, a memory cgroup). Returns what was achieved; what was not is in it too, with the reason."""
    report: dict = {"root": os.geteuid() == 0}
    if memory_limit_bytes:
        report["memory_cgroup"] = join_memory_cgroup(memory_limit_bytes)
        if report["memory_cgroup"].startswith("/"):
            os.environ["_BCODER_CGROUP"] = report["memory_cgroup"]
    report["netns"] = _call("unshare", CLONE_NEWNET) == 0
    report["ipc_uts_ns"] = _call("unshare", CLONE_NEWIPC | CLONE_NEWUTS) == 0
    report["pidns"] = _enter_pid_namespace()
    os.environ.pop("_BCODER_CGROUP", None)
    # Orphans of a program re-parent to the worker, never above it (PID 1 of its namespace gets them
    # anyway): every process a program starts stays in the worker's subtree, where kill_strays finds it.
    subreaper = prctl(PR_SET_CHILD_SUBREAPER, 1) == 0
    report["mountns"] = _call("unshare", CLONE_NEWNS) == 0
    view = False
    if report["mountns"]:
        _mount(None, "/", None, MS_REC | MS_PRIVATE, None)  # gVisor answers EINVAL: it has no propagation
        view = build_view(tmp_size_mb, report)
        if not view:
            _fallback_view(tmp_size_mb, fs_overlay, report)
    if not view:
        why = report.get("fs_view_error") or "no mount namespace (not permitted here)"
        report["fs_view"] = f"host (fall-back: {why})"
        if "proc" not in report:
            report["proc"] = "host"
    report["subreaper"] = subreaper and any(
        os.path.exists(f"/proc/self/task/{t}/children") for t in _listdir("/proc/self/task")
    )
    # No ptrace of the worker, its /proc files (environ, mem, fds) become root's.
    report["nondumpable"] = prctl(PR_SET_DUMPABLE, 0) == 0
    return report


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _fallback_view(tmp_mb: int, fs_overlay: bool, report: dict) -> None:
    """Today's deny-list, where the allow-listed view cannot be built: one private tmpfs (of the
    program's /tmp budget) over every world-writable directory, /root and /home hidden."""
    tmpfs = []
    if _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmp_mb}m,mode=1777") == 0:
        tmpfs.append("/tmp")
        for d in WORLD_WRITABLE_DIRS[1:]:
            if os.path.isdir(d) and not os.path.islink(d) and _mount("/tmp", d, None, MS_BIND, None) == 0:
                tmpfs.append(d)
    report["private_tmp"] = tmpfs[:1]
    report["tmp_mb"] = tmp_mb
    needed = [*python_paths(), os.path.join(package_root(), "bcoder_core")]
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
        remove_tree(stage_root)


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


def make_private_dir(base: str, prefix: str, mode: int = 0o700) -> str:
    """A new directory of a random name under ``base`` (``tempfile.mkdtemp`` without ``tempfile``, which
    would bring ``shutil`` and its compression libraries into the worker)."""
    for _ in range(100):
        path = os.path.join(base, prefix + os.urandom(6).hex())
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        os.chmod(path, mode)
        return path
    raise FileExistsError(f"no free directory name under {base}")


def make_workdir(base: str, uid: int | None) -> str:
    path = make_private_dir(base, "prog-")
    if uid is not None:
        os.chown(path, uid, uid)
    return path


def remove_tree(path: str) -> None:
    """Remove ``path`` and everything below it; never follows a symbolic link (what a program left there
    is removed as it is, by descriptor), never raises, and needs neither recursion nor a descriptor per
    level: the children of each directory are moved up into ``path`` before it goes, so that a tree of
    any depth comes apart in about as many steps as it has entries."""
    import stat

    try:
        st = os.lstat(path)
    except OSError:
        return
    if not stat.S_ISDIR(st.st_mode):
        with contextlib.suppress(OSError):
            os.unlink(path)
        return
    try:
        top = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    serial = 0
    try:
        while True:
            try:
                with os.scandir(top) as it:
                    names = [e.name for e in it]
            except OSError:
                break
            progress = False
            for name in names:
                try:
                    os.unlink(name, dir_fd=top)
                    progress = True
                    continue
                except OSError as exc:
                    if exc.errno not in (errno.EISDIR, errno.EPERM):
                        continue
                flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
                try:
                    sub = os.open(name, flags, dir_fd=top)
                except OSError:
                    continue
                try:
                    with contextlib.suppress(OSError):
                        os.fchmod(sub, 0o700)  # a program may have left it unreadable
                    with os.scandir(sub) as it:
                        inner = [e.name for e in it]
                    for entry in inner:
                        serial += 1
                        with contextlib.suppress(OSError):
                            os.rename(entry, f".rm{serial}", src_dir_fd=sub, dst_dir_fd=top)
                            progress = True
                except OSError:
                    pass
                finally:
                    os.close(sub)
                with contextlib.suppress(OSError):
                    os.rmdir(name, dir_fd=top)
                    progress = True
            if not progress:
                break
    finally:
        os.close(top)
    with contextlib.suppress(OSError):
        os.rmdir(path)


def remove_workdir(path: str) -> None:
    remove_tree(path)


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


def reap(keep: frozenset[int] = frozenset()) -> set[int]:
    """Collect every exited child (the program's and re-parented orphans); the ``keep`` pids among them."""
    gone: set[int] = set()
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return gone
        if pid == 0:
            return gone
        if pid in keep:
            gone.add(pid)


def kill_namespace(keep: frozenset[int] = frozenset(), *, give_up_s: float = 10.0) -> set[int]:
    """As PID 1 of a PID namespace of its own: SIGKILL every process of the namespace but this one and
    ``keep`` (the zygote), whatever its user, session or parent, and reap those that come to this process
    (orphans re-parent to a namespace's init), until none is left. Returns the ``keep`` pids found dead.

    Listed from this namespace's /proc, repeatedly: a process forked while the others were being killed
    is found on the next round (a process with SIGKILL pending forks no more).
    """
    import time

    me = os.getpid()
    gone: set[int] = set()
    deadline = time.monotonic() + give_up_s
    pause = 0.0002
    while True:
        victims = [int(p) for p in _listdir("/proc") if p.isdigit() and int(p) != me and int(p) not in keep]
        if not victims:
            return gone
        for p in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, signal.SIGKILL)
        gone |= reap(keep)
        if time.monotonic() > deadline:  # pragma: no cover - a process SIGKILL does not end
            return gone
        # What is left is dying, or a zombie a parent of its own has yet to reap.
        time.sleep(pause)
        pause = min(pause * 2, 0.01)
        gone |= reap(keep)


def reset_private_tmp(tmp_mb: int) -> bool:
    """A fresh tmpfs on /tmp (in the worker's own mount namespace, the allow-listed view): whatever a
    program left there (files, a tree too deep to walk, a full file system) is gone at once, for good.
    False when it could not be had (the caller then removes files one by one)."""
    if _call("umount2", b"/tmp", MNT_DETACH):
        return False
    if _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={tmp_mb}m,mode=1777"):
        raise OSError("a fresh tmpfs for /tmp was refused after the old one was detached")
    return True


def kill_strays(
    pgid: int, uid: int | None, *, subreaper: bool = True, keep: frozenset[int] = frozenset()
) -> set[int]:
    """Kill everything a program may have left behind, then reap it (where the worker is not PID 1 of a
    namespace of its own; there :func:`kill_namespace` does it). Returns the ``keep`` pids found dead.

    The program's process group first; then, with the worker a child subreaper, every process left in
    the worker's subtree but ``keep`` (a daemon that left the group with setsid() is re-parented to the
    worker when its parent dies), repeatedly until none is left. Without a subreaper, every process of
    the slot's user is killed instead (a helper that becomes that user and signals -1).
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
    return reap(keep)
