"""The whole run as an Argo Workflow (bcoder_core/workflow.py, k8s/pipeline-workflow.yaml).

Without a cluster: the Workflow validates against Argo's own models (hera's, strictly: nothing
dropped or changed on a round trip), its steps are the plan's stages with the same command lines,
`bcoder submit pipeline` creates it through the fake API server, and a walk of its DAG on this
machine (the steps' container arguments, run prefix on the SeaweedFS S3 server) commits what
`bcoder pipeline run` commits, and resumes after a killed step.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers.fake_k8s import FakeApiServer, FakeCluster
from helpers.paths import REPO
from hera.workflows.models import Workflow
from typer.testing import CliRunner

from bcoder_core import storage
from bcoder_core.config import load_config
from bcoder_core.pipeline import PipelineConfig, plan, report_stage
from bcoder_core.workflow import render_workflow, steps_in_order, workflow_yaml
from jobs.cli import app

APPS = REPO / "configs" / "apps.yaml"
SMOKE = REPO / "configs" / "smoke.yaml"
COMMITTED = REPO / "k8s" / "pipeline-workflow.yaml"


def argo_validate(workflow: dict) -> None:
    """Validate with Argo's models; a field they do not know (dropped on the round trip) fails too."""
    plain = json.loads(json.dumps(workflow))
    back = Workflow.model_validate(plain).model_dump(mode="json", by_alias=True, exclude_unset=True)
    assert back == plain, "the Workflow has fields or values Argo's schema does not keep"


def stage_argv(step_args: list[str]) -> list[str]:
    return step_args[step_args.index("--") + 1 :]


def test_committed_workflow_is_the_rendering_of_apps_yaml() -> None:
    fresh = workflow_yaml(render_workflow(load_config(PipelineConfig, APPS)))
    assert COMMITTED.read_text() == fresh, "regenerate: bcoder submit pipeline --dry-run > " + str(COMMITTED)
    doc = yaml.safe_load(COMMITTED.read_text())
    assert doc["apiVersion"] == "argoproj.io/v1alpha1" and doc["kind"] == "Workflow"
    assert doc["metadata"]["generateName"] == "bcoder-pipeline-"  # kubectl create -f works as is


@pytest.mark.parametrize("overrides", [[], ["shards.sample=1", "shards.execute=3", "verify=sha256"]])
def test_workflow_validates_against_argo_models(overrides: list[str]) -> None:
    argo_validate(render_workflow(load_config(PipelineConfig, APPS, overrides)))
    argo_validate(render_workflow(load_config(PipelineConfig, SMOKE, ["run_dir=s3://b/r", *overrides])))
    bad = render_workflow(load_config(PipelineConfig, APPS))
    bad["spec"]["templates"][1]["container"]["imagePullPolcy"] = "Always"
    with pytest.raises(AssertionError):
        argo_validate(bad)


def test_steps_are_the_plans_stages_with_the_same_command_lines() -> None:
    cfg = load_config(PipelineConfig, APPS)
    workflow = render_workflow(cfg)
    steps = steps_in_order(workflow)
    stages = [*plan(cfg), report_stage(cfg)]
    assert sorted(tuple(stage_argv(s.args)) for s in steps) == sorted(tuple(s.argv) for s in stages)
    outputs = {tuple(s.argv): s.output for s in stages}
    for step in steps:
        assert step.args[:4] == ["pipeline", "step", "--output", outputs[tuple(stage_argv(step.args))]]
    # Dependency order is a valid order of the plan: every input is made before it is read.
    made: set[str] = set()
    by_argv = {tuple(s.argv): s for s in stages}
    for step in steps:
        stage = by_argv[tuple(stage_argv(step.args))]
        from bcoder_core.pipeline import inputs_of

        assert {d.output for d in inputs_of(stage, stages)} <= made, stage.name
        made.add(stage.output)
    names = [t["name"] for t in workflow["spec"]["templates"][0]["dag"]["tasks"]]
    assert names[:2] == ["prepare-train", "prepare-test"] and "sft" not in names and names[-1] == "report"
    for stage in ("phi", "theta", "theta-ce", "annotate", "annotate-phi", "rank-bcoder", "evaluate-bcoder"):
        assert stage in names
    templates = {t["name"]: t for t in workflow["spec"]["templates"][1:]}
    gpus = {n: t["container"]["resources"]["limits"].get("nvidia.com/gpu") for n, t in templates.items()}
    assert gpus["phi"] == "4" and gpus["theta"] == "8" and gpus["theta-ce"] == "8" and gpus["report"] is None
    assert json.loads(templates["execute-train"]["podSpecPatch"])["runtimeClassName"] == "gvisor"
    assert "--torchrun" in templates["phi"]["container"]["args"]
    for t in templates.values():
        assert t["retryStrategy"]["expression"] == 'lastRetry.exitCode != "2"'
        assert t["container"]["envFrom"] == [{"secretRef": {"name": "bcoder-s3"}}]
    # The run's parameters: prefix, images, model URI, shard counts.
    params = {p["name"]: p["value"] for p in workflow["spec"]["arguments"]["parameters"]}
    assert params["run-uri"] == cfg.run_dir and params["model-uri"] == cfg.checkpoint
    assert params["sample-shards"] == "8" and params["execute-shards"] == "8"
    moved = steps_in_order(workflow, {"run-uri": "s3://x/r2", "sample-shards": "3", "model-uri": "s3://m"})
    assert sum(1 for s in moved if s.task == "sample-train") == 3
    assert all("s3://bcoder/runs/apps" not in a for s in moved for a in s.args)
    assert any(a == "s3://m" for s in moved for a in s.args)


