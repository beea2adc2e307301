"""The Kubernetes manifests in k8s/: strict schema validation and the properties that matter.

Every file and every kustomize build is validated strictly (unknown fields are errors) against the
pinned Kubernetes version's OpenAPI schemas (kubernetes-validate ships them; nothing downloaded).
Custom resources (Kueue's LocalQueue, the Prometheus operator's PodMonitor/PrometheusRule, Argo's
Workflow in pipeline-workflow.yaml) have no schema there and are skipped by name.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from helpers.paths import REPO

K8S = REPO / "k8s"
K8S_VERSION = "1.33.0"  # the oldest release we support: podFailurePolicy and Indexed Jobs are GA
CRD_GROUPS = ("kueue.x-k8s.io/", "monitoring.coreos.com/", "argoproj.io/")

# k8s/<stage>-job.yaml: the file a user applies and `bcoder submit <stage>` renders.
JOB_FILES = {
    stage: f"{stage}-job.yaml"
    for stage in ("prepare", "sft", "annotate", "phi", "theta", "sample", "execute", "evaluate", "rank")
}
#: Stages whose pods serve metrics (training, sampling, annotation, ranking: DESIGN §6).
METRICS_STAGES = ["sft", "phi", "theta", "sample", "annotate", "rank"]
KUSTOMIZATIONS = [K8S, K8S / "base", K8S / "overlays" / "multinode-theta", K8S / "overlays" / "kueue"]


def docs(path: Path) -> list[dict]:
    """The YAML documents of a file (empty ones dropped)."""
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def all_manifest_files() -> list[Path]:
    files = sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")
    return [p for p in files if not p.is_symlink()]


def job(stage: str) -> dict:
    (doc,) = docs(K8S / JOB_FILES[stage])
    return doc


def pod_spec(j: dict) -> dict:
    return j["spec"]["template"]["spec"]


def main_container(j: dict) -> dict:
    (container,) = [c for c in pod_spec(j)["containers"] if c["name"] == "bcoder"]
    return container


def validate(doc: dict) -> bool:
    """Strict validation; False for a custom resource (no schema in the Kubernetes OpenAPI set)."""
    if doc["apiVersion"].startswith(CRD_GROUPS):
        return False
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    return True


def kustomize(path: Path) -> list[dict]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed: kustomize builds not checked")
    out = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


# --- schema ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", all_manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_validates_strictly(path: Path) -> None:
    found = docs(path)
    assert found, f"{path} is empty"
    validated = [validate(doc) for doc in found]
    if not any(validated):
        kinds = ", ".join(sorted({d["kind"] for d in found}))
        pytest.skip(f"custom resources only ({kinds}): kubernetes-validate has no schema for CRDs")


def test_validation_is_strict() -> None:
    # The check above would be worthless if unknown fields passed: a typo must fail.
    bad = job("phi")
    pod_spec(bad)["containers"][0]["resource"] = {"limits": {"nvidia.com/gpu": 4}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


@pytest.mark.parametrize("path", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_kustomize_build_validates_strictly(path: Path) -> None:
    built = kustomize(path)
    assert {d["kind"] for d in built} >= {
        "Job",
        "ConfigMap",
        "ServiceAccount",
        "NetworkPolicy",
        "RuntimeClass",
    }
    for doc in built:
        validate(doc)


def test_top_level_files_are_the_base_manifests() -> None:
    # `kubectl apply -f k8s/theta-job.yaml` must apply what the kustomize base builds from.
    for name in [*JOB_FILES.values(), "configmap.yaml", "serviceaccount.yaml", "runtimeclass-gvisor.yaml"]:
        assert (K8S / name).resolve() == (K8S / "base" / name).resolve()
    listed = set(docs(K8S / "base" / "kustomization.yaml")[0]["resources"])
    assert set(JOB_FILES.values()) <= listed
    assert "secret.example.yaml" not in listed  # an example, never applied by the base


# --- training Jobs ----------------------------------------------------------------------------


@pytest.mark.parametrize(("stage", "gpus"), [("sft", 4), ("phi", 4), ("theta", 8)])
def test_training_jobs_use_one_pod_of_n_a100s_under_torchrun(stage: str, gpus: int) -> None:
    j = job(stage)
    c = main_container(j)
    assert j["spec"].get("completions", 1) == 1 and j["spec"].get("parallelism", 1) == 1
    # Quantities are strings: the kubernetes Python client (bcoder submit) rejects integers there.
    assert c["resources"]["limits"]["nvidia.com/gpu"] == str(gpus)
    assert c["resources"]["requests"]["nvidia.com/gpu"] == str(gpus)
    assert c["command"] == ["torchrun"]
    args = c["args"]
    assert "--standalone" in args and f"--nproc_per_node={gpus}" in args
    assert args[args.index("-m") + 1 : args.index("-m") + 4] == ["jobs.cli", "train", stage]
    assert args[args.index("--config") + 1] == f"/etc/bcoder/{stage}.yaml"
    # The output is the run's stable prefix (not per pod): a retried pod resumes from <output>/latest.
    assert f"output=$(BCODER_RUN_URI)/{stage}" in args
    terms = pod_spec(j)["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    (expr,) = terms["nodeSelectorTerms"][0]["matchExpressions"]
    assert expr["key"] == "nvidia.com/gpu.product" and all(
        "A100" in v and "80GB" in v for v in expr["values"]
    )


@pytest.mark.parametrize("stage", ["sft", "phi", "theta", "sample", "annotate", "rank"])
def test_gpu_pods_get_a_memory_backed_dev_shm(stage: str) -> None:
    j = job(stage)
    mounts = {m["mountPath"]: m["name"] for m in main_container(j)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(j)["volumes"]}
    shm = volumes[mounts["/dev/shm"]]
    assert shm["emptyDir"]["medium"] == "Memory" and "sizeLimit" in shm["emptyDir"]


@pytest.mark.parametrize("stage", METRICS_STAGES)
def test_training_pods_carry_the_scrape_labels_and_metrics_port(stage: str) -> None:
    j = job(stage)
    labels = j["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/part-of"] == "bcoder"
    assert labels["bcoder.dev/metrics"] == "true"
    ports = {p["name"]: p["containerPort"] for p in main_container(j)["ports"]}
    assert ports["metrics"] == 9090


def test_config_files_in_the_configmap_are_the_repository_presets() -> None:
    (cm,) = docs(K8S / "configmap.yaml")
    for stage in ("phi", "theta"):
        preset = yaml.safe_load((REPO / "configs" / "train" / f"{stage}-apps.yaml").read_text())
        assert yaml.safe_load(cm["data"][f"{stage}.yaml"]) == preset
        volumes = {v["name"]: v for v in pod_spec(job(stage))["volumes"]}
        assert volumes["config"]["configMap"]["items"] == [{"key": f"{stage}.yaml", "path": f"{stage}.yaml"}]


# --- every Job --------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", list(JOB_FILES))
def test_pods_run_non_root_read_only_without_capabilities_or_token(stage: str) -> None:
    j = job(stage)
    spec = pod_spec(j)
    assert spec["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == "bcoder-job"
    psc = spec["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    csc = main_container(j)["securityContext"]
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"]["drop"] == ["ALL"] and "add" not in csc["capabilities"]
    # Read-only root: /tmp is a writable emptyDir.
    mounts = {m["mountPath"]: m["name"] for m in main_container(j)["volumeMounts"]}
    assert "emptyDir" in {v["name"]: v for v in spec["volumes"]}[mounts["/tmp"]]


@pytest.mark.parametrize("stage", list(JOB_FILES))
def test_image_user_matches_the_pods_user(stage: str) -> None:
    image = main_container(job(stage))["image"].split(":")[0].removeprefix("bcoder-")
    dockerfile = (REPO / "images" / image / "Dockerfile").read_text()
    (user,) = re.findall(r"^USER (\d+):(\d+)$", dockerfile, re.M)
    psc = pod_spec(job(stage))["securityContext"]
    assert (psc["runAsUser"], psc["runAsGroup"]) == (int(user[0]), int(user[1]))


@pytest.mark.parametrize("stage", list(JOB_FILES))
def test_failure_policy_ignores_disruptions_and_fails_fast_on_config_errors(stage: str) -> None:
    spec = job(stage)["spec"]
    assert pod_spec(job(stage))["restartPolicy"] == "Never"  # required by podFailurePolicy
    assert spec["backoffLimit"] >= 1 and spec["ttlSecondsAfterFinished"] > 0
    rules = spec["podFailurePolicy"]["rules"]
    fail = [r for r in rules if r["action"] == "FailJob"]
    assert fail == [
        {"action": "FailJob", "onExitCodes": {"containerName": "bcoder", "operator": "In", "values": [2]}}
    ]
    ignore = [r for r in rules if r["action"] == "Ignore"]
    assert ignore == [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    ]


@pytest.mark.parametrize("stage", list(JOB_FILES))
def test_every_variable_the_command_line_uses_is_defined(stage: str) -> None:
    # The kubelet leaves an undefined $(VAR) as is: a typo would pass a literal "$(X)" URI.
    j = job(stage)
    c = main_container(j)
    defined = {e["name"] for e in c["env"]}
    if j["spec"].get("completionMode") == "Indexed":
        defined.add("JOB_COMPLETION_INDEX")  # injected by the Job controller
    used = {v for arg in c["args"] for v in re.findall(r"\$\(([A-Z_]+)\)", arg)}
    assert used <= defined
    (cm,) = docs(K8S / "configmap.yaml")
    for e in c["env"]:
        ref = e.get("valueFrom", {}).get("configMapKeyRef")
        if ref:
            assert ref["name"] == "bcoder-run" and ref["key"] in cm["data"]
    assert c["envFrom"] == [{"secretRef": {"name": "bcoder-s3"}}]
    (secret,) = docs(K8S / "secret.example.yaml")
    assert set(secret["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


@pytest.mark.parametrize(("stage", "shards"), [("sample", 4), ("execute", 8)])
def test_sharded_stages_are_indexed_jobs_whose_shard_count_agrees(stage: str, shards: int) -> None:
    j = job(stage)
    assert j["spec"]["completionMode"] == "Indexed"
    assert j["spec"]["completions"] == j["spec"]["parallelism"] == shards
    args = main_container(j)["args"]
    assert args[args.index("--shard") + 1] == f"$(JOB_COMPLETION_INDEX)/{shards}"
    out = args[args.index("--out") + 1]
    assert out.startswith("$(BCODER_RUN_URI)/") and f"part-$(JOB_COMPLETION_INDEX)-of-{shards}." in out


@pytest.mark.parametrize("stage", ["execute", "evaluate"])
def test_untrusted_code_runs_under_gvisor_on_cpu_behind_the_network_policy(stage: str) -> None:
    j = job(stage)
    spec = pod_spec(j)
    assert spec["runtimeClassName"] == "gvisor"
    (rc,) = docs(K8S / "runtimeclass-gvisor.yaml")
    assert rc["metadata"]["name"] == "gvisor" and rc["handler"] == "runsc"
    resources = main_container(j)["resources"]
    assert not any("gpu" in k for part in resources.values() for k in part)
    assert main_container(j)["image"].startswith("bcoder-evaluator:")
    (policy,) = docs(K8S / "networkpolicy-sandbox.yaml")
    labels = j["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()


def test_network_policy_denies_everything_but_dns_and_s3() -> None:
    (policy,) = docs(K8S / "networkpolicy-sandbox.yaml")
    spec = policy["spec"]
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    assert spec["ingress"] == []
    ports = [sorted((p["protocol"], p["port"]) for p in rule["ports"]) for rule in spec["egress"]]
    assert ports[0] == [("TCP", 53), ("UDP", 53)]  # DNS
    assert all(p in ([("TCP", 9000)], [("TCP", 443)]) for p in ports[1:])  # S3 endpoints only


def test_training_and_sampling_pods_are_not_gvisor_and_not_in_the_sandbox_policy() -> None:
    for stage in ("phi", "theta", "sample", "sft", "annotate", "rank"):
        assert "runtimeClassName" not in pod_spec(job(stage))
        assert "bcoder.dev/sandbox" not in job(stage)["spec"]["template"]["metadata"]["labels"]
        assert main_container(job(stage))["image"].startswith("bcoder-trainer:")


def test_service_account_mounts_no_token() -> None:
    (sa,) = docs(K8S / "serviceaccount.yaml")
    assert sa["metadata"]["name"] == "bcoder-job" and sa["automountServiceAccountToken"] is False


# --- overlays ---------------------------------------------------------------------------------


def test_multinode_theta_overlay_is_an_indexed_job_with_a_headless_rendezvous_service() -> None:
    built = kustomize(K8S / "overlays" / "multinode-theta")
    (theta,) = [d for d in built if d["kind"] == "Job" and d["metadata"]["name"] == "bcoder-theta"]
    (svc,) = [d for d in built if d["kind"] == "Service"]
    nodes = theta["spec"]["completions"]
    assert theta["spec"]["completionMode"] == "Indexed" and theta["spec"]["parallelism"] == nodes >= 2
    assert svc["spec"]["clusterIP"] == "None"
    assert pod_spec(theta)["subdomain"] == svc["metadata"]["name"]
    assert svc["spec"]["selector"] == {"batch.kubernetes.io/job-name": "bcoder-theta"}
    args = main_container(theta)["args"]
    assert f"--nnodes={nodes}" in args and "--nproc_per_node=8" in args and "--standalone" not in args
    assert "--node_rank=$(JOB_COMPLETION_INDEX)" in args
    assert f"--master_addr=bcoder-theta-0.{svc['metadata']['name']}" in args
    port = next(a for a in args if a.startswith("--master_port=")).split("=")[1]
    assert int(port) == svc["spec"]["ports"][0]["port"]
    assert main_container(theta)["resources"]["limits"]["nvidia.com/gpu"] == "8"
    # Everything but the command line is still the base theta Job.
    assert main_container(theta)["args"][5:] == main_container(job("theta"))["args"][2:]


def test_kueue_overlay_suspends_every_job_with_the_queue_label() -> None:
    built = kustomize(K8S / "overlays" / "kueue")
    jobs = [d for d in built if d["kind"] == "Job"]
    assert len(jobs) == len(JOB_FILES)
    (queue,) = [d for d in built if d["kind"] == "LocalQueue"]
    for j in jobs:
        assert j["spec"]["suspend"] is True
        assert j["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == queue["metadata"]["name"]


# --- monitoring (written by the telemetry engineer) -------------------------------------------


def test_pod_monitor_selects_the_training_pods() -> None:
    monitors = [
        d
        for p in sorted((K8S / "monitoring").glob("*.yaml"))
        if (K8S / "monitoring").is_dir()
        for d in docs(p)
        if d.get("kind") == "PodMonitor"
    ]
    if not monitors:
        pytest.skip("k8s/monitoring/ has no PodMonitor yet")
    for monitor in monitors:
        selector = monitor["spec"]["selector"]["matchLabels"]
        ports = {e.get("port") for e in monitor["spec"]["podMetricsEndpoints"]}
        for stage in ("phi", "theta"):
            labels = job(stage)["spec"]["template"]["metadata"]["labels"]
            assert selector.items() <= labels.items(), f"PodMonitor does not select the {stage} pods"
            assert ports <= {p["name"] for p in main_container(job(stage))["ports"]}
        for stage in ("execute", "evaluate"):
            labels = job(stage)["spec"]["template"]["metadata"]["labels"]
            assert not selector.items() <= labels.items(), f"PodMonitor selects the {stage} pods"


# --- the command lines match the CLI (docs/architecture.md, "Stage command lines") ------------


def bcoder_words(stage: str) -> list[str]:
    """The words after `bcoder` (or `-m jobs.cli`) in the Job's command line."""
    c = main_container(job(stage))
    args = c["args"]
    return args[args.index("jobs.cli") + 1 :] if c.get("command") == ["torchrun"] else args


