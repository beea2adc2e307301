"""APPS loaders: the folder layout as distributed, and the Hugging Face JSONL export.

Folder layout (APPS, CodeRL's ``data/APPS``, and the built-in benchmark), one folder per problem::

    <split>/<folder>/question.txt         statement                          required
                     input_output.json    {"inputs", "outputs"[, "fn_name"]}  required
                     solutions.json       ["program", ...]                    optional (APPS test has gaps)
                     metadata.json        {"difficulty", "url"}              optional (difficulty None)
                     starter_code.py      signature / class skeleton         optional
                     example_tests.json   {"inputs", "outputs"}              optional, a bcoder extension:
                                          when present it replaces the examples parsed from the statement

``fn_name`` in ``input_output.json`` makes the problem call-based (``format == "call"``), otherwise it
reads stdin. Ids are ``<name>/<split>/<folder>`` (``name`` defaults to ``apps``; the built-in
benchmark passes its own). ``source`` may be a folder of problem folders (split = the folder's name
unless given) or a folder holding ``train/`` and ``test/`` (both loaded, split from each folder's name;
a given split selects one of them).

Hugging Face export (``codeparrot/apps``): JSONL rows with ``problem_id, question, solutions,
input_output, difficulty, url, starter_code``, where ``solutions`` and ``input_output`` are JSON
*strings* (already decoded values are accepted too; ``""`` means none). Ids use the problem id zero-
padded to four digits, as the folder names are, so both layouts give the same ids. The split is the
file's name (``train.jsonl``, ``test.jsonl``) unless given.

Normalisation: stdin tests given as lists of lines (a few APPS problems) are joined with newlines,
as the original APPS harness does. Example tests come from ``example_tests.json`` or are parsed from
the statement (``bcoder_core.data.examples``; best effort, may be empty). Parsed examples are
dropped when one of them has the input of a hidden test but a different output (a mis-parse).

Bad records (a required file missing, broken JSON, non-UTF-8 text, no hidden tests, inputs and
outputs of different lengths, a call-based input that is not an argument list, a stdin test that is
not text, a duplicate id) are reported by id with the reason and skipped (``strict``: an error).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bcoder_core.data.common import Collector, LoadResult, natural_key
from bcoder_core.data.examples import parse_examples
from bcoder_core.errors import BcoderError

SPLIT_NAMES = ("train", "test")
_FILE_SPLITS = ("train", "test", "validation", "valid", "dev")


class _Bad(Exception):
    """A record-level problem; its message is the reason."""


def load_apps(
    source: str | Path, *, split: str | None = None, name: str = "apps", strict: bool = False
) -> LoadResult:
    """Load APPS-style problems from a folder layout or a JSONL export (see the module docstring)."""
    source = Path(source)
    _check_name(name)
    if source.is_file():
        return load_apps_jsonl(source, split=split, name=name, strict=strict)
    if not source.is_dir():
        raise BcoderError(f"{source}: no such file or folder")
    children = sorted((c for c in source.iterdir() if c.is_dir()), key=lambda c: natural_key(c.name))
    split_dirs = [source / s for s in SPLIT_NAMES if (source / s).is_dir()]
    looks_like_problems = any(
        (c / "question.txt").exists() or (c / "input_output.json").exists() for c in children
    )
    if split_dirs and not looks_like_problems:
        if split is not None:
            if not (source / split).is_dir():
                raise BcoderError(f"{source}: has no {split}/ folder")
            split_dirs = [source / split]
        result = LoadResult()
        for d in split_dirs:
            result.extend(load_apps_folder(d, split=d.name, name=name, strict=strict))
        return result
    if not children:
        jsonl = sorted(source.glob("*.jsonl")) + sorted(source.glob("*.jsonl.gz"))
        if jsonl:
            result = LoadResult()
            for f in jsonl:
                result.extend(load_apps_jsonl(f, split=split, name=name, strict=strict))
            return result
        raise BcoderError(f"{source}: holds no problem folders (question.txt, input_output.json, ...)")
    return load_apps_folder(source, split=split, name=name, strict=strict)


def load_apps_folder(
    folder: str | Path, *, split: str | None = None, name: str = "apps", strict: bool = False
) -> LoadResult:
    """Problems of one folder of APPS problem folders; split defaults to the folder's name."""
    folder = Path(folder)
    _check_name(name)
    split = split or folder.resolve().name
    out = Collector(strict)
    problem_dirs = sorted((c for c in folder.iterdir() if c.is_dir()), key=lambda c: natural_key(c.name))
    for d in problem_dirs:
        _keep(out, f"{name}/{split}/{d.name}", name, split, lambda d=d: _folder_fields(d))
    return out.result


def load_apps_jsonl(
    path: str | Path, *, split: str | None = None, name: str = "apps", strict: bool = False
) -> LoadResult:
    """Problems of an APPS JSONL export (one row per problem; fields as JSON strings)."""
    path = Path(path)
    _check_name(name)
    if split is None:
        stem = path.name.split(".")[0]
        if stem not in _FILE_SPLITS:
            raise BcoderError(f"{path}: cannot tell the split from the file name; pass --split")
        split = stem
    out = Collector(strict)
    for where, row in out.rows(path):
        pid = row.get("problem_id")
        if pid is None or pid == "":
            out.bad(where, "no problem_id")
            continue
        folder = f"{int(pid):04d}" if str(pid).isdigit() else str(pid)
        _keep(out, f"{name}/{split}/{folder}", name, split, lambda row=row: _row_fields(row))
    return out.result


def _keep(
    out: Collector, record_id: str, name: str, split: str, fields: Callable[[], dict[str, Any]]
) -> None:
    """Build one problem from the raw fields ``fields()`` reads; a bad field makes it a bad record."""
    try:
        out.build(record_id, source=name, split=split, **_problem_fields(**fields()))
    except _Bad as exc:
        out.bad(record_id, str(exc))


