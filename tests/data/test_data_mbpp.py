"""MBPP loader: the real file, the standard split, bad records."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from helpers.paths import FIXTURES

from bcoder_core.data import MBPP_SPLITS, load_mbpp, mbpp_split
from bcoder_core.errors import BcoderError
from bcoder_core.execution.known_bad import MBPP_KNOWN_BAD, is_known_bad

MBPP = FIXTURES / "mbpp" / "mbpp.jsonl"


def test_all_974_with_the_standard_split():
    result = load_mbpp(MBPP)
    assert result.skipped == []
    assert len(result.problems) == 974
    assert Counter(p.split for p in result.problems) == {
        "prompt": 10,
        "test": 500,
        "validation": 90,
        "train": 374,
    }
    assert [p.id for p in result.problems[:2]] == ["mbpp/1", "mbpp/2"]
    for p in result.problems:
        assert p.split == mbpp_split(int(p.id.split("/")[1]))
        assert p.format == "assert" and p.source == "mbpp" and p.difficulty is None


def test_record_shape():
    rows = {json.loads(line)["task_id"]: json.loads(line) for line in MBPP.read_text().splitlines()}
    by_id = {p.id: p for p in load_mbpp(MBPP).problems}
    p = by_id["mbpp/11"]
    row = rows[11]
    assert p.question == row["text"]
    assert p.tests == {"asserts": row["test_list"], "setup": row["test_setup_code"]}
    assert p.example_tests == {"asserts": row["test_list"][:1], "setup": row["test_setup_code"]}
    assert p.solutions == [row["code"].replace("\r\n", "\n")] and "\r" not in p.solutions[0]
    # challenge tests are not part of the hidden tests (documented decision)
    with_challenge = [t for t, r in rows.items() if r["challenge_test_list"]]
    assert with_challenge
    for t in with_challenge:
        assert by_id[f"mbpp/{t}"].tests["asserts"] == rows[t]["test_list"]
    # test_setup_code is kept
    with_setup = [t for t, r in rows.items() if r["test_setup_code"]]
    assert with_setup and all(by_id[f"mbpp/{t}"].tests["setup"] for t in with_setup)


@pytest.mark.parametrize(("split", "n"), [("prompt", 10), ("test", 500), ("validation", 90), ("train", 374)])
def test_split_filter(split, n):
    problems = load_mbpp(MBPP, split=split).problems
    assert len(problems) == n and {p.split for p in problems} == {split}
    lo, hi = MBPP_SPLITS[split]
    assert problems[0].id == f"mbpp/{lo}" and problems[-1].id == f"mbpp/{hi}"


def test_bad_rows(tmp_path, write_rows, kept_and_skipped):
    lines = MBPP.read_text().splitlines()[:6]
    rows = [json.loads(line) for line in lines]
    rows[1]["test_list"] = []
    rows[2]["task_id"] = "three"
    rows[3]["task_id"] = 2000
    rows[4]["text"] = ""
    f = write_rows(tmp_path / "mbpp.jsonl", rows, "not json\n")
    kept, skipped = kept_and_skipped(load_mbpp(f))
    assert kept == ["mbpp/1", "mbpp/6"]
    assert skipped == [
        "mbpp/2: test_list is not a non-empty list of assertions",
        "mbpp.jsonl:3: task_id is not an integer",
        "mbpp/2000: task_id outside 1-974 (no standard split)",
        "mbpp/5: no text",
        "mbpp.jsonl:7: not valid JSON (Expecting value)",
    ]
    with pytest.raises(BcoderError, match=r"mbpp/2: test_list .* \(--strict\)"):
        load_mbpp(f, strict=True)
    with pytest.raises(BcoderError, match="MBPP splits are"):
        load_mbpp(f, split="dev")
    with pytest.raises(BcoderError, match="no such MBPP file"):
        load_mbpp(tmp_path / "nope.jsonl")


def test_known_bad_list_is_well_formed():
    assert all(isinstance(t, int) and 1 <= t <= 974 for t in MBPP_KNOWN_BAD)
    assert all(isinstance(r, str) and r and "\n" not in r for r in MBPP_KNOWN_BAD.values())
    assert not is_known_bad("apps/train/0001") and not is_known_bad("mbpp/x")
    for t in MBPP_KNOWN_BAD:
        assert is_known_bad(f"mbpp/{t}")
