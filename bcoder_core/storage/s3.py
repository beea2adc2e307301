"""S3 (and S3-compatible stores: MinIO, SeaweedFS, Ceph) as a storage backend, through boto3.

Configuration is boto3's own (``AWS_*`` variables, ``~/.aws``; the endpoint from
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``) plus bounded timeouts and retries, so that an
unreachable endpoint fails in seconds. Large files go up and down in parts, several at a time.
Every failure becomes one :class:`BcoderError` line naming the URI.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from bcoder_core.errors import ArtifactCorrupt, BcoderError
from bcoder_core.storage.backend import clean_parts
from bcoder_core.storage.scratch import scratch_dir


def split(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b/`` -> ("bucket", "a/b")."""
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise BcoderError(f"{uri}: not a valid S3 URI (expected s3://bucket/prefix)")
    return bucket, key.strip("/")


_client_lock = threading.Lock()
_clients: dict[tuple, Any] = {}


def client() -> Any:
    """One boto3 S3 client per distinct AWS environment (tests change it between cases)."""
    key = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(("AWS_", "BCODER_S3_"))))
    with _client_lock:
        found = _clients.get(key)
        if found is None:
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
            found = boto3.session.Session().client("s3", config=config)
            _clients[key] = found
        return found


def _max_concurrency() -> int:
    return int(os.environ.get("BCODER_S3_MAX_CONCURRENCY", "8"))


def _transfer_config() -> Any:
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
        return BcoderError(f"{uri}: bucket {split(uri)[0]!r} does not exist")
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
        return client().meta.endpoint_url
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


class S3Backend:
    """``s3://bucket/key`` objects; only a manifest makes a prefix an artifact."""

    user_data = False

    def join(self, uri: str, *parts: str) -> str:
        return "/".join([uri.rstrip("/"), *clean_parts(parts)])

    def local_path(self, uri: str) -> None:
        return None

    def read_bytes(self, uri: str) -> bytes | None:
        # A missing key is None; a missing bucket is an error (a wrong URI, not an absent artifact).
        bucket, key = split(uri)
        s3 = client()
        with _s3_call(uri):
            try:
                return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            except s3.exceptions.NoSuchKey:
                return None

    def write_bytes(self, uri: str, data: bytes, *, where: str | None = None) -> None:
        bucket, key = split(uri)
        with _s3_call(where or uri):
            client().put_object(Bucket=bucket, Key=key, Body=data)

    def list_names(self, uri: str) -> list[str]:
        bucket, key = split(uri)
        names: list[str] = []
        pages = client().get_paginator("list_objects_v2").paginate
        with _s3_call(uri):
            for page in pages(Bucket=bucket, Prefix=key + "/", Delimiter="/"):
                names.extend(o["Key"][len(key) + 1 :] for o in page.get("Contents", []))
        return sorted(names)

    def delete(self, uri: str, *, tree: bool = False, where: str | None = None) -> None:
        bucket, key = split(uri)
        s3 = client()
        with _s3_call(where or uri):
            if not tree:
                s3.delete_object(Bucket=bucket, Key=key)
                return
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key + "/"):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})

    def staging(self, uri: str) -> AbstractContextManager[Path]:
        return scratch_dir("out")

    def check_writable(self, uri: str) -> None:
        # Three small calls on a probe key, before a stage does its work. A GET first: it names
        # a missing bucket or bad credentials precisely (a HEAD's error has no code), and some
        # servers (SeaweedFS) create a missing bucket on PUT. Then a PUT and a DELETE: the write
        # permission. The key extends the output's own, so a policy scoped to the output's prefix
        # allows it; it is never inside a directory artifact, and readers ignore it.
        bucket, key = split(uri)
        probe = f"{key}.bcoder-probe-{secrets.token_hex(6)}"
        s3 = client()
        with _s3_call(uri):
            with contextlib.suppress(s3.exceptions.NoSuchKey):
                s3.get_object(Bucket=bucket, Key=probe)
            s3.put_object(Bucket=bucket, Key=probe, Body=b"")
            s3.delete_object(Bucket=bucket, Key=probe)

    def install(
        self, src: Path, uri: str, *, files: list[str], manifest_uri: str, manifest: bytes, keep_src: bool
    ) -> None:
        # Readers must never pair an old manifest with new files: remove the old one first.
        self.delete(manifest_uri, where=uri)
        if src.is_file():
            items = [(uri.rstrip("/"), src)]
        else:
            items = [(self.join(uri, rel), src / rel) for rel in files]
        _transfer(items, uri, upload=True)
        self.write_bytes(manifest_uri, manifest, where=uri)

    def download(self, items: list[tuple[str, Path]], *, where: str) -> None:
        _transfer(items, where, upload=False)


def _transfer(items: list[tuple[str, Path]], where: str, *, upload: bool) -> None:
    """Move (s3 uri, local path) pairs, multipart above the threshold, several at a time."""
    from boto3.s3.transfer import create_transfer_manager

    with _s3_call(where), create_transfer_manager(client(), _transfer_config()) as manager:
        futures = []
        for uri, path in items:
            bucket, key = split(uri)
            if upload:
                futures.append((uri, manager.upload(str(path), bucket, key)))
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                futures.append((uri, manager.download(bucket, key, str(path))))
        for uri, future in futures:
            with _s3_call(uri):
                try:
                    future.result()
                except Exception as exc:
                    if not upload and _error_code(exc) in ("404", "NoSuchKey"):
                        raise ArtifactCorrupt(f"{uri}: listed in the manifest but missing") from None
                    raise


BACKEND = S3Backend()