def test_paper_settings_reach_the_command_lines() -> None:
    cfg = load_config(PipelineConfig, APPS)
    stages = {s.name: s for s in plan(cfg)}
    test = stages["sample-test-bcoder-0-of-8"].argv
    assert test[test.index("--num-samples") + 1] == "256"
    assert (cfg.test_sampling.temperature, cfg.test_sampling.top_p) == (
        0.6,
        0.95,
    )  # the defaults: not rendered
    assert "configs/train/phi-apps.yaml" in stages["phi"].argv
    assert "model.init=s3://bcoder/models/coderl" in stages["theta"].argv


def test_submit_pipeline_creates_the_workflow_through_the_api(tmp_path: Path, monkeypatch) -> None:
    state = FakeCluster()
    with FakeApiServer(state) as server:
        monkeypatch.setenv("KUBECONFIG", str(server.write_kubeconfig(tmp_path / "kubeconfig")))
        result = CliRunner().invoke(
            app,
            ["submit", "pipeline", "--run-name", "apps-7", "--config", str(APPS), "-n", "ml",
             "--image", "reg/bcoder-trainer:9", "--set", "shards.sample=16"],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert ("POST", "/apis/argoproj.io/v1alpha1/namespaces/ml/workflows") in state.requests
        ((key, wf),) = state.custom.items()
        assert key[0] == "workflows" and key[1] == "ml" and key[2].startswith("bcoder-pipeline-apps-7-")
        argo_validate({k: v for k, v in state.received[0].items()})
        params = {p["name"]: p["value"] for p in wf["spec"]["arguments"]["parameters"]}
        assert params["run-uri"] == "s3://bcoder/runs/apps-7"
        assert params["trainer-image"] == "reg/bcoder-trainer:9" and params["sample-shards"] == "16"
        assert wf["metadata"]["labels"]["bcoder.dev/run"] == "apps-7"
        assert f"created Workflow ml/{key[2]}" in result.output

        state.missing_groups.add("argoproj.io")
        proc = subprocess.run(
            [sys.executable, "-m", "jobs.cli", "submit", "pipeline", "--config", str(APPS)],
            capture_output=True, text=True, cwd=REPO, env={**os.environ}, check=False,
        )  # fmt: skip
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and "Argo" in lines[0]


def test_dry_run_prints_the_committed_workflow() -> None:
    result = CliRunner().invoke(app, ["submit", "pipeline", "--config", str(APPS), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert result.output == COMMITTED.read_text()


def test_step_exit_status_is_the_stage_s(tmp_path: Path) -> None:
    """A configuration error stays exit 2 (no retry); a committed output skips at once."""
    out = str(tmp_path / "b")
    cmd = [sys.executable, "-m", "jobs.cli", "pipeline", "step", "--output", out, "--"]
    bad = subprocess.run([*cmd, "benchmark", "generate", "--out", out, "--n-train", "0"], cwd=REPO,
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert bad.returncode == 2, bad.stderr
    good = [*cmd, "benchmark", "generate", "--out", out, "--n-train", "6", "--n-test", "3", "--n-val", "0"]
    first = subprocess.run(good, cwd=REPO, capture_output=True, text=True, check=False)
    assert first.returncode == 0 and storage.exists(out), first.stderr
    again = subprocess.run(good, cwd=REPO, capture_output=True, text=True, check=False)
    assert again.returncode == 0 and "committed, skipped" in again.stdout


# --- the walk ----------------------------------------------------------------------------------


def _walk_config(tmp_path: Path) -> Path:
    """The smoke settings, smaller: no ablation and no validation split; sample, annotate and rank fan out to 2."""
    data = yaml.safe_load(SMOKE.read_text())
    data["benchmark"].update(n_train=16, n_test=4, n_val=0)
    data.pop("ablation")
    data["shards"] = {"sample": 2, "execute": 1, "annotate": 2, "rank": 2}
    path = tmp_path / "walk.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _artifacts(s3_env, run: str) -> set[str]:
    """Names (relative to the run prefix) of every committed artifact under it."""
    prefix = s3_env.key(run) + "/"
    keys = []
    for page in (
        s3_env.client().get_paginator("list_objects_v2").paginate(Bucket=s3_env.bucket, Prefix=prefix)
    ):
        keys += [o["Key"][len(prefix) :] for o in page.get("Contents", [])]
    return {
        k.removesuffix("/manifest.json").removesuffix(".manifest.json")
        for k in keys
        if k.endswith("manifest.json")
    }


def _run_step(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jobs.cli", *args], cwd=REPO, capture_output=True, text=True,
                          check=False)  # fmt: skip


def _tables(report: str) -> str:
    """The report without what differs between two runs of the same config (prefix, stage times)."""
    body = report.split("## Gains", 1)[1]
    return body.split("## Stage times", 1)[0].rstrip()


@pytest.mark.slow
def test_walking_the_dag_commits_what_pipeline_run_commits_and_resumes(tmp_path: Path, s3_env) -> None:
    config = _walk_config(tmp_path)
    ref_run, walk_run = s3_env.uri("pipeline"), s3_env.uri("walk")
    ref = subprocess.run([sys.executable, "-m", "jobs.cli", "pipeline", "run", "--config", str(config),
                          "--run-dir", ref_run], cwd=REPO, capture_output=True, text=True, check=False)  # fmt: skip
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]

    cfg = load_config(PipelineConfig, config, [f"run_dir={walk_run}"])
    steps = steps_in_order(render_workflow(cfg))
    victim = next(i for i, s in enumerate(steps) if s.task == "sample-test-ckpt")
    for step in steps[:victim]:
        proc = _run_step(step.args)
        assert proc.returncode == 0, (step.task, proc.stdout[-2000:], proc.stderr[-2000:])
    # The victim is killed mid-run (a pre-empted pod), and a committed output is lost.
    killed = subprocess.Popen([sys.executable, "-m", "jobs.cli", *steps[victim].args], cwd=REPO,
                              start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    time.sleep(4)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    lost = next(s for s in steps if s.task == "sample-train")
    storage.delete(lost.args[lost.args.index("--output") + 1])
    assert not storage.exists(steps[victim].args[3])

    ran = []
    for step in steps:  # the resubmitted workflow: every step again, in order
        proc = _run_step(step.args)
        assert proc.returncode == 0, (step.task, proc.stdout[-2000:], proc.stderr[-2000:])
        if "committed, skipped" not in proc.stdout:
            ran.append(step)
    assert ran[0] is lost and steps[victim] in ran
    assert all(steps.index(s) >= victim for s in ran[1:]), [s.task for s in ran]

    assert _artifacts(s3_env, "walk") == _artifacts(s3_env, "pipeline")
    assert {
        "report",
        "eval/ckpt.json",
        "eval/bcoder.json",
        "samples/train-ckpt/part-1-of-2.jsonl",
    } <= _artifacts(s3_env, "walk")
    for method in ("ckpt", "bcoder"):
        a, b = (
            json.loads(storage.input_path(f"{r}/eval/{method}.json").read_text()) for r in (ref_run, walk_run)
        )
        assert a["results"] == b["results"] and a["per_problem"] == b["per_problem"], method
    reports = [(storage.input_path(f"{r}/report") / "report.md").read_text() for r in (ref_run, walk_run)]
    assert _tables(reports[0]) == _tables(reports[1])
    assert "Table 1" in reports[1] and "Value model" in reports[1]
