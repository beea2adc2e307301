"""Kubernetes submission of bcoder stages (DESIGN §1): render a Job from ``k8s/`` and run it.

One source of truth: the Job is the YAML file in ``k8s/`` (``phi-job.yaml``, ...), loaded and
patched as data — name, labels, image, arguments, shard count — never produced by string
templating. The same file works with ``kubectl apply -f``.

Runs and Jobs: a *run* names an artifact prefix, ``<runs root>/<run name>`` (``BCODER_RUN_URI`` in
the pod); every stage of the run reads and writes under it, so ``bcoder submit phi --run-name r1``
followed by ``bcoder submit theta --run-name r1`` chains the two. Each submission creates a *Job*
with a unique name (``bcoder-<stage>-<run>-<random>``); submitting the same stage of the same run
again resumes from the run's checkpoints (``<output>/latest``).

The Kubernetes client is imported inside the functions that use it (the evaluator image has no
need for it).
"""

from __future__ import annotations

import copy
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from bcoder_core.errors import BcoderError

#: stage -> manifest file in the manifests directory.
STAGE_MANIFESTS: dict[str, str] = {
    "prepare": "prepare-job.yaml",
    "sft": "sft-job.yaml",
    "annotate": "annotate-job.yaml",
    "phi": "phi-job.yaml",
    "theta": "theta-job.yaml",
    "sample": "sample-job.yaml",
    "execute": "execute-job.yaml",
    "evaluate": "evaluate-job.yaml",
    "rank": "rank-job.yaml",
}
#: Stages whose command line takes ``key=value`` config overrides (``bcoder train``).
TRAIN_STAGES = frozenset({"sft", "phi", "theta"})
#: ``--set KEY=V`` that sets an environment variable instead of ``--KEY V``: a positional argument
#: of the command line spelled as ``$(VAR)`` in the manifest (``bcoder data prepare $(BCODER_DATASET)``).
ENV_SETS: dict[str, dict[str, tuple[str, tuple[str, ...]]]] = {
    "prepare": {"dataset": ("BCODER_DATASET", ("apps", "mbpp", "humaneval"))},
}
RUN_CONFIGMAP = "bcoder-run"
RUN_URI_ENV = "BCODER_RUN_URI"
CONTAINER = "bcoder"
RUN_LABEL = "bcoder.dev/run"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
_RUN_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,28}[a-z0-9])?$")
_OUTPUT_OPTIONS = ("--out", "--out-json", "--out-md")
_SHARD_ARG = re.compile(r"^\$\(JOB_COMPLETION_INDEX\)/(\d+)$")
#: The per-pod part of a sharded output: ``.../part-$(JOB_COMPLETION_INDEX)-of-4.jsonl`` (a file) or
#: ``.../part-$(JOB_COMPLETION_INDEX)-of-4`` (a directory: one part of a transition store).
_PART_ARG = re.compile(r"/(part-\$\(JOB_COMPLETION_INDEX\)-of-\d+(?:\.[^/]*)?)$")


def manifests_dir() -> Path:
    """The ``k8s/`` directory of this source tree (the manifests ship with the repository)."""
    return Path(__file__).resolve().parent.parent / "k8s"


def load_job(stage: str, manifests: Path | None = None) -> dict:
    """The Job manifest of ``stage`` as loaded from its YAML file."""
    if stage not in STAGE_MANIFESTS:
        raise BcoderError(f"unknown stage {stage!r}: choose one of {', '.join(STAGE_MANIFESTS)}")
    path = (manifests or manifests_dir()) / STAGE_MANIFESTS[stage]
    if not path.is_file():
        raise BcoderError(f"{path}: manifest not found (pass --manifests DIR)")
    job = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(job, dict) or job.get("kind") != "Job":
        raise BcoderError(f"{path}: expected one batch/v1 Job")
    return job


def runs_root_from_manifests(manifests: Path | None = None) -> str:
    """The runs root of the repository's ConfigMap (``configmap.yaml``): the parent of BCODER_RUN_URI."""
    path = (manifests or manifests_dir()) / "configmap.yaml"
    try:
        cm = yaml.safe_load(path.read_text(encoding="utf-8"))
        uri = cm["data"][RUN_URI_ENV]
    except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
        raise BcoderError(f"{path}: no ConfigMap with {RUN_URI_ENV} ({exc}); pass --runs-root") from exc
    return uri.rstrip("/").rsplit("/", 1)[0]


