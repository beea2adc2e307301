"""`bcoder submit`: rendering Jobs from k8s/ and the submission path against a fake API server.

The fake (tests/fake_k8s.py) is a real HTTP server on loopback; the real `kubernetes` client talks
to it through a real kubeconfig. It cannot show what a real cluster does with the Job (see
k8s/README.md); it shows what `bcoder submit` sends, reads and prints.
"""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import typer
import yaml
from helpers.fake_k8s import FakeApiServer, FakeCluster
from helpers.paths import REPO
from typer.testing import CliRunner

from bcoder_core import cluster
from bcoder_core.errors import BcoderError

ROOT = "s3://bucket/runs"


def render(stage: str, **kw) -> cluster.RenderedJob:
    kw.setdefault("run_name", "r1")
    kw.setdefault("runs_root", ROOT)
    return cluster.render_job(stage, **kw)


def args_of(job: cluster.RenderedJob) -> list[str]:
    return job.body["spec"]["template"]["spec"]["containers"][0]["args"]


def env_of(job: cluster.RenderedJob) -> dict:
    return {e["name"]: e for e in job.body["spec"]["template"]["spec"]["containers"][0]["env"]}


# --- rendering ------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", list(cluster.STAGE_MANIFESTS))
def test_rendered_job_is_the_manifest_with_run_name_labels_and_run_uri(stage: str) -> None:
    manifest = cluster.load_job(stage)
    job = render(stage)
    kubernetes_validate.validate(job.body, "1.33.0", strict=True)
    assert job.name.startswith(f"bcoder-{stage}-r1-") and len(job.name) <= 52
    assert job.body["metadata"]["labels"]["bcoder.dev/run"] == "r1"
    assert job.body["spec"]["template"]["metadata"]["labels"]["bcoder.dev/run"] == "r1"
    assert env_of(job)["BCODER_RUN_URI"] == {"name": "BCODER_RUN_URI", "value": f"{ROOT}/r1"}
    # Nothing else changed: same pod spec but for the run URI's env entry.
    env_of(job).pop("BCODER_RUN_URI")
    body_spec = job.body["spec"]["template"]["spec"]
    manifest_spec = manifest["spec"]["template"]["spec"]
    assert [e for e in body_spec["containers"][0]["env"] if e["name"] != "BCODER_RUN_URI"] == [
        e for e in manifest_spec["containers"][0]["env"] if e["name"] != "BCODER_RUN_URI"
    ]
    assert args_of(job) == manifest_spec["containers"][0]["args"]
    assert body_spec["securityContext"] == manifest_spec["securityContext"]
    # The manifest loaded from disk is not modified by rendering.
    assert cluster.load_job(stage) == manifest


def test_each_submission_gets_a_unique_job_name_but_the_run_keeps_its_uri() -> None:
    names = {render("phi").name for _ in range(20)}
    assert len(names) == 20
    assert {render("phi").run_uri, render("theta").run_uri} == {f"{ROOT}/r1"}
    assert render("phi").artifacts() == [f"{ROOT}/r1/phi"]
    assert render("sample").artifacts() == [f"{ROOT}/r1/samples/part-*-of-4.jsonl"]
    assert render("evaluate").artifacts() == [f"{ROOT}/r1/eval/report.json", f"{ROOT}/r1/eval/report.md"]
    run = cluster.new_run_name()
    assert cluster.check_run_name(run) == run and run != cluster.new_run_name()


def test_set_on_training_stages_replaces_or_adds_config_overrides() -> None:
    job = render("phi", sets=["max_steps=100", "output=s3://elsewhere/phi", "optim.lr=1e-5"])
    args = args_of(job)
    assert "max_steps=100" in args and "optim.lr=1e-5" in args
    assert [a for a in args if a.startswith("output=")] == ["output=s3://elsewhere/phi"]
    assert args[: args.index("--config") + 2][-1] == "/etc/bcoder/phi.yaml"


