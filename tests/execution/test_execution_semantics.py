"""Each semantic rule of DESIGN §4, through the real executor (process sandbox, two workers)."""

from __future__ import annotations

import os
import signal
import time

import pytest
from helpers.problems import assert_problem, call_problem, stdin_problem

from bcoder_core.errors import BcoderError
from bcoder_core.execution import (
    RESULT_KEYS,
    REWARDS,
    ExecutionConfig,
    ExecutionError,
    Executor,
    execute_samples,
)
from bcoder_core.problems import Problem

CONFIG = ExecutionConfig(workers=2, timeout_s=2.0, program_timeout_s=6.0, max_output_bytes=100_000)


@pytest.fixture(scope="module")
def executor():
    with Executor(CONFIG) as ex:
        yield ex


def run(ex: Executor, problem: Problem, *codes: str) -> list[dict]:
    samples = [{"problem_id": problem.id, "sample_id": i, "code": c} for i, c in enumerate(codes)]
    out = {r["sample_id"]: r for r in ex.run({problem.id: problem}, samples)}
    return [out[i] for i in range(len(codes))]


def verdicts(results: list[dict]) -> list[str]:
    return [r["verdict"] for r in results]


# ------------------------------------------------------------------------------ stdin as a script

STDIN_STYLES = {
    "input": "a, b = map(int, input().split())\nprint(a + b)",
    "stdin_read": "import sys\nprint(sum(map(int, sys.stdin.read().split())))",
    "stdin_readline": "import sys\nprint(sum(map(int, sys.stdin.readline().split())))",
    "stdin_readlines": "import sys\nprint(sum(int(x) for l in sys.stdin.readlines() for x in l.split()))",
    "for_line": "import sys\nt = 0\nfor line in sys.stdin:\n    t += sum(map(int, line.split()))\nprint(t)",
    "buffer": "import sys\nprint(sum(map(int, sys.stdin.buffer.read().split())))",
    "buffer_readline": "import sys\nprint(sum(map(int, sys.stdin.buffer.readline().split())))",
    "open0": "print(sum(map(int, open(0).read().split())))",
    "os_read": "import os\nprint(sum(map(int, os.read(0, 100).split())))",
    "stdin_alias": "from sys import stdin\ninput = stdin.readline\nprint(sum(map(int, input().split())))",
    "main_guard": "def main():\n    print(sum(map(int, input().split())))\nif __name__ == '__main__':\n    main()",
    "global": "total = 0\ndef add(x):\n    global total\n    total += x\nfor v in input().split():\n    add(int(v))\nprint(total)",
    "exit_after": "print(sum(map(int, input().split())))\nexit()",
    "sys_exit0": "import sys\nprint(sum(map(int, input().split())))\nsys.exit(0)",
    "sys_exit_none": "import sys\nprint(sum(map(int, input().split())))\nsys.exit()",
    "quit": "print(sum(map(int, input().split())))\nquit()",
    "exit_in_function": "import sys\ndef go():\n    print(3)\n    sys.exit(0)\ngo()\nprint('never')",
    "thread_output": "import threading\ndef w():\n    print(sum(map(int, input().split())))\nthreading.Thread(target=w).start()",
    "atexit": "import atexit\natexit.register(lambda: print(3))",
    "write": "import sys\nsys.stdout.write(str(sum(map(int, input().split()))) + '\\n')",
    "print_end": "print(3, end='')",
    "dataclass": "from dataclasses import dataclass\n@dataclass\nclass P:\n    a: int\nprint(P(3).a)",
    "module_return": "x = sum(map(int, input().split()))\nif x == 3:\n    print(x)\n    return\nprint('never')",
    "pickle_main": "import pickle\nclass A:\n    pass\nprint(3 if isinstance(pickle.loads(pickle.dumps(A())), A) else 0)",
}


def test_stdin_reading_styles_and_script_semantics(executor):
    problem = stdin_problem(inputs=["1 2\n"], outputs=["3\n"])
    results = run(executor, problem, *STDIN_STYLES.values())
    for name, r in zip(STDIN_STYLES, results, strict=True):
        assert r["verdict"] == "passed", (name, r)


