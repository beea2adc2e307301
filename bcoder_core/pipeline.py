"""The whole B-Coder method on one machine, stage by stage (DESIGN §1, issue "one command").

Every stage is the same ``bcoder`` command a Kubernetes Job runs, started here as a child process
with its inputs and its one output given as URIs under the run directory. A stage whose output is
committed (its manifest exists) is skipped, so re-running the pipeline resumes where it stopped;
training stages resume from their own ``latest`` checkpoint. Running each stage as a process keeps
memory flat (a stage's model is gone when it ends) and keeps the local path identical to the
cluster path.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bcoder_core import storage
from bcoder_core.errors import BcoderError


@dataclasses.dataclass(frozen=True, kw_only=True)
class BenchmarkSettings:
    """The built-in benchmark the pipeline generates."""

    seed: int = 0
    """Generator seed (the same seed gives byte-identical problems)."""
    n_train: int = 400
    """Training problems."""
    n_test: int = 120
    """Test problems (combinations of primitives never seen in training)."""
    n_val: int = 0
    """Validation problems, drawn like the test split and disjoint from it (0: none)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingSettings:
    """Sampling of programs from a model (DESIGN §2.8)."""

    num_samples: int = 8
    """Programs per problem (m)."""
    temperature: float = 0.8
    """Sampling temperature."""
    top_p: float = 0.95
    """Nucleus sampling mass."""
    max_new_tokens: int = 128
    """Longest program in tokens."""
    batch_size: int = 32
    """Sequences generated at once."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class StageTraining:
    """One training stage: a preset file plus overrides (the run directory fills in the URIs)."""

    config: str
    """Training preset YAML (configs/train/...)."""
    overrides: list[str] = dataclasses.field(default_factory=list)
    """Extra `key=value` overrides applied after the pipeline's own."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExecuteSettings:
    """How sampled programs are executed (DESIGN §4)."""

    workers: int = 2
    """Parallel program executions."""
    timeout: float = 4.0
    """Wall-clock limit per test, in seconds."""
    sandbox: str = "process"
    """process | bwrap | gvisor."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    """The end-to-end run: benchmark, checkpoint (sft), phi, theta, ablation, evaluation."""

    run_dir: str = "runs/demo"
    """Where every artifact of the run goes (a local directory)."""
    seed: int = 0
    """Seed for sampling and training."""
    benchmark: BenchmarkSettings = dataclasses.field(default_factory=BenchmarkSettings)
    """The generated benchmark."""
    sft: StageTraining
    """Supervised fine-tuning that makes the stand-in checkpoint."""
    phi: StageTraining
    """Phi stage (V_phi pre-training)."""
    theta: StageTraining
    """Theta stage (Q_theta fine-tuning)."""
    ablation: StageTraining | None = None
    """Theta stage trained with L_ce alone for the same steps (None: skip the ablation)."""
    train_sampling: SamplingSettings = dataclasses.field(default_factory=SamplingSettings)
    """Sampling of the checkpoint on the training split (the generated programs of the replay data)."""
    test_sampling: SamplingSettings = dataclasses.field(default_factory=SamplingSettings)
    """Sampling on the test split for evaluation."""
    execute: ExecuteSettings = dataclasses.field(default_factory=ExecuteSettings)
    """Execution of sampled programs."""
    ks: list[int] = dataclasses.field(default_factory=lambda: [1, 5])
    """pass@k values reported."""
    alpha: float = 1.0
    """Policy temperature α of A = α(ℓ − max ℓ) (paper: 1), shared by annotate, phi, theta and rank."""
    eval_split: str = "test"
    """Split the methods are sampled, ranked and evaluated on: `test`, or `val` to tune settings
    (needs benchmark.n_val > 0; its artifacts and report-val.md sit beside the test ones)."""

    def __post_init__(self) -> None:
        if self.eval_split not in ("test", "val"):
            raise BcoderError(f"eval_split must be test or val (got {self.eval_split!r})")
        if self.eval_split == "val" and self.benchmark.n_val < 1:
            raise BcoderError("eval_split=val needs benchmark.n_val > 0")


def eval_paths(cfg: PipelineConfig) -> tuple[str, str]:
    """(file-name prefix of the evaluated split's samples/results, its evaluation directory)."""
    run = cfg.run_dir.rstrip("/")
    if cfg.eval_split == "test":
        return "test", f"{run}/eval"
    return cfg.eval_split, f"{run}/eval-{cfg.eval_split}"


@dataclasses.dataclass(frozen=True)
class Stage:
    """One step of the pipeline: a `bcoder` command line and the URI it commits."""

    name: str
    argv: list[str]
    output: str


def _committed(uri: str) -> bool:
    return storage.exists(uri)


def plan(cfg: PipelineConfig) -> list[Stage]:
    """The ordered stages of a run (pure: builds command lines, runs nothing)."""
    run = cfg.run_dir.rstrip("/")
    bench = f"{run}/benchmark"
    train_p, test_p = f"{run}/problems/train.jsonl", f"{run}/problems/test.jsonl"
    sft, phi, theta = f"{run}/sft", f"{run}/phi", f"{run}/theta"
    ckpt, phi_model, theta_model = f"{sft}/final", f"{phi}/final", f"{theta}/final"
    ex = cfg.execute
    exec_opts = ["--workers", str(ex.workers), "--timeout", str(ex.timeout), "--sandbox", ex.sandbox]

    def sample(model: str, problems: str, out: str, s: SamplingSettings) -> list[str]:
        return [
            "sample",
            "--model",
            model,
            "--problems",
            problems,
            "--out",
            out,
            "--num-samples",
            str(s.num_samples),
            "--temperature",
            str(s.temperature),
            "--top-p",
            str(s.top_p),
            "--max-new-tokens",
            str(s.max_new_tokens),
            "--batch-size",
            str(s.batch_size),
            "--seed",
            str(cfg.seed),
        ]

    def train(stage: str, t: StageTraining, output: str, extra: Sequence[str]) -> list[str]:
        return [
            "train",
            stage,
            "--config",
            t.config,
            f"output={output}",
            f"seed={cfg.seed}",
            *extra,
            *t.overrides,
        ]

    b = cfg.benchmark
    stages = [
        Stage(
            "benchmark",
            [
                "benchmark",
                "generate",
                "--out",
                bench,
                "--seed",
                str(b.seed),
                "--n-train",
                str(b.n_train),
                "--n-test",
                str(b.n_test),
                *(["--n-val", str(b.n_val)] if b.n_val else []),
            ],
            bench,
        ),
        Stage(
            "prepare-train",
            ["data", "prepare", "apps", "--name", "builtin", "--source", f"{bench}/train", "--out", train_p],
            train_p,
        ),
        Stage(
            "prepare-test",
            ["data", "prepare", "apps", "--name", "builtin", "--source", f"{bench}/test", "--out", test_p],
            test_p,
        ),
    ]
    if b.n_val:
        val_p = f"{run}/problems/val.jsonl"
        stages.append(
            Stage(
                "prepare-val",
                ["data", "prepare", "apps", "--name", "builtin", "--source", f"{bench}/val", "--out", val_p],
                val_p,
            )
        )
    stages += [
        Stage("sft", train("sft", cfg.sft, sft, [f"problems={train_p}"]), ckpt),
        Stage(
            "sample-train",
            sample(ckpt, train_p, f"{run}/samples/train-ckpt.jsonl", cfg.train_sampling),
            f"{run}/samples/train-ckpt.jsonl",
        ),
        Stage(
            "execute-train",
            [
                "execute",
                "--problems",
                train_p,
                "--samples",
                f"{run}/samples/train-ckpt.jsonl",
                "--out",
                f"{run}/results/train-ckpt.jsonl",
                *exec_opts,
            ],
            f"{run}/results/train-ckpt.jsonl",
        ),
        Stage(
            "annotate",
            [
                "annotate",
                "--model",
                ckpt,
                "--problems",
                train_p,
                "--samples",
                f"{run}/samples/train-ckpt.jsonl",
                "--results",
                f"{run}/results/train-ckpt.jsonl",
                "--out",
                f"{run}/transitions",
                "--alpha",
                str(cfg.alpha),
            ],
            f"{run}/transitions",
        ),
        Stage(
            "phi",
            train("phi", cfg.phi, phi, [f"transitions={run}/transitions", f"model.init={ckpt}"]),
            phi_model,
        ),
        Stage(
            "annotate-phi",
            [
                "annotate",
                "--model",
                ckpt,
                "--phi",
                phi_model,
                "--problems",
                train_p,
                "--samples",
                f"{run}/samples/train-ckpt.jsonl",
                "--results",
                f"{run}/results/train-ckpt.jsonl",
                "--out",
                f"{run}/transitions-phi",
                "--alpha",
                str(cfg.alpha),
            ],
            f"{run}/transitions-phi",
        ),
        Stage(
            "theta",
            train(
                "theta",
                cfg.theta,
                theta,
                [
                    f"transitions={run}/transitions-phi",
                    f"phi={phi_model}",
                    f"model.init={ckpt}",
                    f"alpha={cfg.alpha}",
                ],
            ),
            theta_model,
        ),
    ]
    # method -> (the model that samples, the θ whose learned reward R̃ ranks its samples). The checkpoint's
    # own samples are ranked by B-Coder's R̃ (paper Table 3); the ablation ranks with its own θ.
    methods = {"ckpt": (ckpt, theta_model), "bcoder": (theta_model, theta_model)}
    if cfg.ablation is not None:
        abl = f"{run}/theta-ce"
        stages.append(
            Stage(
                "theta-ce",
                train(
                    "theta",
                    cfg.ablation,
                    abl,
                    [
                        f"transitions={run}/transitions-phi",
                        f"phi={phi_model}",
                        f"model.init={ckpt}",
                        f"alpha={cfg.alpha}",
                    ],
                ),
                f"{abl}/final",
            )
        )
        methods["ce-only"] = (f"{abl}/final", f"{abl}/final")
    split, ev = eval_paths(cfg)
    eval_p = f"{run}/problems/{split}.jsonl"
    for method, (model, ranker) in methods.items():
        tag = method if split == "test" else f"{split}-{method}"  # stage names of the test split unchanged
        raw = f"{run}/samples/{split}-{method}.jsonl"
        ranked = f"{run}/samples/{split}-{method}-ranked.jsonl"
        results = f"{run}/results/{split}-{method}.jsonl"
        example = f"{run}/results/{split}-{method}-example.jsonl"
        stages += [
            Stage(f"sample-{split}-{method}", sample(model, eval_p, raw, cfg.test_sampling), raw),
            # Every method's samples are scored by B-Coder's learned reward (paper Table 3 for the ckpt).
            Stage(
                f"rank-{tag}",
                [
                    "rank",
                    "--model",
                    ranker,
                    "--phi",
                    phi_model,
                    "--problems",
                    eval_p,
                    "--samples",
                    raw,
                    "--out",
                    ranked,
                ],
                ranked,
            ),
            Stage(
                f"execute-{split}-{method}",
                [
                    "execute",
                    "--problems",
                    eval_p,
                    "--samples",
                    ranked,
                    "--out",
                    results,
                    *exec_opts,
                ],
                results,
            ),
            Stage(
                f"execute-example-{tag}",
                [
                    "execute",
                    "--problems",
                    eval_p,
                    "--samples",
                    ranked,
                    "--tests",
                    "example",
                    "--out",
                    example,
                    *exec_opts,
                ],
                example,
            ),
            Stage(
                f"evaluate-{tag}",
                [
                    "evaluate",
                    "--problems",
                    eval_p,
                    "--results",
                    results,
                    "--samples",
                    ranked,
                    "--example-results",
                    example,
                    "--k",
                    ",".join(map(str, cfg.ks)),
                    "--out-json",
                    f"{ev}/{method}.json",
                    "--out-md",
                    f"{ev}/{method}.md",
                ],
                f"{ev}/{method}.json",
            ),
        ]
    return stages


def run(cfg: PipelineConfig, *, echo: Callable[[str], None] = print, only: Sequence[str] = ()) -> list[str]:
    """Run every stage not yet committed, in order; returns the names of the stages that ran."""
    stages = plan(cfg)
    known = {s.name for s in stages}
    unknown = sorted(set(only) - known)
    if unknown:
        raise BcoderError(
            f"unknown stage(s) {', '.join(unknown)}; stages are: {', '.join(s.name for s in stages)}"
        )
    Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    ran: list[str] = []
    timings: dict[str, float] = {}
    for i, stage in enumerate(stages, 1):
        head = f"[{i:>2}/{len(stages)}] {stage.name}"
        if only and stage.name not in only:
            continue
        if _committed(stage.output):
            echo(f"{head}: committed, skipped ({stage.output})")
            continue
        argv = [sys.executable, "-m", "jobs.cli", *stage.argv]
        echo(f"{head}: bcoder {shlex.join(stage.argv)}")
        t0 = time.perf_counter()
        proc = subprocess.run(argv, check=False)
        timings[stage.name] = time.perf_counter() - t0
        if proc.returncode != 0:
            raise BcoderError(
                f"stage {stage.name} failed (exit {proc.returncode}); re-run the pipeline to resume from it"
            )
        if not _committed(stage.output):
            raise BcoderError(f"stage {stage.name} exited 0 but did not commit {stage.output}")
        echo(f"{head}: done in {timings[stage.name]:.0f}s")
        ran.append(stage.name)
    _write_timings(cfg, timings)
    return ran


def _write_timings(cfg: PipelineConfig, timings: dict[str, float]) -> None:
    path = Path(cfg.run_dir) / "timings.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    old.update({k: round(v, 1) for k, v in timings.items()})
    path.write_text(json.dumps(old, indent=1) + "\n")
