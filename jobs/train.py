"""`bcoder train sft|phi|theta`: the training stages (DESIGN §2.4, §2.5, §5).

Each command takes a YAML config (``configs/train/*.yaml``) plus ``key.sub=value`` overrides and
runs one explicit training loop (``bcoder_core/train/``). Under ``torchrun --standalone
--nproc_per_node=N bcoder train theta ...`` the same command trains with DDP. A job restarted with
the same output resumes from its ``latest`` checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import typer

_CONFIG_HELP = "YAML config file (see configs/train/); `bcoder train STAGE --show-config` lists every key."
_OVERRIDES_HELP = (
    "Overrides as key.sub=value (values parsed as YAML scalars), e.g. optim.lr=3e-5 max_steps=100."
)


def _run(stage: str, config: Path | None, overrides: list[str] | None, show_config: bool) -> None:
    from bcoder_core.config import STAGE_CONFIGS, describe_config, load_config

    cls = STAGE_CONFIGS[stage]
    if show_config and config is None and not overrides:
        # The documented defaults: what every key means, <required> where a value must be given.
        typer.echo(describe_config(cls))
        return
    cfg = load_config(cls, config, overrides or [])
    if show_config:
        typer.echo(describe_config(cls, cfg))
        return
    if stage == "sft":
        from bcoder_core.train.sft import train_sft as train
    elif stage == "phi":
        from bcoder_core.train.phi import train_phi as train
    else:
        from bcoder_core.train.theta import train_theta as train
    result = train(cfg)
    typer.echo(result.final)


def _make_command(stage: str, doc: str):
    def command(
        overrides: list[str] | None = typer.Argument(None, help=_OVERRIDES_HELP, show_default=False),
        config: Path | None = typer.Option(None, "--config", "-c", help=_CONFIG_HELP, show_default=False),
        show_config: bool = typer.Option(
            False, "--show-config", help="Print the resolved config with each key's documentation and exit."
        ),
    ) -> None:
        _run(stage, config, overrides, show_config)

    command.__doc__ = doc
    command.__name__ = stage
    return command


def register(app: typer.Typer) -> None:
    """Add the `train` group to the root app."""
    train = typer.Typer(
        name="train",
        help="Train a stage: sft (stand-in checkpoint), phi (V_phi), theta (Q_theta).",
        no_args_is_help=True,
    )
    train.command("sft")(
        _make_command(
            "sft",
            "Supervised fine-tuning of a model (T5 or causal LM) on (prompt, solution) pairs: the stand-in checkpoint.\n\n"
            "Example: bcoder train sft --config configs/train/sft-tiny.yaml output=runs/sft",
        )
    )
    train.command("phi")(
        _make_command(
            "phi",
            "Pre-train V_phi with the conservative TD loss on an annotated transition store.\n\n"
            "Example: bcoder train phi --config configs/train/phi-apps.yaml transitions=s3://b/store",
        )
    )
    train.command("theta")(
        _make_command(
            "theta",
            "Fine-tune Q_theta (L_Q + beta_adv L_adv + beta_ce L_ce) on a store annotated with phi.\n\n"
            "Example: bcoder train theta --config configs/train/theta-apps.yaml max_steps=10000",
        )
    )
    app.add_typer(train)
