"""The `bcoder` command.

Each module in `jobs/` exposes ``register(app)`` that adds its commands or sub-apps. Modules keep
heavy imports (torch, transformers, boto3) inside command bodies so that `bcoder --help` and the
CPU-only evaluator image stay fast and torch-free.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="bcoder",
    help="B-Coder: value-based deep RL for program synthesis. Stages: data, sft/phi/theta training, "
    "sample, execute, annotate, rank, evaluate, pipeline, submit.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Order is the order shown in `bcoder --help`.
_MODULES = (
    "jobs.data",
    "jobs.execute",
    "jobs.evaluate",
    "jobs.train",
    "jobs.annotate",
    "jobs.sample",
    "jobs.rank",
    "jobs.value_report",
    "jobs.benchmark",
    "jobs.pipeline",
    "jobs.submit",
)


@app.callback()
def _root() -> None:
    """B-Coder: value-based deep RL for program synthesis."""


@app.command()
def version() -> None:
    """Print the bcoder version."""
    from bcoder_core import __version__

    typer.echo(__version__)


for _name in _MODULES:
    importlib.import_module(_name).register(app)


def main() -> None:
    import sys

    from bcoder_core.errors import BcoderError

    try:
        app()
    except BcoderError as exc:
        # One clear line, non-zero exit: the contract for every user-caused error.
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