def test_set_on_other_stages_sets_options() -> None:
    args = args_of(render("sample", sets=["num-samples=50", "temperature=0.6", "problems=s3://b/p.jsonl"]))
    assert args[args.index("--num-samples") + 1] == "50"
    assert args.count("--num-samples") == 1
    assert args[args.index("--temperature") + 1] == "0.6"
    assert args[args.index("--problems") + 1] == "s3://b/p.jsonl"


def test_shards_resize_the_indexed_job_consistently() -> None:
    job = render("execute", shards=3)
    spec = job.body["spec"]
    assert spec["completions"] == spec["parallelism"] == 3
    args = args_of(job)
    assert args[args.index("--shard") + 1] == "$(JOB_COMPLETION_INDEX)/3"
    assert (
        args[args.index("--out") + 1] == "$(BCODER_RUN_URI)/results/part-$(JOB_COMPLETION_INDEX)-of-3.jsonl"
    )


def test_image_override() -> None:
    job = render("theta", image="registry.example/bcoder-trainer:abc")
    assert (
        job.body["spec"]["template"]["spec"]["containers"][0]["image"]
        == "registry.example/bcoder-trainer:abc"
    )


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"run_name": "Bad_Name"}, "--run-name"),
        ({"run_name": "x" * 31}, "--run-name"),
        ({"sets": ["novalue"]}, "--set 'novalue'"),
        ({"shards": 2}, "not sharded"),
    ],
)
def test_user_errors_are_one_line(kw: dict, message: str) -> None:
    with pytest.raises(BcoderError, match=message) as err:
        render("phi", **kw)
    assert "\n" not in str(err.value)


def test_unknown_stage_and_missing_manifests(tmp_path: Path) -> None:
    with pytest.raises(BcoderError, match="unknown stage"):
        cluster.load_job("bogus")
    with pytest.raises(BcoderError, match="manifest not found"):
        cluster.load_job("phi", tmp_path)


# --- through the API --------------------------------------------------------------------------


@pytest.fixture
def cli() -> typer.Typer:
    from jobs import submit

    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        pass

    submit.register(app)
    return app


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (cm,) = [d for d in yaml.safe_load_all((REPO / "k8s" / "configmap.yaml").read_text()) if d]
    state = FakeCluster(configmaps={("ml", "bcoder-run"): cm})
    with FakeApiServer(state) as server:
        monkeypatch.setenv("KUBECONFIG", str(server.write_kubeconfig(tmp_path / "kubeconfig")))
        yield state


def run_cli(app: typer.Typer, *args: str):
    return CliRunner().invoke(app, ["submit", *args, "--namespace", "ml", "--poll-interval", "0.01"])


def created_job(state: FakeCluster) -> dict:
    ((_, job),) = state.jobs.items()
    return job


def test_submit_phi_creates_the_job_follows_its_log_and_reports_artifacts(cli, fake) -> None:
    result = run_cli(cli, "phi", "--run-name", "exp1", "--set", "max_steps=10", "--follow")
    assert result.exit_code == 0, result.output
    job = created_job(fake)
    name = job["metadata"]["name"]
    assert name.startswith("bcoder-phi-exp1-")
    (sent,) = fake.received
    kubernetes_validate.validate(sent, "1.33.0", strict=True)
    # The runs root came from the namespace's ConfigMap (s3://bcoder/runs/default -> s3://bcoder/runs).
    # The log line is the command the kubelet runs, $(VARS) expanded: the run URI reached the pod.
    assert (
        "$ torchrun --standalone --nproc_per_node=4 -m jobs.cli train phi --config /etc/bcoder/phi.yaml "
        "output=s3://bcoder/runs/exp1/phi transitions=s3://bcoder/runs/default/transitions "
        "model.init=s3://bcoder/models/coderl max_steps=10" in result.output
    )
    assert "step 1 loss 0.5" in result.output
    assert f"Job ml/{name} succeeded" in result.output
    assert "artifacts: s3://bcoder/runs/exp1/phi" in result.output
    assert ("POST", "/apis/batch/v1/namespaces/ml/jobs") in fake.requests
    assert ("GET", "/api/v1/namespaces/ml/configmaps/bcoder-run") in fake.requests


