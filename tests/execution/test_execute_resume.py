"""`bcoder execute` resumes only into results made from the same samples and settings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from helpers.bad_inputs import PROBLEM, SAMPLE
from helpers.paths import REPO

WRONG = "print(4)\n"


def _write(path: Path, *records: dict) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _execute(d: Path, samples: Path, *extra: str) -> subprocess.CompletedProcess:
    argv = [
        "execute",
        "--problems",
        str(d / "p.jsonl"),
        "--samples",
        str(samples),
        "--out",
        str(d / "r.jsonl"),
    ]
    return subprocess.run(
        [sys.executable, "-m", "jobs.cli", *argv, "--workers", "1", "--quiet", *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _inputs(d: Path) -> tuple[Path, Path]:
    _write(d / "p.jsonl", PROBLEM)
    good = _write(d / "a.jsonl", SAMPLE, {**SAMPLE, "sample_id": 1, "code": WRONG})
    return good, d / "r.jsonl"


def test_resume_with_other_samples_or_settings_is_refused_and_keeps_the_results(tmp_path):
    good, out = _inputs(tmp_path)
    first = _execute(tmp_path, good)
    assert first.returncode == 0, first.stderr
    verdicts = out.read_bytes()
    # the same samples under the same name, but other code: the old verdicts would be wrong
    other = _write(tmp_path / "other.jsonl", {**SAMPLE, "code": WRONG}, {**SAMPLE, "sample_id": 1})
    refused = _execute(tmp_path, other)
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot resume: samples_sha256 was" in lines[0] and "start afresh" in lines[0]
    changed = _execute(tmp_path, good, "--timeout", "2")
    assert changed.returncode == 2 and "cannot resume: timeout_s was 4.0, now 2.0" in changed.stderr
    assert out.read_bytes() == verdicts  # nothing rewritten
    # the same inputs and settings resume (nothing left to run)
    again = _execute(tmp_path, good)
    assert again.returncode == 0 and "2 results already there, 0 to run" in again.stderr
    assert out.read_bytes() == verdicts


def test_resume_after_a_kill_checks_the_run_file(tmp_path):
    good, out = _inputs(tmp_path)
    assert _execute(tmp_path, good).returncode == 0
    results = out.read_text().splitlines()
    # what a killed run leaves: the first result, no manifest, the run file with its settings
    manifest_config = json.loads(next(tmp_path.glob("r.jsonl*manifest*")).read_text())["config"]
    for m in tmp_path.glob("r.jsonl*manifest*"):
        m.unlink()
    out.write_text(results[0] + "\n")
    (tmp_path / "r.jsonl.run.json").write_text(json.dumps(manifest_config))
    refused = _execute(tmp_path, good, "--memory-mb", "512")
    assert refused.returncode == 2 and "memory_mb was 1024, now 512" in refused.stderr
    resumed = _execute(tmp_path, good)
    assert resumed.returncode == 0, resumed.stderr
    assert "1 results already there, 1 to run" in resumed.stderr
    assert len(out.read_text().splitlines()) == 2 and not (tmp_path / "r.jsonl.run.json").exists()


def test_results_of_samples_outside_the_run_are_refused(tmp_path):
    good, _ = _inputs(tmp_path)
    assert _execute(tmp_path, good).returncode == 0
    fewer = _write(tmp_path / "b.jsonl", SAMPLE)
    refused = _execute(tmp_path, fewer)
    assert refused.returncode == 2
    assert "cannot resume" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
