"""The whole B-Coder method on one machine, stage by stage (DESIGN §1, issue "one command").

Every stage is the same ``bcoder`` command a Kubernetes Job runs, started here as a child process
with its inputs and its one output given as URIs under the run directory. The run description
(:class:`PipelineConfig`) embeds each stage's own config class (the one its command loads), and
:func:`plan` renders them onto the command lines with :func:`bcoder_core.config.to_argv`, so any
executor (this one, a cluster workflow) runs the same stages from the same data. A stage whose output is
committed (its manifest exists and its files still match it: ``verify``) is skipped, so re-running the
pipeline resumes where it stopped;
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
from bcoder_core.benchmark import BenchmarkConfig
from bcoder_core.config import to_argv
from bcoder_core.errors import ArtifactCorrupt, ArtifactNotFound, BcoderError, check
from bcoder_core.evaluation import EvaluateConfig
from bcoder_core.execution import ExecutionConfig
from bcoder_core.rl.configs import AnnotateConfig, RankConfig, SamplingConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class StageTraining:
    """One training stage: a preset file plus overrides (the run directory fills in the URIs)."""

    config: str
    """Training preset YAML (configs/train/...)."""
    overrides: list[str] = dataclasses.field(default_factory=list)
    """Extra `key=value` overrides applied after the pipeline's own."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class PipelineConfig:
    """The end-to-end run: benchmark, checkpoint (sft), phi, theta, ablation, evaluation.

    Each stage's section is that stage command's own config (``bcoder sample --show-config`` lists
    the keys of ``train_sampling`` and ``test_sampling``, and so on). ``seed`` and ``alpha`` are the
    run's: they replace the sampling seeds and annotate's α, so one value holds through a run.
    """

    run_dir: str = "runs/demo"
    """Where every artifact of the run goes (a local directory)."""
    seed: int = 0
    """Seed of the run: every sampling stage's seed and every training stage's seed."""
    benchmark: BenchmarkConfig = dataclasses.field(default_factory=BenchmarkConfig)
    """The generated benchmark (`bcoder benchmark generate`)."""
    sft: StageTraining
    """Supervised fine-tuning that makes the stand-in checkpoint."""
    phi: StageTraining
    """Phi stage (V_phi pre-training)."""
    theta: StageTraining
    """Theta stage (Q_theta fine-tuning)."""
    ablation: StageTraining | None = None
    """Theta stage trained with L_ce alone for the same steps (None: skip the ablation)."""
    train_sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    """Sampling of the checkpoint on the training split (the generated programs of the replay data)."""
    test_sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    """Sampling on the evaluated split (`bcoder sample`)."""
    execute: ExecutionConfig = dataclasses.field(default_factory=ExecutionConfig)
    """Execution of sampled programs (`bcoder execute`)."""
    annotate: AnnotateConfig = dataclasses.field(default_factory=AnnotateConfig)
    """The annotation passes (`bcoder annotate`, with and without --phi); its alpha is the run's."""
    rank: RankConfig = dataclasses.field(default_factory=RankConfig)
    """Ranking by the learned reward (`bcoder rank`)."""
    evaluate: EvaluateConfig = dataclasses.field(default_factory=EvaluateConfig)
    """pass@k evaluation (`bcoder evaluate`)."""
    alpha: float = 1.0
    """Policy temperature α of A = α(ℓ − max ℓ) (paper: 1), shared by annotate, phi, theta and rank."""
    eval_split: str = "test"
    """Split the methods are sampled, ranked and evaluated on: `test`, or `val` to tune settings
    (needs benchmark.n_val > 0; its artifacts and report-val.md sit beside the test ones)."""
    verify: str = "sizes"
    """How a committed stage output is checked before it is skipped: `sizes` (every file there with
    its manifest's size; cheap) or `sha256` (every byte read; catches same-size edits). An output
    that fails is removed and its stage runs again (`bcoder pipeline run --verify` = sha256)."""

    def __post_init__(self) -> None:
        check(self.verify in ("sizes", "sha256"), "verify", f"must be sizes or sha256 (got {self.verify!r})")
        check(
            self.eval_split in ("test", "val"), "eval_split", f"must be test or val (got {self.eval_split!r})"
        )
        check(
            self.eval_split != "val" or self.benchmark.n_val >= 1,
            "eval_split",
            "val needs benchmark.n_val > 0",
        )
        check(self.alpha > 0, "alpha", f"must be > 0 (got {self.alpha})")

    @property
    def ks(self) -> list[int]:
        """The pass@k values reported (``evaluate.ks``)."""
        return self.evaluate.ks


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


