"""JSON Lines files: one JSON object per line, or a directory of ``*.jsonl`` shards read in name order.

Every stage's record files (problem sets, samples, results) go through here, so a sharded output
(``part-I-of-N.jsonl`` from an Indexed Job) reads like one file and a bad line is one error naming
the file and line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from bcoder_core.errors import BcoderError


def jsonl_files(path: Path, what: str) -> list[Path]:
    """The file itself, or the sorted ``*.jsonl`` files of a directory."""
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
        if not files:
            raise BcoderError(f"{path}: directory holds no *.jsonl {what} files")
        return files
    if not path.exists():
        raise BcoderError(f"{path}: no such {what} file")
    return [path]


def read_jsonl(path: str | Path, what: str = "records") -> Iterator[dict[str, Any]]:
    """Objects of a JSONL file or of a directory of ``*.jsonl`` files, in order; blank lines skipped."""
    for file in jsonl_files(Path(path), what):
        with file.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise BcoderError(f"{file}:{lineno}: not valid JSON ({exc.msg})") from None
                if not isinstance(rec, dict):
                    raise BcoderError(f"{file}:{lineno}: expected a JSON object")
                yield rec


def write_jsonl(records: Iterable[dict[str, Any]], path: Path) -> int:
    """Write records one per line (UTF-8, non-ASCII kept); returns the count."""
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n