def new_run_name(now: datetime | None = None) -> str:
    """A fresh run name: UTC time to the second plus 4 random hex digits (``20261126-071530-a1b2``)."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def check_run_name(run_name: str) -> str:
    """``run_name`` if it is a valid run name (lower-case DNS label, at most 30 characters)."""
    if not _RUN_NAME.match(run_name):
        raise BcoderError(
            f"--run-name {run_name!r}: use 1-30 lower-case letters, digits and '-', starting and "
            "ending with a letter or digit"
        )
    return run_name


def _container(job: dict) -> dict:
    containers = job["spec"]["template"]["spec"]["containers"]
    for container in containers:
        if container.get("name") == CONTAINER:
            return container
    raise BcoderError(f"Job {job['metadata']['name']}: no container named {CONTAINER!r}")


def _set_option(args: list[str], option: str, value: str) -> None:
    """Replace the value of ``--option`` in ``args`` (``--opt V`` or ``--opt=V``), or append it."""
    for i, arg in enumerate(args):
        if arg == option and i + 1 < len(args):
            args[i + 1] = value
            return
        if arg.startswith(option + "="):
            args[i] = f"{option}={value}"
            return
    args.extend([option, value])


def _set_override(args: list[str], key: str, value: str) -> None:
    """Replace a ``key=value`` config override in ``args``, or append one."""
    for i, arg in enumerate(args):
        if not arg.startswith("-") and arg.partition("=")[0] == key and "=" in arg:
            args[i] = f"{key}={value}"
            return
    args.append(f"{key}={value}")


def _set_shards(job: dict, args: list[str], shards: int) -> None:
    """Make an Indexed Job run ``shards`` pods: completions, parallelism and ``--shard I/N`` agree."""
    spec = job["spec"]
    if spec.get("completionMode") != "Indexed":
        raise BcoderError(f"--shards: the {job['metadata']['name']} Job is not sharded (not an Indexed Job)")
    if shards < 1:
        raise BcoderError(f"--shards {shards}: must be at least 1")
    old = spec["completions"]
    spec["completions"] = shards
    spec["parallelism"] = shards
    for i, arg in enumerate(args):
        if _SHARD_ARG.match(arg):
            args[i] = f"$(JOB_COMPLETION_INDEX)/{shards}"
        elif _PART_ARG.search(arg):
            # Per-shard output names carry the shard count so parts of different splits never mix.
            args[i] = re.sub(rf"-of-{old}(?=\.[^/]*$|$)", f"-of-{shards}", arg)


def _set_out_prefix(args: list[str], value: str) -> bool:
    """``--set out=PREFIX`` on a sharded stage: PREFIX is where the parts go, each pod keeping its own
    ``part-I-of-N`` name (one literal path would have every pod overwrite the same output)."""
    for i, arg in enumerate(args):
        found = _PART_ARG.search(arg) if i > 0 and args[i - 1] == "--out" else None
        if found and not _PART_ARG.search(value):
            args[i] = f"{value.rstrip('/')}/{found.group(1)}"
            return True
    return False


def _set_env(container: dict, stage: str, key: str, value: str) -> None:
    """``--set KEY=V`` for a positional argument of the command line: the literal value of its variable."""
    name, choices = ENV_SETS[stage][key]
    if value not in choices:
        raise BcoderError(f"--set {key}={value}: choose one of {', '.join(choices)}")
    env = [e for e in container.get("env", []) if e.get("name") != name]
    container["env"] = [*env, {"name": name, "value": value}]


@dataclass(frozen=True)
class RenderedJob:
    """A Job ready to create, with what the submitter reports about it."""

    stage: str
    run_name: str
    run_uri: str
    body: dict

    @property
    def name(self) -> str:
        """The Job's (unique) name."""
        return self.body["metadata"]["name"]

    def artifacts(self) -> list[str]:
        """Where the Job writes: its output options (``--out``, ``--out-json``, ``--out-md``, the
        ``output=`` config key) with the run URI filled in; ``*`` stands for the shard index."""
        container = _container(self.body)
        args = container.get("args", [])
        found = []
        for i, arg in enumerate(args):
            if arg in _OUTPUT_OPTIONS and i + 1 < len(args):
                found.append(args[i + 1])
            elif arg.startswith("output="):
                found.append(arg.partition("=")[2])
        literal = {f"$({e['name']})": e["value"] for e in container.get("env", []) if "value" in e}
        literal["$(JOB_COMPLETION_INDEX)"] = "*"
        return [re.sub(r"\$\(\w+\)", lambda m: literal.get(m.group(0), m.group(0)), a) for a in found]


