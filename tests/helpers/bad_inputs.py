"""Bad input to every command: each must be one ``error:`` line, exit 2, nothing lost, nothing partial.

Each case builds its inputs in a fresh directory, runs one ``bcoder`` command line as a user would,
and is judged by :func:`judge`. The table is also a script, so the same cases can be counted on
another checkout (the numbers before and after a change):

    python3 tests/helpers/bad_inputs.py --repo /path/to/checkout
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

PROBLEM = {
    "id": "t/train/0",
    "source": "t",
    "split": "train",
    "difficulty": None,
    "question": "Print the sum of two integers.",
    "starter_code": "",
    "format": "stdin",
    "fn_name": None,
    "tests": {"inputs": ["1 2\n"], "outputs": ["3\n"]},
    "example_tests": {},
    "solutions": ["a, b = map(int, input().split())\nprint(a + b)\n"],
}
MBPP = {
    "task_id": 11,
    "text": "Write a function to add one.",
    "code": "def f(x):\n    return x + 1\n",
    "test_list": ["assert f(1) == 2", "assert f(2) == 3", "assert f(0) == 1"],
    "test_setup_code": "",
    "challenge_test_list": [],
}
TINY = "configs/models/tiny.json"
SAMPLE = {"problem_id": "t/train/0", "sample_id": 0, "code": PROBLEM["solutions"][0]}
RESULT = {
    "problem_id": "t/train/0",
    "sample_id": 0,
    "verdict": "passed",
    "reward": 1.0,
    "tests_passed": 1,
    "tests_total": 1,
    "duration_s": 0.01,
    "detail": "",
}


def _jsonl(path: Path, *records: object) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _user_dir(path: Path) -> Path:
    """A directory of the user's that a command must never delete."""
    path.mkdir()
    (path / "keep.txt").write_text("mine\n")
    return path


