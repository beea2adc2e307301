"""APPS loaders: folder layout, Hugging Face JSONL export, bad records, example tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers.paths import FIXTURES

from bcoder_core.data import load_apps, load_apps_jsonl, load_dataset
from bcoder_core.data.examples import parse_examples
from bcoder_core.errors import BcoderError

APPS = FIXTURES / "apps"
TRAIN = APPS / "train"
HF = FIXTURES / "apps_hf.jsonl"

EXPECTED = {
    # folder: (format, fn_name, difficulty, number of hidden tests, number of solutions, has starter)
    "0001": ("stdin", None, "interview", 1, 24, False),
    "0111": ("stdin", None, "interview", 1, 1, False),
    "2287": ("stdin", None, "competition", 3, 10, False),
    "2404": ("call", "findKthPositive", "introductory", 1, 58, True),
    "4184": ("call", "is_prime", "introductory", 8, 8, True),
}


def test_folder_layout_loads_all_five():
    result = load_apps(TRAIN)
    assert result.skipped == []
    assert result.summary() == "kept 5, skipped 0"
    by_id = {p.id: p for p in result.problems}
    assert list(by_id) == [f"apps/train/{f}" for f in EXPECTED]
    for folder, (fmt, fn, diff, ntests, nsol, starter) in EXPECTED.items():
        p = by_id[f"apps/train/{folder}"]
        assert (p.format, p.fn_name, p.difficulty) == (fmt, fn, diff)
        assert p.source == "apps" and p.split == "train"
        assert p.num_tests == ntests and len(p.solutions) == nsol
        assert bool(p.starter_code) == starter
        assert p.question == (TRAIN / folder / "question.txt").read_text(encoding="utf-8")
    assert by_id["apps/train/2404"].starter_code.startswith("class Solution:")
    assert by_id["apps/train/4184"].tests["outputs"][0] == [False]
    assert by_id["apps/train/2287"].tests["inputs"][1].startswith("5\n1 2\n")


def test_parent_folder_with_splits_and_split_selection(tmp_path):
    assert [p.id for p in load_apps(APPS).problems] == [f"apps/train/{f}" for f in EXPECTED]
    assert len(load_apps(APPS, split="train").problems) == 5
    with pytest.raises(BcoderError, match="has no test/ folder"):
        load_apps(APPS, split="test")
    both = tmp_path / "apps"
    shutil.copytree(TRAIN, both / "train")
    shutil.copytree(TRAIN / "0001", both / "test" / "0007")
    ids = [p.id for p in load_apps(both).problems]
    assert ids == [f"apps/train/{f}" for f in EXPECTED] + ["apps/test/0007"]
    assert [p.id for p in load_apps(both, split="test").problems] == ["apps/test/0007"]


def test_name_sets_source_and_prefix_and_split_overrides():
    problems = load_dataset("apps", TRAIN, name="tinybench", split="test").problems
    assert problems[0].id == "tinybench/test/0001"
    assert {p.source for p in problems} == {"tinybench"} and {p.split for p in problems} == {"test"}
    with pytest.raises(BcoderError, match="--name"):
        load_apps(TRAIN, name="a/b")
    with pytest.raises(BcoderError, match="only for the APPS layout"):
        load_dataset("mbpp", FIXTURES / "mbpp" / "mbpp.jsonl", name="x")


def test_hf_jsonl_export_matches_folder_layout(tmp_path):
    from_folders = load_apps(TRAIN).problems
    from_jsonl = load_apps(HF, split="train")
    assert from_jsonl.skipped == []
    assert [p.to_json() for p in from_jsonl.problems] == [p.to_json() for p in from_folders]
    with pytest.raises(BcoderError, match="cannot tell the split"):
        load_apps(HF)
    named = tmp_path / "test.jsonl"
    shutil.copy(HF, named)
    assert {p.split for p in load_apps(named).problems} == {"test"}
    assert load_apps(named).problems[0].id == "apps/test/0001"


def _broken_copy(tmp_path: Path) -> Path:
    root = tmp_path / "train"
    shutil.copytree(TRAIN, root)
    (root / "0001" / "question.txt").unlink()  # missing file
    (root / "0111" / "input_output.json").write_text('{"inputs": ["1"], ')  # broken JSON
    io = json.loads((root / "2287" / "input_output.json").read_text())
    io["outputs"] = io["outputs"][:2]  # 3 inputs, 2 outputs
    (root / "2287" / "input_output.json").write_text(json.dumps(io))
    (root / "4184" / "solutions.json").write_text("[1, 2]")  # not programs
    (root / "notes.txt").write_text("not a problem folder, ignored")
    return root


def test_bad_records_are_reported_by_id_and_skipped(tmp_path):
    root = _broken_copy(tmp_path)
    result = load_apps(root)
    assert [p.id for p in result.problems] == ["apps/train/2404"]
    reasons = {b.id: b.reason for b in result.skipped}
    assert reasons == {
        "apps/train/0001": "missing question.txt",
        "apps/train/0111": reasons["apps/train/0111"],
        "apps/train/2287": "input_output: 3 inputs but 2 outputs",
        "apps/train/4184": "solutions: not a list of programs",
    }
    assert reasons["apps/train/0111"].startswith("input_output.json: not valid JSON")
    assert result.summary() == "kept 1, skipped 4"
    with pytest.raises(BcoderError, match=r"apps/train/0001: missing question.txt \(--strict\)"):
        load_apps(root, strict=True)


def test_more_bad_records(tmp_path):
    root = tmp_path / "train"
    shutil.copytree(TRAIN, root)
    (root / "0001" / "input_output.json").write_text('{"inputs": [], "outputs": []}')
    (root / "0111" / "input_output.json").unlink()
    (root / "2404" / "input_output.json").write_text('{"fn_name": "f", "inputs": [5], "outputs": [1]}')
    (root / "2287" / "question.txt").write_bytes(b"\xff\xfe broken")
    (root / "4184" / "metadata.json").write_text("[]")
    reasons = {b.id: b.reason for b in load_apps(root).skipped}
    assert reasons == {
        "apps/train/0001": "no hidden tests",
        "apps/train/0111": "missing input_output.json",
        "apps/train/2287": "question.txt: not UTF-8 text",
        "apps/train/2404": "input_output: input 0 is not an argument list",
        "apps/train/4184": "metadata.json: not a JSON object",
    }


def test_optional_files_and_normalisation(tmp_path):
    root = tmp_path / "test"
    shutil.copytree(TRAIN / "0001", root / "0001")
    (root / "0001" / "solutions.json").unlink()
    (root / "0001" / "metadata.json").unlink()
    (root / "0001" / "input_output.json").write_text(
        json.dumps({"inputs": [["1 2", "3"]], "outputs": [["4"]]})
    )
    (root / "0001" / "example_tests.json").write_text(json.dumps({"inputs": ["9\n"], "outputs": ["9\n"]}))
    (p,) = load_apps(root).problems
    assert p.id == "apps/test/0001" and p.solutions == [] and p.difficulty is None
    assert p.tests == {"inputs": ["1 2\n3"], "outputs": ["4"]}
    assert p.example_tests == {"inputs": ["9\n"], "outputs": ["9\n"]}


def test_hf_jsonl_bad_rows(tmp_path, write_rows, kept_and_skipped):
    rows = [json.loads(line) for line in HF.read_text().splitlines()]
    rows[0]["input_output"] = ""
    rows[1]["solutions"] = "[not json"
    del rows[2]["problem_id"]
    f = write_rows(tmp_path / "train.jsonl", rows, "{oops\n" + json.dumps(rows[3]) + "\n")
    kept, skipped = kept_and_skipped(load_apps_jsonl(f))
    assert kept == ["apps/train/2404", "apps/train/4184"]
    assert skipped == [
        "apps/train/0001: no hidden tests",
        "apps/train/0111: solutions: not valid JSON (Expecting value)",
        "train.jsonl:3: no problem_id",
        "train.jsonl:6: not valid JSON (Expecting property name enclosed in double quotes)",
        "apps/train/2404: duplicate id",
    ]


def test_missing_source_is_an_error(tmp_path):
    with pytest.raises(BcoderError, match="no such file or folder"):
        load_apps(tmp_path / "nope")
    with pytest.raises(BcoderError, match="holds no problem folders"):
        load_apps(tmp_path)


# ------------------------------------------------------------------------------ example tests


def test_examples_of_the_real_problems():
    by_id = {p.id: p for p in load_apps(TRAIN).problems}
    # Codeforces "-----Example-----": the example is the (only) hidden test.
    assert by_id["apps/train/0001"].example_tests == by_id["apps/train/0001"].tests
    assert by_id["apps/train/0111"].example_tests == by_id["apps/train/0111"].tests
    # AtCoder "-----Sample Input-----" / "-----Sample Output-----", explanation after a blank line.
    p = by_id["apps/train/2287"]
    assert p.example_tests == {"inputs": [p.tests["inputs"][0]], "outputs": [p.tests["outputs"][0]]}
    # LeetCode "Input: arr = [...], k = 5" / "Output: 9": arguments in order, the first is the hidden test.
    p = by_id["apps/train/2404"]
    assert p.example_tests == {"inputs": [[[2, 3, 4, 7, 11], 5], [[1, 2, 3, 4], 2]], "outputs": [9, 6]}
    assert p.example_tests["inputs"][0] == p.tests["inputs"][0]
    # Codewars free text without usable examples.
    assert by_id["apps/train/4184"].example_tests == {}


CODEFORCES_TWO = """Do it.

