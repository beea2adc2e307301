"""JSON Lines files: one JSON object per line, or a directory of ``*.jsonl`` shards read in name order.

Every stage's record files (problem sets, samples, results) go through here, so a sharded output
(``part-I-of-N.jsonl`` from an Indexed Job) reads like one file and a bad line is one error naming
the file and line.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from bcoder_core.errors import BcoderError

Line = tuple[int, dict[str, Any] | None, str | None]
"""One non-blank line of a JSONL file: its number, the object (or None) and why not (or None)."""


def jsonl_files(path: Path, what: str, none: str | None = None) -> list[Path]:
    """The file itself, or the sorted ``*.jsonl`` files of a directory.

    ``none`` replaces the message for a path that does not exist (default ``no such <what> file``).
    """
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
        if not files:
            raise BcoderError(f"{path}: directory holds no *.jsonl {what} files")
        return files
    if not path.exists():
        raise BcoderError(f"{path}: {none or f'no such {what} file'}")
    return [path]


def iter_lines(file: Path, opener: Callable[[Path], BinaryIO] | None = None) -> Iterator[Line]:
    """``(line number, object, None)`` or ``(line number, None, reason)`` for each non-blank line.

    Lines are read as bytes and decoded one by one, so a line that is not UTF-8 is a bad line with a
    reason, like one that is not JSON or not an object, never a ``UnicodeDecodeError``.
    """
    with (opener or _open_binary)(file) as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield lineno, None, f"not UTF-8 text (byte {exc.start} of the line)"
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                yield lineno, None, f"not valid JSON ({exc.msg})"
                continue
            if not isinstance(obj, dict):
                yield lineno, None, f"not a JSON object (a {type(obj).__name__})"
                continue
            yield lineno, obj, None


def _open_binary(file: Path) -> BinaryIO:
    return file.open("rb")


def read_jsonl_located(
    path: str | Path, what: str = "records", required: Sequence[str] = (), none: str | None = None
) -> Iterator[tuple[Path, int, dict[str, Any]]]:
    """``(file, line number, object)`` of every record, in order; a bad line is an error naming both."""
    for file in jsonl_files(Path(path), what, none):
        for lineno, rec, error in iter_lines(file):
            if rec is None:
                raise BcoderError(f"{file}:{lineno}: {error}")
            if missing := _missing(rec, required):
                raise BcoderError(f"{file}:{lineno}: a {what} record needs {', '.join(missing)}")
            yield file, lineno, rec


def _missing(rec: dict[str, Any], required: Sequence[str]) -> list[str]:
    return [k for k in required if k not in rec]


KEY_FIELDS = ("problem_id", "sample_id")


def read_keyed(
    path: str | Path,
    what: str,
    required: Sequence[str] = KEY_FIELDS,
    *,
    key_fields: Sequence[str] = KEY_FIELDS,
) -> Iterator[dict[str, Any]]:
    """Records keyed by (problem_id, sample_id): samples, results.

    Beyond :func:`read_jsonl`: each id is a string or an integer (not a list, an object or a bool); a key
    seen twice is an error naming both lines (two verdicts for one sample would be counted twice or
    silently dropped); and input with no record at all is an error, since every command that reads
    samples or results has nothing to do then (an empty shard inside a directory is fine).
    """
    seen: dict[tuple[str, ...], str] = {}
    for file, lineno, rec in read_jsonl_located(path, what, required):
        where = f"{file}:{lineno}"
        for k in key_fields:
            value = rec.get(k)
            if isinstance(value, bool) or not isinstance(value, str | int):
                raise BcoderError(
                    f"{where}: {k} must be a string or an integer, got {json.dumps(value)[:60]}"
                )
        key = tuple(json.dumps(rec[k]) for k in key_fields)
        if key in seen:
            ids = "/".join(str(rec[k]) for k in key_fields)
            raise BcoderError(f"{where}: duplicate {what} {ids} (first at {seen[key]})")
        seen[key] = where
        yield rec
    if not seen:
        raise BcoderError(f"{path}: holds no {what} records")


def read_jsonl(
    path: str | Path, what: str = "records", required: Sequence[str] = ()
) -> Iterator[dict[str, Any]]:
    """Objects of a JSONL file or of a directory of ``*.jsonl`` files, in order; blank lines skipped.

    A record without one of the ``required`` keys is an error naming the file and line."""
    for _, _, rec in read_jsonl_located(path, what, required):
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