def test_submit_sample_follows_every_shard(cli, fake) -> None:
    result = run_cli(cli, "sample", "--run-name", "exp1", "--shards", "3", "--follow")
    assert result.exit_code == 0, result.output
    for i in range(3):
        assert f"--out s3://bcoder/runs/exp1/samples/part-{i}-of-3.jsonl --shard {i}/3" in result.output
    pods = [line.split("]")[0] for line in result.output.splitlines() if line.startswith("[")]
    assert len(set(pods)) == 3
    assert "artifacts: s3://bcoder/runs/exp1/samples/part-*-of-3.jsonl" in result.output


def test_configuration_error_fails_the_job_at_once(cli, fake) -> None:
    fake.exit_code = lambda job, index: 2
    result = run_cli(cli, "execute", "--run-name", "exp1", "--shards", "2")
    assert result.exit_code == 1
    assert "failed (PodFailurePolicy" in result.output and "exit code 2" in result.output
    assert len(fake.pods) == 2  # not retried


def test_crashing_pods_are_retried_until_the_backoff_limit(cli, fake) -> None:
    fake.exit_code = lambda job, index: 1
    result = run_cli(cli, "theta", "--run-name", "exp1", "--follow")
    assert result.exit_code == 1
    assert "BackoffLimitExceeded" in result.output
    backoff = created_job(fake)["spec"]["backoffLimit"]
    assert len(fake.pods) == backoff + 1
    # Each attempt's log was printed, and every attempt wrote to the same run prefix.
    assert result.output.count("output=s3://bcoder/runs/exp1/theta") == backoff + 1


def test_no_wait_only_creates(cli, fake) -> None:
    result = run_cli(cli, "evaluate", "--no-wait")
    assert result.exit_code == 0, result.output
    assert [r for r in fake.requests if "/jobs" in r[1]] == [("POST", "/apis/batch/v1/namespaces/ml/jobs")]
    assert "kubectl logs -n ml -f -l batch.kubernetes.io/job-name=bcoder-evaluate-" in result.output


def test_missing_configmap_is_a_user_error(cli, fake) -> None:
    fake.configmaps.clear()
    result = run_cli(cli, "phi")
    assert isinstance(result.exception, BcoderError)
    assert "ConfigMap bcoder-run not found in namespace ml" in str(result.exception)
    assert not fake.jobs


