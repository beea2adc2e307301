"""`bcoder annotate`, `bcoder sample`, `bcoder rank`: the stages that run a model over programs.

Heavy imports (torch, transformers) stay inside the command bodies.
"""

from __future__ import annotations

import sys

import typer


def annotate(
    model: str = typer.Option(..., "--model", help="The frozen checkpoint θ_ckpt (T5 directory or URI)."),
    phi: str | None = typer.Option(None, "--phi", help="A trained φ (adds the v_phi column)."),
    problems: str = typer.Option(..., "--problems", help="Problem set (JSONL file, directory or URI)."),
    samples: str | None = typer.Option(None, "--samples", help="Generated programs (samples JSONL)."),
    results: str | None = typer.Option(None, "--results", help="Their execution results (JSONL)."),
    no_ground_truth: bool = typer.Option(
        False, "--no-ground-truth", help="Leave out the problems' reference solutions."
    ),
    out: str = typer.Option(..., "--out", help="Where to write the transition store (URI)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Programs per teacher-forced pass."),
    max_source_tokens: int = typer.Option(600, "--max-source-tokens", help="Prompt token limit."),
    max_target_tokens: int = typer.Option(
        512, "--max-target-tokens", help="Program token limit (EOS included); longer programs are dropped."
    ),
    shard_size: int = typer.Option(4096, "--shard-size", help="Programs per store shard."),
    alpha: float = typer.Option(
        1.0, "--alpha", help="Policy temperature α of ckpt_adv = α(ℓ − max ℓ); theta must use the same."
    ),
    tokenizer: str | None = typer.Option(
        None, "--tokenizer", help="Tokenizer name or directory (default: the checkpoint's, else codet5)."
    ),
    device: str | None = typer.Option(None, "--device", help="cuda, cpu, cuda:1 ... (default: auto)."),
    dtype: str = typer.Option(
        "fp32", "--dtype", help="fp32, or bf16 (autocast; GPU), or auto (bf16 on GPU)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Annotate programs with the frozen models' per-token columns (DESIGN §2.6).

    Ground-truth programs (reward +1) and generated programs (reward from --results) are
    tokenised and passed once, teacher-forced, through θ_ckpt (and φ with --phi); the store holds
    ckpt_adv = A_ckpt(s_t, a_t), ckpt_greedy = argmax ℓ_ckpt(s_t, ·) and optionally v_phi = u_φ(s_t).
    """
    from bcoder_core.errors import BcoderError
    from bcoder_core.rl.annotate import AnnotateConfig, run_annotate

    if (samples is None) != (results is None):
        raise BcoderError("annotate: --samples and --results go together")
    cfg = AnnotateConfig(
        batch_size=batch_size,
        max_source_tokens=max_source_tokens,
        max_target_tokens=max_target_tokens,
        ground_truth=not no_ground_truth,
        shard_size=shard_size,
        alpha=alpha,
    )
    summary = run_annotate(
        model=model,
        phi=phi,
        problems=problems,
        samples=samples,
        results=results,
        out=out,
        cfg=cfg,
        tokenizer=tokenizer,
        device=device,
        dtype=dtype,
        progress=progress,
    )
    print(summary.line(), file=sys.stderr)


def sample(
    model: str = typer.Option(..., "--model", help="θ (or any T5 checkpoint) directory or URI."),
    problems: str = typer.Option(..., "--problems", help="Problem set (JSONL file, directory or URI)."),
    out: str = typer.Option(..., "--out", help="Samples JSONL to write (URI)."),
    num_samples: int = typer.Option(1, "--num-samples", "-m", help="Programs per problem (m)."),
    temperature: float = typer.Option(0.6, "--temperature", help="Softmax temperature (0: greedy)."),
    top_p: float = typer.Option(0.95, "--top-p", help="Nucleus sampling mass."),
    max_new_tokens: int = typer.Option(512, "--max-new-tokens", help="Longest program in tokens."),
    max_source_tokens: int = typer.Option(600, "--max-source-tokens", help="Prompt token limit."),
    batch_size: int = typer.Option(32, "--batch-size", help="Programs decoded together."),
    shard: str | None = typer.Option(
        None, "--shard", help="I/N: only problems whose index is I mod N (Indexed Jobs)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed; each (problem, sample) has its own stream."),
    tokenizer: str | None = typer.Option(
        None, "--tokenizer", help="Tokenizer name or directory (default: the checkpoint's, else codet5)."
    ),
    device: str | None = typer.Option(None, "--device", help="cuda, cpu, cuda:1 ... (default: auto)."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on GPU, fp32 on CPU), fp32, bf16, fp16."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Sample m programs per problem from π_θ = softmax(ℓ_θ/T) with top-p (DESIGN §2.8)."""
    from bcoder_core.rl.sampling import SamplingConfig, run_sample

    cfg = SamplingConfig(
        num_samples=num_samples,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed,
        max_source_tokens=max_source_tokens,
    )
    n = run_sample(
        model,
        problems,
        out,
        cfg,
        shard=shard,
        tokenizer=tokenizer,
        device=device,
        dtype=dtype,
        progress=progress,
    )
    print(f"sample: wrote {n} samples to {out}", file=sys.stderr)


def rank(
    model: str = typer.Option(..., "--model", help="θ directory or URI (train theta's output)."),
    phi: str = typer.Option(..., "--phi", help="φ directory or URI (train phi's output)."),
    problems: str = typer.Option(..., "--problems", help="Problem set (JSONL file, directory or URI)."),
    samples: str = typer.Option(..., "--samples", help="Samples JSONL from any model."),
    out: str = typer.Option(..., "--out", help="Samples JSONL with a `score` field (URI)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Programs per teacher-forced pass."),
    gamma: float = typer.Option(0.999, "--gamma", help="Discount γ of r̃ = Q − γ·V(s')."),
    alpha: float | None = typer.Option(
        None, "--alpha", help="Policy temperature α (default: the one θ was trained with)."
    ),
    max_source_tokens: int = typer.Option(600, "--max-source-tokens", help="Prompt token limit."),
    max_target_tokens: int = typer.Option(
        1024,
        "--max-target-tokens",
        help="Programs longer than this (EOS included) are scored on their first tokens and flagged.",
    ),
    tokenizer: str | None = typer.Option(
        None, "--tokenizer", help="Tokenizer name or directory (default: the checkpoint's, else codet5)."
    ),
    device: str | None = typer.Option(None, "--device", help="cuda, cpu, cuda:1 ... (default: auto)."),
    dtype: str = typer.Option(
        "fp32", "--dtype", help="fp32, or bf16 (autocast; GPU), or auto (bf16 on GPU)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Score every sample with the learned reward R̃(W) = Σ_t r̃_θ(s_t, a_t) (DESIGN §2.8).

    One batched teacher-forced pass of θ and φ per batch; each sample keeps all its fields and gets
    `score`. Works on samples of any model (paper Table 3).
    """
    from bcoder_core.rl.ranking import RankConfig, run_rank

    cfg = RankConfig(
        batch_size=batch_size,
        gamma=gamma,
        alpha=alpha,
        max_source_tokens=max_source_tokens,
        max_target_tokens=max_target_tokens,
    )
    summary = run_rank(
        model=model,
        phi=phi,
        problems=problems,
        samples=samples,
        out=out,
        cfg=cfg,
        tokenizer=tokenizer,
        device=device,
        dtype=dtype,
        progress=progress,
    )
    print(summary.line(), file=sys.stderr)


def value_report(
    transitions: str = typer.Option(
        ..., "--transitions", help="A store annotated with --phi (and --samples/--results)."
    ),
) -> None:
    """How well V_φ separates passing from failing programs of the same problem (within-problem AUC).

    Prints the AUC of V_φ at the last state, of its mean over the program, and of the checkpoint's
    Σ A_ckpt for comparison; 0.5 is chance. Ranking and L_Q help only where V_φ is above chance.
    """
    from bcoder_core import storage
    from bcoder_core.rl.diagnostics import value_discrimination
    from bcoder_core.rl.transitions import open_store

    r = value_discrimination(open_store(storage.input_path(transitions)))
    typer.echo(
        f"{r['generated_programs']} generated programs, {r['mixed_problems']} problems with passing and "
        f"failing ones; within-problem AUC: V_phi(last state) {r['v_last']:.3f}, "
        f"mean V_phi {r['v_mean']:.3f}, sum A_ckpt {r['sum_ckpt_adv']:.3f}"
    )


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("annotate")(annotate)
    app.command("sample")(sample)
    app.command("rank")(rank)
    app.command("value-report")(value_report)
