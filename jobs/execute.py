"""`bcoder execute`: run samples against their problems' tests in the sandbox; write verdicts and rewards.

The stage itself is :func:`bcoder_core.execution.run.run_execute`; this module only parses options.
"""

from __future__ import annotations

import typer

from jobs.options import Param, stage_command
from jobs.params import PROBLEMS, SAMPLES, SHARD

PARAMS = [
    PROBLEMS,
    SAMPLES,
    Param("out", ("--out",), "Results JSONL to write; an existing file is resumed.", required=True),
    SHARD,
    Param("quiet", ("--quiet",), "No progress bar.", default=False, type=bool),
]


def _run(cfg, *, problems: str, samples: str, out: str, shard: str | None, quiet: bool) -> None:
    from bcoder_core.execution import ExecutionError
    from bcoder_core.execution.run import run_execute

    try:
        summary = run_execute(problems, samples, out, cfg, shard=shard, progress=not quiet)
    except ExecutionError as exc:
        typer.echo(f"error: execution framework failure: {exc}", err=True)
        raise typer.Exit(3) from None
    typer.echo(summary.report())
    typer.echo(f"wrote {out}")


def register(app: typer.Typer) -> None:
    """Add `bcoder execute`."""
    from bcoder_core.execution import ExecutionConfig

    doc = "Execute samples in the sandbox and write one result per sample (verdict, reward, tests passed)."
    app.command("execute")(stage_command(ExecutionConfig, _run, name="execute", doc=doc, params=PARAMS))
