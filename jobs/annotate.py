"""`bcoder annotate`: the frozen models' per-token columns for the training stages (DESIGN §2.6)."""

from __future__ import annotations

import dataclasses
import sys

import typer

from jobs.options import Flag, Param, stage_command
from jobs.params import PHI, PROBLEMS, PROGRESS, SAMPLES, SHARD

_DOC = """Annotate programs with the frozen models' per-token columns (DESIGN §2.6).

Ground-truth programs (reward +1) and generated programs (reward from --results) are
tokenised and passed once, teacher-forced, through θ_ckpt (and φ with --phi); the store holds
ckpt_adv = A_ckpt(s_t, a_t), ckpt_greedy = argmax ℓ_ckpt(s_t, ·) and optionally v_phi = u_φ(s_t).
"""
PARAMS = [
    Param(
        "model",
        ("--model",),
        "The frozen checkpoint θ_ckpt (a T5 or causal-LM directory or URI).",
        required=True,
    ),
    dataclasses.replace(PHI, help="A trained φ (adds the v_phi column).", required=False),
    PROBLEMS,
    dataclasses.replace(SAMPLES, help="Generated programs (samples JSONL).", required=False),
    Param("results", ("--results",), "Their execution results (JSONL)."),
    Param(
        "out",
        ("--out",),
        "Where to write the transition store (URI); with --shard I/N, its part .../part-I-of-N.",
        required=True,
    ),
    SHARD,
    Param(
        "columns_from",
        ("--columns-from",),
        "A store of the same programs annotated before with the same --model: copy its ckpt_adv "
        "and ckpt_greedy instead of running θ_ckpt again (with --phi only φ runs).",
    ),
    PROGRESS,
]
NO_GROUND_TRUTH = Flag(
    "ground_truth", ("--no-ground-truth",), sets=False, help="Leave out the reference solutions."
)


def _run(cfg, **io) -> None:
    from bcoder_core import telemetry
    from bcoder_core.rl.annotate import run_annotate

    with telemetry.stage_run("annotate"):
        print(run_annotate(cfg=cfg, **io).line(), file=sys.stderr)


def register(app: typer.Typer) -> None:
    """Add `bcoder annotate`."""
    from bcoder_core.rl.configs import AnnotateConfig

    command = stage_command(
        AnnotateConfig, _run, name="annotate", doc=_DOC, params=PARAMS, flags=[NO_GROUND_TRUTH]
    )
    app.command("annotate")(command)
