"""`bcoder rank`: every sample scored with the learned reward R̃ (DESIGN §2.8). Settings: ``RankConfig``."""

from __future__ import annotations

import sys

import typer

from jobs.options import Param, stage_command
from jobs.params import PHI, PROBLEMS, PROGRESS, SAMPLES, SHARD

_DOC = """Score every sample with the learned reward R̃(W) = Σ_t r̃_θ(s_t, a_t) (DESIGN §2.8).

One batched teacher-forced pass of θ and φ per batch; each sample keeps all its fields and gets
`score`. Works on samples of any model (paper Table 3).
"""
MODEL = Param("model", ("--model",), "θ directory or URI (train theta's output).", required=True)
OUT = Param("out", ("--out",), "Samples JSONL with a `score` field (URI).", required=True)


def _run(cfg, **io) -> None:
    from bcoder_core import telemetry
    from bcoder_core.rl.ranking import run_rank

    with telemetry.stage_run("rank"):
        print(run_rank(cfg=cfg, **io).line(), file=sys.stderr)


def register(app: typer.Typer) -> None:
    """Add `bcoder rank`."""
    from bcoder_core.rl.configs import RankConfig

    params = [MODEL, PHI, PROBLEMS, SAMPLES, OUT, SHARD, PROGRESS]
    app.command("rank")(stage_command(RankConfig, _run, name="rank", doc=_DOC, params=params))
