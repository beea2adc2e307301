"""Run setup shared by the three stages: config checks, the starting point, the process group, precision.

A stage opens :func:`run_scope` first, resolves its resume point and initial weights (before any
process group exists), then enters :func:`join_ranks` for the training itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from bcoder_core import storage
from bcoder_core.config import PhiConfig, ThetaConfig, TrainConfig
from bcoder_core.errors import BcoderError
from bcoder_core.train import checkpoint, fingerprint
from bcoder_core.train.dist import DistInfo, cleanup, init_distributed
from bcoder_core.train.logs import setup_logging, stage_telemetry


def validate_common(cfg: TrainConfig) -> None:
    """Checks a type checker cannot make (one error line each)."""
    for key, value, low in (
        ("batch_size", cfg.batch_size, 1),
        ("grad_accum", cfg.grad_accum, 1),
        ("max_steps", cfg.max_steps, 1),
        ("save_every", cfg.save_every, 0),
        ("keep_checkpoints", cfg.keep_checkpoints, 0),
        ("log_every", cfg.log_every, 1),
        ("num_workers", cfg.num_workers, 0),
    ):
        if value < low:
            raise BcoderError(f"config: {key} must be >= {low}, got {value}")
    if not cfg.output:
        raise BcoderError("config: output must name a directory or s3:// prefix")
    if not cfg.model.init and not cfg.model.shape:
        raise BcoderError("config: set model.init (a checkpoint) or model.shape (random init)")
    if cfg.optim.lr <= 0:
        raise BcoderError(f"config: optim.lr must be > 0, got {cfg.optim.lr}")
    checkpoint.check_output(cfg.output)  # writable and the run's own, before anything is trained


def validate_rho_real(cfg: PhiConfig | ThetaConfig) -> None:
    """The share of ground truth in a mixed batch (phi, theta) is a fraction."""
    if not 0.0 <= cfg.rho_real <= 1.0:
        raise BcoderError(f"config: rho_real must lie in [0, 1], got {cfg.rho_real}")


@contextlib.contextmanager
def run_scope(stage: str) -> Iterator[str]:
    """A scratch directory for the run; on the way out (even on failure) it is removed and the process
    group, if one was made meanwhile, is torn down."""
    try:
        with storage.scratch_dir(stage) as scratch:
            yield str(scratch)
    finally:
        cleanup()


def find_resume(cfg: TrainConfig) -> Path | None:
    """The local copy of ``<output>/latest``'s checkpoint, or None for a fresh run; seeds every RNG.

    Refuses (BcoderError) a checkpoint saved with other settings than ``cfg``'s (``fingerprint.py``).

    Called before the process group exists (as is :func:`resolve_init`): transformers'
    save_pretrained writes only on rank 0 of an initialised group, and every rank needs its own copy
    of a random init.
    """
    checkpoint.seed_everything(cfg.seed)
    start_step = checkpoint.read_latest(cfg.output) or 0
    if not start_step:
        return None
    resume_dir = checkpoint.fetch_checkpoint(cfg.output, start_step)
    fingerprint.check_resume(resume_dir, cfg, cfg.output)  # a changed setting would mix two runs
    return resume_dir


@contextlib.contextmanager
def join_ranks(stage: str, cfg: TrainConfig) -> Iterator[DistInfo]:
    """Join torchrun's process group (none for a single process), log on rank 0, and record the stage's
    telemetry around the block; yields where this process sits in the job."""
    info = init_distributed(cfg.device)
    setup_logging(info)
    with stage_telemetry(stage, info, cfg):
        yield info


def use_bf16(cfg: TrainConfig, info: DistInfo) -> bool:
    """bf16 autocast on CUDA ("auto"/"bf16"), fp32 on CPU (DESIGN §5)."""
    if info.device.type != "cuda":
        return False
    return cfg.precision in ("auto", "bf16")


def autocast(enabled: bool, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast when ``enabled``, else a no-op."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def resolve_init(cfg: TrainConfig, seed: int, scratch: str, **shape_overrides: Any) -> str:
    """Local directory (or Hugging Face id) of the starting T5 checkpoint.

    ``model.init`` is a local directory, an artifact URI (fetched and verified), or a Hugging Face
    id (anything that is neither; transformers resolves it). Without ``init``, a T5 of the shape
    ``model.shape`` (a JSON file or a name in configs/models/, with ``shape_overrides`` such as
    ``vocab_size``) gets random weights seeded by ``seed`` and is saved under ``scratch``, so every
    stage loads its model the same way (and every rank builds the same weights).
    """
    from bcoder_core import storage

    init = cfg.model.init
    if init:
        if "://" in init or Path(init).exists() or init.startswith(("/", ".")):
            return str(storage.input_path(init))
        return init
    from bcoder_core.model.build import model_config, save_random_checkpoint

    shape = model_config(cfg.model.shape, **shape_overrides)
    return str(save_random_checkpoint(shape, Path(scratch) / "random-init", seed=seed))


def model_options(cfg: TrainConfig, info: DistInfo) -> dict[str, Any]:
    """``BCoderModel.from_pretrained`` options of a phi/theta run: LoRA settings, the base's URI, seed.

    The base's URI (``model.init`` as written) is what a LoRA θ records as its base, so rank and a
    resumed run on another machine fetch the same checkpoint. With LoRA under bf16 on a GPU the
    frozen base is loaded in bf16 (half the memory of fp32; it gets no gradient and no optimiser
    state, so nothing needs fp32 master weights); adapters and value heads stay in fp32.
    """
    opts: dict[str, Any] = {"seed": cfg.seed}
    if cfg.model.lora.enable:
        # a resumed LoRA θ reads its base from its adapter directory; φ's base is always model.init
        opts["lora"] = cfg.model.lora
        opts["where"] = cfg.model.init
        if use_bf16(cfg, info):
            opts["dtype"] = torch.bfloat16
    return opts


def resolve_tokenizer_spec(cfg: TrainConfig, init_dir: str) -> str:
    """The tokenizer to load: "auto" means the one saved with the init checkpoint, else "codet5"."""
    spec = cfg.model.tokenizer
    if spec != "auto":
        return spec
    if (Path(init_dir) / "tokenizer_config.json").is_file():
        return init_dir
    return "codet5"
