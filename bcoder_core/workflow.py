"""The whole run as an Argo Workflow (DESIGN §1): the DAG of :func:`bcoder_core.pipeline.plan`.

Each stage of the plan is one DAG task whose container runs ``bcoder pipeline step --output U --
<the stage's command line>``: the same command line ``bcoder pipeline run`` starts, behind a wrapper
that exits 0 at once when ``U`` is committed and verifies, so resubmitting a failed workflow resumes
it. A fanned-out stage (``shards`` > 1) is one task over ``withSequence``, item I running shard I.
Dependencies come from the data: a task waits for the stages whose outputs its command line reads.

The pod of a step is the pod of the stage's Job in ``k8s/`` (``<stage>-job.yaml``: image, resources,
GPU affinity, gVisor, env from the ConfigMap and Secret, security context, volumes), loaded as data,
so the Job manifests stay the one source of a stage's pod. Run prefix, images, model URI and shard
counts are workflow parameters; the rendered defaults are the run description's.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

from bcoder_core.cluster import CONTAINER, load_job
from bcoder_core.pipeline import PipelineConfig, Stage, inputs_of, plan, report_stage

API_VERSION = "argoproj.io/v1alpha1"
TRAINER, EVALUATOR = "trainer-image", "evaluator-image"
RUN, MODEL = "run-uri", "model-uri"
SHARD_PARAMS = {
    "sample": "sample-shards",
    "execute": "execute-shards",
    "annotate": "annotate-shards",
    "rank": "rank-shards",
}
WORKFLOW_SERVICE_ACCOUNT = "bcoder-workflow"
#: The image's configs (configs/train/...) live here: the plan's relative preset paths resolve.
WORKDIR = "/opt/bcoder"
#: Retries of a step: after a crash or a pod disruption, never after exit 2 (configuration error).
RETRY = {
    "limit": "4",
    "retryPolicy": "Always",
    "expression": 'lastRetry.exitCode != "2"',
    "backoff": {"duration": "30s", "factor": "2", "maxDuration": "1h"},
}


def param(name: str) -> str:
    """The Argo expression of workflow parameter ``name``."""
    return "{{workflow.parameters." + name + "}}"


def _job_stage(stage: Stage) -> tuple[str, bool]:
    """(Job manifest whose pod runs ``stage``, whether its GPUs are dropped)."""
    cmd = stage.argv[0]
    if cmd == "train":
        return stage.argv[1], False  # sft, phi, theta (and the ablation, a theta run)
    if cmd in ("sample", "annotate", "rank", "execute", "evaluate"):
        return cmd, False
    if cmd == "pipeline":  # the report: the trainer image (matplotlib), no GPU
        return "sample", True
    return "prepare", False  # data prepare, benchmark generate: CPU, evaluator image


def _pod(job_stage: str, cpu_only: bool, manifests: Path | None) -> tuple[dict, dict]:
    """(pod-level template fields, container) of a stage's Job manifest, as an Argo template needs."""
    job = load_job(job_stage, manifests)
    pod = copy.deepcopy(job["spec"]["template"])
    spec = pod["spec"]
    container = next(c for c in spec["containers"] if c["name"] == CONTAINER)
    # Argo's command line is the step's own, and only the S3 settings of the ConfigMap are needed.
    container = {k: v for k, v in container.items() if k not in ("name", "command", "args", "ports")}
    container["env"] = [e for e in container.get("env", []) if e["name"].startswith("AWS_")]
    keep_mounts = {"dshm", "tmp"}
    container["volumeMounts"] = [m for m in container.get("volumeMounts", []) if m["name"] in keep_mounts]
    image = container["image"]
    container["image"] = param(TRAINER if "trainer" in image else EVALUATOR)
    container["workingDir"] = WORKDIR
    fields: dict[str, Any] = {
        "metadata": {"labels": dict(pod.get("metadata", {}).get("labels", {}))},
        "securityContext": spec.get("securityContext"),
        "volumes": [v for v in spec.get("volumes", []) if v["name"] in keep_mounts],
    }
    if cpu_only:
        for part in ("requests", "limits"):
            container.get("resources", {}).get(part, {}).pop("nvidia.com/gpu", None)
    else:
        fields["affinity"] = spec.get("affinity")
        fields["tolerations"] = spec.get("tolerations")
    patch = {k: spec[k] for k in ("runtimeClassName", "enableServiceLinks") if k in spec}
    if patch:
        fields["podSpecPatch"] = json.dumps(patch, sort_keys=True)
    return {k: v for k, v in fields.items() if v}, container