def test_eof_reads_return_empty_string(executor):
    problem = stdin_problem(inputs=["5\n"], outputs=["5 '' '' 0\n"])
    code = (
        "import sys\na = sys.stdin.readline().strip()\nb = sys.stdin.readline()\nc = sys.stdin.read()\n"
        "d = len(sys.stdin.readlines())\nprint(a, repr(b), repr(c), d)"
    )
    eof = "x = input()\ntry:\n    input()\nexcept EOFError:\n    print(x, \"''\", \"''\", 0)"
    assert verdicts(run(executor, problem, code, eof)) == ["passed", "passed"]


def test_nonzero_exit_is_a_runtime_error(executor):
    problem = stdin_problem()
    rs = run(
        executor,
        problem,
        "print(3)\nimport sys\nsys.exit(1)",
        "print(3)\nraise SystemExit('bye')",
        "import os\nprint(3, flush=True)\nos._exit(3)",
    )
    assert verdicts(rs) == ["runtime_error"] * 3
    assert "exit status 1" in rs[0]["detail"]


def test_exception_detail_names_the_type(executor):
    r = run(executor, stdin_problem(), "x = [][1]")[0]
    assert (
        r["verdict"] == "runtime_error" and "IndexError" in r["detail"] and r["detail"].startswith("test 0")
    )


# ----------------------------------------------------------------------------------- comparison


def test_strict_output_rules(executor):
    problem = stdin_problem(inputs=[""], outputs=["1.5 YES\n2\n"])
    rs = run(
        executor,
        problem,
        "print('1.5 YES   ')\nprint(2)\nprint()\nprint()",  # trailing whitespace and blank lines
        "print('1.5000001 YES')\nprint(2.0000000001)",  # floats within 1e-6
        "print(2)\nprint('1.5 YES')",  # lines out of order
        "print('1.5 YES')\nprint('1.5 YES')\nprint(2)",  # duplicated line
        "print('1.51 YES')\nprint(2)",
    )
    assert verdicts(rs) == ["passed", "passed", "failed", "failed", "failed"]


def test_apps_mode_is_lenient_and_strict_is_not():
    problem = stdin_problem(inputs=[""], outputs=["1 2\n3\n"])
    code = "print(3)\nprint(2, 1)"
    strict = list(
        execute_samples(
            {"p": problem}, [{"problem_id": "p", "sample_id": 0, "code": code}], ExecutionConfig(workers=1)
        )
    )
    apps = list(
        execute_samples(
            {"p": problem},
            [{"problem_id": "p", "sample_id": 0, "code": code}],
            ExecutionConfig(workers=1, compare="apps"),
        )
    )
    assert strict[0]["verdict"] == "failed" and apps[0]["verdict"] == "passed"


def test_apps_mode_has_the_apps_prelude():
    problem = stdin_problem(inputs=["1 2\n"], outputs=["3\n"])
    code = "print(sum(map(int, sys.stdin.read().split())))"  # no import: APPS prepends `import sys`
    res = {}
    for mode in ("strict", "apps"):
        [r] = execute_samples(
            {"p": problem},
            [{"problem_id": "p", "sample_id": 0, "code": code}],
            ExecutionConfig(workers=1, compare=mode),
        )
        res[mode] = r["verdict"]
    assert res == {"strict": "runtime_error", "apps": "passed"}


# ------------------------------------------------------------------------------------ call-based


def test_call_based(executor):
    problem = call_problem(fn="add", inputs=[[1, 2], [3, 4]], outputs=[[3], [7]])
    rs = run(
        executor,
        problem,
        "def add(a, b):\n    return a + b",
        "class Solution:\n    def add(self, a: int, b: int) -> int:\n        return a + b",
        "def add(a, b):\n    return [a + b]",  # also matches the one-element list itself
        "def add(a, b):\n    return a - b",
        "def add(a, b):\n    return (a + b) if a == 1 else 0",
        "def other(a, b):\n    return a + b",
        "def add(a, b):\n    raise ValueError('no')",
    )
    assert verdicts(rs) == [
        "passed",
        "passed",
        "passed",
        "failed",
        "failed",
        "runtime_error",
        "runtime_error",
    ]
    assert rs[4]["tests_passed"] == 1 and rs[4]["detail"] == "test 1: wrong answer"
    assert "no function 'add'" in rs[5]["detail"]