def render_job(
    stage: str,
    *,
    run_name: str,
    runs_root: str,
    image: str | None = None,
    sets: Sequence[str] = (),
    shards: int | None = None,
    manifests: Path | None = None,
    suffix: str | None = None,
) -> RenderedJob:
    """The Job of ``stage`` for run ``run_name``, patched from its manifest.

    ``runs_root`` is the prefix under which runs live (``s3://bucket/runs``); the run's URI is
    ``<runs_root>/<run_name>`` and goes into ``BCODER_RUN_URI`` as a literal value. ``sets`` are
    ``key=value`` strings: for the training stages a config override (``optim.lr=1e-5``) added to
    the command line or replacing the same key; for the others the value of ``--key``
    (``num-samples=50`` sets ``--num-samples 50``), except ``out=PREFIX`` on a sharded stage (the
    prefix of the pods' ``part-I-of-N`` outputs) and the keys of :data:`ENV_SETS` (``dataset=mbpp``
    for prepare: the value of ``$(BCODER_DATASET)``). ``shards`` resizes an Indexed Job.
    """
    check_run_name(run_name)
    job = copy.deepcopy(load_job(stage, manifests))
    run_uri = f"{runs_root.rstrip('/')}/{run_name}"
    suffix = suffix or secrets.token_hex(2)
    name = f"bcoder-{stage}-{run_name}-{suffix}"

    job["metadata"] = {
        "name": name,
        "labels": {**job["metadata"].get("labels", {}), RUN_LABEL: run_name},
        "annotations": {**job["metadata"].get("annotations", {}), "bcoder.dev/run-uri": run_uri},
    }
    template_meta = job["spec"]["template"].setdefault("metadata", {})
    template_meta["labels"] = {**template_meta.get("labels", {}), RUN_LABEL: run_name}

    container = _container(job)
    if image:
        container["image"] = image
    env = [e for e in container.get("env", []) if e.get("name") != RUN_URI_ENV]
    container["env"] = [{"name": RUN_URI_ENV, "value": run_uri}, *env]

    args = list(container.get("args", []))
    if shards is not None:
        _set_shards(job, args, shards)
    for item in sets:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise BcoderError(f"--set {item!r}: expected key=value")
        if stage in TRAIN_STAGES:
            _set_override(args, key, value)
        elif key in ENV_SETS.get(stage, {}):
            _set_env(container, stage, key, value)
        elif key.lstrip("-") == "out" and _set_out_prefix(args, value):
            pass
        else:
            _set_option(args, "--" + key.lstrip("-"), value)
    container["args"] = args
    return RenderedJob(stage=stage, run_name=run_name, run_uri=run_uri, body=job)


# --- talking to the API server ----------------------------------------------------------------


def api_client(kubeconfig: str | None = None, context: str | None = None) -> Any:
    """A configured ``kubernetes.client.ApiClient``: the kubeconfig (``$KUBECONFIG``,
    ``~/.kube/config``), or the in-cluster service account when there is no kubeconfig."""
    from kubernetes import client, config

    try:
        cfg = client.Configuration()
        # The client reads $KUBECONFIG once, at import; read it now so the current value counts.
        config_file = kubeconfig or os.environ.get("KUBECONFIG") or None
        config.load_kube_config(config_file=config_file, context=context, client_configuration=cfg)
    except (config.ConfigException, FileNotFoundError, TypeError) as exc:
        if kubeconfig or context:
            raise BcoderError(f"kubeconfig {kubeconfig or '(default)'}: {exc}") from exc
        try:
            cfg = client.Configuration()
            config.load_incluster_config(client_configuration=cfg)
        except config.ConfigException:
            raise BcoderError(
                f"no Kubernetes configuration: {exc} (set KUBECONFIG or pass --kubeconfig)"
            ) from exc
    return client.ApiClient(cfg)


def _api_error(exc: Exception, what: str) -> BcoderError:
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", "") or str(exc)
    return BcoderError(f"{what}: Kubernetes API answered {status} {reason}".rstrip())