def _corrupt_model(path: Path) -> Path:
    path.mkdir()
    (path / "config.json").write_text('{"model_type": "t5", "d_model": ')
    (path / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    return path


@dataclasses.dataclass(frozen=True)
class Case:
    """One bad command line: ``argv(d)`` builds its inputs in ``d`` and returns the words after ``bcoder``."""

    command: str
    name: str
    argv: Callable[[Path], list[str]]
    keep: tuple[str, ...] = ()
    """Paths (relative to the case directory) that must be exactly as they were afterwards."""
    absent: tuple[str, ...] = ()
    """Paths that must not exist afterwards (no partial output)."""
    expect: str = ""
    """Text the error line must hold (that it names the right thing, not another problem)."""


def _p(d: Path) -> str:
    return str(_jsonl(d / "problems.jsonl", PROBLEM))


def _s(d: Path, *records: object) -> str:
    return str(_jsonl(d / "samples.jsonl", *(records or (SAMPLE,))))


def _exe(d: Path, samples: Path | str | None = None, *extra: str, out: Path | str | None = None) -> list[str]:
    """``bcoder execute`` on the good problem set, with these samples and output."""
    return ["execute", "--problems", _p(d), "--samples", str(samples or _s(d)), "--out", str(out or d / "r.jsonl"),
            *extra]  # fmt: skip


def _ev(d: Path, results: Path, *extra: str) -> list[str]:
    """``bcoder evaluate`` on the good problem set with these results."""
    return ["evaluate", "--problems", _p(d), "--results", str(results), *extra]


def _no_r(command: str, name: str, argv: Callable[[Path], list[str]]) -> Case:
    """A case whose output ``r.jsonl`` must not appear."""
    return Case(command, name, argv, absent=("r.jsonl",))


CASES: list[Case] = [
    _no_r("execute", "samples not UTF-8", lambda d: _exe(d, _bytes(d / "s.jsonl", b'{"a": "\xff\xfe"}\n'))),
    _no_r(
        "execute",
        "samples line is JSON but not an object",
        lambda d: _exe(d, _bytes(d / "s.jsonl", b"[1, 2]\n")),
    ),
    _no_r(
        "execute", "list-valued problem id", lambda d: _exe(d, _s(d, {**SAMPLE, "problem_id": ["t/train/0"]}))
    ),
    _no_r("execute", "duplicate (problem_id, sample_id)", lambda d: _exe(d, _s(d, SAMPLE, SAMPLE))),
    _no_r("execute", "empty samples file", lambda d: _exe(d, _bytes(d / "s.jsonl", b""))),
    _no_r("execute", "workers 0", lambda d: _exe(d, None, "--workers", "0")),
    Case(
        "execute",
        "problems not UTF-8",
        lambda d: [
            "execute",
            "--problems",
            str(_bytes(d / "p.jsonl", b'{"id": "\xff"}\n')),
            "--samples",
            _s(d),
            "--out",
            str(d / "r.jsonl"),
        ],
        absent=("r.jsonl",),
    ),
    Case(
        "execute",
        "output's parent is a file",
        lambda d: _exe(d, out=f"{_bytes(d / 'f', b'x')}/r.jsonl"),
        keep=("f",),
    ),
    Case(
        "execute",
        "output is a user's directory",
        lambda d: _exe(d, out=_user_dir(d / "out")),
        keep=("out/keep.txt",),
    ),
    # evaluate
    Case("evaluate", "results line not an object", lambda d: _ev(d, _bytes(d / "r.jsonl", b'"passed"\n'))),
    Case("evaluate", "empty results file", lambda d: _ev(d, _bytes(d / "r.jsonl", b"\n"))),
    Case("evaluate", "duplicate results", lambda d: _ev(d, _jsonl(d / "r.jsonl", RESULT, RESULT))),
    Case(
        "evaluate",
        "--out-md is a user's directory",
        lambda d: _ev(d, _jsonl(d / "r.jsonl", RESULT), "--out-md", str(_user_dir(d / "md"))),
        keep=("md/keep.txt",),
    ),
    Case("evaluate", "results not UTF-8", lambda d: _ev(d, _bytes(d / "r.jsonl", b"\xc3\x28\n"))),
    # data prepare
    Case(
        "data prepare",
        "--out X.jsonl is a user's directory",
        lambda d: [
            "data",
            "prepare",
            "mbpp",
            "--source",
            str(_jsonl(d / "mbpp.jsonl", MBPP)),
            "--out",
            str(_user_dir(d / "X.jsonl")),
        ],
        keep=("X.jsonl/keep.txt",),
    ),
    Case(
        "data prepare",
        "source not UTF-8",
        lambda d: [
            "data",
            "prepare",
            "mbpp",
            "--source",
            str(_bytes(d / "mbpp.jsonl", b"\xff\xfe\xfd\n")),
            "--out",
            str(d / "o.jsonl"),
        ],
        absent=("o.jsonl",),
    ),
    Case(
        "benchmark generate",
        "--out a non-empty user directory",
        lambda d: [
            "benchmark",
            "generate",
            "--out",
            str(_user_dir(d / "bench")),
            "--n-train",
            "5",
            "--n-test",
            "2",
        ],
        keep=("bench/keep.txt",),
    ),
    # sample / rank / annotate / value-report: corrupt models and stores in plain directories
    Case(
        "sample",
        "model directory with corrupt files",
        lambda d: (
            f"sample --model {_corrupt_model(d / 'm')} --problems {_p(d)} --out {d / 's.jsonl'}".split()
        ),
        absent=("s.jsonl",),
    ),
    Case(
        "sample",
        "top-p out of range",
        lambda d: [
            "sample",
            "--model",
            str(d),
            "--problems",
            _p(d),
            "--out",
            str(d / "s.jsonl"),
            "--top-p",
            "2",
        ],
        absent=("s.jsonl",),
    ),
    _no_r(
        "rank",
        "model directory with corrupt files",
        lambda d: [
            "rank",
            "--model",
            str(_corrupt_model(d / "m")),
            "--phi",
            str(d / "m"),
            "--problems",
            _p(d),
            "--samples",
            _s(d),
            "--out",
            str(d / "r.jsonl"),
        ],
    ),
    Case(
        "annotate",
        "model directory with corrupt files",
        lambda d: f"annotate --model {_corrupt_model(d / 'm')} --problems {_p(d)} --out {d / 't'}".split(),
        absent=("t",),
    ),
    Case(
        "value-report",
        "store directory of garbage shards",
        lambda d: ["value-report", "--transitions", str(_user_dir(d / "store"))],
        keep=("store/keep.txt",),
    ),
    # train
    Case(
        "train phi",
        "gamma 0",
        lambda d: [
            "train",
            "phi",
            f"output={d / 'phi'}",
            f"transitions={d}",
            f"model.shape={TINY}",
            "gamma=0",
        ],
        absent=("phi",),
    ),
    Case(
        "train phi",
        "transitions a plain directory",
        lambda d: [
            "train",
            "phi",
            f"output={d / 'phi'}",
            f"transitions={_user_dir(d / 'store')}",
            f"model.shape={TINY}",
        ],
        keep=("store/keep.txt",),
        absent=("phi",),
    ),
    # pipeline
    Case(
        "pipeline run",
        "--run-dir is a file",
        lambda d: f"pipeline run --config configs/smoke.yaml --run-dir {_bytes(d / 'f', b'x')}".split(),
        keep=("f",),
    ),
    Case(
        "pipeline run",
        "config not UTF-8",
        lambda d: ["pipeline", "run", "--config", str(_bytes(d / "c.yaml", b"run_dir: \xff\xfe\n"))],
    ),
    Case(
        "pipeline run",
        "execute.workers 0 (found at load, before any stage)",
        lambda d: f"pipeline run --config configs/smoke.yaml --run-dir {d / 'run'} execute.workers=0".split(),
        absent=("run/benchmark",),
    ),
]


# What each error must be about (a case that fails for another reason has not tested its input).
_EXPECT = {
    ("execute", "samples not UTF-8"): "utf-8",
    ("execute", "samples line is JSON but not an object"): "s.jsonl:1",
    ("execute", "list-valued problem id"): "problem_id",
    ("execute", "duplicate (problem_id, sample_id)"): "duplicate",
    ("execute", "empty samples file"): "no sample",
    ("execute", "problems not UTF-8"): "utf-8",
    ("execute", "output's parent is a file"): "/f",
    ("execute", "output is a user's directory"): "/out",
    ("execute", "workers 0"): "workers",
    ("evaluate", "results line not an object"): "r.jsonl:1",
    ("evaluate", "empty results file"): "no result",
    ("evaluate", "duplicate results"): "t/train/0",
    ("evaluate", "--out-md is a user's directory"): "/md",
    ("evaluate", "results not UTF-8"): "utf-8",
    ("data prepare", "--out X.jsonl is a user's directory"): "X.jsonl",
    ("data prepare", "source not UTF-8"): "mbpp.jsonl",
    ("benchmark generate", "--out a non-empty user directory"): "/bench",
    ("sample", "model directory with corrupt files"): "/m",
    ("sample", "top-p out of range"): "top-p",
    ("rank", "model directory with corrupt files"): "/m",
    ("annotate", "model directory with corrupt files"): "/m",
    ("value-report", "store directory of garbage shards"): "/store",
    ("train phi", "gamma 0"): "gamma",
    ("train phi", "transitions a plain directory"): "/store",
    ("pipeline run", "--run-dir is a file"): "/f",
    ("pipeline run", "config not UTF-8"): "utf-8",
    ("pipeline run", "execute.workers 0 (found at load, before any stage)"): "execute.workers",
}
CASES = [dataclasses.replace(c, expect=_EXPECT[(c.command, c.name)]) for c in CASES]


@dataclasses.dataclass(frozen=True)
class Outcome:
    case: Case
    verdict: str
    """clean | traceback | exit N | many lines | data loss | partial output | stray scratch"""
    stderr: str


def _snapshot(d: Path, paths: tuple[str, ...]) -> dict[str, bytes | None]:
    return {p: (d / p).read_bytes() if (d / p).is_file() else None for p in paths}


def _scratch(root: Path) -> list[Path]:
    """What a command left in its temporary directory (empty directories do not count)."""
    return [p for p in root.rglob("*") if not p.is_dir() or any(p.iterdir())]


def judge(case: Case, repo: Path, d: Path, env: dict[str, str] | None = None) -> Outcome:
    """Run ``case`` from checkout ``repo`` in directory ``d`` and say how it ended."""
    d.mkdir(parents=True, exist_ok=True)
    words = case.argv(d)
    before = _snapshot(d, case.keep)
    tmp = d / "tmp"
    tmp.mkdir()
    run_env = {**os.environ, **(env or {}), "TMPDIR": str(tmp), "PYTHONPATH": str(repo)}
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.cli", *words],
        cwd=repo,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    err = proc.stderr.strip()
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("warning:")]
    if "Traceback (most recent call last)" in err:
        verdict = "traceback"
    elif proc.returncode != 2:
        verdict = f"exit {proc.returncode}"
    elif _snapshot(d, case.keep) != before or any(v is None for v in before.values()):
        verdict = "data loss"
    elif any((d / p).exists() for p in case.absent):
        verdict = "partial output"
    elif not lines or not lines[-1].startswith("error: ") or sum(ln.startswith("error") for ln in lines) != 1:
        # report lines before it (records skipped, a summary) are fine; the error is one line, last
        verdict = "many lines"
    elif _scratch(tmp):
        verdict = "stray scratch"
    elif case.expect.lower() not in lines[-1].lower():
        verdict = "wrong error"
    else:
        verdict = "clean"
    return Outcome(case, verdict, err)


def main(argv: list[str]) -> int:
    repo = Path(argv[argv.index("--repo") + 1]).resolve() if "--repo" in argv else Path(__file__).parents[2]
    per_command: dict[str, Counter] = {}
    with tempfile.TemporaryDirectory() as root:
        for i, case in enumerate(CASES):
            outcome = judge(case, repo, Path(root) / f"case{i}")
            per_command.setdefault(case.command, Counter())[outcome.verdict] += 1
            last = outcome.stderr.strip().splitlines()[-1:] or [""]
            print(f"{outcome.verdict:<15} {case.command:<18} {case.name}: {last[0][:110]}")
    print()
    total = Counter()
    for command, counts in per_command.items():
        total += counts
        print(f"{command:<18} {counts['clean']}/{sum(counts.values())} clean")
    print(f"{'all':<18} {total['clean']}/{sum(total.values())} clean")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
