"""`bcoder data prepare` end to end (subprocess, as users and Jobs run it)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from helpers.paths import FIXTURES, REPO

from bcoder_core.problems import read_problems

ROOT = REPO


def _bcoder(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jobs.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=120
    )


@pytest.mark.parametrize(
    ("args", "count", "first_id"),
    [
        (["apps", "--source", str(FIXTURES / "apps")], 5, "apps/train/0001"),
        (
            ["apps", "--source", str(FIXTURES / "apps" / "train"), "--name", "bench", "--split", "test"],
            5,
            "bench/test/0001",
        ),
        (["apps", "--source", str(FIXTURES / "apps_hf.jsonl"), "--split", "train"], 5, "apps/train/0001"),
        (["mbpp", "--source", str(FIXTURES / "mbpp" / "mbpp.jsonl")], 974, "mbpp/1"),
        (["mbpp", "--source", str(FIXTURES / "mbpp" / "mbpp.jsonl"), "--split", "test"], 500, "mbpp/11"),
        (["humaneval"], 164, "humaneval/HumanEval/0"),
    ],
)
def test_prepare(tmp_path, args, count, first_id):
    out = tmp_path / "sets" / "problems.jsonl"
    proc = _bcoder("data", "prepare", *args, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"kept {count}, skipped 0"
    assert f"wrote {count} problems to {out}" in proc.stdout
    problems = read_problems(out)
    assert len(problems) == count and problems[0].id == first_id
    leftovers = [p.name for p in out.parent.iterdir() if not p.name.startswith("problems.jsonl")]
    assert leftovers == [] and not list(out.parent.glob("*partial*"))  # nothing staged is left


def test_prepare_reports_bad_records_and_strict(tmp_path):
    src = tmp_path / "train"
    shutil.copytree(FIXTURES / "apps" / "train", src)
    (src / "0111" / "input_output.json").write_text("{not json")
    out = tmp_path / "p.jsonl"
    proc = _bcoder("data", "prepare", "apps", "--source", str(src), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert err[0].startswith("skipped apps/train/0111: input_output.json: not valid JSON")
    assert err[-1] == "kept 4, skipped 1"
    assert [p.id for p in read_problems(out)] == [
        "apps/train/0001",
        "apps/train/2287",
        "apps/train/2404",
        "apps/train/4184",
    ]

    out2 = tmp_path / "strict.jsonl"
    proc = _bcoder("data", "prepare", "apps", "--source", str(src), "--out", str(out2), "--strict")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: apps/train/0111: input_output.json: not valid JSON"
    )
    assert not out2.exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["mbpp", "--source", "MISSING"], "no such file"),
        (["mbpp", "--source", str(FIXTURES / "mbpp" / "mbpp.jsonl"), "--split", "dev"], "MBPP splits are"),
        (["apps", "--source", str(FIXTURES / "apps_hf.jsonl")], "pass --split"),
        (["apps"], "--source is required"),
        (["humaneval", "--name", "x"], "only for the APPS layout"),
    ],
)
def test_prepare_errors_are_one_line(tmp_path, args, needle):
    args = [str(tmp_path / "missing") if a == "MISSING" else a for a in args]
    out = tmp_path / "p.jsonl"
    proc = _bcoder("data", "prepare", *args, "--out", str(out))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr
    assert not out.exists()


def test_prepare_all_skipped_is_an_error(tmp_path):
    src = tmp_path / "train"
    (src / "0001").mkdir(parents=True)
    proc = _bcoder("data", "prepare", "apps", "--source", str(src), "--out", str(tmp_path / "p.jsonl"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "no problems kept" in proc.stderr


def test_help():
    proc = _bcoder("data", "prepare", "--help")
    assert proc.returncode == 0 and "--source" in proc.stdout and "--strict" in proc.stdout
    proc = _bcoder("evaluate", "--help")
    assert proc.returncode == 0 and "--example-results" in proc.stdout
