"""Settings of the stages that run a model over problems and programs: sample, annotate, rank.

Each is a frozen dataclass with a docstring per field, loaded by the one loader
(:func:`bcoder_core.config.load_config`: YAML + ``key=value`` overrides, ``--show-config``); the
stage commands' flags set the same fields, and the pipeline embeds these classes and renders them
onto the command lines with :func:`bcoder_core.config.to_overrides`. Validation names the key.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from bcoder_core.config import cli_flags
from bcoder_core.errors import check
from bcoder_core.rl.transitions import DEFAULT_SHARD_SIZE


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelPassConfig:
    """What every pass of a model over prompts needs."""

    batch_size: int = 16
    """Programs per batch (decoded together, or passed teacher-forced together)."""
    max_source_tokens: int = 600
    """Prompt length limit in tokens (the prompt builder truncates the question)."""
    tokenizer: str | None = None
    """Tokenizer name or directory; None: the one saved with the checkpoint, else codet5."""
    device: str | None = None
    """cuda, cpu, cuda:1 ...; None: CUDA when available."""
    dtype: Literal["auto", "fp32", "bf16"] = "fp32"
    """fp32, bf16 (autocast; GPU), or auto (bf16 on GPU, fp32 on CPU)."""
    prompt_format: Literal["completion", "chat"] = "completion"
    """How a causal LM sees a problem: a completion prompt, or the tokenizer's chat template with
    the generation prompt (the program is then a fenced block). T5 takes completion only. Every
    stage of one run (sft, sample, annotate, rank) must use the same format."""

    def __post_init__(self) -> None:
        for key in ("batch_size", "max_source_tokens"):
            value = getattr(self, key)
            check(value >= 1, key, f"must be >= 1 (got {value})")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingConfig(ModelPassConfig):
    """`bcoder sample`: m programs per problem from π_θ = softmax(ℓ_θ/T) with top-p (DESIGN §2.8)."""

    CLI_FLAGS: ClassVar[dict[str, str]] = cli_flags(
        "num_samples temperature top_p max_new_tokens max_source_tokens batch_size seed tokenizer device dtype prompt_format"
        " engine"
    )
    """Fields the stage command has a flag for (``--num-samples`` for num_samples ...)."""

    num_samples: int = 1
    """m: programs sampled per problem."""
    temperature: float = 0.6
    """Softmax temperature T (0 means greedy decoding)."""
    top_p: float = 0.95
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p."""
    max_new_tokens: int = 512
    """Longest program, in tokens (EOS included)."""
    batch_size: int = 32
    """Programs decoded together."""
    seed: int = 0
    """Seed of the per-sample random streams: each (problem, sample) has its own stream."""
    engine: Literal["auto", "reference", "ctranslate2"] = "reference"
    """Sampling engine (``rl/engines.py``): reference (the KV-cache loop; per-sample random streams,
    the same programs however the problems are sharded or batched), ctranslate2 (T5, CPU/GPU;
    converted once per θ and cached; seeded once per run; faster on CPU for a small vocabulary,
    slower for CodeT5's 32k: measure yours with bench/bench_sample_rank.py --engines), or auto
    (CTranslate2 for a T5 when installed, else the reference loop)."""
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """auto (bf16 on GPU, fp32 on CPU), fp32, bf16, fp16."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.num_samples >= 1, "num_samples", f"must be >= 1 (got {self.num_samples})")
        check(self.temperature >= 0, "temperature", f"must be >= 0 (got {self.temperature})")
        check(0.0 < self.top_p <= 1.0, "top_p", f"must lie in (0, 1] (got {self.top_p})")
        check(self.max_new_tokens >= 1, "max_new_tokens", f"must be >= 1 (got {self.max_new_tokens})")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AnnotateConfig(ModelPassConfig):
    """`bcoder annotate`: the teacher-forced pass that writes the frozen models' columns (DESIGN §2.6)."""

    CLI_FLAGS: ClassVar[dict[str, str]] = cli_flags(
        "batch_size max_source_tokens max_target_tokens shard_size alpha tokenizer device dtype prompt_format"
    )
    """Fields the stage command has a flag for (``--num-samples`` for num_samples ...)."""

    max_target_tokens: int = 512
    """Longest program kept, in tokens, EOS included; longer ones are dropped and counted."""
    ground_truth: bool = True
    """Include the problems' reference solutions (reward +1.0)."""
    shard_size: int = DEFAULT_SHARD_SIZE
    """Programs per store shard."""
    window_batches: int = 64
    """Batches per sorting window (sorting by problem and length within a window)."""
    alpha: float = 1.0
    """Policy temperature α of ckpt_adv = α(ℓ − max ℓ); theta must use the same (it checks)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("max_target_tokens", "shard_size", "window_batches"):
            value = getattr(self, key)
            check(value >= 1, key, f"must be >= 1 (got {value})")
        check(self.alpha > 0, "alpha", f"must be > 0 (got {self.alpha})")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RankConfig(ModelPassConfig):
    """`bcoder rank`: every sample scored with the learned reward R̃ = Σ_t r̃_θ (DESIGN §2.8)."""

    CLI_FLAGS: ClassVar[dict[str, str]] = cli_flags(
        "batch_size gamma alpha max_source_tokens max_target_tokens tokenizer device dtype prompt_format"
    )
    """Fields the stage command has a flag for (``--num-samples`` for num_samples ...)."""

    gamma: float = 0.999
    """Discount γ of r̃ = Q − γ·V(s')."""
    max_target_tokens: int = 1024
    """Programs longer than this (EOS included) are scored on their first tokens and flagged."""
    window_batches: int = 64
    """Batches per sorting window."""
    alpha: float | None = None
    """Policy temperature α; None: the one θ was trained with (saved with its heads)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("max_target_tokens", "window_batches"):
            value = getattr(self, key)
            check(value >= 1, key, f"must be >= 1 (got {value})")
        check(0.0 <= self.gamma <= 1.0, "gamma", f"must lie in [0, 1] (got {self.gamma})")
        check(self.alpha is None or self.alpha > 0, "alpha", f"must be > 0 (got {self.alpha})")
