"""`bcoder submit`: run a stage as a Kubernetes Job rendered from the manifests in ``k8s/``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

import typer

from bcoder_core.cluster import STAGE_MANIFESTS

JOB_STAGES = tuple(STAGE_MANIFESTS)
"""Stages with a Job manifest in k8s/ (``k8s/<stage>-job.yaml``): the registry is ``cluster.STAGE_MANIFESTS``."""


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""

    @app.command("submit")
    def submit_cmd(
        stage: Literal[(*JOB_STAGES, "pipeline")] = typer.Argument(  # type: ignore[valid-type]
            ...,
            help="Stage to run: its Job is k8s/<stage>-job.yaml; pipeline: the whole run as an Argo Workflow.",
        ),
        config: Path | None = typer.Option(
            None, "--config", help="pipeline: the run description (default configs/apps.yaml)."
        ),
        run_name: str | None = typer.Option(
            None,
            "--run-name",
            help="Run the stage belongs to; its artifacts live under <runs root>/<run name>. Reuse it "
            "to chain stages (phi, then theta). Default: a new unique name.",
        ),
        namespace: str = typer.Option("default", "--namespace", "-n", help="Kubernetes namespace."),
        sets: list[str] = typer.Option(
            [],
            "--set",
            help="key=value. sft/phi/theta: a config override (optim.lr=1e-5); other stages: the value of "
            "--key (num-samples=50); out=PREFIX of a sharded stage: where its parts go; prepare: "
            "dataset=apps|mbpp|humaneval. Repeatable.",
        ),
        image: str | None = typer.Option(None, "--image", help="Container image (default: the manifest's)."),
        shards: int | None = typer.Option(
            None,
            "--shards",
            help="sample/execute/annotate/rank: number of pods (completions, parallelism and --shard N).",
        ),
        runs_root: str | None = typer.Option(
            None,
            "--runs-root",
            help="Prefix of all runs (s3://bucket/runs). Default: the parent of BCODER_RUN_URI in the "
            "namespace's ConfigMap bcoder-run.",
        ),
        wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait for the Job to finish."),
        follow: bool = typer.Option(False, "--follow", "-f", help="Print the pods' logs while waiting."),
        timeout: float | None = typer.Option(None, "--timeout", help="Stop waiting after this many seconds."),
        poll: float = typer.Option(5.0, "--poll-interval", help="Seconds between status reads."),
        dry_run: bool = typer.Option(
            False, "--dry-run", help="Print the rendered Job as YAML; create nothing."
        ),
        kubeconfig: str | None = typer.Option(
            None, "--kubeconfig", help="kubeconfig file (default: $KUBECONFIG)."
        ),
        context: str | None = typer.Option(None, "--context", help="kubeconfig context."),
        manifests: Path | None = typer.Option(
            None, "--manifests", help="Directory of the Job manifests (k8s/)."
        ),
    ) -> None:
        """Submit a stage as a Kubernetes Job, wait for it and say where its artifacts are.

        Example: bcoder submit phi --run-name apps-1 --set max_steps=100 --follow
        """
        if stage == "pipeline":  # --- pipeline branch (jobs/submit_pipeline.py) ---
            from jobs.submit_pipeline import submit_pipeline

            submit_pipeline(
                config=config, run_name=run_name, namespace=namespace, image=image, runs_root=runs_root,
                dry_run=dry_run, kubeconfig=kubeconfig, context=context, manifests=manifests, sets=sets,
            )  # fmt: skip
            return  # --- end of pipeline branch ---
        import yaml

        from bcoder_core import cluster

        run = cluster.check_run_name(run_name) if run_name else cluster.new_run_name()
        api = None if dry_run else cluster.api_client(kubeconfig, context)
        if runs_root is None:
            # A dry run reads no cluster: the runs root comes from the manifests' ConfigMap.
            runs_root = (
                cluster.runs_root_from_manifests(manifests)
                if api is None
                else cluster.runs_root_from_cluster(api, namespace)
            )
        job = cluster.render_job(
            stage,
            run_name=run,
            runs_root=runs_root,
            image=image,
            sets=sets,
            shards=shards,
            manifests=manifests,
        )
        if api is None:
            typer.echo(yaml.safe_dump(job.body, sort_keys=False), nl=False)
            return
        cluster.create_job(api, namespace, job)
        typer.echo(f"created Job {namespace}/{job.name} (stage {stage}, run {run}: {job.run_uri})")
        if not (wait or follow):
            typer.echo(f"logs: kubectl logs -n {namespace} -f -l {cluster.JOB_NAME_LABEL}={job.name}")
            return

        def show(state: cluster.JobState) -> None:
            typer.echo(
                f"Job {job.name}: {state.phase} (active {state.active}, succeeded {state.succeeded}, "
                f"failed {state.failed})",
                err=True,
            )

        if follow:
            state = cluster.follow_job(
                api,
                namespace,
                job.name,
                typer.echo,
                prefix=job.body["spec"].get("completions", 1) > 1,
                poll_s=poll,
                timeout_s=timeout,
            )
        else:
            state = cluster.wait_for_job(
                api, namespace, job.name, poll_s=poll, timeout_s=timeout, on_change=show
            )

        artifacts = ", ".join(job.artifacts()) or job.run_uri
        if state.phase == "succeeded":
            typer.echo(
                f"Job {namespace}/{job.name} succeeded ({state.succeeded} pods); artifacts: {artifacts}"
            )
            return
        print(
            f"error: Job {namespace}/{job.name} failed ({state.message or 'no reason given'}); "
            f"partial artifacts (resumable) under {job.run_uri}",
            file=sys.stderr,
        )
        raise typer.Exit(1)
