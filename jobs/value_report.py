"""`bcoder value-report`: how well V_φ separates passing from failing programs of one problem."""

from __future__ import annotations

import typer


def value_report(
    transitions: str = typer.Option(
        ..., "--transitions", help="A store annotated with --phi (and --samples/--results)."
    ),
) -> None:
    """How well V_φ separates passing from failing programs of the same problem (within-problem AUC).

    Prints the AUC of V_φ at the last state, of its mean over the program, and of the checkpoint's
    Σ A_ckpt for comparison; 0.5 is chance. Ranking and L_Q help only where V_φ is above chance.
    """
    from bcoder_core.rl.diagnostics import value_discrimination
    from bcoder_core.rl.transitions import open_store

    r = value_discrimination(open_store(transitions))
    typer.echo(
        f"{r['generated_programs']} generated programs, {r['mixed_problems']} problems with passing and "
        f"failing ones; within-problem AUC: V_phi(last state) {r['v_last']:.3f}, "
        f"mean V_phi {r['v_mean']:.3f}, sum A_ckpt {r['sum_ckpt_adv']:.3f}"
    )


def register(app: typer.Typer) -> None:
    """Add `bcoder value-report`."""
    app.command("value-report")(value_report)
