"""Artifacts by URI: a local path or ``s3://bucket/prefix`` (DESIGN §1).

LOCAL-ONLY FIRST CUT: the storage engineer replaces this with the full module (S3 through boto3,
manifests verified on read). The two functions stage commands use, ``input_path`` and
``output_path``, keep their signatures.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bcoder_core.errors import BcoderError


def input_path(uri: str) -> Path:
    """A local path holding what ``uri`` names (a file or an artifact directory)."""
    if uri.startswith("s3://"):
        raise BcoderError(f"{uri}: S3 support is not installed yet")
    path = Path(uri)
    if not path.exists():
        raise BcoderError(f"{uri}: no such file or artifact")
    return path


@contextmanager
def output_path(uri: str, *, kind: str, config: dict | None = None) -> Iterator[Path]:
    """Yield a local path to write the output named by ``uri``; publish it on a clean exit.

    A URI whose last component has a suffix (``results.jsonl``) is a file, otherwise a directory.
    On an exception nothing is left at ``uri``.
    """
    del kind, config
    if uri.startswith("s3://"):
        raise BcoderError(f"{uri}: S3 support is not installed yet")
    final = Path(uri)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    target = staging / final.name
    if not final.suffix:
        target.mkdir()
    try:
        yield target
        if final.is_dir():
            shutil.rmtree(final)
        target.replace(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
