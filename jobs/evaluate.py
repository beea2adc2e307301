"""`bcoder evaluate`: pass@k tables (unranked, ranked, filtered) from execution results."""

from __future__ import annotations

import typer

from jobs.options import Flag, Param, stage_command
from jobs.params import PROBLEMS

PARAMS = [
    PROBLEMS,
    Param("results", ("--results",), "Results of executing the samples on the hidden tests.", required=True),
    Param(
        "samples", ("--samples",), "Samples file: expected sample counts, sample order and scores (ranking)."
    ),
    Param(
        "example_results",
        ("--example-results",),
        "Results of the same samples on the example tests (bcoder execute --tests example): "
        "enables the filtered protocol.",
    ),
    Param("out_json", ("--out-json",), "Write the JSON report here."),
    Param("out_md", ("--out-md",), "Write the Markdown report here."),
]


def _run(cfg, **io) -> None:
    from bcoder_core.evaluation import run_evaluate

    typer.echo(run_evaluate(cfg=cfg, **io), nl=False)


def _parse_ks(text: str) -> list[int]:
    from bcoder_core.evaluation import parse_ks

    return parse_ks(text)


def register(app: typer.Typer) -> None:
    """Add `bcoder evaluate`."""
    from bcoder_core.evaluation import EvaluateConfig

    doc = "Compute pass@k per difficulty and overall, with bootstrap CIs, and print the Markdown table."
    flags = [Flag("ks", ("--k",), parse=_parse_ks, help="Comma-separated k values.")]
    app.command("evaluate")(
        stage_command(EvaluateConfig, _run, name="evaluate", doc=doc, params=PARAMS, flags=flags)
    )
