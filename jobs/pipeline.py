"""`bcoder pipeline`: the whole method end to end on the embedded default (DESIGN §1)."""

from __future__ import annotations

from pathlib import Path

import typer

pipeline_app = typer.Typer(help="Run every stage of B-Coder in order on one machine.", no_args_is_help=True)


@pipeline_app.command("run")
def run_pipeline(
    config: Path = typer.Option(
        ..., "--config", help="Pipeline YAML (configs/demo.yaml, configs/smoke.yaml)."
    ),
    run_dir: str | None = typer.Option(
        None, "--run-dir", help="Where the run's artifacts go (overrides run_dir)."
    ),
    only: list[str] = typer.Option(
        [], "--only", help="Run only these stages (repeatable); others are untouched."
    ),
    verify: bool = typer.Option(
        False,
        "--verify",
        help="Check committed outputs by sha256, not only sizes, before skipping them (verify=sha256).",
    ),
    jobs: int | None = typer.Option(
        None,
        "--jobs",
        "-j",
        help="Stages run side by side, each with cores/N threads; their output goes to <run_dir>/logs (jobs=N).",
    ),
    overrides: list[str] = typer.Argument(None, help="key=value overrides of the pipeline config."),
) -> None:
    """Run benchmark, prepare, sft, sample, execute, annotate, phi, theta, rank, evaluate and report.

    Stages whose output is already committed are skipped, so re-running resumes an interrupted run;
    an output changed since its commit is removed and made again.
    """
    from bcoder_core import storage
    from bcoder_core.config import config_to_dict, load_config, save_config
    from bcoder_core.pipeline import PipelineConfig, report_stage, run
    from bcoder_core.report import write_report

    def config_yaml(cfg: PipelineConfig) -> str:
        import yaml

        return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)

    extra = list(overrides or [])
    if run_dir is not None:
        extra.append(f"run_dir={run_dir}")
    if verify:
        extra.append("verify=sha256")
    if jobs is not None:
        extra.append(f"jobs={jobs}")
    cfg = load_config(PipelineConfig, config, extra)
    storage.check_output_root(cfg.run_dir)  # a file or a read-only place: one line, nothing written
    if storage.is_s3(cfg.run_dir):
        storage.write_text(storage.join(cfg.run_dir, "pipeline.yaml"), config_yaml(cfg))
    else:
        Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
        save_config(cfg, Path(cfg.run_dir) / "pipeline.yaml")
    run(cfg, echo=typer.echo, only=only)
    if only:
        return
    if not storage.is_s3(cfg.run_dir):
        report = write_report(cfg)
        typer.echo(report.summary)
        typer.echo(f"report: {report.markdown_path}")
        return
    out = report_stage(cfg).output
    _publish_report(cfg, out)


def _publish_report(cfg, out: str) -> None:
    """Write the report of ``cfg``'s run into a staging directory and commit it at ``out``."""
    from bcoder_core import storage
    from bcoder_core.report import report_name, write_report

    storage.check_output(out, kind="report")
    with storage.output_path(out, kind="report", config={"run_dir": cfg.run_dir}) as path:
        path.mkdir(parents=True, exist_ok=True)
        report = write_report(cfg, out_dir=path)
    typer.echo(report.summary)
    typer.echo(f"report: {out}/{report_name(cfg)}.md")


