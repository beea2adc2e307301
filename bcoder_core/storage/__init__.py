"""Artifacts by URI: a local path or ``s3://bucket/prefix`` (DESIGN §1).

Every stage reads its inputs and writes its one output through this package, so a stage runs the
same on a laptop (local directories) and on Kubernetes (S3).

Package
-------
``bcoder_core.storage`` (this module) holds the public API and the manifest logic, the same for
every backend; ``manifest`` the manifest format; ``backend`` the :class:`Backend` protocol and the
registry that picks a backend by URI scheme; ``local`` and ``s3`` the two backends. A new store
(``gs://``, say) is one module with a ``BACKEND`` (see ``backend``).

Layout
------
A **directory artifact** at ``U`` (``/runs/x/store`` or ``s3://bucket/runs/x/store``)::

    U/<relative path of each file>      the files
    U/manifest.json                     written LAST

A **file artifact** at ``U`` (the last part of ``U`` has a suffix: ``.../results.jsonl``)::

    U                                   the file
    U.manifest.json                     written LAST (``.../results.jsonl.manifest.json``)

The manifest (``format: bcoder-artifact/1``) lists every file with its size and sha256, and says
what made the artifact: ``kind`` (problems, samples, results, transitions, checkpoint, ...),
``layout`` (directory | file), the producing ``command`` (``sys.argv``), the ``config`` given by
the stage, the ``code_version`` (bcoder version, git commit when run from a checkout, or
``$BCODER_GIT_COMMIT`` in images) and the ``created`` time (UTC, ISO 8601).

**Markers** (:func:`write_text` / :func:`read_text`, e.g. a checkpoint root's ``latest`` holding
``step_1200``) are small plain files/objects without a manifest, each written in one atomic step.
A prefix with no manifest but a ``latest`` marker resolves to the artifact the marker names
(``input_path("s3://b/runs/theta")`` is the latest checkpoint of that run).

A **sharded output** is a set of file artifacts ``<stem>-<I>-of-<N><suffix>`` directly under one S3
prefix (``s3://b/run/samples/part-3-of-8.jsonl``: what the pods of an Indexed Job write). Read
through the prefix (``s3://b/run/samples``), it is one directory artifact holding all N parts —
only once all N are published (each by its own manifest); otherwise ``ArtifactNotFound`` names the
missing parts.

Rules
-----
* Writers upload every file first and the manifest last, so a crashed or pre-empted writer never
  leaves a manifest for partial output; re-running it simply publishes again (a publish first
  deletes an old manifest at the same URI, so readers never pair an old manifest with new files).
  Local outputs are staged next to the destination and renamed into place.
* Readers never trust an S3 prefix without a manifest (:class:`ArtifactNotFound`) and verify
  every file's size and sha256 (:class:`ArtifactCorrupt`, naming the bad file or key). A local
  path without a manifest is user data (a problem set made by hand, a model directory) and is
  returned as is; a local path with a manifest is verified like an S3 one.
* A writer replaces only an artifact of its own kind (its manifest's ``kind``); anything else at
  the output path is a one-line error and stays untouched (see "Writing" below, DESIGN §1).
  :func:`check_output` applies that, and checks that the output can be written (a real probe;
  S3: credentials, bucket, write permission), before a stage's work.
* :func:`verify` checks a committed artifact against its manifest: sizes, or every sha256.
* Scratch space comes from :func:`scratch_dir` (``storage.scratch``): removed on exit, and swept
  by a later process once its owner is gone, however it died.
* S3 artifacts are downloaded into a cache, ``$BCODER_CACHE_DIR`` (default
  ``~/.cache/bcoder/artifacts``), keyed by the manifest's digest: a second read of the same
  artifact downloads nothing.

S3 access uses boto3's standard configuration: credentials, region and profile from the usual
``AWS_*`` environment variables and ``~/.aws`` files; the endpoint from ``AWS_ENDPOINT_URL`` or
``AWS_ENDPOINT_URL_S3`` (MinIO, SeaweedFS, Ceph, ...); retries in ``adaptive`` mode, 5 attempts
unless ``AWS_RETRY_MODE`` / ``AWS_MAX_ATTEMPTS`` say otherwise, with bounded connect/read
timeouts, so an unreachable endpoint fails in seconds, not minutes. Files above the multipart
threshold (``BCODER_S3_MULTIPART_THRESHOLD``, bytes, default 64 MiB) are streamed in parts of
``BCODER_S3_MULTIPART_CHUNKSIZE`` (default 64 MiB), ``BCODER_S3_MAX_CONCURRENCY`` (default 8) at a
time. Every failure is a one-line :class:`BcoderError` naming the URI: missing or wrong
credentials, unknown bucket, unreachable endpoint.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from bcoder_core.errors import ArtifactCorrupt, ArtifactNotFound, BcoderError
from bcoder_core.storage.backend import Backend, backend_for, register, scheme_of
from bcoder_core.storage.local import move_into_place, staging_next_to
from bcoder_core.storage.manifest import (
    FILE_MANIFEST_SUFFIX,
    MANIFEST,
    MANIFEST_FORMAT,
    build_manifest,
    code_version,
    collection_manifest,
    looks_like_ours,
    manifest_bytes,
    parse_manifest,
    sizes_match,
    verify_local,
)
from bcoder_core.storage.scratch import scratch_dir, scratch_root, sweep_scratch

__all__ = [
    "FILE_MANIFEST_SUFFIX",
    "LATEST",
    "MANIFEST",
    "MANIFEST_FORMAT",
    "MARKER",
    "Backend",
    "backend_for",
    "check_output",
    "check_output_root",
    "code_version",
    "delete",
    "exists",
    "fetch",
    "input_path",
    "is_s3",
    "join",
    "local_path",
    "output_path",
    "publish",
    "read_manifest",
    "read_text",
    "register",
    "scratch_dir",
    "scratch_root",
    "sweep_scratch",
    "verify",
    "write_text",
]

log = logging.getLogger(__name__)

LATEST = "latest"
#: The kind :func:`check_output_root` gives a marker (``latest``): a small plain file, no manifest.
MARKER = "marker"


# --------------------------------------------------------------------------------------------------
# URIs


def is_s3(uri: str) -> bool:
    """True for ``s3://bucket/...`` URIs, False for local paths."""
    return scheme_of(str(uri)) == "s3"