# ------------------------------------------------------------------------------------ helpers


def _check_name(name: str) -> None:
    if not name or "/" in name or name != name.strip():
        raise BcoderError(f"--name {name!r}: must be a non-empty word without '/'")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise _Bad(f"{path.name}: not UTF-8 text") from None


def _read_json(path: Path) -> Any:
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _Bad(f"{path.name}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def _folder_fields(d: Path) -> dict[str, Any]:
    for required in ("question.txt", "input_output.json"):
        if not (d / required).is_file():
            raise _Bad(f"missing {required}")
    meta = _read_json(d / "metadata.json") if (d / "metadata.json").is_file() else {}
    if not isinstance(meta, dict):
        raise _Bad("metadata.json: not a JSON object")
    return {
        "question": _read_text(d / "question.txt"),
        "io": _read_json(d / "input_output.json"),
        "solutions": _read_json(d / "solutions.json") if (d / "solutions.json").is_file() else [],
        "difficulty": meta.get("difficulty"),
        "starter_code": _read_text(d / "starter_code.py") if (d / "starter_code.py").is_file() else "",
        "examples": _read_json(d / "example_tests.json") if (d / "example_tests.json").is_file() else None,
    }


def _decode(row: dict[str, Any], key: str, default: Any) -> Any:
    value = row.get(key)
    if value is None or value == "":
        return default
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise _Bad(f"{key}: not valid JSON ({exc.msg})") from None
    return value


def _row_fields(row: dict[str, Any]) -> dict[str, Any]:
    question = row.get("question")
    if not isinstance(question, str) or not question:
        raise _Bad("no question")
    starter = row.get("starter_code") or ""
    if not isinstance(starter, str):
        raise _Bad("starter_code: not text")
    return {
        "question": question,
        "io": _decode(row, "input_output", None),
        "solutions": _decode(row, "solutions", []),
        "difficulty": row.get("difficulty") or None,
        "starter_code": starter,
        "examples": _decode(row, "example_tests", None),
    }


def _problem_fields(
    *, question: str, io: Any, solutions: Any, difficulty: Any, starter_code: str, examples: Any
) -> dict[str, Any]:
    if io is None or io == {}:
        raise _Bad("no hidden tests")
    if not isinstance(io, dict):
        raise _Bad("input_output: not a JSON object")
    fn_name = io.get("fn_name") or None
    fmt = "call" if fn_name else "stdin"
    tests = _tests(io, fmt, "input_output")
    if not tests["inputs"]:
        raise _Bad("no hidden tests")
    if not isinstance(solutions, list) or not all(isinstance(s, str) for s in solutions):
        raise _Bad("solutions: not a list of programs")
    if difficulty is not None and not isinstance(difficulty, str):
        raise _Bad("difficulty: not text")
    if examples is None:
        example_tests = _consistent(parse_examples(question, fmt, fn_name), tests, fmt)
    elif examples == {}:
        example_tests = {}
    else:
        example_tests = _tests(examples, fmt, "example_tests")
    return {
        "question": question,
        "format": fmt,
        "fn_name": fn_name,
        "tests": tests,
        "example_tests": example_tests,
        "difficulty": difficulty,
        "starter_code": starter_code,
        "solutions": solutions,
    }


def _norm_text(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip().split("\n"))


def _consistent(examples: dict[str, Any], tests: dict[str, Any], fmt: str) -> dict[str, Any]:
    """Parsed examples, or ``{}`` when one contradicts a hidden test with the same input.

    Statement parsing is best effort; an example whose input is also a hidden test's input but
    whose output differs was mis-parsed (an output cut at a blank line, prose taken for data), and
    a wrong example would make the filtered protocol drop correct programs.
    """
    if not examples:
        return examples
    if fmt == "stdin":
        hidden = {
            _norm_text(i): _norm_text(o) for i, o in zip(tests["inputs"], tests["outputs"], strict=True)
        }
        for i, o in zip(examples["inputs"], examples["outputs"], strict=True):
            if _norm_text(i) in hidden and hidden[_norm_text(i)] != _norm_text(o):
                return {}
    else:
        hidden_call = {json.dumps(i): o for i, o in zip(tests["inputs"], tests["outputs"], strict=True)}
        for i, o in zip(examples["inputs"], examples["outputs"], strict=True):
            key = json.dumps(i)
            if key in hidden_call and hidden_call[key] not in (o, [o]):
                return {}
    return examples


def _tests(io: Any, fmt: str, what: str) -> dict[str, Any]:
    if not isinstance(io, dict):
        raise _Bad(f"{what}: not a JSON object")
    inputs, outputs = io.get("inputs"), io.get("outputs")
    if not isinstance(inputs, list) or not isinstance(outputs, list):
        raise _Bad(f"{what}: needs 'inputs' and 'outputs' lists")
    if len(inputs) != len(outputs):
        raise _Bad(f"{what}: {len(inputs)} inputs but {len(outputs)} outputs")
    if fmt == "stdin":
        inputs = [_stdin_text(x, what, i, "input") for i, x in enumerate(inputs)]
        outputs = [_stdin_text(x, what, i, "output") for i, x in enumerate(outputs)]
    else:
        for i, args in enumerate(inputs):
            if not isinstance(args, list):
                raise _Bad(f"{what}: input {i} is not an argument list")
    return {"inputs": inputs, "outputs": outputs}


def _stdin_text(value: Any, what: str, i: int, kind: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(x, str) for x in value):
        return "\n".join(value)
    raise _Bad(f"{what}: {kind} {i} of a stdin problem is not text")
