"""pass@k (unranked, ranked, filtered), missing results, bootstrap CIs, reports, and the CLI."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
from helpers.paths import FIXTURES, REPO
from helpers.problems import stdin_problem

from bcoder_core.errors import BcoderError
from bcoder_core.evaluation import evaluate, pass_at_k, render_markdown, top_k_solved
from bcoder_core.problems import Problem, write_problems

ROOT = REPO


def _brute_force(n: int, c: int, k: int) -> Fraction:
    """Fraction of the k-subsets of n samples (c correct) that hold a correct one."""
    items = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return Fraction(sum(1 for s in subsets if any(items[i] for i in s)), len(subsets))


def test_pass_at_k_matches_brute_force():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(float(_brute_force(n, c, k)), abs=1e-12), (n, c, k)


def test_pass_at_k_large_n_is_stable_and_exact():
    for n, c, k in [(1000, 3, 100), (256, 1, 1), (256, 5, 5), (5000, 2500, 80), (200, 0, 10), (200, 200, 10)]:
        exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
        assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-9, abs=1e-12)


def test_pass_at_k_edge_cases():
    assert pass_at_k(3, 1, 5) == 1.0 and pass_at_k(3, 0, 5) == 0.0  # k > n: every sample is a try
    assert pass_at_k(0, 0, 1) == 0.0
    for bad in [(3, 4, 1), (3, -1, 1), (3, 1, 0), (3.0, 1, 1), (True, 1, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def test_top_k_solved_order_and_ties():
    correct = [False, True, False, True]
    assert top_k_solved(correct, [0.5, 0.1, 0.9, 0.1], [0, 1, 2, 3], 1) == 0
    assert top_k_solved(correct, [0.5, 0.1, 0.9, 0.1], [0, 1, 2, 3], 3) == 1
    assert top_k_solved(correct, [0.0, 0.0, 0.0, 0.0], [0, 1, 2, 3], 1) == 0  # tie: lower index first
    assert top_k_solved(correct, [0.0, 0.0, 0.0, 0.0], [3, 0, 1, 2], 1) == 1
    assert top_k_solved(correct, None, [0, 1, 2, 3], 2) == 1
    assert top_k_solved([], None, [], 1) == 0


# -------------------------------------------------------------------------- hand-built cases


def _p(pid: str, difficulty: str | None = "interview", examples: bool = True) -> Problem:
    tests = {"inputs": ["1\n"], "outputs": ["1\n"]}
    return stdin_problem(
        pid,
        tests["inputs"],
        tests["outputs"],
        question="q",
        difficulty=difficulty,
        example_tests=dict(tests) if examples else {},
    )


def _s(pid: str, sid, score=None) -> dict:
    d = {"problem_id": pid, "sample_id": sid, "code": "print(1)"}
    if score is not None:
        d["score"] = score
    return d


def _r(pid: str, sid, verdict: str, **extra) -> dict:
    return {"problem_id": pid, "sample_id": sid, "verdict": verdict, **extra}


def _value(report, metric, k, group="all"):
    return report["results"][group][metric][f"pass@{k}"]["value"]


def test_unranked_missing_results_count_as_failures():
    problems = [_p("a"), _p("b"), _p("c")]
    samples = [_s(pid, i) for pid in "abc" for i in range(4)]
    results = [_r("a", 0, "passed"), _r("a", 1, "failed"), _r("b", 3, "passed")]  # c: no results at all
    rep = evaluate(problems, results, samples, ks=(1, 2), bootstrap=0)
    rows = {r["id"]: r for r in rep["per_problem"]}
    assert (rows["a"]["n"], rows["a"]["c"], rows["a"]["missing"]) == (4, 1, 2)
    assert (rows["b"]["n"], rows["b"]["c"], rows["b"]["missing"]) == (4, 1, 3)
    assert (rows["c"]["n"], rows["c"]["c"]) == (4, 0)
    assert _value(rep, "unranked", 1) == pytest.approx((0.25 + 0.25 + 0) / 3)
    assert _value(rep, "unranked", 2) == pytest.approx((0.5 + 0.5 + 0) / 3)
    assert rep["counts"]["missing_results"] == 2 + 3 + 4
    assert rep["counts"]["problems_without_results"] == 1
    assert any("count as failures" in n for n in rep["notes"])
    assert rep["metrics"] == ["unranked"]  # no scores: no ranked table


def test_without_samples_file_n_samples_or_result_count():
    problems = [_p("a"), _p("b")]
    results = [_r("a", 0, "passed"), _r("a", 1, "failed")]
    rep = evaluate(problems, results, ks=(1,), bootstrap=0)
    assert _value(rep, "unranked", 1) == pytest.approx((0.5 + 0.0) / 2)
    rep = evaluate(problems, results, ks=(1,), n_samples=10, bootstrap=0)
    assert _value(rep, "unranked", 1) == pytest.approx((0.1 + 0.0) / 2)
    with pytest.raises(BcoderError, match="--n-samples is 1"):
        evaluate(problems, results, ks=(1,), n_samples=1)


def test_ranked_by_score_ties_by_index():
    problems = [_p("a"), _p("b"), _p("c")]
    samples = [
        _s("a", 0, 0.1),
        _s("a", 1, 0.9),
        _s("a", 2, 0.5),  # best is 1 (correct)
        _s("b", 0, 0.2),
        _s("b", 1, 0.2),
        _s("b", 2, -1.0),  # tie 0/1 -> 0 (wrong); 1 correct
        _s("c", 5, 1.0),
        _s("c", 3, 1.0),
        _s("c", 4, 0.0),  # integer ids: tie -> 3 (correct)
    ]
    results = [
        _r("a", 0, "failed"),
        _r("a", 1, "passed"),
        _r("a", 2, "failed"),
        _r("b", 0, "failed"),
        _r("b", 1, "passed"),
        _r("b", 2, "timeout"),
        _r("c", 5, "failed"),
        _r("c", 3, "passed"),
        _r("c", 4, "failed"),
    ]
    rep = evaluate(problems, results, samples, ks=(1, 2), bootstrap=0)
    rows = {r["id"]: r for r in rep["per_problem"]}
    assert [rows[x]["ranked"]["pass@1"] for x in "abc"] == [1, 0, 1]
    assert [rows[x]["ranked"]["pass@2"] for x in "abc"] == [1, 1, 1]
    assert _value(rep, "ranked", 1) == pytest.approx(2 / 3)
    assert _value(rep, "unranked", 1) == pytest.approx(1 / 3)
    assert rep["metrics"] == ["unranked", "ranked"]


def test_sample_index_is_file_order_for_non_integer_ids():
    problems = [_p("a")]
    samples = [_s("a", "z", 0.0), _s("a", "b", 0.0)]
    results = [_r("a", "z", "passed"), _r("a", "b", "failed")]
    rep = evaluate(problems, results, samples, ks=(1,), bootstrap=0)
    assert rep["per_problem"][0]["ranked"]["pass@1"] == 1  # "z" comes first in the file


def test_filtered_protocol():
    problems = [_p("a"), _p("b"), _p("c", examples=False), _p("d")]
    samples = [_s(pid, i, score) for pid in "abcd" for i, score in enumerate([0.9, 0.5, 0.1])]
    results = [
        _r("a", 0, "failed"),
        _r("a", 1, "failed"),
        _r("a", 2, "passed"),
        _r("b", 0, "failed"),
        _r("b", 1, "passed"),
        _r("b", 2, "failed"),
        _r("c", 0, "failed"),
        _r("c", 1, "passed"),
        _r("c", 2, "passed"),
        _r("d", 0, "passed"),
    ]
    examples = [
        _r("a", 0, "failed"),
        _r("a", 1, "failed"),
        _r("a", 2, "passed"),  # only 2 kept -> solved
        _r("b", 0, "passed"),
        _r("b", 1, "passed"),
        _r("b", 2, "passed"),  # nothing dropped: 0 on top
        # c has no example tests: keeps all, ranked as is -> sample 0 wrong
        _r("d", 1, "passed"),  # d: 0 has no example result -> dropped; 1 kept (no hidden result)
    ]
    rep = evaluate(problems, results, samples, ks=(1, 2), example_results=examples, bootstrap=0)
    rows = {r["id"]: r for r in rep["per_problem"]}
    assert [rows[x]["filtered"]["pass@1"] for x in "abcd"] == [1, 0, 0, 0]
    assert [rows[x]["filtered"]["pass@2"] for x in "abcd"] == [1, 1, 1, 0]
    assert [rows[x]["filtered_kept"] for x in "abcd"] == [1, 3, 3, 1]
    assert [rows[x]["ranked"]["pass@1"] for x in "abcd"] == [0, 0, 0, 1]
    assert rep["counts"]["problems_with_example_tests"] == 3
    assert rep["ranking"]["filtered"].startswith("score")
    # without scores the filtered protocol takes samples in index order
    unscored = [{k: v for k, v in s.items() if k != "score"} for s in samples]
    rep = evaluate(problems, results, unscored, ks=(1,), example_results=examples, bootstrap=0)
    assert rep["ranking"]["filtered"] == "sample index"
    assert [r["filtered"]["pass@1"] for r in rep["per_problem"]] == [1, 0, 0, 0]


def test_groups_and_bootstrap():
    problems = [_p(f"i{i}", "introductory") for i in range(6)] + [
        _p(f"c{i}", "competition") for i in range(4)
    ]
    problems.append(_p("x", None))
    results = [_r(p.id, 0, "passed" if i % 2 == 0 else "failed") for i, p in enumerate(problems)]
    rep = evaluate(problems, results, ks=(1,), bootstrap=500, seed=7)
    assert rep["groups"] == ["introductory", "competition", "unknown", "all"]
    assert [rep["results"][g]["problems"] for g in rep["groups"]] == [6, 4, 1, 11]
    for g in rep["groups"]:
        e = rep["results"][g]["unranked"]["pass@1"]
        assert e["ci"][0] <= e["value"] <= e["ci"][1]
    all_ci = rep["results"]["all"]["unranked"]["pass@1"]["ci"]
    assert 0.0 < all_ci[0] < all_ci[1] < 1.0
    again = evaluate(problems, results, ks=(1,), bootstrap=500, seed=7)
    assert again["results"] == rep["results"]
    other = evaluate(problems, results, ks=(1,), bootstrap=500, seed=8)
    assert (
        other["results"]["all"]["unranked"]["pass@1"]["value"]
        == rep["results"]["all"]["unranked"]["pass@1"]["value"]
    )
    json.dumps(rep)  # JSON-able


def test_markdown_and_compare_mode():
    problems = [_p("a", "introductory"), _p("b", "interview")]
    samples = [_s("a", 0, 1.0), _s("b", 0, 1.0)]
    results = [_r("a", 0, "passed", compare="apps"), _r("b", 0, "failed", compare="apps")]
    rep = evaluate(problems, results, samples, ks=(1, 5), bootstrap=100)
    assert rep["compare_modes"] == {"apps": 2}
    md = render_markdown(rep)
    assert "output comparison mode: `apps` (2 results)" in md
    assert "## Unranked pass@k" in md and "## Ranked pass@k" in md
    assert "| introductory | 1 | 100.00 [100.00, 100.00] |" in md
    assert "| **all** | 2 | 50.00 [" in md
    rep = evaluate(problems, [_r("a", 0, "passed")], samples, ks=(1,), bootstrap=0)
    assert "not recorded in the results" in render_markdown(rep)
    rep = evaluate(problems, [_r("a", 0, "passed")], samples, ks=(1,), bootstrap=0, compare_mode="strict")
    assert rep["compare_modes"] == {"strict": 1}


@pytest.mark.parametrize(
    ("samples", "results", "message"),
    [
        (None, [_r("zzz", 0, "passed")], "problem id 'zzz' is not in the problem set"),
        (None, [_r("a", 0, "passed"), _r("a", 0, "failed")], "two results for sample a/0"),
        ([_s("a", 0)], [_r("a", 1, "passed")], "sample a/1 is not in the samples file"),
        ([_s("a", 0), _s("a", 0)], [], "duplicate sample a/0"),
        ([_s("a", 0, 1.0), _s("a", 1)], [], "1 of 2 samples have a score; a/1 has none"),
        ([_s("a", 0, float("nan"))], [], "is not a number"),
        (None, [{"problem_id": "a", "sample_id": 0}], "has no verdict"),
        (None, [{"problem_id": "a", "verdict": "passed"}], "without problem_id/sample_id"),
    ],
)
def test_input_errors(samples, results, message):
    with pytest.raises(BcoderError, match=message.replace("(", r"\(").replace(")", r"\)")):
        evaluate([_p("a")], results, samples, ks=(1,))


def test_example_results_need_samples():
    with pytest.raises(BcoderError, match="needs the samples file"):
        evaluate([_p("a")], [], None, ks=(1,), example_results=[])


# ------------------------------------------------------------------------------------- CLI


def _bcoder(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jobs.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        timeout=120,
    )


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_evaluate_cli_end_to_end(tmp_path):
    problems = tmp_path / "problems.jsonl"
    proc = _bcoder("data", "prepare", "apps", "--source", str(FIXTURES / "apps"), "--out", str(problems))
    assert proc.returncode == 0, proc.stderr
    ids = [json.loads(line)["id"] for line in problems.read_text().splitlines()]
    samples = _jsonl(tmp_path / "samples.jsonl", [_s(pid, i, float(i)) for pid in ids for i in range(3)])
    results = _jsonl(
        tmp_path / "results.jsonl",
        [
            _r(pid, i, "passed" if i == 2 and pid != ids[0] else "failed", compare="strict")
            for pid in ids
            for i in range(3)
        ][:-1],
    )
    examples = _jsonl(tmp_path / "ex.jsonl", [_r(pid, i, "passed") for pid in ids for i in range(3)])
    out_json, out_md = tmp_path / "rep" / "report.json", tmp_path / "rep" / "report.md"
    proc = _bcoder(
        "evaluate",
        "--problems",
        str(problems),
        "--results",
        str(results),
        "--samples",
        str(samples),
        "--example-results",
        str(examples),
        "--k",
        "1,2",
        "--out-json",
        str(out_json),
        "--out-md",
        str(out_md),
    )
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(out_json.read_text())
    assert rep["kind"] == "bcoder-evaluation" and rep["ks"] == [1, 2]
    assert rep["metrics"] == ["unranked", "ranked", "filtered"]
    assert rep["groups"] == ["introductory", "interview", "competition", "all"]
    assert rep["counts"]["missing_results"] == 1
    # last problem (4184) lost its passing result: ranked pass@1 = 3 of 5 problems
    assert rep["results"]["all"]["ranked"]["pass@1"]["value"] == pytest.approx(3 / 5)
    assert rep["results"]["all"]["unranked"]["pass@1"]["value"] == pytest.approx(3 / 5 / 3)
    assert rep["compare_modes"] == {"strict": 14}
    assert out_md.read_text() == proc.stdout
    assert "| **all** | 5 |" in proc.stdout

    # --split filters; --n-samples without samples
    proc = _bcoder(
        "evaluate",
        "--problems",
        str(problems),
        "--results",
        str(results),
        "--n-samples",
        "3",
        "--split",
        "train",
        "--bootstrap",
        "0",
    )
    assert proc.returncode == 0, proc.stderr
    assert "| **all** | 5 | 20.00 |" in proc.stdout


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--k", "one"], "--k 'one'"),
        (["--results", "MISSING"], "no such file"),
        (["--split", "nope"], "no problems of split 'nope'"),
    ],
)
def test_evaluate_cli_bad_input_is_one_error_line(tmp_path, extra, needle):
    problems = tmp_path / "problems.jsonl"
    write_problems([_p("a")], problems)
    results = _jsonl(tmp_path / "results.jsonl", [_r("a", 0, "passed")])
    args = ["evaluate", "--problems", str(problems), "--results", str(results), *extra]
    args = [str(tmp_path / "missing.jsonl") if a == "MISSING" else a for a in args]
    proc = _bcoder(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr
    assert proc.stdout == ""


def test_evaluate_cli_unknown_problem_in_results(tmp_path):
    problems = tmp_path / "problems.jsonl"
    write_problems([_p("a")], problems)
    results = _jsonl(tmp_path / "results.jsonl", [_r("b", 0, "passed")])
    out_json = tmp_path / "report.json"
    proc = _bcoder(
        "evaluate", "--problems", str(problems), "--results", str(results), "--out-json", str(out_json)
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: results: problem id 'b' is not in the problem set"
    assert not out_json.exists()


def test_evaluate_cli_uses_the_results_manifest(tmp_path):
    from bcoder_core import storage

    if not hasattr(storage, "read_manifest"):
        pytest.skip("storage without manifests")
    problems = tmp_path / "problems.jsonl"
    write_problems([_p("a")], problems)
    samples = _jsonl(tmp_path / "samples.jsonl", [_s("a", 0)])

    def results_artifact(name: str, tests: str) -> Path:
        with storage.output_path(
            str(tmp_path / name), kind="results", config={"compare": "apps", "tests": tests}
        ) as p:
            _jsonl(p, [_r("a", 0, "passed")])
        return tmp_path / name

    hidden, example = results_artifact("hidden.jsonl", "hidden"), results_artifact("example.jsonl", "example")
    base = ["evaluate", "--problems", str(problems), "--samples", str(samples)]
    proc = _bcoder(*base, "--results", str(hidden), "--example-results", str(example))
    assert proc.returncode == 0, proc.stderr
    assert "output comparison mode: `apps` (1 results)" in proc.stdout
    proc = _bcoder(*base, "--results", str(example), "--example-results", str(hidden))
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("were run on the example tests, not the hidden tests")
