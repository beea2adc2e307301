"""Artifacts by URI: a local path or ``s3://bucket/prefix`` (DESIGN §1).

Every stage reads its inputs and writes its one output through this module, so a stage runs the
same on a laptop (local directories) and on Kubernetes (S3).

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

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bcoder_core.errors import ArtifactCorrupt, ArtifactNotFound, BcoderError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FILE_MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_FORMAT = "bcoder-artifact/1"
LATEST = "latest"
_HASH_CHUNK = 1 << 20


# --------------------------------------------------------------------------------------------------
# URIs


def is_s3(uri: str) -> bool:
    """True for ``s3://bucket/...`` URIs, False for local paths."""
    return str(uri).startswith("s3://")


def _split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b/`` -> ("bucket", "a/b")."""
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise BcoderError(f"{uri}: not a valid S3 URI (expected s3://bucket/prefix)")
    return bucket, key.strip("/")


def _local(uri: str | os.PathLike) -> Path:
    text = os.fspath(uri)
    if text.startswith("file://"):
        text = text[len("file://") :]
    return Path(text).expanduser()


def join(uri: str, *parts: str) -> str:
    """``join("s3://b/run", "step_3", "x.bin")`` -> ``"s3://b/run/step_3/x.bin"`` (local paths too)."""
    uri = os.fspath(uri)
    pieces = [p.strip("/") for p in parts if p and p.strip("/")]
    if is_s3(uri):
        return "/".join([uri.rstrip("/"), *pieces])
    return os.path.join(uri, *pieces)


def _is_file_uri(uri: str) -> bool:
    """A URI whose last part has a suffix (``results.jsonl``) names a file artifact."""
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    return bool(Path(name).suffix)


def _manifest_uris(uri: str) -> tuple[str, str]:
    """(manifest of a directory artifact at uri, manifest of a file artifact at uri)."""
    base = uri.rstrip("/")
    return join(base, MANIFEST), base + FILE_MANIFEST_SUFFIX


# --------------------------------------------------------------------------------------------------
# Manifests


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _walk_files(root: Path) -> list[str]:
    """Relative POSIX paths of the regular files under ``root`` (not the manifest), sorted."""
    out = []
    for dirpath, _dirnames, filenames in os.walk(root, followlinks=True):
        for name in filenames:
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            if rel == MANIFEST or not path.is_file():
                continue
            out.append(rel)
    return sorted(out)


_code_version_cache: dict | None = None


def code_version() -> dict:
    """bcoder's version and, when known, the git commit the code comes from."""
    global _code_version_cache
    if _code_version_cache is None:
        from bcoder_core import __version__

        commit = os.environ.get("BCODER_GIT_COMMIT") or None
        dirty = None
        if commit is None:
            repo = Path(__file__).resolve().parent.parent
            try:
                commit = subprocess.run(
                    ["git", "-C", str(repo), "rev-parse", "HEAD"],
                    capture_output=True, text=True, timeout=10, check=True,
                ).stdout.strip() or None  # fmt: skip
                status = subprocess.run(
                    ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                    capture_output=True, text=True, timeout=10, check=True,
                ).stdout  # fmt: skip
                dirty = bool(status.strip())
            except (OSError, subprocess.SubprocessError):
                commit = None
        _code_version_cache = {"bcoder": __version__, "git_commit": commit, "git_dirty": dirty}
    return dict(_code_version_cache)