def _templated(word: str, run: str, model: str | None) -> str:
    """``word`` of a command line with the run prefix and the model URI as workflow parameters."""
    if model and (word == model or word.endswith("=" + model)):
        return word[: len(word) - len(model)] + param(MODEL)
    if word == run:
        return param(RUN)
    return word.replace(run + "/", param(RUN) + "/")


def _shard_words(stage: Stage) -> tuple[list[str], str]:
    """(argv, output) of shard 0 of a fanned-out stage with I and N as template parameters."""
    _, n = stage.shard or (0, 1)
    count = param(SHARD_PARAMS[stage.argv[0]])
    part, spec = f"part-0-of-{n}", f"0/{n}"
    words = [a.replace(part, "part-{{inputs.parameters.shard}}-of-" + count) for a in stage.argv]
    words = ["{{inputs.parameters.shard}}/" + count if a == spec else a for a in words]
    return words, stage.output.replace(part, "part-{{inputs.parameters.shard}}-of-" + count)


def render_workflow(
    cfg: PipelineConfig,
    *,
    run_uri: str | None = None,
    model_uri: str | None = None,
    image: str = "",
    name: str | None = None,
    manifests: Path | None = None,
) -> dict:
    """The run described by ``cfg`` as an ``argoproj.io/v1alpha1`` Workflow (a plain dict).

    ``image`` (the trainer's; empty: the manifests'), ``run_uri`` and ``model_uri`` set the parameters' values (default: the
    Job manifests' images, ``cfg.run_dir``, ``cfg.checkpoint``; the evaluator's image is a parameter); ``name`` a fixed Workflow name
    (default ``generateName: bcoder-pipeline-``). Shard counts are ``cfg.shards``.
    """
    run = cfg.run_dir.rstrip("/")
    stages = [*plan(cfg), report_stage(cfg)]
    images = {TRAINER: "", EVALUATOR: ""}
    for stage_name in ("sample", "execute"):
        container = load_job(stage_name, manifests)["spec"]["template"]["spec"]["containers"][0]
        images[TRAINER if stage_name == "sample" else EVALUATOR] = container["image"]
    params = [
        {"name": RUN, "value": run_uri or run, "description": "Run prefix: every artifact of the run."},
        {"name": TRAINER, "value": image or images[TRAINER], "description": "Image of the GPU stages."},
        {
            "name": EVALUATOR,
            "value": images[EVALUATOR],
            "description": "Image of execute, evaluate and data preparation.",
        },
    ]
    if cfg.checkpoint is not None:
        params.append(
            {"name": MODEL, "value": model_uri or cfg.checkpoint, "description": "The checkpoint θ_ckpt."}
        )
    shard_counts = {cmd: getattr(cfg.shards, cmd) for cmd in SHARD_PARAMS}
    for cmd, count in shard_counts.items():
        if count > 1:
            params.append(
                {
                    "name": SHARD_PARAMS[cmd],
                    "value": str(count),
                    "description": f"Shards of every {cmd} stage.",
                }
            )

    # One task per stage, one per fanned-out group (its shard 0 stands for all).
    tasks: list[dict] = []
    templates: list[dict] = []
    seen: dict[str, str] = {}  # stage name -> task name
    for stage in stages:
        task_name = stage.group or stage.name
        seen[stage.name] = task_name
        if stage.shard is not None and stage.shard[0] != 0:
            continue
        argv, output = _shard_words(stage) if stage.group else (stage.argv, stage.output)
        words = [_templated(w, run, cfg.checkpoint) for w in argv]
        output = _templated(output, run, cfg.checkpoint)
        step = ["pipeline", "step", "--output", output]
        if stage.argv[0] == "train":
            step.append("--torchrun")
        if cfg.verify == "sha256":
            step += ["--verify", "sha256"]
        fields, container = _pod(*_job_stage(stage), manifests)
        container["args"] = [*step, "--", *words]
        fields["metadata"]["labels"]["bcoder.dev/stage"] = task_name
        template: dict[str, Any] = {"name": task_name}
        if stage.group:
            template["inputs"] = {"parameters": [{"name": "shard"}]}
        template.update(fields)
        template["container"] = container
        template["retryStrategy"] = copy.deepcopy(RETRY)
        templates.append(template)
        if stage.argv[0] == "pipeline":
            # The report reads the whole run: it waits for every task nothing else waits for.
            needed = {d for t in tasks for d in t.get("dependencies", [])}
            deps = sorted({t["name"] for t in tasks} - needed)
        else:
            deps = sorted({seen[d.name] for d in inputs_of(stage, stages)} - {task_name})
        task: dict[str, Any] = {"name": task_name, "template": task_name}
        if deps:
            task["dependencies"] = deps
        if stage.group:
            task["withSequence"] = {"count": param(SHARD_PARAMS[stage.argv[0]])}
            task["arguments"] = {"parameters": [{"name": "shard", "value": "{{item}}"}]}
        tasks.append(task)

    meta: dict[str, Any] = {"name": name} if name else {"generateName": "bcoder-pipeline-"}
    meta["labels"] = {"app.kubernetes.io/name": "bcoder", "app.kubernetes.io/part-of": "bcoder"}
    return {
        "apiVersion": API_VERSION,
        "kind": "Workflow",
        "metadata": meta,
        "spec": {
            "entrypoint": "pipeline",
            "serviceAccountName": WORKFLOW_SERVICE_ACCOUNT,
            "arguments": {"parameters": params},
            "ttlStrategy": {"secondsAfterCompletion": 604800},
            "podGC": {"strategy": "OnPodSuccess"},
            "templates": [{"name": "pipeline", "dag": {"tasks": tasks}}, *templates],
        },
    }


