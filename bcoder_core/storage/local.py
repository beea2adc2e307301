"""The local file system as a storage backend (plain paths and ``file://`` URIs).

Writes are staged beside their destination and renamed into place, so a reader sees the old
artifact or the new one, never a mix; the file helpers here also serve the download cache.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bcoder_core.errors import BcoderError
from bcoder_core.storage.backend import clean_parts


def check_writable_dir(where: str, directory: Path) -> None:
    """Raise one line naming ``where`` unless files can be made in ``directory`` (or, where it does not
    exist yet, in the ancestor it would be made in).

    A real probe (make and remove a file), not ``os.access``: root passes every permission check
    but not a read-only mount, and a network file system may answer ``access`` wrongly.
    """
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise BcoderError(f"{where}: cannot write: not a directory ({existing})")
    try:
        fd, probe = tempfile.mkstemp(prefix=".bcoder-probe-", dir=existing)
    except OSError as exc:
        raise BcoderError(f"{where}: cannot write: {_reason(exc)} ({existing})") from None
    os.close(fd)
    os.unlink(probe)


def _reason(exc: OSError) -> str:
    return (exc.strerror or type(exc).__name__).lower()


@contextmanager
def writing(where: str) -> Iterator[None]:
    """Turn a file-system failure into one line naming ``where`` (and the path that failed)."""
    try:
        yield
    except OSError as exc:
        path = f" ({exc.filename})" if exc.filename else ""
        raise BcoderError(f"{where}: cannot write: {_reason(exc)}{path}") from None


@contextmanager
def staging_next_to(final: Path, *, where: str | None = None) -> Iterator[Path]:
    """A temporary directory beside ``final`` (same file system, so renames are atomic)."""
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    except OSError as exc:
        where = where or str(final)
        check_writable_dir(where, final.parent)  # the precise reason, when it is one of those
        raise BcoderError(f"{where}: cannot write: {_reason(exc)} ({exc.filename or final.parent})") from None
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def move_into_place(src: Path, final: Path) -> None:
    """Rename ``src`` to ``final``, replacing what is there (a directory is swapped out first)."""
    if final.is_dir() and not final.is_symlink():
        trash = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        final.rename(trash)
        src.rename(final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(src, final)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``path`` through a temporary sibling, fsynced, then renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


class LocalBackend:
    """Paths on this machine; a directory without a bcoder manifest is the user's own data."""

    user_data = True

    def join(self, uri: str, *parts: str) -> str:
        return os.path.join(uri, *clean_parts(parts))

    def local_path(self, uri: str) -> Path:
        text = os.fspath(uri)
        if text.startswith("file://"):
            text = text[len("file://") :]
        return Path(text).expanduser()

    def read_bytes(self, uri: str) -> bytes | None:
        try:
            return self.local_path(uri).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def write_bytes(self, uri: str, data: bytes, *, where: str | None = None) -> None:
        with writing(where or uri):
            atomic_write(self.local_path(uri), data)

    def list_names(self, uri: str) -> list[str]:
        root = self.local_path(uri)
        try:
            return sorted(p.name for p in root.iterdir() if p.is_file())
        except (FileNotFoundError, NotADirectoryError):
            return []

    def delete(self, uri: str, *, tree: bool = False, where: str | None = None) -> None:
        # Whatever stands at the path goes, file or directory: pruning must not depend on a suffix.
        path = self.local_path(uri)
        with writing(where or uri):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    def staging(self, uri: str) -> contextlib.AbstractContextManager[Path]:
        return staging_next_to(self.local_path(uri), where=uri)

    def check_writable(self, uri: str) -> None:
        path = self.local_path(uri)
        check_writable_dir(uri, path.parent if path.parent != path else path)

    def install(
        self, src: Path, uri: str, *, files: list[str], manifest_uri: str, manifest: bytes, keep_src: bool
    ) -> None:
        final = self.local_path(uri)
        manifest_path = self.local_path(manifest_uri)
        with writing(uri):
            if final.exists() and final.resolve() == src.resolve():
                atomic_write(manifest_path, manifest)  # an output written in place: only the manifest is new
                return
            if not keep_src:
                _swap_in(src, final, manifest_path, manifest)
                return
        with staging_next_to(final, where=uri) as staging, writing(uri):
            target = staging / final.name
            if src.is_file():
                shutil.copy2(src, target)
            else:
                target.mkdir()
                self.download([(str(src / rel), target / rel) for rel in files], where=uri)
            _swap_in(target, final, manifest_path, manifest)

    def download(self, items: list[tuple[str, Path]], *, where: str) -> None:
        for uri, dest in items:
            source = self.local_path(uri)
            if source.is_file():
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, dest)


def _swap_in(target: Path, final: Path, manifest_path: Path, manifest: bytes) -> None:
    """Rename a staged artifact to ``final``, its manifest counting last."""
    if manifest_path.parent == final:
        # A directory's manifest goes in with its files: the rename swaps both at once.
        atomic_write(target / manifest_path.name, manifest)
        move_into_place(target, final)
        return
    manifest_path.unlink(missing_ok=True)
    move_into_place(target, final)
    atomic_write(manifest_path, manifest)


BACKEND = LocalBackend()
