"""`bcoder benchmark generate`: write the built-in benchmark in the APPS folder layout."""

from __future__ import annotations

import typer

DEMO_N_TRAIN = 1000
DEMO_N_TEST = 300


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    bench_app = typer.Typer(
        help="The built-in benchmark: seeded program-synthesis problems in the APPS folder layout "
        "(docs/benchmark.md).",
        no_args_is_help=True,
    )

    @bench_app.command("generate")
    def generate(
        out: str = typer.Option(
            ...,
            "--out",
            help="Folder (or s3:// prefix) to write: train/NNNN/..., test/NNNN/..., benchmark.json.",
        ),
        seed: int = typer.Option(
            0, "--seed", help="Seed of everything; the same seed gives identical bytes."
        ),
        n_train: int = typer.Option(DEMO_N_TRAIN, "--n-train", help="Number of training problems."),
        n_test: int = typer.Option(DEMO_N_TEST, "--n-test", help="Number of test problems."),
        n_val: int = typer.Option(
            0,
            "--n-val",
            help="Validation problems (val/NNNN/..., drawn like test, disjoint from it): tune on these.",
        ),
        n_hidden: int = typer.Option(
            6, "--n-hidden", help="Hidden tests per problem besides the examples (>= 5)."
        ),
        n_examples: int = typer.Option(
            1, "--n-examples", help="Example tests shown in each statement (1 or 2)."
        ),
    ) -> None:
        """Generate the benchmark; load it with `bcoder data prepare apps --source OUT --name bcoder-bench`."""
        from bcoder_core import storage
        from bcoder_core.benchmark import BenchmarkConfig, write_benchmark

        cfg = BenchmarkConfig(
            seed=seed,
            n_train=n_train,
            n_test=n_test,
            n_val=n_val,
            n_hidden=n_hidden,
            n_examples=n_examples,
        )
        config = {
            "seed": seed,
            "n_train": n_train,
            "n_test": n_test,
            "n_val": n_val,
            "n_hidden": n_hidden,
            "n_examples": n_examples,
        }
        with storage.output_path(out, kind="benchmark", config=config) as path:
            info = write_benchmark(cfg, path)
        counts = info["counts"]
        val = f" and {counts['val']['problems']} validation" if "val" in counts else ""
        typer.echo(
            f"wrote {counts['train']['problems']} train, {counts['test']['problems']} test{val} problems "
            f"({info['name']}, seed {seed}) to {out}"
        )

    app.add_typer(bench_app, name="benchmark")
