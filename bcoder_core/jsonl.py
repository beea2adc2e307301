"""JSON Lines files: one JSON object per line, or a directory of ``*.jsonl`` shards read in name order.

Every stage's record files (problem sets, samples, results) go through here, so a sharded output
(``part-I-of-N.jsonl`` from an Indexed Job) reads like one file and a bad line is one error naming
the file and line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
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


def _missing(rec: dict[str, Any], required: Sequence[str]) -> list[str]:
    return [k for k in required if k not in rec]


def read_jsonl(
    path: str | Path, what: str = "records", required: Sequence[str] = ()
) -> Iterator[dict[str, Any]]:
    """Objects of a JSONL file or of a directory of ``*.jsonl`` files, in order; blank lines skipped.

    A record without one of the ``required`` keys is an error naming the file and line."""
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
                if missing := _missing(rec, required):
                    raise BcoderError(f"{file}:{lineno}: a {what} record needs {', '.join(missing)}")
                yield rec


def recover_jsonl(path: Path, what: str = "record", required: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The records of a file that a killed writer may have left behind, repairing it in place.

    A torn last line (not a JSON object with the ``required`` keys) is cut off, so that appending
    continues on a line boundary; a complete last record without its newline gets one. A bad line
    anywhere else is an error (the file is not what was expected). A missing file has no records.
    """
    if not path.exists():
        return []
    data = path.read_bytes()
    records: list[dict[str, Any]] = []
    good = pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        end = len(data) if nl < 0 else nl + 1
        line = data[pos:end]
        if line.strip():
            try:
                rec = json.loads(line)
            except ValueError:
                rec = None
            if not isinstance(rec, dict) or _missing(rec, required):
                if end == len(data):
                    break
                lineno = data[:pos].count(b"\n") + 1
                raise BcoderError(f"{path}: line {lineno} is not a {what}")
            if nl < 0:
                with path.open("ab") as f:
                    f.write(b"\n")
                end += 1
            records.append(rec)
        good = pos = end
    if good < len(data):
        with path.open("r+b") as f:
            f.truncate(good)
    return records


def write_jsonl(records: Iterable[dict[str, Any]], path: Path) -> int:
    """Write records one per line (UTF-8, non-ASCII kept); returns the count."""
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n