def test_dry_run_prints_the_job_without_a_cluster(
    cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    result = CliRunner().invoke(cli, ["submit", "theta", "--run-name", "r9", "--dry-run"])
    assert result.exit_code == 0, result.output
    body = yaml.safe_load(result.output)
    kubernetes_validate.validate(body, "1.33.0", strict=True)
    env = {e["name"]: e.get("value") for e in body["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["BCODER_RUN_URI"] == "s3://bcoder/runs/r9"


def test_unreachable_api_server_is_one_line(cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    server = FakeApiServer(FakeCluster())
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
    server.server.server_close()  # nothing listens on that port any more
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    result = CliRunner().invoke(cli, ["submit", "phi", "--namespace", "ml"])
    assert isinstance(result.exception, BcoderError)
    assert "Kubernetes API unreachable" in str(result.exception)


# --- the stages added for the whole run on the cluster ----------------------------------------


@pytest.mark.parametrize(("stage", "part"), [("annotate", "part-{i}-of-3"), ("rank", "part-{i}-of-3.jsonl")])
def test_shards_resize_annotate_and_rank(stage: str, part: str) -> None:
    job = render(stage, shards=3)
    spec = job.body["spec"]
    assert spec["completions"] == spec["parallelism"] == 3
    args = args_of(job)
    assert args[args.index("--shard") + 1] == "$(JOB_COMPLETION_INDEX)/3"
    assert args[args.index("--out") + 1].endswith("/" + part.format(i="$(JOB_COMPLETION_INDEX)"))


def test_set_out_on_a_sharded_stage_is_the_prefix_of_the_parts() -> None:
    job = render(
        "annotate", shards=2, sets=["phi=$(BCODER_RUN_URI)/phi", "out=$(BCODER_PHI_TRANSITIONS_URI)/"]
    )
    args = args_of(job)
    assert args[args.index("--out") + 1] == "$(BCODER_PHI_TRANSITIONS_URI)/part-$(JOB_COMPLETION_INDEX)-of-2"
    assert args[args.index("--phi") + 1] == "$(BCODER_RUN_URI)/phi"
    assert args.count("--out") == 1
    sample = args_of(render("sample", sets=["out=s3://b/train-samples"]))
    assert sample[sample.index("--out") + 1] == "s3://b/train-samples/part-$(JOB_COMPLETION_INDEX)-of-4.jsonl"
    # Not sharded: out is the value itself.
    evaluate = args_of(render("evaluate", sets=["out=s3://b/report.json"]))
    assert evaluate[evaluate.index("--out") + 1] == "s3://b/report.json"


def test_prepare_takes_the_data_set_from_the_configmap_or_set() -> None:
    assert "BCODER_DATASET" in env_of(render("prepare"))  # from the ConfigMap
    job = render("prepare", sets=["dataset=mbpp", "split=test"])
    kubernetes_validate.validate(job.body, "1.33.0", strict=True)
    assert env_of(job)["BCODER_DATASET"] == {"name": "BCODER_DATASET", "value": "mbpp"}
    args = args_of(job)
    assert args[:3] == ["data", "prepare", "$(BCODER_DATASET)"] and args[args.index("--split") + 1] == "test"
    assert job.artifacts() == [f"{ROOT}/r1/problems/mbpp.jsonl"]
    with pytest.raises(BcoderError, match="--set dataset=coco: choose one of apps, mbpp, humaneval") as err:
        render("prepare", sets=["dataset=coco"])
    assert "\n" not in str(err.value)


def test_sft_takes_config_overrides() -> None:
    args = args_of(render("sft", sets=["max_steps=10"]))
    assert args[args.index("jobs.cli") + 1 : args.index("jobs.cli") + 3] == ["train", "sft"]
    assert "max_steps=10" in args and "output=$(BCODER_RUN_URI)/sft" in args


def test_submit_annotate_in_two_shards_writes_two_parts_of_one_store(cli, fake) -> None:
    result = run_cli(cli, "annotate", "--run-name", "exp1", "--shards", "2", "--follow")
    assert result.exit_code == 0, result.output
    (sent,) = fake.received
    kubernetes_validate.validate(sent, "1.33.0", strict=True)
    for i in range(2):
        assert (
            f"--results s3://bcoder/runs/exp1/train-results "
            f"--out s3://bcoder/runs/default/transitions/part-{i}-of-2 --shard {i}/2" in result.output
        )
    assert len({line.split("]")[0] for line in result.output.splitlines() if line.startswith("[")}) == 2
    assert "artifacts: $(BCODER_TRANSITIONS_URI)/part-*-of-2" in result.output


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (("rank", "--shards", "3"), "--out s3://bcoder/runs/exp1/ranked/part-2-of-3.jsonl --shard 2/3"),
        (
            ("prepare", "--set", "dataset=humaneval"),
            "$ bcoder data prepare humaneval --source s3://bcoder/raw/apps/test",
        ),
        (("sft",), "-m jobs.cli train sft --config /etc/bcoder/sft.yaml output=s3://bcoder/runs/exp1/sft"),
    ],
)
def test_submit_the_new_stages(cli, fake, args: tuple[str, ...], expect: str) -> None:
    result = run_cli(cli, *args, "--run-name", "exp1", "--follow")
    assert result.exit_code == 0, result.output
    (sent,) = fake.received
    kubernetes_validate.validate(sent, "1.33.0", strict=True)
    assert expect in result.output
