"""`bcoder evaluate`: pass@k tables (unranked, ranked, filtered) from execution results."""

from __future__ import annotations

import typer


def _parse_ks(text: str) -> list[int]:
    from bcoder_core.errors import BcoderError

    try:
        ks = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise BcoderError(f"--k {text!r}: expected comma-separated positive integers, e.g. 1,5") from None
    if not ks or any(k < 1 for k in ks):
        raise BcoderError(f"--k {text!r}: expected comma-separated positive integers, e.g. 1,5")
    return ks


def _manifest_config(uri: str) -> dict:
    """The ``config`` recorded in the manifest of the artifact at ``uri`` ({} when there is none)."""
    from bcoder_core import storage
    from bcoder_core.errors import BcoderError

    read = getattr(storage, "read_manifest", None)
    if read is None:
        return {}
    try:
        config = read(uri).get("config")
    except BcoderError:
        return {}
    return config if isinstance(config, dict) else {}


def _check_tests_kind(uri: str, option: str, expected: str) -> dict:
    from bcoder_core.errors import BcoderError

    config = _manifest_config(uri)
    if config.get("tests") not in (None, expected):
        raise BcoderError(
            f"{option} {uri}: these results were run on the {config['tests']} tests, not the {expected} tests"
        )
    return config


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""

    @app.command("evaluate")
    def evaluate_cmd(
        problems: str = typer.Option(..., "--problems", help="Problem set (JSONL file or folder of shards)."),
        results: str = typer.Option(
            ..., "--results", help="Results of executing the samples on the hidden tests."
        ),
        samples: str | None = typer.Option(
            None, "--samples", help="Samples file: expected sample counts, sample order and scores (ranking)."
        ),
        example_results: str | None = typer.Option(
            None,
            "--example-results",
            help="Results of the same samples on the example tests (bcoder execute --tests example): "
            "enables the filtered protocol.",
        ),
        k: str = typer.Option("1,5", "--k", help="Comma-separated k values."),
        n_samples: int | None = typer.Option(
            None, "--n-samples", help="Expected samples per problem when no samples file is given."
        ),
        split: str | None = typer.Option(None, "--split", help="Evaluate only the problems of this split."),
        bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the CIs (0: none)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
        out_json: str | None = typer.Option(None, "--out-json", help="Write the JSON report here."),
        out_md: str | None = typer.Option(None, "--out-md", help="Write the Markdown report here."),
    ) -> None:
        """Compute pass@k per difficulty and overall, with bootstrap CIs, and print the Markdown table."""
        import json

        from bcoder_core import storage
        from bcoder_core.errors import BcoderError
        from bcoder_core.evaluation import evaluate, read_jsonl_records, render_markdown
        from bcoder_core.problems import read_problems

        ks = _parse_ks(k)
        results_config = _check_tests_kind(results, "--results", "hidden")
        if example_results:
            _check_tests_kind(example_results, "--example-results", "example")
        problem_list = read_problems(storage.input_path(problems))
        if split is not None:
            problem_list = [p for p in problem_list if p.split == split]
            if not problem_list:
                raise BcoderError(f"{problems}: no problems of split {split!r}")
            ids = {p.id for p in problem_list}
        result_records = read_jsonl_records(storage.input_path(results), "results")
        sample_records = read_jsonl_records(storage.input_path(samples), "samples") if samples else None
        example_records = (
            read_jsonl_records(storage.input_path(example_results), "example results")
            if example_results
            else None
        )
        if split is not None:
            result_records = [r for r in result_records if str(r.get("problem_id")) in ids]
            if sample_records is not None:
                sample_records = [s for s in sample_records if str(s.get("problem_id")) in ids]
            if example_records is not None:
                example_records = [r for r in example_records if str(r.get("problem_id")) in ids]
        report = evaluate(
            problem_list,
            result_records,
            sample_records,
            ks,
            example_results=example_records,
            n_samples=n_samples,
            bootstrap=bootstrap,
            seed=seed,
            compare_mode=results_config.get("compare"),
        )
        report["inputs"] = {
            "problems": problems,
            "results": results,
            "samples": samples,
            "example_results": example_results,
            "split": split,
        }
        markdown = render_markdown(report)
        if out_json:
            with storage.output_path(out_json, kind="evaluation") as path:
                target = path / "report.json" if path.is_dir() else path
                target.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        if out_md:
            with storage.output_path(out_md, kind="evaluation") as path:
                target = path / "report.md" if path.is_dir() else path
                target.write_text(markdown, encoding="utf-8")
        typer.echo(markdown, nl=False)
