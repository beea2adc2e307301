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
    overrides: list[str] = typer.Argument(None, help="key=value overrides of the pipeline config."),
) -> None:
    """Run benchmark, prepare, sft, sample, execute, annotate, phi, theta, rank, evaluate and report.

    Stages whose output is already committed are skipped, so re-running resumes an interrupted run;
    an output changed since its commit is removed and made again.
    """
    from bcoder_core import storage
    from bcoder_core.config import load_config, save_config
    from bcoder_core.pipeline import PipelineConfig, run
    from bcoder_core.report import write_report

    extra = list(overrides or [])
    if run_dir is not None:
        extra.append(f"run_dir={run_dir}")
    if verify:
        extra.append("verify=sha256")
    cfg = load_config(PipelineConfig, config, extra)
    storage.check_output_root(cfg.run_dir)  # a file or a read-only place: one line, nothing written
    Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    save_config(cfg, Path(cfg.run_dir) / "pipeline.yaml")
    run(cfg, echo=typer.echo, only=only)
    if not only:
        report = write_report(cfg)
        typer.echo(report.summary)
        typer.echo(f"report: {report.markdown_path}")


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
