"""Assert-format tests decided in the parent (checks.py), the typed values, and the guarded cgroup helper."""

from __future__ import annotations

import os
from collections import Counter, namedtuple

import pytest
from helpers.problems import assert_problem

from bcoder_core.execution import ExecutionConfig, execute_samples, sandbox
from bcoder_core.execution.checks import (
    OPAQUE,
    decode_values,
    encode_values,
    judge_values,
    parent_test,
)


@pytest.mark.parametrize(
    ("source", "exprs"),
    [
        ("assert f(1) == (1, 2)", ("f(1)",)),
        ("assert (1, 2) == f(1)", ("f(1)",)),
        ("assert f(x=[1, 2]) != -3", ("f(x=[1, 2])",)),
        ("assert f(1) is True", ("f(1)",)),
        ("assert not f(1)", ("f(1)",)),
        ("assert abs(f(2) - 1.5) < 1e-6", ("f(2)",)),
        ("assert math.isclose(f(2), 1.5, rel_tol=0.001)", ("f(2)",)),
        (
            "METADATA = {}\n\ndef check(candidate):\n    assert candidate(1) == 2\n    assert True\n\ncheck(g)\n",
            ("g(1)", "True"),
        ),
    ],
)
def test_common_shapes_are_decided_in_the_parent(source, exprs):
    decided = parent_test(source)
    assert decided is not None and decided.exprs == exprs
    for e in decided.exprs:
        assert "1.5" not in e and "(1, 2)" not in e  # the expected value never goes to the child


@pytest.mark.parametrize(
    "source",
    [
        "assert f(3) == K",  # a name from the setup code
        "assert (f(1) == 2) == True",  # the inner comparison would run in the child
        "assert f(1) == 2 == 2",
        "assert f(1) in [1, 2]",
        "def check(candidate):\n    for i in range(3):\n        assert candidate(i)\n\ncheck(f)\n",
    ],
)
def test_other_shapes_stay_in_process(source):
    assert parent_test(source) is None


def test_typed_values_round_trip_and_keep_python_equality():
    Point = namedtuple("Point", "x y")
    plain = [(1, 2), [1, 2], {(1, "a"): {3}}, frozenset({1}), b"x", 1 + 2j, True, 1.5, None]
    back = decode_values(encode_values([*plain, Point(1, 2), Counter("aa")]))
    # subclasses come back as their plain value
    assert back == [*plain, (1, 2), {"a": 2}]
    assert type(back[0]) is tuple and type(back[1]) is list  # (1, 2) != [1, 2], as in Python
    decided = parent_test("assert f(1) == (1, 2)")
    assert judge_values(decided, [[1, 2]]) == (False, 0)


def test_values_with_behaviour_fail():
    class Rigged:
        def __eq__(self, other):
            return True

    class RiggedInt(int):
        def __eq__(self, other):
            return True

        __hash__ = int.__hash__

    back = decode_values(encode_values([Rigged(), RiggedInt(0)]))
    assert back[0] is OPAQUE and back[1] == 0 and type(back[1]) is int
    decided = parent_test("assert f(1) == 7")
    assert judge_values(decided, back[:1]) == (False, 0)
    assert judge_values(decided, back[1:]) == (False, 0)
    assert decode_values("not json") == [] and decode_values('[{"x": 1}]') == [OPAQUE]


def test_forms_judge_like_the_assertions():
    cases = [
        ("assert abs(f(2) - 1.5) < 1e-6", 1.50001, False),
        ("assert abs(f(2) - 1.5) < 1e-6", 1.5000000001, True),
        ("assert abs(f(2) - 1.5) < 1e-6", "1.5", False),
        ("assert math.isclose(f(2), 1.5, rel_tol=0.01)", 1.51, True),
        ("assert f(1) is True", 1, False),
        ("assert f(1) is True", True, True),
        ("assert not f(1)", [], True),
        ("assert f(1) == 2", 2.0, True),
    ]
    for source, value, ok in cases:
        assert judge_values(parent_test(source), [value])[0] is ok, (source, value)


def test_parent_decided_asserts_end_to_end():
    problems = {
        "a": assert_problem(
            "a", ["assert f(1) == 2", "assert f(2) == (4, 'x')", "assert f(3) == K"], setup="K = 6"
        )
    }
    good = "def f(x):\n    return (4, 'x') if x == 2 else 2 * x\n"
    listy = "def f(x):\n    return [4, 'x'] if x == 2 else 2 * x\n"
    raises = "def f(x):\n    if x == 2:\n        raise ValueError('no')\n    return 2 * x\n"
    samples = [
        {"problem_id": "a", "sample_id": n, "code": c}
        for n, c in (("good", good), ("listy", listy), ("raises", raises))
    ]
    config = ExecutionConfig(workers=1, timeout_s=3)
    r = {x["sample_id"]: x for x in execute_samples(problems, samples, config)}
    assert r["good"]["verdict"] == "passed" and r["good"]["tests_passed"] == 3
    assert r["listy"]["verdict"] == "failed" and r["listy"]["tests_passed"] == 2
    assert r["raises"]["verdict"] == "runtime_error" and "ValueError" in r["raises"]["detail"]


def test_memory_cgroup_is_guarded(tmp_path, monkeypatch):
    # No cgroup v2 hierarchy: nothing is done, and the report says why.
    assert sandbox.join_memory_cgroup(1 << 30, root=str(tmp_path)).startswith("unavailable")
    # A delegated v2 subtree (simulated: plain files where the kernel has its interface files).
    own = "/delegated"
    with open("/proc/self/cgroup") as f:
        lines = f.read()
    if "0::" not in lines:
        pytest.skip("this process is in no cgroup v2 (hybrid host)")
    own = next(line[3:] for line in lines.splitlines() if line.startswith("0::")).lstrip("/")
    base = tmp_path / own
    base.mkdir(parents=True, exist_ok=True)
    (tmp_path / "cgroup.controllers").write_text("memory pids\n")
    (base / "cgroup.subtree_control").write_text("memory\n")
    path = sandbox.join_memory_cgroup(123456789, root=str(tmp_path))
    assert path == str(base / f"bcoder-worker-{os.getpid()}")
    assert (base / f"bcoder-worker-{os.getpid()}" / "memory.max").read_text() == "123456789"
    assert (base / f"bcoder-worker-{os.getpid()}" / "cgroup.procs").read_text() == str(os.getpid())


def test_memory_budget_is_shared_with_tmp():
    assert sandbox.tmp_budget_mb(256) == 64 and sandbox.tmp_budget_mb(16) == 8


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for the namespaces")
def test_fall_back_is_reported_not_silent():
    import json
    import subprocess
    import sys

    script = (
        "import json, sys\nfrom bcoder_core.execution import sandbox\n"
        "sandbox.VIEW_ROOT = '/nonexistent-bcoder-view'\n"
        "r = sandbox.setup_worker(tmp_size_mb=8)\nprint(json.dumps(r), flush=True)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["fs_view"].startswith("host (fall-back: ")
    assert report["private_tmp"] == ["/tmp"] and report["tmp_mb"] == 8
