"""Scratch directories: one root on the machine, one directory per process, swept once its process is gone.

Layout under the root (``$BCODER_SCRATCH``, default ``<tempdir>/bcoder-scratch``)::

    <pid>-<random>/             a process's scratch (one sub-directory per scratch_dir() call)
    <pid>-<random>.lock         flock()ed by that process for as long as it lives

The kernel drops a process's locks however it ends (SIGKILL, OOM kill included), so a lock that can be
taken marks scratch whose owner is gone. The first scratch_dir() of every process sweeps such scratch
away: a restarted stage removes what its killed predecessor left. A lock, not a pid check, because pids
are reused (a restarted container's process often has its predecessor's pid) and two containers that
share one temp volume have separate pid namespaces.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bcoder_core.errors import BcoderError

SCRATCH_ENV = "BCODER_SCRATCH"
_LOCK = ".lock"

# (pid, directory, lock fd) of this process's scratch; a forked child makes its own.
_mine: tuple[int, Path, int] | None = None


def scratch_root() -> Path:
    """Where every process's scratch lives: ``$BCODER_SCRATCH``, else ``<tempdir>/bcoder-scratch``."""
    env = os.environ.get(SCRATCH_ENV)
    return Path(env).expanduser() if env else Path(tempfile.gettempdir()) / "bcoder-scratch"


@contextmanager
def scratch_dir(prefix: str = "tmp") -> Iterator[Path]:
    """A fresh directory under this process's scratch, removed on exit, on error too.

    What a killed process could not remove is removed by the next process's first call.
    """
    try:
        path = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=_process_dir()))
    except OSError as exc:
        raise BcoderError(
            f"{scratch_root()}: cannot make scratch space ({exc.strerror or exc}); set ${SCRATCH_ENV}"
        ) from None
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def sweep_scratch() -> list[Path]:
    """Remove the scratch of every process that is gone; returns what was removed."""
    root = scratch_root()
    try:
        locks = sorted(p for p in root.iterdir() if p.name.endswith(_LOCK))
    except OSError:
        return []
    own = _mine[1] if _mine is not None and _mine[0] == os.getpid() else None
    removed = []
    for lock in locks:
        directory = lock.with_name(lock.name[: -len(_LOCK)])
        if directory == own:
            continue
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
        except OSError:  # gone meanwhile, or another user's
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # its process is alive
            os.close(fd)
            continue
        try:
            if _same_file(fd, lock):  # not a lock another sweeper already removed and its owner remade
                shutil.rmtree(directory, ignore_errors=True)
                lock.unlink(missing_ok=True)
                removed.append(directory)
        finally:
            os.close(fd)
    return removed


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), path.stat())
    except OSError:
        return False


def _process_dir() -> Path:
    """This process's scratch directory, made (after a sweep) on first use."""
    global _mine
    if _mine is not None and _mine[0] == os.getpid():
        return _mine[1]
    root = scratch_root()
    if not root.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        if SCRATCH_ENV not in os.environ:
            # The default root is shared by every user of the machine, like the temp directory.
            with contextlib.suppress(OSError):
                root.chmod(0o1777)
    sweep_scratch()
    while True:
        name = f"{os.getpid()}-{secrets.token_hex(4)}"
        lock = root / (name + _LOCK)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        # A sweeper may have taken the fresh lock before we did and removed it: then start again.
        if _same_file(fd, lock):
            break
        os.close(fd)
    directory = root / name
    directory.mkdir(mode=0o700)
    _mine = (os.getpid(), directory, fd)
    atexit.register(_remove_mine, os.getpid())
    return directory


def _remove_mine(pid: int) -> None:
    global _mine
    if _mine is None or _mine[0] != pid or os.getpid() != pid:
        return
    _, directory, fd = _mine
    _mine = None
    shutil.rmtree(directory, ignore_errors=True)
    Path(str(directory) + _LOCK).unlink(missing_ok=True)
    os.close(fd)