def runs_root_from_cluster(api: Any, namespace: str) -> str:
    """The runs root configured in the namespace: the parent of ConfigMap bcoder-run's BCODER_RUN_URI."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        cm = client.CoreV1Api(api).read_namespaced_config_map(RUN_CONFIGMAP, namespace)
    except ApiException as exc:
        if exc.status == 404:
            raise BcoderError(
                f"ConfigMap {RUN_CONFIGMAP} not found in namespace {namespace}: "
                "kubectl apply -f k8s/configmap.yaml (and create the Secret bcoder-s3)"
            ) from exc
        raise _api_error(exc, f"reading ConfigMap {namespace}/{RUN_CONFIGMAP}") from exc
    except HTTPError as exc:
        raise BcoderError(f"Kubernetes API unreachable: {exc}") from exc
    uri = (cm.data or {}).get(RUN_URI_ENV)
    if not uri:
        raise BcoderError(f"ConfigMap {namespace}/{RUN_CONFIGMAP} has no {RUN_URI_ENV}")
    return uri.rstrip("/").rsplit("/", 1)[0]


def create_job(api: Any, namespace: str, job: RenderedJob) -> None:
    """Create the Job; a name clash or a rejected manifest is one error line."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        client.BatchV1Api(api).create_namespaced_job(namespace, body=job.body)
    except ApiException as exc:
        raise _api_error(exc, f"creating Job {namespace}/{job.name}") from exc
    except HTTPError as exc:
        raise BcoderError(f"Kubernetes API unreachable: {exc}") from exc


@dataclass(frozen=True)
class JobState:
    """What a Job's status says: finished or not, and the counts of pods."""

    phase: str  # "running" | "succeeded" | "failed"
    active: int
    succeeded: int
    failed: int
    message: str = ""


def job_state(api: Any, namespace: str, name: str) -> JobState:
    """Read the Job's status (its Complete / Failed conditions are the verdict)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        job = client.BatchV1Api(api).read_namespaced_job_status(name, namespace)
    except ApiException as exc:
        raise _api_error(exc, f"reading Job {namespace}/{name}") from exc
    status = job.status
    phase, message = "running", ""
    for cond in status.conditions or []:
        if cond.status != "True":
            continue
        if cond.type == "Complete":
            phase = "succeeded"
        elif cond.type == "Failed":
            phase, message = "failed", f"{cond.reason or ''}: {cond.message or ''}".strip(": ")
    return JobState(phase, status.active or 0, status.succeeded or 0, status.failed or 0, message)


def wait_for_job(
    api: Any,
    namespace: str,
    name: str,
    *,
    poll_s: float = 5.0,
    timeout_s: float | None = None,
    on_change: Callable[[JobState], None] | None = None,
) -> JobState:
    """Poll the Job until it succeeds or fails (or ``timeout_s`` passes: BcoderError)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    last: JobState | None = None
    while True:
        state = job_state(api, namespace, name)
        if state != last and on_change:
            on_change(state)
        last = state
        if state.phase != "running":
            return state
        if deadline is not None and time.monotonic() > deadline:
            raise BcoderError(f"Job {namespace}/{name} still running after {timeout_s:g} s (--timeout)")
        time.sleep(poll_s)


def job_pods(api: Any, namespace: str, name: str) -> list[Any]:
    """The Job's pods, oldest first."""
    from kubernetes import client

    pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"{JOB_NAME_LABEL}={name}")
    return sorted(
        pods.items,
        key=lambda p: (p.metadata.creation_timestamp or datetime.min.replace(tzinfo=UTC), p.metadata.name),
    )


def stream_log(api: Any, namespace: str, pod: str) -> Iterator[str]:
    """The log lines of the bcoder container of ``pod``, followed until the container ends."""
    from kubernetes import client

    resp = client.CoreV1Api(api).read_namespaced_pod_log(
        pod, namespace, container=CONTAINER, follow=True, _preload_content=False
    )
    pending = b""
    try:
        for chunk in resp.stream(4096):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.decode("utf-8", "replace")
        if pending:
            yield pending.decode("utf-8", "replace")
    finally:
        resp.release_conn()


def follow_job(
    api: Any,
    namespace: str,
    name: str,
    emit: Callable[[str], None],
    *,
    prefix: bool = False,
    poll_s: float = 5.0,
    timeout_s: float | None = None,
) -> JobState:
    """Print every pod's log until the Job ends: each pod in turn, whole (retried pods too).

    With ``prefix`` each line starts with ``[pod-name]`` (for Jobs of several pods).
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    seen: set[str] = set()

    def drain() -> None:
        for pod in job_pods(api, namespace, name):
            pod_name = pod.metadata.name
            if pod_name in seen or (pod.status.phase or "Pending") in ("Pending", "Unknown"):
                continue
            seen.add(pod_name)
            for line in stream_log(api, namespace, pod_name):
                emit(f"[{pod_name}] {line}" if prefix else line)

    while True:
        state = job_state(api, namespace, name)
        drain()
        if state.phase != "running":
            drain()  # pods that ended between the two reads above
            return state
        if deadline is not None and time.monotonic() > deadline:
            raise BcoderError(f"Job {namespace}/{name} still running after {timeout_s:g} s (--timeout)")
        time.sleep(poll_s)