HEADER = """\
# The whole B-Coder run as an Argo Workflow: configs/apps.yaml (the paper's APPS reproduction)
# rendered by bcoder_core/workflow.py with its default parameters. Do not edit: regenerate with
#   bcoder submit pipeline --config configs/apps.yaml --dry-run > k8s/pipeline-workflow.yaml
# (tests/cluster/test_workflow.py checks it equals a fresh rendering). Submit with
#   kubectl create -f k8s/pipeline-workflow.yaml   or   bcoder submit pipeline --run-name R
# Needs Argo Workflows, the ServiceAccount bcoder-workflow, the ConfigMap bcoder-run and the Secret
# bcoder-s3 (k8s/README.md, "The whole run as a Workflow").
"""


def workflow_yaml(workflow: dict, header: str = HEADER) -> str:
    """The Workflow as YAML text (what ``k8s/pipeline-workflow.yaml`` holds), after ``header``."""
    import yaml

    return header + yaml.safe_dump(workflow, sort_keys=False, width=110, allow_unicode=True)


@dataclasses.dataclass(frozen=True)
class Step:
    """One container run of a rendered Workflow, in an order its dependencies allow."""

    task: str
    args: list[str]
    template: dict


def steps_in_order(workflow: dict, values: dict[str, str] | None = None) -> list[Step]:
    """The container runs of ``workflow`` in dependency order with its parameters filled in
    (``values`` replace the defaults) and every ``withSequence`` expanded: what Argo would run."""
    spec = workflow["spec"]
    params = {p["name"]: p["value"] for p in spec["arguments"]["parameters"]} | dict(values or {})

    def fill(text: str, extra: dict[str, str]) -> str:
        for key, value in params.items():
            text = text.replace(param(key), value)
        for key, value in extra.items():
            text = text.replace("{{" + key + "}}", value)
        return text

    templates = {t["name"]: t for t in spec["templates"]}
    tasks = {t["name"]: t for t in templates[spec["entrypoint"]]["dag"]["tasks"]}
    done: set[str] = set()
    order: list[Step] = []
    while len(done) < len(tasks):
        ready = [n for n, t in tasks.items() if n not in done and set(t.get("dependencies", [])) <= done]
        if not ready:
            raise ValueError(f"cycle among {sorted(set(tasks) - done)}")
        for task_name in ready:
            task = tasks[task_name]
            template = templates[task["template"]]
            items = [""]
            if "withSequence" in task:
                items = [str(i) for i in range(int(fill(task["withSequence"]["count"], {})))]
            for item in items:
                args = {
                    a["name"]: fill(a["value"], {"item": item})
                    for a in task.get("arguments", {}).get("parameters", [])
                }
                extra = {f"inputs.parameters.{k}": v for k, v in args.items()}
                order.append(
                    Step(task_name, [fill(a, extra) for a in template["container"]["args"]], template)
                )
            done.add(task_name)
    return order