-----Input-----

n

-----Examples-----
Input
3
1 2 3

Output
6

Input
1
5
Output
5



-----Note-----

Sum.
"""

ATCODER_NUMBERED = """-----Sample Input 1-----
2
1 1

-----Sample Output 1-----
2

Since 1+1=2.

-----Sample Input 2-----
1
7

-----Sample Output 2-----
7
"""

KATTIS = """Sum them.
-----Examples-----
Sample Input 1:
1 2
Sample Output 1:
3

Sample Input 2:
5 5
Sample Output 2:
10
"""

CODECHEF = """=====Sample Input:=====
2
ab

=====Sample Output:=====
ba
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (CODEFORCES_TWO, {"inputs": ["3\n1 2 3\n", "1\n5\n"], "outputs": ["6\n", "5\n"]}),
        (ATCODER_NUMBERED, {"inputs": ["2\n1 1\n", "1\n7\n"], "outputs": ["2\n", "7\n"]}),
        (KATTIS, {"inputs": ["1 2\n", "5 5\n"], "outputs": ["3\n", "10\n"]}),
        (CODECHEF, {"inputs": ["2\nab\n"], "outputs": ["ba\n"]}),
        ("No examples here.\n", {}),
        ("-----Example-----\nInput\n1\n\nOutput\n\n-----Note-----\n", {}),  # unpaired: nothing
    ],
)
def test_stdin_example_formats(text, expected):
    assert parse_examples(text, "stdin") == expected


