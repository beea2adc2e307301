"""`bcoder sample`: m programs per problem from a model (DESIGN §2.8). Settings: ``SamplingConfig``."""

from __future__ import annotations

import sys

import typer

from jobs.options import Flag, Param, stage_command
from jobs.params import PROBLEMS, PROGRESS, SHARD

MODEL = Param("model", ("--model",), "θ (or any T5 or causal-LM checkpoint) directory or URI.", required=True)
OUT = Param("out", ("--out",), "Samples JSONL to write (URI).", required=True)


def _run(cfg, **io) -> None:
    from bcoder_core import telemetry
    from bcoder_core.rl.sampling import run_sample

    with telemetry.stage_run("sample"):
        n = run_sample(cfg=cfg, **io)
    print(f"sample: wrote {n} samples to {io['out']}", file=sys.stderr)


def register(app: typer.Typer) -> None:
    """Add `bcoder sample`."""
    from bcoder_core.rl.configs import SamplingConfig

    doc = "Sample m programs per problem from π_θ = softmax(ℓ_θ/T) with top-p (DESIGN §2.8)."
    flags = [Flag("num_samples", ("--num-samples", "-m"))]
    params = [MODEL, PROBLEMS, OUT, SHARD, PROGRESS]
    app.command("sample")(
        stage_command(SamplingConfig, _run, name="sample", doc=doc, params=params, flags=flags)
    )
