"""The end-to-end pipeline on the smoke preset: every stage runs, every artifact is committed and
valid, the report and plots are written, and a re-run resumes instead of redoing work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.paths import REPO

from bcoder_core import storage
from bcoder_core.config import load_config
from bcoder_core.pipeline import PipelineConfig, inputs_of, plan
from bcoder_core.report import paired_gain

SMOKE = REPO / "configs" / "smoke.yaml"
DEMO = REPO / "configs" / "demo.yaml"
CAUSAL = {
    name: REPO / "configs" / f"{name}.yaml" for name in ("smoke-causal", "smoke-causal-lora", "demo-causal")
}


def _bcoder(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobs.cli", *args], cwd=cwd, capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize("preset", [SMOKE, DEMO, *CAUSAL.values()], ids=["smoke", "demo", *CAUSAL])
def test_presets_load_and_plan_every_stage(preset: Path) -> None:
    cfg = load_config(PipelineConfig, preset, ["run_dir=/tmp/x"])
    stages = plan(cfg)
    names = [s.name for s in stages]
    # The order of DESIGN §1: data, checkpoint, replay data, phi, V_phi annotation, theta, evaluation.
    for earlier, later in [
        ("benchmark", "prepare-train"),
        ("prepare-train", "sft"),
        ("sft", "sample-train"),
        ("execute-train", "annotate"),
        ("annotate", "phi"),
        ("phi", "annotate-phi"),
        ("annotate-phi", "theta"),
        ("theta", "rank-ckpt"),
        ("rank-bcoder", "execute-test-bcoder"),
        ("execute-example-bcoder", "evaluate-bcoder"),
    ]:
        assert names.index(earlier) < names.index(later)
    assert len(set(names)) == len(names)
    assert all(s.output.startswith("/tmp/x/") for s in stages)


def test_validation_plan_evaluates_on_val_beside_the_test_artifacts() -> None:
    test_cfg = load_config(PipelineConfig, DEMO, ["run_dir=/tmp/x"])
    val_cfg = load_config(PipelineConfig, DEMO, ["run_dir=/tmp/x", "eval_split=val", "alpha=0.25"])
    test_stages = {s.name: s for s in plan(test_cfg)}
    val_stages = {s.name: s for s in plan(val_cfg)}
    # Training stages are shared; evaluation stages and their outputs are the val split's own.
    for name in ("benchmark", "prepare-val", "sft", "phi", "theta", "theta-ce"):
        assert name in test_stages and name in val_stages
    assert "--n-val" in val_stages["benchmark"].argv
    evals = [s for s in val_stages.values() if s.name not in test_stages]
    assert {s.name for s in evals} >= {"sample-val-ckpt", "rank-val-bcoder", "evaluate-val-ce-only"}
    for s in evals:
        assert "/tmp/x/problems/val.jsonl" in s.argv, s.name
        assert not any("test.jsonl" in a or "/test-" in a for a in s.argv), s.name
        assert s.output not in {t.output for t in test_stages.values()}
    assert val_stages["evaluate-val-bcoder"].output == "/tmp/x/eval-val/bcoder.json"
    # One alpha for ckpt_adv (annotate), phi's targets and theta; rank reads it from θ.
    for name in ("annotate", "annotate-phi"):
        argv = val_stages[name].argv
        assert argv[argv.index("--alpha") + 1] == "0.25"
    for name in ("theta", "theta-ce"):
        assert "alpha=0.25" in val_stages[name].argv


def test_eval_split_val_needs_a_validation_split(tmp_path: Path) -> None:
    proc = _bcoder(
        "pipeline", "run", "--config", str(SMOKE), "--run-dir", str(tmp_path / "r"),
        "eval_split=val", "benchmark.n_val=0", cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error:") and "n_val" in proc.stderr


def test_bad_pipeline_config_is_one_error_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(SMOKE.read_text() + "\nno_such_key: 1\n")
    proc = _bcoder("pipeline", "run", "--config", str(bad), cwd=REPO)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "no_such_key" in lines[0]


def test_paired_gain_interval_brackets_the_mean() -> None:
    a = [1.0] * 30 + [0.0] * 70
    b = [0.0] * 100
    g = paired_gain(a, b, resamples=500, seed=1)
    assert g["gain"] == pytest.approx(0.3)
    assert 0.0 < g["lo"] < 0.3 < g["hi"] < 0.5
    same = paired_gain(b, b, resamples=100)
    assert same["gain"] == same["lo"] == same["hi"] == 0.0


def test_seeds_table_gives_mean_spread_and_each_run() -> None:
    import numpy as np

    from bcoder_core.report import Report, seeds_table

    name = "B-Coder ranked − checkpoint unranked, pass@1"
    runs = [
        Report(
            markdown_path=Path("r.md"),
            summary="",
            gains={name: {"gain": g, "lo": g - 0.05, "hi": g + 0.05}},
            pass_at={"ckpt": {"unranked": p}},
            value={"v_last": np.float32(auc), "sum_ckpt_adv": 0.8},  # as value_discrimination gives it
        )
        for g, p, auc in ((0.10, 0.20, 0.50), (0.20, 0.25, 0.55), (0.30, 0.30, 0.60))
    ]
    runs[2].value["sum_ckpt_adv"] = float("nan")  # no problem with passing and failing programs
    table = seeds_table(runs, ["seed 0", "seed 1", "seed 2"]).splitlines()
    assert table[0] == "| quantity | mean ± sd | range | seed 0 | seed 1 | seed 2 |"
    assert f"| {name} | +20.0 ± 10.0 | +10.0 … +30.0 | +10.0 | +20.0 | +30.0 |" in table
    assert "| pass@1 Checkpoint (sft), unranked | 25.0 ± 5.0 | 20.0 … 30.0 | 20.0 | 25.0 | 30.0 |" in table
    assert (
        "| V_φ within-problem AUC, last state | 0.550 ± 0.050 | 0.500 … 0.600 | 0.500 | 0.550 | 0.600 |"
        in table
    )
    assert "| Σ A_ckpt AUC | 0.800 ± 0.000 | 0.800 … 0.800 | 0.800 | 0.800 | — |" in table


@pytest.mark.slow
def test_smoke_pipeline_runs_every_stage_and_resumes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = _bcoder("pipeline", "run", "--config", str(SMOKE), "--run-dir", str(run_dir), cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    cfg = load_config(PipelineConfig, SMOKE, [f"run_dir={run_dir}"])
    stages = plan(cfg)
    for stage in stages:
        # Committed means a manifest whose files verify (input_path checks sizes and sha256).
        assert storage.exists(stage.output), stage.name
        assert storage.input_path(stage.output).exists()

    # Samples and results line up one to one and follow the executor's contract.
    samples = [json.loads(x) for x in (run_dir / "samples/test-bcoder-ranked.jsonl").read_text().splitlines()]
    results = [json.loads(x) for x in (run_dir / "results/test-bcoder.jsonl").read_text().splitlines()]
    assert {(s["problem_id"], s["sample_id"]) for s in samples} == {
        (r["problem_id"], r["sample_id"]) for r in results
    }
    assert all(isinstance(s["score"], float) for s in samples)
    assert {r["verdict"] for r in results} <= {
        "passed",
        "failed",
        "runtime_error",
        "timeout",
        "compile_error",
    }

    report = (run_dir / "report.md").read_text()
    for title in (
        "Table 1",
        "Table 3",
        "Table 8",
        "Ablation",
        "Gains",
        "Value model",
        "V_φ at the last state",
    ):
        assert title in report
    for png in ("pass_at_k.png", "training_curves.png"):
        data = (run_dir / png).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 1000
    for stage in ("sft", "phi", "theta"):
        history = json.loads((run_dir / stage / "final" / "history.json").read_text())
        assert history and all("step" in h for h in history)

    # The seeds summary reads runs without writing into them: one run twice has no spread.
    before = sorted(p.name for p in run_dir.iterdir())
    seeds = _bcoder("pipeline", "seeds", str(run_dir), str(run_dir), cwd=REPO)
    assert seeds.returncode == 0, seeds.stderr[-2000:]
    gain_rows = [x for x in seeds.stdout.splitlines() if "checkpoint unranked, pass@1" in x]
    assert gain_rows and all(" ± 0.0 |" in x for x in gain_rows)
    assert seeds.stdout.startswith("test split, 2 runs")
    assert sorted(p.name for p in run_dir.iterdir()) == before
    # the split is asked for, not taken from the run's last pipeline.yaml: no val evaluation here
    val = _bcoder("pipeline", "seeds", "--eval-split", "val", str(run_dir), cwd=REPO)
    assert val.returncode != 0 and val.stderr.startswith("error:") and "\n" not in val.stderr.strip()

    # A second run finds every stage committed and redoes nothing.
    again = _bcoder("pipeline", "run", "--config", str(SMOKE), "--run-dir", str(run_dir), cwd=REPO)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("committed, skipped") == len(stages)

    # An interrupted stage (its output never committed) is the one that runs again.
    victim = next(s for s in stages if s.name == "execute-test-ckpt")
    Path(victim.output + storage.FILE_MANIFEST_SUFFIX).unlink()
    third = _bcoder("pipeline", "run", "--config", str(SMOKE), "--run-dir", str(run_dir), cwd=REPO)
    assert third.returncode == 0, third.stderr[-2000:]
    assert f"{victim.name}: done" in third.stdout
    assert third.stdout.count("committed, skipped") == len(stages) - 1

    # Tuning on the validation split reuses every trained stage and evaluates on val only.
    test_report = (run_dir / "report.md").read_text()
    val = _bcoder(
        "pipeline", "run", "--config", str(SMOKE), "--run-dir", str(run_dir), "eval_split=val", cwd=REPO
    )
    assert val.returncode == 0, val.stdout[-2000:] + val.stderr[-2000:]
    val_cfg = load_config(PipelineConfig, SMOKE, [f"run_dir={run_dir}", "eval_split=val"])
    ran = [s.name for s in plan(val_cfg) if f"{s.name}: done" in val.stdout]
    assert ran and all("-val-" in name or name.startswith("sample-val") for name in ran), ran
    assert "Validation split" in (run_dir / "report-val.md").read_text()
    assert (run_dir / "report.md").read_text() == test_report  # the test report is untouched


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smoke-causal", "smoke-causal-lora"])
def test_causal_smoke_pipelines_run_every_stage(tmp_path: Path, name: str) -> None:
    """The smoke pipeline on a tiny Llama-family model, full fine-tuning and LoRA (CI runs both);
    the full one with two stages at a time (--jobs 2), each stage's output in its log."""
    preset = CAUSAL[name]
    run_dir = tmp_path / "run"
    jobs = ["--jobs", "2"] if name == "smoke-causal" else []
    proc = _bcoder("pipeline", "run", "--config", str(preset), "--run-dir", str(run_dir), *jobs, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cfg = load_config(PipelineConfig, preset, [f"run_dir={run_dir}"])
    for stage in plan(cfg):
        assert storage.exists(stage.output), stage.name
        if jobs:
            assert (
                f"{stage.name}: done in" in proc.stdout and (run_dir / "logs" / f"{stage.name}.log").is_file()
            )
    sft = json.loads((run_dir / "sft/final/config.json").read_text())
    assert sft["model_type"] == "llama"
    theta, phi = run_dir / "theta/final", run_dir / "phi/final"
    phi_meta = json.loads((phi / "phi_config.json").read_text())
    assert phi_meta["family"] == "causal"
    if name.endswith("-lora"):
        # θ = base + adapter, exported merged (what sample read) and as a PEFT adapter on the sft model
        adapter = json.loads((theta / "adapter/adapter_config.json").read_text())
        assert adapter["base_model_name_or_path"] == str((run_dir / "sft/final").resolve()) or adapter[
            "base_model_name_or_path"
        ] == str(run_dir / "sft/final")
        assert (theta / "adapter/adapter_model.safetensors").is_file() and phi_meta["lora"]["r"] == 8
    else:
        assert not (theta / "adapter").exists() and phi_meta["lora"] is None
    samples = [json.loads(x) for x in (run_dir / "samples/test-bcoder-ranked.jsonl").read_text().splitlines()]
    assert samples and all(isinstance(s["score"], float) for s in samples)
    assert "Table 1" in (run_dir / "report.md").read_text()


def test_apps_description_loads_and_plans_the_paper_run() -> None:
    cfg = load_config(PipelineConfig, REPO / "configs" / "apps.yaml")
    stages = plan(cfg)
    names = [s.name for s in stages]
    assert "sft" not in names and "benchmark" not in names  # the CodeRL checkpoint is given by URI
    assert names[:2] == ["prepare-train", "prepare-test"]
    assert stages[0].argv[:4] == ["data", "prepare", "apps", "--source"]
    assert all(s.output.startswith("s3://bcoder/runs/apps/") for s in stages)
    assert cfg.test_sampling.num_samples == 256 and cfg.test_sampling.temperature == 0.6
    shards = [s for s in stages if s.group == "sample-test-bcoder"]
    assert [s.shard for s in shards] == [(i, 8) for i in range(8)]
    ranks = [s for s in stages if s.group == "rank-bcoder"]
    assert [s.shard for s in ranks] == [(i, 4) for i in range(4)]
    for rank in ranks:  # every rank shard reads the whole prefix of sample parts, writes its own part
        assert rank.argv[rank.argv.index("--samples") + 1] == "s3://bcoder/runs/apps/samples/test-bcoder"
        assert rank.output.startswith("s3://bcoder/runs/apps/samples/test-bcoder-ranked/part-")
    execute = next(s for s in stages if s.group == "execute-test-bcoder")
    assert (
        execute.argv[execute.argv.index("--samples") + 1]
        == "s3://bcoder/runs/apps/samples/test-bcoder-ranked"
    )
    annotate = [s for s in stages if s.group == "annotate"]
    assert [s.output for s in annotate] == [
        f"s3://bcoder/runs/apps/transitions/part-{i}-of-4" for i in range(4)
    ]
    phi_args = next(s for s in stages if s.name == "phi").argv
    assert "transitions=s3://bcoder/runs/apps/transitions" in phi_args  # the parts, read as one store
    # the V_phi pass copies the checkpoint's columns from the first pass (shard I reads part I)
    for step in (s for s in stages if s.group == "annotate-phi"):
        assert step.argv[step.argv.index("--columns-from") + 1] == "s3://bcoder/runs/apps/transitions"
        assert "annotate" in {d.group for d in inputs_of(step, stages)}
    assert next(s for s in stages if s.name == "phi").argv[3] == "configs/train/phi-apps.yaml"


def test_checkpoint_or_sft_not_both(tmp_path: Path) -> None:
    proc = _bcoder(
        "pipeline", "stages", "--config", str(SMOKE), "checkpoint=s3://b/ckpt", cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "checkpoint" in proc.stderr