@pipeline_app.command("seeds")
def seeds_cmd(
    run_dirs: list[str] = typer.Argument(..., help="Run directories of one setup (e.g. seeds 0, 1, 2)."),
    eval_split: str = typer.Option(
        "test", "--eval-split", help="Whose evaluation to read: test or val (a run may hold both)."
    ),
) -> None:
    """Print the headline numbers of several runs as mean ± sd, range and each run's value.

    Each run is read from its own pipeline.yaml and evaluation reports of --eval-split (nothing in
    it is written): bcoder pipeline run --config configs/demo.yaml --run-dir runs/demo-seed1 seed=1,
    then bcoder pipeline seeds runs/demo runs/demo-seed1 runs/demo-seed2. A run evaluated on val too
    (eval_split=val) keeps its test reports; --eval-split picks, not the run's last pipeline.yaml.
    """
    import tempfile

    from bcoder_core import storage
    from bcoder_core.config import load_config
    from bcoder_core.errors import BcoderError
    from bcoder_core.pipeline import PipelineConfig
    from bcoder_core.report import seeds_table, write_report

    reports, labels = [], []
    for run in run_dirs:
        text = storage.read_text(storage.join(run, "pipeline.yaml"))
        if text is None:
            raise BcoderError(f"{run}: no pipeline.yaml; not a pipeline run directory")
        with tempfile.TemporaryDirectory() as tmp:
            cfg_path = Path(tmp) / "pipeline.yaml"
            cfg_path.write_text(text)
            cfg = load_config(PipelineConfig, cfg_path, [f"run_dir={run}", f"eval_split={eval_split}"])
            out = Path(tmp) / "report"
            out.mkdir()
            reports.append(write_report(cfg, out_dir=out))
        labels.append(f"seed {cfg.seed}")
    typer.echo(f"{cfg.eval_split} split, {len(reports)} runs\n")
    typer.echo(seeds_table(reports, labels))


@pipeline_app.command("report")
def report_cmd(
    run_dir: str = typer.Option(..., "--run-dir", help="The run prefix (local directory or s3://...)."),
    out: str = typer.Option(..., "--out", help="Directory artifact to commit report.md and its plots to."),
    eval_split: str = typer.Option("test", "--eval-split", help="The evaluated split: test or val."),
    dataset: str = typer.Option("builtin", "--dataset", help="The run's dataset.kind (the report's title)."),
    num_samples: int = typer.Option(..., "--num-samples", help="test_sampling.num_samples (for the text)."),
    temperature: float = typer.Option(..., "--temperature", help="test_sampling.temperature."),
    top_p: float = typer.Option(..., "--top-p", help="test_sampling.top_p."),
) -> None:
    """Write the run's report from its evaluation reports and commit it (the workflow's last step)."""
    from types import SimpleNamespace

    cfg = SimpleNamespace(
        run_dir=run_dir,
        eval_split=eval_split,
        dataset=SimpleNamespace(kind=dataset),
        test_sampling=SimpleNamespace(num_samples=num_samples, temperature=temperature, top_p=top_p),
    )
    _publish_report(cfg, out)


@pipeline_app.command("step")
def step_cmd(
    output: str = typer.Option(..., "--output", help="The URI the stage commits."),
    torchrun: bool = typer.Option(
        False, "--torchrun", help="A training stage: start it with torchrun over this node's GPUs."
    ),
    verify: str = typer.Option(
        "sizes", "--verify", help="How a committed output is checked: sizes or sha256."
    ),
    argv: list[str] = typer.Argument(..., help="The stage's bcoder command line (after --)."),
) -> None:
    """Run one stage (a workflow step) unless its output is committed and verifies: exit 0 at once then.

    The stage's exit status is this command's (2 stays 2: a configuration error a retry cannot fix).
    """
    import sys

    from bcoder_core.errors import BcoderError
    from bcoder_core.pipeline import Stage, StageFailed, run_stage

    if verify not in ("sizes", "sha256"):
        raise BcoderError(f"--verify {verify!r}: must be sizes or sha256")
    name = " ".join(argv[:2]) if argv[0] in ("train", "data", "benchmark", "pipeline") else argv[0]
    try:
        run_stage(
            Stage(name, list(argv), output), sha256=verify == "sha256", echo=typer.echo, torchrun=torchrun
        )
    except StageFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(exc.code) from None


@pipeline_app.command("stages")
def list_stages(
    config: Path = typer.Option(..., "--config", help="Pipeline YAML."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides of the pipeline config."),
) -> None:
    """Print the stages of a run and the command line of each."""
    import shlex

    from bcoder_core.config import load_config
    from bcoder_core.pipeline import PipelineConfig, plan

    cfg = load_config(PipelineConfig, config, list(overrides or []))
    for stage in plan(cfg):
        typer.echo(f"{stage.name:<24} bcoder {shlex.join(stage.argv)}")


def register(app: typer.Typer) -> None:
    """Add `bcoder pipeline ...`."""
    app.add_typer(pipeline_app, name="pipeline")