def join(uri: str, *parts: str) -> str:
    """``join("s3://b/run", "step_3", "x.bin")`` -> ``"s3://b/run/step_3/x.bin"`` (local paths too)."""
    uri = os.fspath(uri)
    return backend_for(uri).join(uri, *parts)


def local_path(uri: str) -> Path | None:
    """Where ``uri`` lies on this machine's file system, or None when its store is remote."""
    uri = os.fspath(uri)
    return backend_for(uri).local_path(uri)


def _is_file_uri(uri: str) -> bool:
    """A URI whose last part has a suffix (``results.jsonl``) names a file artifact."""
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    return bool(Path(name).suffix)


def _manifest_uri(uri: str, *, layout: str) -> str:
    """Where the manifest of the artifact at ``uri`` lies: inside a directory, beside a file."""
    base = uri.rstrip("/")
    return join(base, MANIFEST) if layout == "directory" else base + FILE_MANIFEST_SUFFIX


# --------------------------------------------------------------------------------------------------
# Reading


@contextmanager
def _naming(uri: str) -> Iterator[None]:
    """Errors of the block name ``uri`` (the URI the caller gave), not the manifest key looked up."""
    try:
        yield
    except (ArtifactNotFound, ArtifactCorrupt):
        raise
    except BcoderError as exc:
        raise BcoderError(f"{uri}: {str(exc).split(': ', 1)[-1]}") from None


def _locate(uri: str) -> tuple[str, dict] | None:
    """(artifact uri, manifest) of the artifact at ``uri``, following ``latest``."""
    with _naming(uri):
        return _locate_unchecked(uri.rstrip("/") or uri)


