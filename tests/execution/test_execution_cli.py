"""`bcoder execute` end to end: results, summary, resume after a kill, torn lines, shards, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers.cli import bcoder
from helpers.paths import REPO
from helpers.problems import make_problem

from bcoder_core.problems import write_problems


def make_inputs(tmp: Path, n_samples: int = 6, code: str | None = None) -> tuple[Path, Path]:
    tests = {"inputs": ["1 2\n", "5 5\n"], "outputs": ["3\n", "10\n"]}
    problems = [make_problem(f"p{k}", "stdin", tests) for k in range(4)]
    write_problems(problems, tmp / "problems.jsonl")
    codes = ["a, b = map(int, input().split())\nprint(a + b)", "print(3)", "1/0", "print("]
    with (tmp / "samples.jsonl").open("w") as f:
        for i in range(n_samples):
            f.write(
                json.dumps(
                    {"problem_id": f"p{i % 4}", "sample_id": i, "code": code or codes[i % 4], "model": "m"}
                )
                + "\n"
            )
    return tmp / "problems.jsonl", tmp / "samples.jsonl"


def execute_argv(problems: Path, samples: Path, out: Path, *extra: str) -> list[str]:
    """``bcoder execute`` with these inputs and output, then ``extra`` options."""
    return ["execute", "--problems", str(problems), "--samples", str(samples), "--out", str(out), *extra]


def read_results(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_execute_writes_results_and_summary(tmp_path):
    problems, samples = make_inputs(tmp_path)
    out = tmp_path / "out" / "results.jsonl"
    cp = bcoder(*execute_argv(problems, samples, out, "--workers", "2", "--timeout", "2"))
    assert cp.returncode == 0, cp.stderr
    results = read_results(out)
    assert sorted(r["sample_id"] for r in results) == list(range(6))
    by_id = {r["sample_id"]: r["verdict"] for r in results}
    assert by_id == {
        0: "passed",
        1: "failed",
        2: "runtime_error",
        3: "compile_error",
        4: "passed",
        5: "failed",
    }
    assert "passed 2, failed 2, runtime_error 1, timeout 0, compile_error 1" in cp.stdout
    assert Path(str(out) + ".manifest.json").exists()


def test_resume_after_a_kill_and_a_torn_line(tmp_path):
    problems, samples = make_inputs(tmp_path, n_samples=12, code="import time\ntime.sleep(0.4)\nprint(3)")
    out = tmp_path / "results.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "jobs.cli",
        *execute_argv(problems, samples, out, "--workers", "1", "--quiet"),
    ]
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 2):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # a killed run: the CLI and its workers
    proc.wait()
    done_before = read_results(out)
    assert 2 <= len(done_before) < 12
    with out.open("a") as f:
        f.write('{"problem_id": "p0", "sample_id": 99, "verd')  # torn last line
    cp = bcoder(*execute_argv(problems, samples, out, "--workers", "2", "--quiet"))
    assert cp.returncode == 0, cp.stderr
    assert f"{len(done_before)} results already there" in cp.stderr
    results = read_results(out)
    assert sorted(r["sample_id"] for r in results) == list(range(12))
    # nothing already done was run again
    assert results[: len(done_before)] == done_before


def test_unknown_problem_id_is_one_error_line(tmp_path):
    problems, samples = make_inputs(tmp_path, n_samples=2)
    with samples.open("a") as f:
        f.write(json.dumps({"problem_id": "ghost/7", "sample_id": 5, "code": "print(1)"}) + "\n")
    cp = bcoder(*execute_argv(problems, samples, tmp_path / "r.jsonl"))
    assert cp.returncode == 2
    errors = [line for line in cp.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "ghost/7" in errors[0]


def test_shard_takes_problems_by_index(tmp_path):
    problems, samples = make_inputs(tmp_path, n_samples=8)
    out = tmp_path / "r.jsonl"
    cp = bcoder(*execute_argv(problems, samples, out, "--shard", "1/2", "--quiet"))
    assert cp.returncode == 0, cp.stderr
    assert {r["problem_id"] for r in read_results(out)} == {"p1", "p3"}
    bad = bcoder(*execute_argv(problems, samples, out, "--shard", "2/2"))
    assert bad.returncode == 2 and "--shard" in bad.stderr


def test_help():
    cp = bcoder("execute", "--help")
    assert cp.returncode == 0
    for opt in (
        "--problems",
        "--samples",
        "--out",
        "--workers",
        "--sandbox",
        "--timeout",
        "--memory-mb",
        "--compare",
        "--tests",
        "--shard",
    ):
        assert opt in cp.stdout
