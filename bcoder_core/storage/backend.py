"""The protocol every storage backend implements, and the registry that picks one by URI scheme.

The manifest logic (``bcoder_core.storage``) is the same for every backend; a backend only moves
bytes. Adding one (``gs://``, say) is one module of this package with a ``BACKEND`` object and one
line in ``_MODULES``; :func:`register` adds one at run time (tests, plugins).
"""

from __future__ import annotations

import importlib
import os
import re
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

from bcoder_core.errors import BcoderError


class Backend(Protocol):
    """Where the bytes of artifacts live: files and objects named by URI, nothing about manifests.

    Errors a user can cause (credentials, a missing bucket, an unreachable endpoint) are one-line
    :class:`BcoderError` naming ``where`` when given, else the URI of the call.
    """

    #: True where a location without a bcoder manifest may be the user's own data (a local
    #: directory): it is read as is, a foreign ``manifest.json`` in it is ignored and no set of
    #: shards is assembled. False for object stores, where only a manifest makes an artifact.
    user_data: bool

    def join(self, uri: str, *parts: str) -> str:
        """``uri`` with ``parts`` appended, one separator between each."""
        ...

    def local_path(self, uri: str) -> Path | None:
        """Where ``uri`` lies on this machine's file system, or None when it must be downloaded."""
        ...

    def read_bytes(self, uri: str) -> bytes | None:
        """The bytes of the file/object ``uri``, or None if there is none."""
        ...

    def write_bytes(self, uri: str, data: bytes, *, where: str | None = None) -> None:
        """Write a small file/object in one atomic step (a reader sees all of it or the old one)."""
        ...

    def list_names(self, uri: str) -> list[str]:
        """The names of the files/objects directly under the prefix ``uri``."""
        ...

    def delete(self, uri: str, *, tree: bool = False, where: str | None = None) -> None:
        """Remove the file/object ``uri`` (with ``tree``, everything under ``uri/``); none is fine."""
        ...

    def staging(self, uri: str) -> AbstractContextManager[Path]:
        """A scratch directory to build the output for ``uri`` in, removed on exit.

        Local: beside the destination, so that :meth:`install` is a rename.
        """
        ...

    def check_writable(self, uri: str) -> None:
        """Raise a one-line error unless an output can be written at ``uri`` now, cheaply.

        Local: a writable directory where it goes (a real probe). Object store: credentials,
        bucket and write permission (a GET, PUT and DELETE of a probe key).
        """
        ...

    def install(
        self, src: Path, uri: str, *, files: list[str], manifest_uri: str, manifest: bytes, keep_src: bool
    ) -> None:
        """Make ``src`` (a file, or a directory holding ``files``) the artifact at ``uri``.

        An old manifest at ``manifest_uri`` stops counting before any file changes and the new
        ``manifest`` counts only once every file is in place, so a reader never pairs a manifest
        with files it does not describe. ``keep_src`` False lets the backend move ``src`` away.
        """
        ...

    def download(self, items: list[tuple[str, Path]], *, where: str) -> None:
        """Copy each (uri, local path) pair here; a missing source is left for verification to name."""
        ...


def clean_parts(parts: tuple[str, ...]) -> list[str]:
    """The non-empty ``parts`` of a :meth:`Backend.join`, without their slashes."""
    return [p.strip("/") for p in parts if p and p.strip("/")]


_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")

# Scheme -> module of this package holding ``BACKEND``, imported on first use so that a run on
# local paths never imports boto3.
_MODULES: dict[str, str] = {"": "local", "file": "local", "s3": "s3"}
_backends: dict[str, Backend] = {}


def scheme_of(uri: str) -> str:
    """``"s3"`` for ``s3://b/k``, ``"file"`` for ``file:///x``, ``""`` for a plain path."""
    m = _SCHEME.match(uri)
    return m["scheme"] if m else ""


def register(scheme: str, backend: Backend) -> None:
    """Serve URIs ``<scheme>://...`` with ``backend`` (replacing the one there was)."""
    _backends[scheme] = backend


def backend_for(uri: str | os.PathLike) -> Backend:
    """The backend for ``uri``'s scheme; an unknown scheme is a :class:`BcoderError` naming it."""
    text = os.fspath(uri)
    scheme = scheme_of(text)
    backend = _backends.get(scheme)
    if backend is None:
        module = _MODULES.get(scheme)
        if module is None:
            known = ", ".join(f"{s}://" for s in sorted(set(_MODULES) | set(_backends)) if s)
            raise BcoderError(
                f"{text}: no storage backend for {scheme}:// URIs (known: local paths, {known})"
            )
        backend = importlib.import_module(f"{__package__}.{module}").BACKEND
        _backends[scheme] = backend
    return backend