def _locate_unchecked(uri: str) -> tuple[str, dict] | None:
    for _hop in range(3):
        backend = backend_for(uri)
        for layout in ("directory", "file"):
            manifest_uri = _manifest_uri(uri, layout=layout)
            data = backend.read_bytes(manifest_uri)
            if data is None:
                continue
            if backend.user_data and not looks_like_ours(data):
                continue  # a user's own manifest.json in a data directory
            return uri, parse_manifest(data, manifest_uri)
        marker = backend.read_bytes(backend.join(uri, LATEST))
        if marker is None or not marker.strip():
            if backend.user_data:
                return None
            collection = collection_manifest(uri, backend.list_names(uri), partial(_member, backend, uri))
            return None if collection is None else (uri, collection)
        target = marker.decode().strip()
        uri = target if scheme_of(target) or target.startswith("/") else backend.join(uri, target)
    return None


def _member(backend: Backend, uri: str, name: str) -> dict:
    """The manifest of the shard ``name`` of the sharded output at ``uri``."""
    return parse_manifest(backend.read_bytes(backend.join(uri, name + FILE_MANIFEST_SUFFIX)) or b"", name)


def _not_found(uri: str) -> ArtifactNotFound:
    return ArtifactNotFound(
        f"{uri}: no artifact here (no {MANIFEST} under it, no {FILE_MANIFEST_SUFFIX} beside it: "
        "a wrong URI, or a writer that has not finished)"
    )


def _find(uri: str) -> tuple[str, dict]:
    found = _locate(uri)
    if found is None:
        raise _not_found(uri)
    return found


def read_manifest(uri: str) -> dict:
    """The manifest of the artifact at ``uri``; ``ArtifactNotFound`` if there is none."""
    return _find(os.fspath(uri))[1]


def manifest_config(uri: str) -> dict | None:
    """The ``config`` (inputs and settings) the manifest at ``uri`` records; None without a manifest."""
    try:
        config = read_manifest(uri).get("config")
    except BcoderError:
        return None
    return config if isinstance(config, dict) else None


def exists(uri: str) -> bool:
    """True iff a complete artifact (its manifest) is at ``uri`` (following a ``latest`` marker)."""
    try:
        return _locate(os.fspath(uri)) is not None
    except ArtifactNotFound:  # an incomplete set of shards
        return False