@pytest.mark.parametrize("stage", ["sample", "execute", "evaluate", "annotate", "rank"])
def test_job_options_exist_in_the_cli(stage: str) -> None:
    import typer

    from jobs.cli import app

    words = bcoder_words(stage)
    command = typer.main.get_command(app).commands[words[0]]
    known = {opt for param in command.params for opt in param.opts}
    used = {w for w in words[1:] if w.startswith("--")}
    assert used <= known, f"bcoder {words[0]} has no {sorted(used - known)}"


@pytest.mark.parametrize("stage", ["sft", "phi", "theta"])
def test_training_overrides_are_valid_config_keys(stage: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from jobs.cli import app

    words = bcoder_words(stage)
    (cm,) = docs(K8S / "configmap.yaml")
    config = tmp_path / f"{stage}.yaml"
    config.write_text(cm["data"][f"{stage}.yaml"])
    words[words.index("--config") + 1] = str(config)
    # $(VARS) become URIs as the kubelet would make them; --show-config validates and exits.
    words = [re.sub(r"\$\((\w+)\)", "s3://bucket/x", w) for w in words]
    result = CliRunner().invoke(app, [*words, "--show-config"])
    assert result.exit_code == 0, result.output
    assert "s3://bucket/x" in result.output


# --- the stages added for the whole run on the cluster ----------------------------------------


def kubelet_words(stage: str) -> list[str]:
    """The Job's bcoder words with every $(VAR) replaced as the kubelet would (a URI, the index 0)."""
    words = [w.replace("$(JOB_COMPLETION_INDEX)", "0") for w in bcoder_words(stage)]
    return [re.sub(r"\$\((\w+)\)", "s3://bucket/x", w) for w in words]


@pytest.mark.parametrize("stage", ["sample", "execute", "evaluate", "annotate", "rank"])
def test_stage_command_lines_are_valid_bcoder_command_lines(stage: str) -> None:
    from typer.testing import CliRunner

    from jobs.cli import app

    # --show-config parses every option of the command line, resolves the settings and exits.
    result = CliRunner().invoke(app, [*kubelet_words(stage), "--show-config"])
    assert result.exit_code == 0, result.output


def test_prepare_job_runs_data_prepare_of_the_configured_data_set_on_cpu() -> None:
    import typer

    from bcoder_core import cluster
    from jobs.cli import app

    j = job("prepare")
    c = main_container(j)
    words = bcoder_words("prepare")
    assert words[:3] == ["data", "prepare", "$(BCODER_DATASET)"]
    command = typer.main.get_command(app).commands["data"].commands["prepare"]
    known = {opt for param in command.params for opt in param.opts}
    assert {w for w in words if w.startswith("--")} <= known
    (cm,) = docs(K8S / "configmap.yaml")
    name, choices = cluster.ENV_SETS["prepare"]["dataset"]
    assert name == "BCODER_DATASET" and cm["data"][name] in choices
    (dataset_arg,) = [p for p in command.params if p.name == "dataset"]
    assert all(choice in dataset_arg.help for choice in choices)  # "Which loader: apps, mbpp, humaneval"
    out = words[words.index("--out") + 1]
    assert out.startswith("$(BCODER_RUN_URI)/problems/")
    assert not any("gpu" in k for part in c["resources"].values() for k in part)
    assert "completionMode" not in j["spec"]


@pytest.mark.parametrize(("stage", "shards", "suffix"), [("annotate", 4, ""), ("rank", 4, ".jsonl")])
def test_annotate_and_rank_are_indexed_gpu_jobs_writing_one_part_each(
    stage: str, shards: int, suffix: str
) -> None:
    j = job(stage)
    assert j["spec"]["completionMode"] == "Indexed"
    assert j["spec"]["completions"] == j["spec"]["parallelism"] == shards
    c = main_container(j)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    args = c["args"]
    assert args[args.index("--shard") + 1] == f"$(JOB_COMPLETION_INDEX)/{shards}"
    out = args[args.index("--out") + 1]
    assert out.endswith(f"/part-$(JOB_COMPLETION_INDEX)-of-{shards}{suffix}")


def test_annotate_reads_what_sample_and_execute_write_and_phi_reads_what_it_writes() -> None:
    words = bcoder_words("annotate")
    assert "--phi" not in words  # the first annotation (for phi); --set phi=... adds the column
    assert words[words.index("--out") + 1].startswith("$(BCODER_TRANSITIONS_URI)/part-")
    assert "transitions=$(BCODER_TRANSITIONS_URI)" in bcoder_words("phi")
    assert words[words.index("--samples") + 1] == "$(BCODER_RUN_URI)/train-samples"
    assert words[words.index("--results") + 1] == "$(BCODER_RUN_URI)/train-results"


def test_pod_monitor_selects_every_pod_that_serves_metrics() -> None:
    (monitor,) = docs(K8S / "monitoring" / "podmonitor.yaml")
    selector = monitor["spec"]["selector"]["matchLabels"]
    for stage in METRICS_STAGES:
        c = main_container(job(stage))
        assert selector.items() <= job(stage)["spec"]["template"]["metadata"]["labels"].items(), stage
        assert {p["name"]: p["containerPort"] for p in c["ports"]}["metrics"] == 9090
        if "command" not in c:  # not torchrun: the command serves when BCODER_METRICS_PORT is set
            assert {e["name"]: e.get("value") for e in c["env"]}["BCODER_METRICS_PORT"] == "9090"
    for stage in ("prepare", "execute", "evaluate"):
        assert not selector.items() <= job(stage)["spec"]["template"]["metadata"]["labels"].items(), stage
