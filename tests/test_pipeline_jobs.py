"""`bcoder pipeline run --jobs N`: independent stages side by side, dependencies respected, a
failure stops what depends on it. The stages here are small real child processes (a script that
commits its output through bcoder's storage); the real stages run with --jobs 2 in
tests/test_pipeline.py::test_causal_smoke_pipelines_run_every_stage."""

from __future__ import annotations

import itertools
import json
import os
import sys
from pathlib import Path

import pytest
from helpers.paths import REPO

from bcoder_core import pipeline, storage
from bcoder_core.config import load_config
from bcoder_core.errors import BcoderError
from bcoder_core.pipeline import PipelineConfig, Stage

FAKE = """
import json, os, sys, time
sys.path.insert(0, {repo!r})
from bcoder_core import storage
out, seconds, code, log = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
start = time.time()
print("working on", out, flush=True)
time.sleep(seconds)
if code:
    print("something went wrong in", out, flush=True)
    sys.exit(code)
with storage.output_path(out, kind="fake") as path:
    path.write_text("made\\n")
with open(log, "a") as fh:
    fh.write(json.dumps({{"out": out, "start": start, "end": time.time(),
                         "threads": os.environ.get("OMP_NUM_THREADS")}}) + "\\n")
"""


def _setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jobs: int, fail: str = "") -> tuple:
    """A diamond a -> (b, c) -> d plus e reading only a; b and c take a second each."""
    script = tmp_path / "fake_stage.py"
    script.write_text(FAKE.format(repo=str(REPO)))
    runs = tmp_path / "runs.jsonl"
    run_dir = tmp_path / "run"
    out = {n: str(run_dir / f"{n}.txt") for n in "abcde"}
    reads = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"], "e": ["a"]}
    seconds = {"a": 0.0, "b": 1.0, "c": 1.0, "d": 0.0, "e": 0.0}
    stages = [
        Stage(
            n,
            [out[n], str(seconds[n]), "3" if n == fail else "0", str(runs), *(out[r] for r in reads[n])],
            out[n],
        )
        for n in "abcde"
    ]
    monkeypatch.setattr(pipeline, "plan", lambda cfg: stages)
    monkeypatch.setattr(pipeline, "_launcher", lambda torchrun: [sys.executable, str(script)])
    cfg = load_config(PipelineConfig, REPO / "configs" / "smoke.yaml", [f"run_dir={run_dir}", f"jobs={jobs}"])
    return cfg, out, runs, run_dir


def _intervals(runs: Path, out: dict[str, str]) -> dict[str, dict]:
    by_out = {json.loads(x)["out"]: json.loads(x) for x in runs.read_text().splitlines()}
    return {n: by_out[o] for n, o in out.items() if o in by_out}


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="two stages side by side need two cores")
def test_independent_stages_run_side_by_side_after_what_they_read(tmp_path, monkeypatch) -> None:
    cfg, out, runs, run_dir = _setup(tmp_path, monkeypatch, jobs=2)
    lines: list[str] = []
    ran = pipeline.run(cfg, echo=lines.append)
    assert sorted(ran) == list("abcde")
    t = _intervals(runs, out)
    assert t["b"]["start"] < t["c"]["end"] and t["c"]["start"] < t["b"]["end"]  # b and c overlapped
    assert t["a"]["end"] <= min(t[n]["start"] for n in "bce")
    assert t["d"]["start"] >= max(t["b"]["end"], t["c"]["end"])
    # The cores are shared among the stages ready together: all for a, alone at the start; b, c and
    # e are ready together with two slots, so b and c get half each (never more threads than cores).
    cores = len(os.sched_getaffinity(0))
    assert t["a"]["threads"] == str(cores)
    assert t["b"]["threads"] == t["c"]["threads"] == str(cores // 2)
    assert "working on" in (run_dir / "logs" / "b.log").read_text()  # output went to the log
    assert json.loads((run_dir / "timings.json").read_text()).keys() == set("abcde")
    # All committed now: a second run starts nothing.
    again: list[str] = []
    assert pipeline.run(cfg, echo=again.append) == []
    assert sum("committed, skipped" in x for x in again) == 5


def test_one_job_runs_stages_one_at_a_time_in_plan_order(tmp_path, monkeypatch) -> None:
    cfg, out, runs, _ = _setup(tmp_path, monkeypatch, jobs=1)
    pipeline.run(cfg, echo=lambda _: None)
    t = sorted(_intervals(runs, out).items(), key=lambda kv: kv[1]["start"])
    assert [n for n, _ in t] == list("abcde")
    assert all(prev["end"] <= nxt["start"] for (_, prev), (_, nxt) in itertools.pairwise(t))


def test_a_failed_stage_stops_what_reads_it_and_shows_its_log(tmp_path, monkeypatch) -> None:
    cfg, out, runs, run_dir = _setup(tmp_path, monkeypatch, jobs=2, fail="b")
    lines: list[str] = []
    with pytest.raises(BcoderError, match=r"stage b failed \(exit 3\); re-run the pipeline to resume"):
        pipeline.run(cfg, echo=lines.append)
    made = _intervals(runs, out)
    assert "d" not in made and not storage.exists(out["d"]) and not storage.exists(out["b"])
    assert storage.exists(out["a"]) and storage.exists(out["c"])  # c was running: it finished and committed
    failure = next(x for x in lines if "b: failed" in x)
    assert "something went wrong in" in failure and str(run_dir / "logs" / "b.log") in failure
    # Resuming re-runs only what is not committed once the cause is gone.
    cfg2, *_ = _setup(tmp_path, monkeypatch, jobs=2)
    assert sorted(pipeline.run(cfg2, echo=lambda _: None)) == sorted(n for n in "bde" if n not in made)


def test_jobs_must_be_positive(tmp_path) -> None:
    with pytest.raises(BcoderError, match="jobs"):
        load_config(PipelineConfig, REPO / "configs" / "smoke.yaml", [f"run_dir={tmp_path}", "jobs=0"])