def _build_manifest(local: Path, *, kind: str, config: dict | None, layout: str) -> dict:
    if layout == "file":
        rels = [local.name]
        paths = [local]
    else:
        rels = _walk_files(local)
        paths = [local / rel for rel in rels]
    files = [
        {"path": rel, "size": path.stat().st_size, "sha256": _sha256_file(path)}
        for rel, path in zip(rels, paths, strict=True)
    ]
    return {
        "format": MANIFEST_FORMAT,
        "kind": kind,
        "layout": layout,
        "files": files,
        "total_bytes": sum(f["size"] for f in files),
        "command": list(sys.argv),
        "config": json.loads(json.dumps(config, default=str)) if config is not None else None,
        "code_version": code_version(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }


def _manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()


def _parse_manifest(data: bytes, where: str) -> dict:
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise ArtifactCorrupt(f"{where}: manifest is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        raise ArtifactCorrupt(f"{where}: not a bcoder manifest (no 'files' list)")
    for entry in manifest["files"]:
        rel = entry.get("path", "") if isinstance(entry, dict) else ""
        if not rel or rel.startswith("/") or ".." in rel.split("/"):
            raise ArtifactCorrupt(f"{where}: manifest lists an invalid file path {rel!r}")
    return manifest


def _verify_file(path: Path, entry: dict, name: str) -> None:
    """Raise ArtifactCorrupt naming ``name`` unless ``path`` has the manifest's size and sha256."""
    if not path.is_file():
        raise ArtifactCorrupt(f"{name}: listed in the manifest but missing")
    size = path.stat().st_size
    if size != entry["size"]:
        raise ArtifactCorrupt(f"{name}: size {size} bytes, manifest says {entry['size']}")
    if _sha256_file(path) != entry["sha256"]:
        raise ArtifactCorrupt(f"{name}: sha256 does not match the manifest")


# --------------------------------------------------------------------------------------------------
# S3 plumbing


_client_lock = threading.Lock()
_clients: dict[tuple, Any] = {}


def _s3_client():
    """One boto3 S3 client per distinct AWS environment (tests change it between cases)."""
    key = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(("AWS_", "BCODER_S3_"))))
    with _client_lock:
        client = _clients.get(key)
        if client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                retries={
                    "mode": os.environ.get("AWS_RETRY_MODE", "adaptive"),
                    "max_attempts": int(os.environ.get("AWS_MAX_ATTEMPTS", "5")),
                },
                connect_timeout=float(os.environ.get("BCODER_S3_CONNECT_TIMEOUT", "10")),
                read_timeout=float(os.environ.get("BCODER_S3_READ_TIMEOUT", "120")),
                max_pool_connections=max(10, _max_concurrency() + 2),
            )
            client = boto3.session.Session().client("s3", config=config)
            _clients[key] = client
        return client


def _max_concurrency() -> int:
    return int(os.environ.get("BCODER_S3_MAX_CONCURRENCY", "8"))


def _transfer_config():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=int(os.environ.get("BCODER_S3_MULTIPART_THRESHOLD", 64 << 20)),
        multipart_chunksize=int(os.environ.get("BCODER_S3_MULTIPART_CHUNKSIZE", 64 << 20)),
        max_concurrency=_max_concurrency(),
        preferred_transfer_client="classic",
    )


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


_DENIED = {
    "InvalidAccessKeyId": "the access key is not known to the server",
    "SignatureDoesNotMatch": "the secret key is wrong",
    "AccessDenied": "access denied",
    "403": "access denied",
    "InvalidToken": "the session token is invalid",
    "ExpiredToken": "the session token has expired",
    "AuthorizationHeaderMalformed": "the credentials or region are malformed",
}


def _s3_error(uri: str, exc: BaseException) -> BcoderError:
    """One line for any failure of an S3 call on ``uri``."""
    from botocore import exceptions as bx

    code = _error_code(exc)
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return BcoderError(
            f"{uri}: no AWS credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "or AWS_PROFILE / ~/.aws/credentials)"
        )
    if code in _DENIED:
        return BcoderError(f"{uri}: {_DENIED[code]} ({code}); check the AWS credentials and permissions")
    if code == "NoSuchBucket":
        return BcoderError(f"{uri}: bucket {_split_s3(uri)[0]!r} does not exist")
    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectTimeoutError | bx.ReadTimeoutError):
        return BcoderError(f"{uri}: cannot reach the S3 endpoint {_endpoint()} ({type(exc).__name__})")
    if isinstance(exc, bx.ConnectionClosedError | bx.HTTPClientError):
        return BcoderError(f"{uri}: connection to the S3 endpoint {_endpoint()} failed ({exc})")
    if isinstance(exc, bx.ClientError):
        message = exc.response.get("Error", {}).get("Message") or str(exc)
        return BcoderError(f"{uri}: S3 error {code}: {message}")
    if isinstance(exc, bx.BotoCoreError):
        return BcoderError(f"{uri}: S3 error: {exc}")
    return BcoderError(f"{uri}: {type(exc).__name__}: {exc}")


def _endpoint() -> str:
    try:
        return _s3_client().meta.endpoint_url
    except Exception:
        return "?"


def _is_s3_failure(exc: BaseException) -> bool:
    module = type(exc).__module__
    return module.startswith(("botocore", "boto3", "s3transfer", "urllib3"))


