"""The built-in benchmark generator (docs/benchmark.md): determinism, the split rule, the tests and
reference solutions of every problem (through the real executor), and loading through the APPS loader."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from helpers.cli import bcoder
from helpers.paths import REPO

from bcoder_core.benchmark import (
    BenchmarkConfig,
    adjacent_pairs,
    generate,
    heldout_pairs,
    run_pipeline,
    verify_solutions,
    write_benchmark,
)
from bcoder_core.benchmark.generator import DIFFICULTIES, GeneratedProblem, render_solution
from bcoder_core.benchmark.primitives import PRIMITIVES, STYLES
from bcoder_core.data.apps import load_apps
from bcoder_core.data.examples import parse_examples
from bcoder_core.errors import BcoderError
from bcoder_core.prompts import build_prompt

ROOT = REPO
NAME = "bcoder-bench"
SMALL = BenchmarkConfig(seed=0, n_train=90, n_test=30)


@pytest.fixture(scope="module")
def small() -> dict[str, list[GeneratedProblem]]:
    return generate(SMALL)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "b"
    write_benchmark(SMALL, out)
    return out


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` except the manifest (it records times and the command line)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }


# ----------------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_bytes_across_processes(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    args = ["benchmark", "generate", "--seed", "7", "--n-train", "40", "--n-test", "20"]
    # Different hash seeds: nothing may depend on set or dict iteration order of strings.
    ra = bcoder(*args, "--out", str(a), env={"PYTHONHASHSEED": "1"})
    rb = bcoder(*args, "--out", str(b), env={"PYTHONHASHSEED": "2"})
    assert ra.returncode == 0, ra.stderr
    assert rb.returncode == 0, rb.stderr
    assert "wrote 40 train, 20 test problems" in ra.stdout
    ta, tb = _tree(a), _tree(b)
    assert len(ta) > 60 * 5
    assert ta == tb


def test_different_seed_gives_different_problems(tmp_path):
    write_benchmark(BenchmarkConfig(seed=0, n_train=20, n_test=10), tmp_path / "s0")
    write_benchmark(BenchmarkConfig(seed=1, n_train=20, n_test=10), tmp_path / "s1")
    t0, t1 = _tree(tmp_path / "s0"), _tree(tmp_path / "s1")
    assert t0.keys() == t1.keys()
    questions = [k for k in t0 if k.endswith("question.txt")]
    assert sum(t0[k] != t1[k] for k in questions) >= len(questions) * 0.8
    assert heldout_pairs(0, 0.2) != heldout_pairs(1, 0.2)


def test_larger_sizes_keep_the_first_problems(tmp_path):
    small = generate(BenchmarkConfig(seed=3, n_train=30, n_test=10))
    large = generate(BenchmarkConfig(seed=3, n_train=60, n_test=20))
    assert [p.question for p in small["train"]] == [p.question for p in large["train"][:30]]


# ------------------------------------------------------------------------------------ split rule


def test_split_rule(small):
    held = heldout_pairs(SMALL.seed, SMALL.heldout_fraction)
    train_combos = {p.combination for p in small["train"]}
    train_primitives = {name for c in train_combos for name in c}
    for p in small["train"]:
        assert not adjacent_pairs(p.combination) & held[p.family], p.combination
    for p in small["test"]:
        assert p.combination not in train_combos, p.combination
        assert adjacent_pairs(p.combination) & held[p.family], p.combination
        assert set(p.combination) <= train_primitives, set(p.combination) - train_primitives


def test_split_rule_at_demo_size():
    problems = generate(BenchmarkConfig(seed=0, n_train=1000, n_test=300))
    train_combos = {p.combination for p in problems["train"]}
    train_primitives = {name for c in train_combos for name in c}
    assert train_primitives == set(PRIMITIVES)  # every primitive is taught
    assert not {p.combination for p in problems["test"]} & train_combos
    keys = [
        (p.family, p.format, tuple((s.name, s.param) for s in p.steps))
        for ps in problems.values()
        for p in ps
    ]
    assert len(keys) == len(set(keys))  # no problem twice, within or across splits


def test_validation_split_follows_the_test_rule_and_leaves_test_unchanged():
    base = generate(BenchmarkConfig(seed=0, n_train=90, n_test=30))
    with_val = generate(BenchmarkConfig(seed=0, n_train=90, n_test=30, n_val=30))
    assert "val" not in base
    # Adding a validation split changes neither train nor test: earlier results stay comparable.
    for split in ("train", "test"):
        assert [p.question for p in with_val[split]] == [p.question for p in base[split]]
    held = heldout_pairs(0, 0.2)
    train_combos = {p.combination for p in with_val["train"]}
    keys = {_key(p) for split in ("train", "test") for p in with_val[split]}
    assert len(with_val["val"]) == 30
    for p in with_val["val"]:
        assert p.split == "val"
        assert adjacent_pairs(p.combination) & held[p.family], p.combination
        assert p.combination not in train_combos
        assert _key(p) not in keys  # disjoint from train and test


def _key(p):
    return (p.family, p.format, tuple((s.name, s.param) for s in p.steps))


def test_validation_split_is_written_and_loads(tmp_path):
    info = write_benchmark(BenchmarkConfig(seed=0, n_train=20, n_test=10, n_val=5), tmp_path / "b")
    assert info["n_val"] == 5 and info["counts"]["val"]["problems"] == 5
    assert len(list((tmp_path / "b" / "val").iterdir())) == 5
    r = bcoder(
        "data", "prepare", "apps", "--name", "builtin",
        "--source", str(tmp_path / "b" / "val"), "--out", str(tmp_path / "val.jsonl"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (tmp_path / "val.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == [f"builtin/val/{i:04d}" for i in range(5)]


def test_heldout_pairs_leave_every_primitive_trainable():
    for seed in range(20):
        held = heldout_pairs(seed, 0.2)
        for family, pairs in held.items():
            assert pairs
            assert all(a in PRIMITIVES and b in PRIMITIVES for a, b in pairs)
            assert all(PRIMITIVES[a].family == family for a, _ in pairs)


# ----------------------------------------------------------------------------- problem contents


def test_every_problem_has_tests_examples_and_solutions(small):
    for p in small["train"] + small["test"]:
        assert len(p.inputs) == len(p.outputs) >= SMALL.n_hidden + p.n_examples
        assert len(p.inputs) - p.n_examples >= 5
        assert p.n_examples >= 1
        assert len(p.solutions) >= 2 and len(set(p.solutions)) == len(p.solutions)
        assert p.difficulty == DIFFICULTIES[len(p.steps) - 1]
        assert p.steps[-1].primitive.is_terminal and not any(s.primitive.is_terminal for s in p.steps[:-1])
        assert "Example" in p.question
        assert verify_solutions(p) == []


def test_mix_of_difficulties_formats_and_families(small):
    for split in ("train", "test"):
        c = Counter()
        for p in small[split]:
            c.update([p.difficulty, p.format, p.family])
        for key in ("introductory", "interview", "competition", "stdin", "call", "list", "string"):
            assert c[key] > 0, (split, key)


def test_hidden_outputs_come_from_the_canonical_implementations(small):
    for p in small["test"]:
        for inp, out in zip(p.inputs, p.outputs, strict=True):
            if p.format == "call":
                assert out == [run_pipeline(p.steps, inp[0])]
            else:
                lines = inp.split("\n")
                value = [int(x) for x in lines[1].split()] if p.family == "list" else lines[0]
                answer = run_pipeline(p.steps, value)
                expected = " ".join(map(str, answer)) if isinstance(answer, list) else str(answer)
                assert out == expected + "\n"


def test_dropping_any_step_changes_some_answer(small):
    """The hidden tests tell every step apart: a program that forgets one fails."""
    for p in small["train"][:40]:
        values = [inp[0] if p.format == "call" else _stdin_value(p.family, inp) for inp in p.inputs]
        answers = [run_pipeline(p.steps, v) for v in values]
        for i in range(len(p.steps) - 1):
            reduced = p.steps[:i] + p.steps[i + 1 :]
            assert [run_pipeline(reduced, v) for v in values] != answers


def _stdin_value(family: str, text: str):
    lines = text.split("\n")
    return [int(x) for x in lines[1].split()] if family == "list" else lines[0]


def test_verify_solutions_catches_a_wrong_program(small):
    p = next(q for q in small["train"] if len(q.steps) == 3)
    wrong = render_solution(p.family, p.format, p.steps[1:], STYLES[0])
    broken = GeneratedProblem(**{**p.__dict__, "solutions": [*p.solutions, wrong]})
    failures = verify_solutions(broken)
    assert failures and failures[0].startswith(f"solution {len(p.solutions)} ")


def test_config_is_validated():
    for bad in ({"n_hidden": 4}, {"n_examples": 3}, {"n_train": 0}, {"heldout_fraction": 0.6}):
        with pytest.raises(BcoderError):
            BenchmarkConfig(**bad)


# ------------------------------------------------------------------------------ layout and loader


def test_folder_layout(written):
    info = json.loads((written / "benchmark.json").read_text())
    assert info["n_train"] == SMALL.n_train and info["n_test"] == SMALL.n_test
    for split, n in (("train", SMALL.n_train), ("test", SMALL.n_test)):
        folders = sorted(d.name for d in (written / split).iterdir())
        assert folders == [f"{i:04d}" for i in range(n)]
        for d in (written / split).iterdir():
            io = json.loads((d / "input_output.json").read_text())
            meta = json.loads((d / "metadata.json").read_text())
            assert meta["difficulty"] in ("introductory", "interview", "competition")
            assert len(json.loads((d / "solutions.json").read_text())) >= 2
            assert (d / "question.txt").read_text().startswith("You are given")
            if "fn_name" in io:
                assert io["fn_name"] == "solve"
                assert (d / "starter_code.py").read_text().startswith("def solve(")
                assert all(isinstance(x, list) and len(x) == 1 for x in io["inputs"] + io["outputs"])
            else:
                assert not (d / "starter_code.py").exists()
                assert all(isinstance(x, str) for x in io["inputs"] + io["outputs"])


def test_loads_through_the_apps_loader(written):
    result = load_apps(written, name=NAME, strict=True)
    assert not result.skipped
    problems = {p.id: p for p in result.problems}
    assert len(problems) == SMALL.n_train + SMALL.n_test
    generated = generate(SMALL)
    for split, ps in generated.items():
        for g in ps:
            p = problems[f"{NAME}/{split}/{g.index:04d}"]
            assert p.source == NAME and p.split == split
            assert p.format == g.format and p.fn_name == g.fn_name
            assert p.difficulty == g.difficulty
            assert p.question == g.question and p.solutions == g.solutions
            assert p.tests == {"inputs": g.inputs, "outputs": g.outputs}
            assert p.num_tests >= 6
            assert p.example_tests == g.example_tests()
            # The statement's example parses to the same test (call-based: plain, not wrapped, values).
            parsed = parse_examples(p.question, p.format, p.fn_name)
            if p.format == "stdin":
                assert parsed == p.example_tests
            else:
                assert parsed["inputs"] == p.example_tests["inputs"]
                assert [[o] for o in parsed["outputs"]] == p.example_tests["outputs"]
            # The whole statement fits the prompt budget: nothing is cut.
            assert p.question in build_prompt(p)


def test_reference_solutions_pass_the_real_executor(written):
    """Every reference solution passes its hidden and its example tests in the sandboxed executor;
    a program that forgets a step fails."""
    from bcoder_core.execution.executor import ExecutionConfig, execute_samples

    problems = {p.id: p for p in load_apps(written, name=NAME, strict=True).problems}
    samples = [
        {"problem_id": pid, "sample_id": i, "code": code}
        for pid, p in problems.items()
        for i, code in enumerate(p.solutions)
    ]
    for tests in ("hidden", "example"):
        results = list(execute_samples(problems, samples, ExecutionConfig(workers=2, tests=tests)))
        assert len(results) == len(samples)
        bad = [r for r in results if r["verdict"] != "passed"]
        assert not bad, bad[:3]
        for r in results:
            p = problems[r["problem_id"]]
            expected = p.num_tests if tests == "hidden" else len(p.example_tests["inputs"])
            assert r["tests_passed"] == r["tests_total"] == expected

    generated = generate(SMALL)["test"]
    wrong = []
    for g in generated:
        if len(g.steps) > 2:
            code = render_solution(g.family, g.format, g.steps[1:], "comp")
            wrong.append({"problem_id": f"{NAME}/test/{g.index:04d}", "sample_id": 0, "code": code})
    assert wrong
    results = list(execute_samples(problems, wrong, ExecutionConfig(workers=2)))
    assert {r["verdict"] for r in results} == {"failed"}


# ------------------------------------------------------------------------------------------- CLI


def test_cli_bad_input_is_one_error_line(tmp_path):
    r = bcoder("benchmark", "generate", "--out", str(tmp_path / "x"), "--n-hidden", "3")
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_cli_output_loads_with_data_prepare(tmp_path):
    out = tmp_path / "bench"
    r = bcoder("benchmark", "generate", "--out", str(out), "--n-train", "30", "--n-test", "30")
    assert r.returncode == 0, r.stderr
    assert (out / "manifest.json").is_file()
    problems = tmp_path / "problems.jsonl"
    r = bcoder(
        "data", "prepare", "apps", "--source", str(out), "--name", NAME, "--out", str(problems), "--strict"
    )
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in problems.read_text().splitlines()]
    assert len(rows) == 60
    assert Counter(r["split"] for r in rows) == {"train": 30, "test": 30}
    assert all(r["example_tests"]["inputs"] for r in rows)
