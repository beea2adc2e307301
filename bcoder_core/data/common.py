"""What every loader shares: the load result, bad-record bookkeeping, JSON helpers.

A loader never drops a record silently (DESIGN §3.1): each bad record is kept in
``LoadResult.skipped`` as ``(id, reason)``; with ``strict=True`` the first one is a ``BcoderError``.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from bcoder_core.errors import BcoderError
from bcoder_core.jsonl import Line, iter_lines
from bcoder_core.problems import Problem


@dataclass(frozen=True)
class BadRecord:
    """A record a loader refused, with the reason in a few words."""

    id: str
    reason: str

    def __str__(self) -> str:
        return f"{self.id}: {self.reason}"


@dataclass
class LoadResult:
    """Problems a loader kept, in source order, and the records it skipped."""

    problems: list[Problem] = field(default_factory=list)
    skipped: list[BadRecord] = field(default_factory=list)

    def summary(self) -> str:
        return f"kept {len(self.problems)}, skipped {len(self.skipped)}"

    def extend(self, other: LoadResult) -> None:
        self.problems.extend(other.problems)
        self.skipped.extend(other.skipped)


class Collector:
    """Accumulates a ``LoadResult``; turns bad records into errors when ``strict``."""

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self.result = LoadResult()
        self._ids: set[str] = set()

    def bad(self, record_id: str, reason: str) -> None:
        if self.strict:
            raise BcoderError(f"{record_id}: {reason} (--strict)")
        self.result.skipped.append(BadRecord(record_id, reason))

    def keep(self, problem: Problem) -> None:
        if problem.id in self._ids:
            self.bad(problem.id, "duplicate id")
            return
        self._ids.add(problem.id)
        self.result.problems.append(problem)

    def rows(self, path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
        """``("<file>:<line>", object)`` of each JSON object of ``path``; other lines are bad records."""
        for lineno, row, error in iter_jsonl(path):
            where = f"{path.name}:{lineno}"
            if row is None:
                self.bad(where, str(error))
            else:
                yield where, row

    def build(self, record_id: str, **fields: Any) -> None:
        """Construct a Problem from ``fields``; a validation failure is a bad record."""
        try:
            problem = Problem(id=record_id, **fields)
        except BcoderError as exc:
            # Problem's own message starts with "problem '<id>': ": keep only the reason.
            msg = str(exc)
            prefix = f"problem {record_id!r}: "
            self.bad(record_id, msg[len(prefix) :] if msg.startswith(prefix) else msg)
            return
        self.keep(problem)


def _open(path: Path) -> BinaryIO:
    """Open a file as bytes, transparently gunzipping ``*.gz``."""
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def iter_jsonl(path: Path) -> Iterator[Line]:
    """Yield ``(line number, object or None, error or None)`` for each non-blank line (``*.gz`` too)."""
    return iter_lines(path, _open)


def natural_key(name: str) -> tuple:
    """Sort key that orders ``2`` before ``10`` and keeps zero-padded names in order."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def normalize_newlines(text: str) -> str:
    return text.replace("\r\n", "\n")