def test_call_based_tuples_lists_and_typing_prelude(executor):
    problem = call_problem(fn="pair", inputs=[[[3, 1, 2]]], outputs=[[[1, 3]]])
    rs = run(
        executor,
        problem,
        "def pair(xs: List[int]) -> Tuple[int, int]:\n    return (min(xs), max(xs))",
        "def pair(xs):\n    return {min(xs), max(xs)}",  # a set is not a list
        "import numpy as np\ndef pair(xs):\n    return np.array([min(xs), max(xs)])",
    )
    assert verdicts(rs)[:2] == ["passed", "failed"]
    assert rs[2]["verdict"] in ("passed", "runtime_error")  # passed where numpy is installed


def test_call_based_program_output_and_stdin_do_not_interfere(executor):
    problem = call_problem(fn="f", inputs=[[1]], outputs=[[2]])
    rs = run(
        executor,
        problem,
        "import sys\ndef f(x):\n    print('noise', x)\n    print('err', file=sys.stderr)\n    return 2 * x",
        "def f(x):\n    try:\n        input()\n    except EOFError:\n        return 2\n",
    )
    assert verdicts(rs) == ["passed", "passed"]


# ---------------------------------------------------------------------------------- assert-based


def test_assert_based(executor):
    problem = assert_problem(
        asserts=["assert f(1) == 2", "assert f(2) == 4", "assert f(3) == K"], setup="K = 6"
    )
    rs = run(
        executor,
        problem,
        "def f(x):\n    return 2 * x",
        "def f(x):\n    return 2 if x == 1 else 0",
        "def f(x):\n    return 2 * x if x != 2 else 1 / 0",
        "def f(x)\n    return x",
        "raise RuntimeError('at load')\ndef f(x):\n    return 2 * x",
    )
    assert verdicts(rs) == ["passed", "failed", "runtime_error", "compile_error", "runtime_error"]
    assert rs[0]["tests_passed"] == 3 and rs[0]["tests_total"] == 3
    assert rs[1]["tests_passed"] == 1 and rs[1]["detail"].startswith("test 1: assertion failed")
    assert rs[2]["tests_passed"] == 2 and "ZeroDivisionError" in rs[2]["detail"]
    assert rs[4]["tests_passed"] == 0 and "RuntimeError" in rs[4]["detail"]


# ------------------------------------------------------------------------------- limits, verdicts


def test_time_limit_per_test_stops_the_program(executor):
    problem = stdin_problem(inputs=["1\n", "2\n", "3\n"], outputs=["1\n", "2\n", "3\n"])
    code = "import time\nx = int(input())\nif x == 2:\n    time.sleep(60)\nprint(x)"
    r = run(executor, problem, code)[0]
    assert r["verdict"] == "timeout" and r["tests_passed"] == 1
    assert r["detail"].startswith("test 1") and r["duration_s"] < 5


def test_time_limit_per_program(executor):
    problem = stdin_problem(inputs=["1\n"] * 5, outputs=["1\n"] * 5)
    r = run(executor, problem, "import time\ntime.sleep(1.5)\nprint(1)")[0]
    assert r["verdict"] == "timeout" and r["tests_passed"] == 3, r  # 6 s for 5 tests of 1.5 s
    assert "total time limit" in r["detail"]


def test_call_and_assert_time_limits(executor):
    rc = run(
        executor,
        call_problem(fn="f", inputs=[[1], [2]], outputs=[[1], [2]]),
        "def f(x):\n    while x == 2:\n        pass\n    return x",
    )[0]
    ra = run(executor, assert_problem(), "while True:\n    pass")[0]
    assert (rc["verdict"], rc["tests_passed"]) == ("timeout", 1)
    assert ra["verdict"] == "timeout"


def test_output_cap_is_a_failed_test(executor):
    r = run(executor, stdin_problem(), "print('x' * 200_000)")[0]
    assert r["verdict"] == "failed" and "output exceeds" in r["detail"]
    rc = run(
        executor, call_problem(fn="f", inputs=[[1]], outputs=[[1]]), "def f(x):\n    return 'x' * 200_000"
    )[0]
    assert rc["verdict"] == "failed" and "output exceeds" in rc["detail"]


def test_compile_error_is_detected_before_running(executor):
    r = run(executor, stdin_problem(), "print(3)\nimport time\ntime.sleep(5)\ndef f(:\n    pass")[0]
    assert r["verdict"] == "compile_error" and r["reward"] == REWARDS["compile_error"]
    assert r["duration_s"] < 1 and "SyntaxError" in r["detail"] and r["tests_passed"] == 0
    r = run(executor, stdin_problem(), "print('a\0b')")[0]  # NUL byte in the source
    assert r["verdict"] == "compile_error"