@contextmanager
def _s3_call(uri: str) -> Iterator[None]:
    """Translate boto/s3transfer exceptions into one-line BcoderErrors naming ``uri``."""
    try:
        yield
    except BcoderError:
        raise
    except Exception as exc:
        if _is_s3_failure(exc):
            raise _s3_error(uri, exc) from None
        raise


def _s3_get_bytes(uri: str) -> bytes | None:
    """An object's bytes, or None if the key does not exist (a missing bucket is an error)."""
    bucket, key = _split_s3(uri)
    client = _s3_client()
    with _s3_call(uri):
        try:
            return client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except client.exceptions.NoSuchKey:
            return None


def _s3_put_bytes(uri: str, data: bytes, where: str | None = None) -> None:
    bucket, key = _split_s3(uri)
    with _s3_call(where or uri):
        _s3_client().put_object(Bucket=bucket, Key=key, Body=data)


def _s3_delete(uri: str, where: str | None = None) -> None:
    bucket, key = _split_s3(uri)
    with _s3_call(where or uri):
        _s3_client().delete_object(Bucket=bucket, Key=key)


def _s3_upload(items: list[tuple[Path, str]], where: str) -> None:
    """Upload (local file, s3 uri) pairs, multipart above the threshold, several at a time."""
    from boto3.s3.transfer import create_transfer_manager

    with _s3_call(where), create_transfer_manager(_s3_client(), _transfer_config()) as manager:
        futures = []
        for path, uri in items:
            bucket, key = _split_s3(uri)
            futures.append((uri, manager.upload(str(path), bucket, key)))
        for uri, future in futures:
            with _s3_call(uri):
                future.result()


def _s3_download(items: list[tuple[str, Path]], where: str) -> None:
    from boto3.s3.transfer import create_transfer_manager

    with _s3_call(where), create_transfer_manager(_s3_client(), _transfer_config()) as manager:
        futures = []
        for uri, path in items:
            path.parent.mkdir(parents=True, exist_ok=True)
            bucket, key = _split_s3(uri)
            futures.append((uri, manager.download(bucket, key, str(path))))
        for uri, future in futures:
            with _s3_call(uri):
                try:
                    future.result()
                except Exception as exc:
                    if _error_code(exc) in ("404", "NoSuchKey"):
                        raise ArtifactCorrupt(f"{uri}: listed in the manifest but missing") from None
                    raise


# --------------------------------------------------------------------------------------------------
# Reading


def _read_bytes(uri: str) -> bytes | None:
    if is_s3(uri):
        return _s3_get_bytes(uri)
    path = _local(uri)
    try:
        return path.read_bytes()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def _locate(uri: str) -> tuple[str, str, dict] | None:
    """(artifact uri, manifest uri, manifest) of the artifact at ``uri``, following ``latest``."""
    try:
        return _locate_unchecked(uri.rstrip("/") or uri)
    except (ArtifactNotFound, ArtifactCorrupt):
        raise
    except BcoderError as exc:
        # Name the URI the caller gave, not the manifest key we were looking up.
        raise BcoderError(f"{uri}: {str(exc).split(': ', 1)[-1]}") from None


def _locate_unchecked(uri: str) -> tuple[str, str, dict] | None:
    for _hop in range(3):
        dir_manifest, file_manifest = _manifest_uris(uri)
        for manifest_uri in (dir_manifest, file_manifest):
            data = _read_bytes(manifest_uri)
            if data is None:
                continue
            if not is_s3(uri) and not _looks_like_ours(data):
                continue  # a user's own manifest.json in a local data directory
            return uri, manifest_uri, _parse_manifest(data, manifest_uri)
        marker = _read_bytes(join(uri, LATEST))
        if marker is None or not marker.strip():
            if is_s3(uri):
                collection = _collection_manifest(uri)
                if collection is not None:
                    return uri, "", collection
            return None
        target = marker.decode().strip()
        uri = target if is_s3(target) or target.startswith("/") else join(uri, target)
    return None


_PART = re.compile(r"^(?P<stem>.+)-(?P<index>\d+)-of-(?P<count>\d+)(?P<suffix>\.[^/]*)?$")


