"""The manifest format (``bcoder-artifact/1``): building, parsing and verifying, on local files.

Nothing here knows where artifacts are stored; ``bcoder_core.storage`` moves the bytes through a
backend and asks this module what they must be.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from bcoder_core.errors import ArtifactCorrupt, ArtifactNotFound

MANIFEST = "manifest.json"
FILE_MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_FORMAT = "bcoder-artifact/1"
_HASH_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def walk_files(root: Path) -> list[str]:
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
            repo = Path(__file__).resolve().parents[2]
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


def build_manifest(local: Path, *, kind: str, config: dict | None, layout: str) -> dict:
    """The manifest of the local file or directory ``local`` as it is now."""
    if layout == "file":
        rels = [local.name]
        paths = [local]
    else:
        rels = walk_files(local)
        paths = [local / rel for rel in rels]
    files = [
        {"path": rel, "size": path.stat().st_size, "sha256": sha256_file(path)}
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


def manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()


def parse_manifest(data: bytes, where: str) -> dict:
    """A manifest from its bytes; ``ArtifactCorrupt`` naming ``where`` if it is not one."""
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


def looks_like_ours(data: bytes) -> bool:
    try:
        return json.loads(data).get("format") == MANIFEST_FORMAT
    except (ValueError, AttributeError):
        return False


def verify_file(path: Path, entry: dict, name: str, *, sha256: bool = True) -> None:
    """Raise ArtifactCorrupt naming ``name`` unless ``path`` has the manifest's size (and sha256)."""
    if not path.is_file():
        raise ArtifactCorrupt(f"{name}: listed in the manifest but missing")
    size = path.stat().st_size
    if size != entry["size"]:
        raise ArtifactCorrupt(f"{name}: size {size} bytes, manifest says {entry['size']}")
    if sha256 and sha256_file(path) != entry["sha256"]:
        raise ArtifactCorrupt(f"{name}: sha256 does not match the manifest")


def verify_local(root: Path, manifest: dict, name: Callable[[str], str], *, sha256: bool = True) -> None:
    """Verify every file the manifest lists under ``root``; errors name ``name(<file>)``.

    A file artifact's one file is ``root`` itself and is named ``name("")``. Without ``sha256`` only
    sizes are compared (cheap: no file is read).
    """
    if manifest.get("layout") == "file":
        (entry,) = manifest["files"]
        verify_file(root, entry, name(""), sha256=sha256)
        return
    for entry in manifest["files"]:
        verify_file(root / entry["path"], entry, name(entry["path"]), sha256=sha256)


def sizes_match(local: Path, manifest: dict) -> bool:
    """Cheap check of a cached copy: every listed file there with its size."""
    if manifest.get("layout") == "file":
        paths = [(local, manifest["files"][0])]
    else:
        paths = [(local / e["path"], e) for e in manifest["files"]]
    return all(p.is_file() and p.stat().st_size == e["size"] for p, e in paths)


_PART = re.compile(r"^(?P<stem>.+)-(?P<index>\d+)-of-(?P<count>\d+)(?P<suffix>\.[^/]*)?$")


def collection_manifest(uri: str, names: list[str], member: Callable[[str], dict]) -> dict | None:
    """A directory manifest for the complete set of sharded file artifacts ``part-I-of-N.ext``
    among ``names`` (what the shards of an Indexed Job write under ``uri``), or None.

    ``member(name)`` is the manifest of the part ``name``. Only parts with their own manifest
    count; a set with any part missing is ``ArtifactNotFound`` naming the missing ones, so a
    reader never takes 3 of 4 shards for the whole.
    """
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
        found = member(name)
        (entry,) = found["files"]
        files.append({"path": name, "size": entry["size"], "sha256": entry["sha256"]})
        kinds.add(found.get("kind"))
    return {
        "format": MANIFEST_FORMAT,
        "kind": kinds.pop() if len(kinds) == 1 else None,
        "layout": "directory",
        "collection": True,
        "files": files,
        "total_bytes": sum(f["size"] for f in files),
    }