def _committed(uri: str, *, sha256: bool = False) -> str | None:
    """Why the stage output at ``uri`` must be (re)made, or None when it is committed and intact.

    Committed means a manifest whose files are still there as it lists them: sizes always, digests
    with ``sha256``. A file changed after the commit does not count as done.
    """
    if not storage.exists(uri):
        return "not committed"
    try:
        storage.verify(uri, sha256=sha256)
    except (ArtifactCorrupt, ArtifactNotFound) as exc:
        return f"changed since it was committed: {exc}"
    return None


def plan(cfg: PipelineConfig) -> list[Stage]:
    """The ordered stages of a run (pure: builds command lines, runs nothing)."""
    run = cfg.run_dir.rstrip("/")
    bench = f"{run}/benchmark"
    train_p = f"{run}/problems/train.jsonl"
    sft, phi, theta = f"{run}/sft", f"{run}/phi", f"{run}/theta"
    ckpt, phi_model, theta_model = f"{sft}/final", f"{phi}/final", f"{theta}/final"
    train_samples, train_results = f"{run}/samples/train-ckpt.jsonl", f"{run}/results/train-ckpt.jsonl"
    annotate_cfg = dataclasses.replace(cfg.annotate, alpha=cfg.alpha)

    def sample(model: str, problems: str, out: str, s: SamplingConfig) -> Stage:
        settings = to_argv(dataclasses.replace(s, seed=cfg.seed))
        return Stage("", ["sample", "--model", model, "--problems", problems, "--out", out, *settings], out)

    def execute(problems: str, samples: str, out: str, tests: str = "hidden") -> list[str]:
        settings = to_argv(dataclasses.replace(cfg.execute, tests=tests))
        return ["execute", "--problems", problems, "--samples", samples, "--out", out, *settings]

    def annotate(out: str, phi_args: Sequence[str]) -> list[str]:
        io = ["--model", ckpt, *phi_args, "--problems", train_p, "--samples", train_samples]
        return ["annotate", *io, "--results", train_results, "--out", out, *to_argv(annotate_cfg)]

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

    def prepare(split: str) -> Stage:
        out = f"{run}/problems/{split}.jsonl"
        argv = ["data", "prepare", "apps", "--name", "builtin", "--source", f"{bench}/{split}", "--out", out]
        return Stage(f"prepare-{split}", argv, out)

    splits = ["train", "test"] + (["val"] if cfg.benchmark.n_val else [])
    stages = [
        Stage("benchmark", ["benchmark", "generate", "--out", bench, *to_argv(cfg.benchmark)], bench),
        *(prepare(split) for split in splits),
        Stage("sft", train("sft", cfg.sft, sft, [f"problems={train_p}"]), ckpt),
        dataclasses.replace(sample(ckpt, train_p, train_samples, cfg.train_sampling), name="sample-train"),
        Stage("execute-train", execute(train_p, train_samples, train_results), train_results),
        Stage("annotate", annotate(f"{run}/transitions", []), f"{run}/transitions"),
        Stage(
            "phi",
            train("phi", cfg.phi, phi, [f"transitions={run}/transitions", f"model.init={ckpt}"]),
            phi_model,
        ),
        Stage(
            "annotate-phi", annotate(f"{run}/transitions-phi", ["--phi", phi_model]), f"{run}/transitions-phi"
        ),
    ]
    theta_inputs = [
        f"transitions={run}/transitions-phi",
        f"phi={phi_model}",
        f"model.init={ckpt}",
        f"alpha={cfg.alpha}",
    ]
    stages.append(Stage("theta", train("theta", cfg.theta, theta, theta_inputs), theta_model))
    # method -> (the model that samples, the θ whose learned reward R̃ ranks its samples). The checkpoint's
    # own samples are ranked by B-Coder's R̃ (paper Table 3); the ablation ranks with its own θ.
    methods = {"ckpt": (ckpt, theta_model), "bcoder": (theta_model, theta_model)}
    if cfg.ablation is not None:
        abl = f"{run}/theta-ce"
        stages.append(Stage("theta-ce", train("theta", cfg.ablation, abl, theta_inputs), f"{abl}/final"))
        methods["ce-only"] = (f"{abl}/final", f"{abl}/final")
    split, ev = eval_paths(cfg)
    eval_p = f"{run}/problems/{split}.jsonl"
    for method, (model, ranker) in methods.items():
        tag = method if split == "test" else f"{split}-{method}"  # stage names of the test split unchanged
        raw = f"{run}/samples/{split}-{method}.jsonl"
        ranked = f"{run}/samples/{split}-{method}-ranked.jsonl"
        results = f"{run}/results/{split}-{method}.jsonl"
        example = f"{run}/results/{split}-{method}-example.jsonl"
        rank_io = [
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
        ]
        eval_io = [
            "--problems",
            eval_p,
            "--results",
            results,
            "--samples",
            ranked,
            "--example-results",
            example,
        ]
        report_out = ["--out-json", f"{ev}/{method}.json", "--out-md", f"{ev}/{method}.md"]
        stages += [
            dataclasses.replace(
                sample(model, eval_p, raw, cfg.test_sampling), name=f"sample-{split}-{method}"
            ),
            # Every method's samples are scored by a learned reward (paper Table 3 for the ckpt).
            Stage(f"rank-{tag}", ["rank", *rank_io, *to_argv(cfg.rank)], ranked),
            Stage(f"execute-{split}-{method}", execute(eval_p, ranked, results), results),
            Stage(f"execute-example-{tag}", execute(eval_p, ranked, example, tests="example"), example),
            Stage(
                f"evaluate-{tag}",
                ["evaluate", *eval_io, *report_out, *to_argv(cfg.evaluate)],
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
    storage.check_output_root(cfg.run_dir)
    Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    sha256 = cfg.verify == "sha256"
    ran: list[str] = []
    timings: dict[str, float] = {}
    for i, stage in enumerate(stages, 1):
        head = f"[{i:>2}/{len(stages)}] {stage.name}"
        if only and stage.name not in only:
            continue
        why = _committed(stage.output, sha256=sha256)
        if why is None:
            echo(f"{head}: committed, skipped ({stage.output})")
            continue
        if why != "not committed":
            # The pipeline's own artifact, no longer what its manifest says: made again from scratch.
            echo(f"{head}: {why}; removing {stage.output} and running the stage again")
            storage.delete(stage.output)
        argv = [sys.executable, "-m", "jobs.cli", *stage.argv]
        echo(f"{head}: bcoder {shlex.join(stage.argv)}")
        t0 = time.perf_counter()
        proc = subprocess.run(argv, check=False)
        timings[stage.name] = time.perf_counter() - t0
        if proc.returncode != 0:
            raise BcoderError(
                f"stage {stage.name} failed (exit {proc.returncode}); re-run the pipeline to resume from it"
            )
        why = _committed(stage.output)
        if why is not None:
            raise BcoderError(f"stage {stage.name} exited 0 but its output {stage.output} is {why}")
        echo(f"{head}: done in {timings[stage.name]:.0f}s")
        ran.append(stage.name)
    _write_timings(cfg, timings)
    return ran


def _write_timings(cfg: PipelineConfig, timings: dict[str, float]) -> None:
    path = Path(cfg.run_dir) / "timings.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    old.update({k: round(v, 1) for k, v in timings.items()})
    path.write_text(json.dumps(old, indent=1) + "\n")