def _collection_manifest(uri: str) -> dict | None:
    """A directory manifest for the complete set of sharded file artifacts ``part-I-of-N.ext``
    directly under the S3 prefix ``uri`` (what the shards of an Indexed Job write), or None.

    Only parts with their own manifest count; a set with any part missing is ``ArtifactNotFound``
    naming the missing ones, so a reader never takes 3 of 4 shards for the whole.
    """
    bucket, key = _split_s3(uri)
    client = _s3_client()
    names: set[str] = set()
    with _s3_call(uri):
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=key + "/", Delimiter="/"
        ):
            names.update(o["Key"][len(key) + 1 :] for o in page.get("Contents", []))
    published = {n[: -len(FILE_MANIFEST_SUFFIX)] for n in names if n.endswith(FILE_MANIFEST_SUFFIX)}
    parts = [m for m in map(_PART.match, sorted(published)) if m]
    if not parts:
        return None
    groups = {(m["stem"], m["count"], m["suffix"]) for m in parts}
    if len(groups) > 1:
        raise ArtifactCorrupt(f"{uri}: shards of different sets under one prefix: {sorted(published)}")
    ((stem, count, suffix),) = groups
    suffix = suffix or ""
    have = {int(m["index"]) for m in parts}
    missing = [i for i in range(int(count)) if i not in have]
    if missing:
        raise ArtifactNotFound(
            f"{uri}: incomplete: {len(missing)} of {count} shards not published yet "
            f"(missing {', '.join(f'{stem}-{i}-of-{count}{suffix}' for i in missing[:5])})"
        )
    files, kinds = [], set()
    for m in parts:
        name = m.string
        member = _parse_manifest(_s3_get_bytes(join(uri, name + FILE_MANIFEST_SUFFIX)) or b"", name)
        (entry,) = member["files"]
        files.append({"path": name, "size": entry["size"], "sha256": entry["sha256"]})
        kinds.add(member.get("kind"))
    return {
        "format": MANIFEST_FORMAT,
        "kind": kinds.pop() if len(kinds) == 1 else None,
        "layout": "directory",
        "collection": True,
        "files": files,
        "total_bytes": sum(f["size"] for f in files),
    }


def _looks_like_ours(data: bytes) -> bool:
    try:
        return json.loads(data).get("format") == MANIFEST_FORMAT
    except (ValueError, AttributeError):
        return False


def _not_found(uri: str) -> ArtifactNotFound:
    return ArtifactNotFound(
        f"{uri}: no artifact here (no {MANIFEST} under it, no {FILE_MANIFEST_SUFFIX} beside it: "
        "a wrong URI, or a writer that has not finished)"
    )


def read_manifest(uri: str) -> dict:
    """The manifest of the artifact at ``uri``; ``ArtifactNotFound`` if there is none."""
    found = _locate(uri)
    if found is None:
        raise _not_found(uri)
    return found[2]


def exists(uri: str) -> bool:
    """True iff a complete artifact (its manifest) is at ``uri`` (following a ``latest`` marker)."""
    try:
        return _locate(uri) is not None
    except ArtifactNotFound:  # an incomplete set of shards
        return False