@pytest.mark.parametrize(
    ("text", "fn", "expected"),
    [
        (
            'Example 1:\nInput: s = "ab", flag = true\nOutput: [1,2]\n',
            "f",
            {"inputs": [["ab", True]], "outputs": [[1, 2]]},
        ),
        (
            "-----Example-----\nInput\n[1, 2, 3]\nOutput\n6\n",
            "solve",
            {"inputs": [[[1, 2, 3]]], "outputs": [6]},
        ),
        (
            "-----Examples-----\nInput\n[1, 2]\n3\nOutput\n[1, 2, 3]\n\nInput\n[]\n0\nOutput\n[0]\n",
            "solve",
            {"inputs": [[[1, 2], 3], [[], 0]], "outputs": [[1, 2, 3], [0]]},
        ),
        (
            "```python\nadd(1, 2) == 3\nadd(-1, 1) ==> 0\nadd(2, 2) # => 4\nadd 2 2 `shouldBe` 4\n```\n",
            "add",
            {"inputs": [[1, 2], [-1, 1], [2, 2]], "outputs": [3, 0, 4]},
        ),
        ("Return the sum.\n", "add", {}),
        ("Input: x = foo\nOutput: 1\n", "f", {}),  # not a literal: no examples
    ],
)
def test_call_example_formats(text, fn, expected):
    assert parse_examples(text, "call", fn) == expected


def test_parsed_examples_contradicting_hidden_tests_are_dropped(tmp_path):
    root = tmp_path / "train"
    shutil.copytree(TRAIN / "0001", root / "0001")
    shutil.copytree(TRAIN / "2404", root / "2404")
    q = root / "0001" / "question.txt"
    q.write_text(q.read_text().replace("Output\n1\n6\n-1\n", "Output\n1\n7\n-1\n"))
    q = root / "2404" / "question.txt"
    q.write_text(q.read_text().replace("Output: 9", "Output: 10"))
    assert [p.example_tests for p in load_apps(root).problems] == [{}, {}]
