"""The Problem record and problem-set JSONL I/O (DESIGN §3.1)."""

from __future__ import annotations

import json

import pytest
from helpers.paths import FIXTURES

from bcoder_core.data import load_apps, load_humaneval, load_mbpp
from bcoder_core.errors import BcoderError
from bcoder_core.problems import Problem, read_problems, write_problems


def _stdin(pid: str = "x/train/1", **kw) -> Problem:
    fields = dict(
        id=pid,
        source="x",
        split="train",
        question="Add two numbers.",
        format="stdin",
        tests={"inputs": ["1 2\n"], "outputs": ["3\n"]},
    )
    fields.update(kw)
    return Problem(**fields)


def test_defaults_and_num_tests():
    p = _stdin()
    assert p.difficulty is None and p.starter_code == "" and p.fn_name is None
    assert p.example_tests == {} and p.solutions == []
    assert p.num_tests == 1
    a = _stdin(format="assert", tests={"asserts": ["assert f() == 1", "assert f() == 1"], "setup": ""})
    assert a.num_tests == 2


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"format": "json"}, "format"),
        ({"format": "call"}, "fn_name"),
        ({"tests": {"inputs": ["1"], "outputs": []}}, "1 inputs but 0 outputs"),
        ({"format": "assert", "tests": {"inputs": []}}, "asserts"),
        ({"id": ""}, "empty id"),
        ({"example_tests": {"inputs": "1"}}, "example_tests"),
    ],
)
def test_invalid_records_are_errors(kw, needle):
    with pytest.raises(BcoderError, match=needle):
        _stdin(**kw)


def test_round_trip_and_shards(tmp_path):
    problems = [_stdin(f"x/train/{i}") for i in range(3)]
    assert write_problems(problems, tmp_path / "p.jsonl") == 3
    assert read_problems(tmp_path / "p.jsonl") == problems
    assert not list(tmp_path.glob("*.partial"))
    shards = tmp_path / "shards"
    write_problems(problems[:2], shards / "a.jsonl")
    write_problems(problems[2:], shards / "b.jsonl")
    assert read_problems(shards) == problems


def test_real_problem_sets_round_trip(tmp_path):
    problems = (
        load_apps(FIXTURES / "apps").problems
        + load_mbpp(FIXTURES / "mbpp" / "mbpp.jsonl", split="prompt").problems
        + load_humaneval().problems[:5]
    )
    write_problems(problems, tmp_path / "all.jsonl")
    assert read_problems(tmp_path / "all.jsonl") == problems


def test_read_errors_name_file_and_line(tmp_path):
    good = json.dumps(_stdin().to_json())
    f = tmp_path / "p.jsonl"
    f.write_text(good + "\n{broken\n")
    with pytest.raises(BcoderError, match=r"p\.jsonl:2: not valid JSON"):
        read_problems(f)
    f.write_text(good + "\n" + good + "\n")
    with pytest.raises(BcoderError, match="duplicate problem id"):
        read_problems(f)
    d = dict(_stdin().to_json(), extra=1)
    f.write_text(json.dumps(d) + "\n")
    with pytest.raises(BcoderError, match=r"p\.jsonl:1: .*unknown field\(s\) extra"):
        read_problems(f)
    with pytest.raises(BcoderError, match="no such problem set"):
        read_problems(tmp_path / "missing.jsonl")