def _cache_root() -> Path:
    env = os.environ.get("BCODER_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bcoder" / "artifacts"


def _verify_local(root: Path, manifest: dict, base: str) -> None:
    """Verify every file the manifest lists under ``root``; errors name ``base``/<file>."""
    if manifest.get("layout") == "file":
        (entry,) = manifest["files"]
        _verify_file(root, entry, base)
        return
    for entry in manifest["files"]:
        _verify_file(root / entry["path"], entry, join(base, entry["path"]))


def fetch(uri: str, dest: Path | None = None) -> Path:
    """A verified local copy of the artifact at ``uri``: its directory, or its file.

    S3: downloaded into ``dest`` (replaced) or the cache, every file checked against the manifest
    (``ArtifactCorrupt`` names the bad key); no manifest -> ``ArtifactNotFound``. Local: verified in
    place and returned (copied to ``dest`` when given).
    """
    found = _locate(uri)
    if found is None:
        raise _not_found(uri)
    art_uri, _manifest_uri, manifest = found
    is_file = manifest.get("layout") == "file"

    if not is_s3(art_uri):
        local = _local(art_uri)
        _verify_local(local, manifest, str(local))
        if dest is None:
            return local
        dest = Path(dest)
        with _staging_next_to(dest) as staging:
            target = staging / dest.name
            if is_file:
                shutil.copy2(local, target)
            else:
                shutil.copytree(local, target, symlinks=False)
            _move_into_place(target, dest)
        return dest

    name = art_uri.rstrip("/").rsplit("/", 1)[-1]
    if dest is not None:
        _download(art_uri, manifest, Path(dest))
        return Path(dest)
    # The cache: one directory per (URI, manifest); a lock so that the ranks of one job that all
    # read the same model download it once.
    digest = hashlib.sha256(_manifest_bytes(manifest) + art_uri.encode()).hexdigest()[:24]
    entry = _cache_root() / digest
    entry.mkdir(parents=True, exist_ok=True)
    with open(entry / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not ((entry / ".complete").exists() and _sizes_match(entry / name, manifest)):
            (entry / ".complete").unlink(missing_ok=True)
            _download(art_uri, manifest, entry / name)
            (entry / ".complete").touch()
    return entry / name


def _download(art_uri: str, manifest: dict, dest: Path) -> None:
    """Download and verify the artifact into ``dest`` (replacing it), via a staging directory."""
    is_file = manifest.get("layout") == "file"
    started = time.monotonic()
    with _staging_next_to(dest) as staging:
        target = staging / dest.name
        if is_file:
            items = [(art_uri, target)]
        else:
            items = [(join(art_uri, e["path"]), target / e["path"]) for e in manifest["files"]]
            target.mkdir(parents=True, exist_ok=True)
        _s3_download(items, art_uri)
        _verify_local(target, manifest, art_uri)
        if not is_file:
            (target / MANIFEST).write_bytes(_manifest_bytes(manifest))
        _move_into_place(target, dest)
    log.info(
        "fetched %s (%d files, %.1f MB) in %.1fs",
        art_uri, len(manifest["files"]), manifest.get("total_bytes", 0) / 1e6, time.monotonic() - started,
    )  # fmt: skip


def _sizes_match(local: Path, manifest: dict) -> bool:
    if manifest.get("layout") == "file":
        paths = [(local, manifest["files"][0])]
    else:
        paths = [(local / e["path"], e) for e in manifest["files"]]
    return all(p.is_file() and p.stat().st_size == e["size"] for p, e in paths)


def input_path(uri: str) -> Path:
    """A local path holding what ``uri`` names: an artifact's directory or file.

    Local: returned as is (verified first if it carries a manifest; a ``latest`` marker is
    followed). S3: downloaded and verified against its manifest; no manifest ->
    ``ArtifactNotFound``.
    """
    uri = os.fspath(uri)
    if is_s3(uri):
        return fetch(uri)
    path = _local(uri)
    found = _locate(str(path))
    if found is not None:
        return fetch(str(path))
    if not path.exists():
        raise BcoderError(f"{uri}: no such file or directory")
    return path


# --------------------------------------------------------------------------------------------------
# Writing


@contextmanager
def _staging_next_to(final: Path) -> Iterator[Path]:
    """A temporary directory beside ``final`` (same file system, so renames are atomic)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_into_place(src: Path, final: Path) -> None:
    """Rename ``src`` to ``final``, replacing what is there (a directory is swapped out first)."""
    if final.is_dir() and not final.is_symlink():
        trash = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        final.rename(trash)
        src.rename(final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(src, final)


def _atomic_write(path: Path, data: bytes) -> None:
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


def publish(local_dir: Path, uri: str, *, kind: str, config: dict | None = None) -> dict:
    """Publish a local directory (or file) as the artifact ``uri``; return its manifest.

    Files go first, the manifest last (an old manifest at ``uri`` is deleted before anything
    else). A local ``uri`` equal to ``local_dir`` only writes the manifest (in-place outputs).
    """
    local = Path(local_dir)
    uri = os.fspath(uri)
    if not local.exists():
        raise BcoderError(f"{local}: nothing to publish (no such file or directory)")
    layout = "file" if local.is_file() else "directory"
    dir_manifest, file_manifest = _manifest_uris(uri)
    manifest_uri = file_manifest if layout == "file" else dir_manifest
    started = time.monotonic()

    if not is_s3(uri):
        final = _local(uri)
        if final.exists() and final.resolve() == local.resolve():
            manifest = _build_manifest(local, kind=kind, config=config, layout=layout)
            _atomic_write(_local(manifest_uri), _manifest_bytes(manifest))
            return manifest
        with _staging_next_to(final) as staging:
            target = staging / final.name
            if layout == "file":
                shutil.copy2(local, target)
            else:
                shutil.copytree(local, target, ignore=_ignore_manifest(local))
            manifest = _build_manifest(target, kind=kind, config=config, layout=layout)
            _install_local(target, final, manifest)
        return manifest

    manifest = _build_manifest(local, kind=kind, config=config, layout=layout)
    # Readers must never pair an old manifest with new files: remove the old one first.
    _s3_delete(manifest_uri, where=uri)
    if layout == "file":
        items = [(local, uri.rstrip("/"))]
    else:
        items = [(local / e["path"], join(uri, e["path"])) for e in manifest["files"]]
    _s3_upload(items, uri)
    _s3_put_bytes(manifest_uri, _manifest_bytes(manifest), where=uri)
    log.info(
        "published %s (%d files, %.1f MB) in %.1fs",
        uri, len(manifest["files"]), manifest["total_bytes"] / 1e6, time.monotonic() - started,
    )  # fmt: skip
    return manifest


def _ignore_manifest(root: Path):
    def ignore(directory: str, names: list[str]) -> list[str]:
        return [MANIFEST] if Path(directory) == root and MANIFEST in names else []

    return ignore


def _install_local(target: Path, final: Path, manifest: dict) -> None:
    """Move a staged local artifact into place, its manifest last."""
    data = _manifest_bytes(manifest)
    if manifest["layout"] == "file":
        manifest_path = Path(str(final) + FILE_MANIFEST_SUFFIX)
        with contextlib.suppress(FileNotFoundError):
            manifest_path.unlink()
        _move_into_place(target, final)
        _atomic_write(manifest_path, data)
    else:
        _atomic_write(target / MANIFEST, data)
        _move_into_place(target, final)


@contextmanager
def output_path(uri: str, *, kind: str, config: dict | None = None) -> Iterator[Path]:
    """Yield a local path to write the output named by ``uri``; publish it on a clean exit.

    A URI whose last part has a suffix (``results.jsonl``) is a file, otherwise a directory.
    Local: staged beside the destination and renamed into place with its manifest. S3: staged in
    a temporary directory, then uploaded (multipart for large files), manifest last. On an
    exception nothing is left at ``uri`` (an artifact that was there before stays untouched).
    """
    uri = os.fspath(uri)
    is_file = _is_file_uri(uri)
    name = uri.rstrip("/").rsplit("/", 1)[-1] or "artifact"
    if is_s3(uri):
        staging_cm = tempfile.TemporaryDirectory(prefix="bcoder-out-")
    else:
        staging_cm = _staging_next_to(_local(uri))
    with staging_cm as staging_dir:
        target = Path(staging_dir) / name
        if not is_file:
            target.mkdir()
        yield target
        if not target.exists():
            raise BcoderError(f"{uri}: the stage wrote no output")
        if is_s3(uri):
            publish(target, uri, kind=kind, config=config)
        else:
            layout = "file" if is_file else "directory"
            manifest = _build_manifest(target, kind=kind, config=config, layout=layout)
            _install_local(target, _local(uri), manifest)


# --------------------------------------------------------------------------------------------------
# Markers


def delete(uri: str) -> None:
    """Remove an artifact: its manifest first (readers stop trusting it at once), then its files.

    A directory artifact loses everything under ``uri/``; a file artifact its object and its
    ``.manifest.json``. Deleting what does not exist is not an error (pruning is idempotent).
    """
    uri = os.fspath(uri)
    dir_manifest, file_manifest = _manifest_uris(uri)
    manifest_uri = file_manifest if _is_file_uri(uri) else dir_manifest
    if not is_s3(uri):
        path = _local(uri)
        _local(manifest_uri).unlink(missing_ok=True)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        return
    _s3_delete(manifest_uri, uri)
    bucket, key = _split_s3(uri)
    if _is_file_uri(uri):
        _s3_delete(uri)
        return
    client = _s3_client()
    prefix = key.rstrip("/") + "/"
    with _s3_call(uri):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})


def read_text(uri: str) -> str | None:
    """A small text object/file (a marker such as ``latest``), or None if it does not exist."""
    data = _read_bytes(os.fspath(uri))
    return None if data is None else data.decode()


def write_text(uri: str, text: str) -> None:
    """Write a small text object/file in one atomic step (S3 PUT; local write + rename)."""
    uri = os.fspath(uri)
    if is_s3(uri):
        _s3_put_bytes(uri, text.encode())
    else:
        _atomic_write(_local(uri), text.encode())