def test_verdict_precedence(executor):
    problem = stdin_problem(inputs=["1\n", "2\n", "3\n"], outputs=["1\n", "2\n", "3\n"])
    rs = run(
        executor,
        problem,
        "x = int(input())\nprint(0 if x == 1 else x)",  # wrong answer only -> failed
        "x = int(input())\nif x == 3:\n    raise ValueError\nprint(0 if x == 1 else x)",  # error beats wrong
        "import time\nx = int(input())\nif x == 3:\n    time.sleep(60)\nif x == 2:\n    raise ValueError\nprint(x)",
    )
    assert verdicts(rs) == ["failed", "runtime_error", "timeout"]
    assert [r["tests_passed"] for r in rs] == [2, 1, 1]


def test_result_contract_and_rewards(executor):
    rs = run(executor, stdin_problem(), "print(3)", "print(4)", "1/0", "while True: pass", "print(")
    for r in rs:
        assert tuple(r) == RESULT_KEYS
        assert r["reward"] == REWARDS[r["verdict"]]
        assert isinstance(r["duration_s"], float) and len(r["detail"]) <= 200
    assert verdicts(rs) == ["passed", "failed", "runtime_error", "timeout", "compile_error"]
    assert REWARDS == {
        "passed": 1.0,
        "failed": -0.3,
        "runtime_error": -0.6,
        "timeout": -0.6,
        "compile_error": -1.0,
    }


def test_detail_is_short_even_for_long_errors(executor):
    r = run(executor, stdin_problem(), "raise ValueError('x' * 100000)")[0]
    assert r["verdict"] == "runtime_error" and len(r["detail"]) <= 200


def test_example_tests_and_empty_test_sets():
    problem = Problem(
        id="e",
        source="t",
        split="test",
        question="",
        format="stdin",
        tests={"inputs": ["1\n"], "outputs": ["2\n"]},
        example_tests={"inputs": ["5\n"], "outputs": ["6\n"]},
    )
    empty = stdin_problem(pid="z", inputs=[], outputs=[])
    samples = [
        {"problem_id": "e", "sample_id": 0, "code": "print(int(input()) + 1)"},
        {"problem_id": "e", "sample_id": 1, "code": "print(6)"},
        {"problem_id": "z", "sample_id": 2, "code": "print(1)"},
        {"problem_id": "z", "sample_id": 3, "code": "print("},
    ]
    res = {
        r["sample_id"]: r
        for r in execute_samples(
            {"e": problem, "z": empty}, samples, ExecutionConfig(workers=1, tests="example")
        )
    }
    assert res[0]["verdict"] == res[1]["verdict"] == "passed"
    hidden = {
        r["sample_id"]: r for r in execute_samples({"e": problem}, samples[:2], ExecutionConfig(workers=1))
    }
    assert hidden[1]["verdict"] == "failed"
    assert res[2]["verdict"] == "passed" and res[2]["tests_total"] == 0
    assert res[3]["verdict"] == "compile_error"


def test_unknown_problem_id_is_one_clear_error(executor):
    with pytest.raises(BcoderError, match="unknown problem id 'nope'"):
        list(
            executor.run({"p": stdin_problem()}, [{"problem_id": "nope", "sample_id": 7, "code": "print(3)"}])
        )


def test_telemetry_records_every_program(executor, monkeypatch):
    from bcoder_core import telemetry

    calls = []
    monkeypatch.setattr(telemetry, "record_execution", lambda v, s: calls.append((v, s)))
    run(executor, stdin_problem(), "print(3)", "print(4)")
    assert sorted(v for v, _ in calls) == ["failed", "passed"]


def test_framework_crash_raises_instead_of_a_verdict():
    problem = stdin_problem(inputs=["1\n"], outputs=["1\n"])
    samples = [
        {"problem_id": "p", "sample_id": i, "code": "import time\ntime.sleep(1)\nprint(1)"} for i in range(4)
    ]
    with Executor(ExecutionConfig(workers=1)) as ex:
        results = ex.run({"p": problem}, samples)
        first = next(results)
        assert first["verdict"] == "passed"
        os.kill(ex._workers[0].proc.pid, signal.SIGKILL)  # the framework dies, not a program
        t0 = time.monotonic()
        with pytest.raises(ExecutionError, match="worker died"):
            list(results)
        assert time.monotonic() - t0 < 30