def _cache_root() -> Path:
    env = os.environ.get("BCODER_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bcoder" / "artifacts"


def fetch(uri: str, dest: Path | None = None) -> Path:
    """A verified local copy of the artifact at ``uri``: its directory, or its file.

    Remote (S3): downloaded into ``dest`` (replaced) or the cache, every file checked against the
    manifest (``ArtifactCorrupt`` names the bad key); no manifest -> ``ArtifactNotFound``. Local:
    verified in place and returned (copied to ``dest`` when given).
    """
    art_uri, manifest = _find(os.fspath(uri))
    return _fetch_found(art_uri, manifest, dest)


def _fetch_found(art_uri: str, manifest: dict, dest: Path | None) -> Path:
    backend = backend_for(art_uri)
    if dest is not None:
        _download(backend, art_uri, manifest, Path(dest))
        return Path(dest)
    local = backend.local_path(art_uri)
    if local is not None:
        verify_local(local, manifest, lambda rel: join(str(local), rel))
        return local
    # The cache: one directory per (URI, manifest); a lock so that the ranks of one job that all
    # read the same model download it once.
    name = art_uri.rstrip("/").rsplit("/", 1)[-1]
    digest = hashlib.sha256(manifest_bytes(manifest) + art_uri.encode()).hexdigest()[:24]
    entry = _cache_root() / digest
    entry.mkdir(parents=True, exist_ok=True)
    with open(entry / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not ((entry / ".complete").exists() and sizes_match(entry / name, manifest)):
            (entry / ".complete").unlink(missing_ok=True)
            _download(backend, art_uri, manifest, entry / name)
            (entry / ".complete").touch()
    return entry / name


def _download(backend: Backend, art_uri: str, manifest: dict, dest: Path) -> None:
    """Download and verify the artifact into ``dest`` (replacing it), via a staging directory."""
    is_file = manifest.get("layout") == "file"
    started = time.monotonic()
    with staging_next_to(dest) as staging:
        target = staging / dest.name
        if is_file:
            items = [(art_uri, target)]
        else:
            items = [(backend.join(art_uri, e["path"]), target / e["path"]) for e in manifest["files"]]
            target.mkdir(parents=True, exist_ok=True)
        backend.download(items, where=art_uri)
        verify_local(target, manifest, lambda rel: backend.join(art_uri, rel))
        if not is_file:
            (target / MANIFEST).write_bytes(manifest_bytes(manifest))
        move_into_place(target, dest)
    log.info(
        "fetched %s (%d files, %.1f MB) in %.1fs",
        art_uri, len(manifest["files"]), manifest.get("total_bytes", 0) / 1e6, time.monotonic() - started,
    )  # fmt: skip


def input_path(uri: str) -> Path:
    """A local path holding what ``uri`` names: an artifact's directory or file.

    Local: returned as is (verified first if it carries a manifest; a ``latest`` marker is
    followed). S3: downloaded and verified against its manifest; no manifest ->
    ``ArtifactNotFound``.
    """
    uri = os.fspath(uri)
    found = _locate(uri)
    if found is not None:
        return _fetch_found(*found, dest=None)
    backend = backend_for(uri)
    path = backend.local_path(uri)
    if not backend.user_data or path is None:
        raise _not_found(uri)
    if not path.exists():
        raise BcoderError(f"{uri}: no such file or directory")
    return path


def verify(uri: str, *, sha256: bool = False) -> None:
    """Check that the committed artifact at ``uri`` still is what its manifest says.

    Every listed file must be there with its size, and with ``sha256`` its digest too (that reads
    every byte: a same-size edit is caught only so). ``ArtifactCorrupt`` names the first file that
    differs; ``ArtifactNotFound`` if nothing is committed at ``uri``. A remote artifact's sizes are
    not listed by the protocol: without ``sha256`` its manifest is trusted, with it the artifact is
    downloaded into scratch and verified.
    """
    art_uri, manifest = _find(os.fspath(uri))
    backend = backend_for(art_uri)
    local = backend.local_path(art_uri)
    if local is not None:
        verify_local(local, manifest, lambda rel: join(str(local), rel), sha256=sha256)
    elif sha256:
        with scratch_dir("verify") as scratch:
            _download(backend, art_uri, manifest, scratch / "artifact")


# --------------------------------------------------------------------------------------------------
# Writing: what an output may replace (DESIGN §1)
#
# A command replaces only an artifact of its own kind: one with a bcoder manifest whose ``kind`` is
# the one the command writes. Anything else at the output path (a user's directory or file, a plain
# file without a manifest, an artifact of another kind) is a one-line error and stays untouched.
# On an object store, keys without a manifest are what a crashed writer left (nobody keeps data
# there without one) and are written over.

_SNIFF_BYTES = 1 << 16


def _check_existing(uri: str, kind: str, *, resume: bool = False, partial: bool = False) -> None:
    """Raise unless whatever stands at ``uri`` may be replaced by an output of ``kind``."""
    backend = backend_for(uri)
    path = backend.local_path(uri) if backend.user_data else None
    if path is not None:
        if not path.exists() and not path.is_symlink():
            return
        # What is really there decides where its manifest would be, not the URI's suffix.
        layout = "directory" if path.is_dir() else "file"
    else:
        layout = "file" if _is_file_uri(uri) else "directory"
    with _naming(uri):
        data = backend.read_bytes(_manifest_uri(uri, layout=layout))
    if data is not None and looks_like_ours(data):
        found = json.loads(data).get("kind")
        if found == kind:
            return
        raise BcoderError(
            f"{uri}: holds a bcoder {found} artifact, not {kind}: refusing to replace it "
            "(choose another output, or delete it first)"
        )
    if path is None or partial:
        return
    if layout == "directory":
        if _is_file_uri(uri):
            what = f"a directory, not a bcoder {kind} file"
        elif any(path.iterdir()):
            what = f"a directory that is not a bcoder {kind} artifact (no bcoder {MANIFEST} in it)"
        else:
            return  # an empty directory: nothing to lose
    elif resume and _partial_jsonl(path):
        return  # what a killed run of the same command left: it resumes from it
    else:
        what = f"a file that is not a bcoder {kind} artifact (no {FILE_MANIFEST_SUFFIX} beside it)"
    raise BcoderError(f"{uri}: {what}: refusing to replace it (choose another output, or delete it first)")


def _partial_jsonl(path: Path) -> bool:
    """Empty, or JSON objects one per line with perhaps a torn last one: what a killed appender leaves.

    The head of the file is enough to tell such a file from someone's text; the reader that resumes
    checks every line.
    """
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    *lines, last = head.split(b"\n")
    for line in lines:
        if line.strip():
            try:
                if not isinstance(json.loads(line), dict):
                    return False
            except ValueError:
                return False
    return len(head) == _SNIFF_BYTES or not last.strip() or last.lstrip().startswith(b"{")


def check_output(uri: str, kind: str, *, resume: bool = False) -> None:
    """Fail now, in one line, if a stage could not write its output of ``kind`` at ``uri``.

    Call it first thing in a stage, before any model is loaded or sample run: the location must be
    writable (local: a real probe in the directory; S3: credentials, bucket and write permission,
    by a PUT and DELETE of a probe key) and hold nothing an output of ``kind`` may not replace (see
    above). ``resume``: the command appends to a JSON-lines output and resumes a killed run of
    itself, so a local file without a manifest that reads as such is accepted too.
    :func:`output_path` and :func:`publish` check what they replace again, at the end.
    """
    uri = os.fspath(uri)
    _check_existing(uri, kind, resume=resume)
    backend_for(uri).check_writable(uri)


def check_output_root(uri: str, member_kind: Callable[[str], str | None] | None = None) -> None:
    """Fail now, in one line, unless ``uri`` can hold outputs: a directory (or prefix) that holds
    artifacts and markers but is none itself (a training run's output, a pipeline's run directory).

    It must be writable, not a file and not an artifact. With ``member_kind``, each entry of a local
    root must be one the command writes: ``member_kind(name)`` is the kind of the artifact
    ``name`` must be, :data:`MARKER` for a marker file, None for a name the command never writes
    (an error). A member is refused only if it holds an artifact of another kind: without a
    manifest it is what an interrupted write of the command left (``output_path(partial=True)``
    replaces it). Hidden entries (``.name.tmp-*``, staging of an interrupted write) are left alone.
    """
    uri = os.fspath(uri)
    backend = backend_for(uri)
    path = backend.local_path(uri) if backend.user_data else None
    if path is not None and path.exists() and not path.is_dir():
        raise BcoderError(f"{uri}: cannot write: not a directory ({path})")
    with _naming(uri):
        data = backend.read_bytes(join(uri, MANIFEST))
        backend.check_writable(join(uri, "output"))  # probes inside: that is where files go
    if data is not None and looks_like_ours(data):
        raise BcoderError(
            f"{uri}: holds a bcoder {json.loads(data).get('kind')} artifact, not outputs of this command: "
            "refusing to write into it (choose another output)"
        )
    if path is None or member_kind is None or not path.is_dir():
        return
    for entry in sorted(path.iterdir()):
        if entry.name.startswith("."):
            continue
        kind = member_kind(entry.name)
        if kind is None or (kind == MARKER and not entry.is_file()):
            raise BcoderError(
                f"{uri}: holds {entry.name!r}, which this command never writes: refusing to write "
                "into it (choose another output, or an empty directory)"
            )
        if kind != MARKER:
            _check_existing(join(uri, entry.name), kind, partial=True)


def _install(src: Path, uri: str, *, kind: str, config: dict | None, keep_src: bool) -> dict:
    """Make ``src`` the artifact at ``uri`` through its backend, manifest last; return the manifest."""
    layout = "file" if src.is_file() else "directory"
    manifest = build_manifest(src, kind=kind, config=config, layout=layout)
    started = time.monotonic()
    backend_for(uri).install(
        src, uri,
        files=[f["path"] for f in manifest["files"]],
        manifest_uri=_manifest_uri(uri, layout=layout),
        manifest=manifest_bytes(manifest),
        keep_src=keep_src,
    )  # fmt: skip
    log.info(
        "published %s (%d files, %.1f MB) in %.1fs",
        uri, len(manifest["files"]), manifest["total_bytes"] / 1e6, time.monotonic() - started,
    )  # fmt: skip
    return manifest


def publish(local_dir: Path, uri: str, *, kind: str, config: dict | None = None) -> dict:
    """Publish a local directory (or file) as the artifact ``uri``; return its manifest.

    Files go first, the manifest last (an old manifest at ``uri`` stops counting before anything
    else). A local ``uri`` equal to ``local_dir`` only writes the manifest (in-place outputs);
    otherwise what stands at ``uri`` must be an artifact of ``kind`` or nothing.
    """
    local = Path(local_dir)
    uri = os.fspath(uri)
    if not local.exists():
        raise BcoderError(f"{local}: nothing to publish (no such file or directory)")
    target = local_path(uri)
    if target is None or not (target.exists() and target.resolve() == local.resolve()):
        # Written in place, the output is the caller's own by construction (it checked before).
        _check_existing(uri, kind)
    return _install(local, uri, kind=kind, config=config, keep_src=True)


@contextmanager
def output_path(uri: str, *, kind: str, config: dict | None = None, partial: bool = False) -> Iterator[Path]:
    """Yield a local path to write the output named by ``uri``; publish it on a clean exit.

    A URI whose last part has a suffix (``results.jsonl``) is a file, otherwise a directory.
    Local: staged beside the destination and renamed into place with its manifest. S3: staged in
    scratch, then uploaded (multipart for large files), manifest last. On an exception nothing is
    left at ``uri`` (an artifact that was there before stays untouched). What stands at ``uri``
    must be an artifact of ``kind`` or nothing (:func:`check_output`), checked on entry; with
    ``partial``, also anything without a manifest: the caller knows the name is its own (a
    ``step_N`` of its run's output, which a killed save may have left half-written).
    """
    uri = os.fspath(uri)
    name = uri.rstrip("/").rsplit("/", 1)[-1] or "artifact"
    _check_existing(uri, kind, partial=partial)
    with backend_for(uri).staging(uri) as staging:
        target = staging / name
        if not _is_file_uri(uri):
            target.mkdir()
        yield target
        if not target.exists():
            raise BcoderError(f"{uri}: the stage wrote no output")
        _install(target, uri, kind=kind, config=config, keep_src=False)


def delete(uri: str) -> None:
    """Remove an artifact: its manifest first (readers stop trusting it at once), then its files.

    A directory artifact loses everything under ``uri/``; a file artifact its object and its
    ``.manifest.json``. Deleting what does not exist is not an error (pruning is idempotent).
    """
    uri = os.fspath(uri)
    backend = backend_for(uri)
    layout = "file" if _is_file_uri(uri) else "directory"
    backend.delete(_manifest_uri(uri, layout=layout), where=uri)
    backend.delete(uri, tree=layout == "directory", where=uri)


# --------------------------------------------------------------------------------------------------
# Markers


def read_text(uri: str) -> str | None:
    """A small text object/file (a marker such as ``latest``), or None if it does not exist."""
    uri = os.fspath(uri)
    data = backend_for(uri).read_bytes(uri)
    return None if data is None else data.decode()


def write_text(uri: str, text: str) -> None:
    """Write a small text object/file in one atomic step (S3 PUT; local write + rename)."""
    uri = os.fspath(uri)
    backend_for(uri).write_bytes(uri, text.encode())
