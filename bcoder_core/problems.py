"""The normalized problem record (DESIGN §3.1) and JSONL reading and writing of problem sets."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from bcoder_core.errors import BcoderError

Format = Literal["stdin", "call", "assert"]
FORMATS: tuple[str, ...] = ("stdin", "call", "assert")


@dataclass(frozen=True)
class Problem:
    """One program-synthesis problem with its hidden tests."""

    id: str
    """Globally unique id, e.g. ``apps/train/0001``, ``mbpp/11``, ``humaneval/HumanEval/0``."""
    source: str
    """``apps``, ``mbpp``, ``humaneval`` or a built-in benchmark name."""
    split: str
    """``train``, ``test``, ``validation``, ``prompt``..."""
    question: str
    """The problem statement."""
    format: Format
    """``stdin`` (script reading stdin), ``call`` (call ``fn_name``) or ``assert`` (run assertions)."""
    tests: dict[str, Any]
    """Hidden tests: ``{"inputs": [...], "outputs": [...]}`` or ``{"asserts": [...], "setup": str}``."""
    difficulty: str | None = None
    """``introductory`` / ``interview`` / ``competition`` or another label; None when unknown."""
    starter_code: str = ""
    """Code the answer must start from (function signature, class skeleton), or empty."""
    fn_name: str | None = None
    """Function to call for the ``call`` format."""
    example_tests: dict[str, Any] = field(default_factory=dict)
    """Tests visible in the statement (the filtered protocol), same shape as ``tests``; may be empty."""
    solutions: list[str] = field(default_factory=list)
    """Reference programs; may be empty."""

    def __post_init__(self) -> None:
        problems = validate_problem_fields(self)
        if problems:
            raise BcoderError(f"problem {self.id!r}: {problems[0]}")

    @property
    def num_tests(self) -> int:
        return count_tests(self.tests)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Problem:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise BcoderError(f"problem {d.get('id')!r}: unknown field(s) {', '.join(unknown)}")
        missing = [k for k in ("id", "source", "split", "question", "format", "tests") if k not in d]
        if missing:
            raise BcoderError(f"problem {d.get('id')!r}: missing field(s) {', '.join(missing)}")
        return cls(**d)


def count_tests(tests: dict[str, Any]) -> int:
    """Number of test cases in a tests dict of either shape."""
    if not tests:
        return 0
    if "asserts" in tests:
        return len(tests["asserts"])
    return len(tests.get("inputs", []))


def validate_problem_fields(p: Problem) -> list[str]:
    """Reasons this record is malformed (empty when it is fine)."""
    reasons: list[str] = []
    if not p.id:
        reasons.append("empty id")
    if p.format not in FORMATS:
        reasons.append(f"format {p.format!r} is not one of {', '.join(FORMATS)}")
    if p.format == "call" and not p.fn_name:
        reasons.append("format 'call' needs fn_name")
    for name, tests in (("tests", p.tests), ("example_tests", p.example_tests)):
        if not isinstance(tests, dict):
            reasons.append(f"{name} must be an object")
            continue
        if not tests:
            continue
        if p.format == "assert":
            if not isinstance(tests.get("asserts"), list):
                reasons.append(f"{name} of an 'assert' problem need an 'asserts' list")
        else:
            ins, outs = tests.get("inputs"), tests.get("outputs")
            if not isinstance(ins, list) or not isinstance(outs, list):
                reasons.append(f"{name} need 'inputs' and 'outputs' lists")
            elif len(ins) != len(outs):
                reasons.append(f"{name} have {len(ins)} inputs but {len(outs)} outputs")
    if not isinstance(p.solutions, list):
        reasons.append("solutions must be a list")
    return reasons


def iter_problems(path: str | Path) -> Iterator[Problem]:
    """Problems of a JSONL file or a directory of JSONL shards, in file order."""
    from bcoder_core.jsonl import read_jsonl_located

    for file, lineno, d in read_jsonl_located(path, "problem", none="no such problem set"):
        try:
            yield Problem.from_json(d)
        except (BcoderError, TypeError) as exc:
            raise BcoderError(f"{file}:{lineno}: {exc}") from None


def read_problems(path: str | Path) -> list[Problem]:
    """All problems of a problem set; duplicate ids are an error."""
    problems = list(iter_problems(path))
    seen: set[str] = set()
    for p in problems:
        if p.id in seen:
            raise BcoderError(f"{path}: duplicate problem id {p.id!r}")
        seen.add(p.id)
    return problems


def write_problems(problems: Iterable[Problem], path: str | Path) -> int:
    """Write problems as JSONL atomically (temp file then rename); returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    n = 0
    with tmp.open("w", encoding="utf-8") as f:
        for p in problems:
            f.write(json.dumps(p.to_json(), ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)
    return n
