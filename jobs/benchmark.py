"""`bcoder benchmark generate`: write the built-in benchmark in the APPS folder layout."""

from __future__ import annotations

import dataclasses

import typer

from jobs.options import Param, stage_command


def _run(cfg, *, out: str) -> None:
    from bcoder_core import storage
    from bcoder_core.benchmark import write_benchmark

    storage.check_output(out, kind="benchmark")
    config = {k: v for k, v in dataclasses.asdict(cfg).items() if k in type(cfg).CLI_FLAGS}
    with storage.output_path(out, kind="benchmark", config=config) as path:
        info = write_benchmark(cfg, path)
    counts = info["counts"]
    val = f" and {counts['val']['problems']} validation" if "val" in counts else ""
    typer.echo(
        f"wrote {counts['train']['problems']} train, {counts['test']['problems']} test{val} problems "
        f"({info['name']}, seed {cfg.seed}) to {out}"
    )


def register(app: typer.Typer) -> None:
    """Add `bcoder benchmark generate`."""
    from bcoder_core.benchmark import BenchmarkConfig

    bench_app = typer.Typer(
        help="The built-in benchmark: seeded program-synthesis problems in the APPS folder layout "
        "(docs/benchmark.md).",
        no_args_is_help=True,
    )
    bench_app.command("generate")(
        stage_command(
            BenchmarkConfig,
            _run,
            name="generate",
            doc="Generate the benchmark; load it with `bcoder data prepare apps --source OUT --name bcoder-bench`.",
            params=[
                Param(
                    "out",
                    ("--out",),
                    "Folder (or s3:// prefix) to write: train/NNNN/..., test/NNNN/..., benchmark.json.",
                    required=True,
                )
            ],
        )
    )
    app.add_typer(bench_app, name="benchmark")
