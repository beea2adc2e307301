"""SFT stage: supervised fine-tuning of a whole T5 on (prompt, reference program) pairs.

This makes the stand-in checkpoint θ_ckpt where no public one exists (the built-in benchmark): the
prompt is DESIGN §3.2's CodeRL prompt, the target the reference solution re-indented with tabs,
ending in EOS; the loss is the token-mean cross-entropy. With ``model.tokenizer: train:<V>`` a tiny
byte-level BPE is trained on the problem set's prompts and programs first and saved with the model.
Read top to bottom: data, tokenizer, model, loss, optimiser, schedule, resume, the loop, export.

Run: ``bcoder train sft --config configs/train/sft-tiny.yaml``.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bcoder_core import storage, telemetry
from bcoder_core.config import SFTConfig
from bcoder_core.errors import BcoderError
from bcoder_core.train import checkpoint as ckpt
from bcoder_core.train.common import (
    LossModule,
    Prefetcher,
    StepLogger,
    TrainResult,
    autocast,
    count_tokens,
    global_grad_norm,
    log,
    no_sync,
    resolve_init,
    resolve_tokenizer_spec,
    setup_logging,
    split_micro,
    stage_telemetry,
    to_device,
    use_bf16,
    validate_common,
    wrap_ddp,
)
from bcoder_core.train.dist import cleanup, init_distributed
from bcoder_core.train.optim import make_optimizer, make_scheduler

STAGE = "sft"


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """One training example: prompt token ids and program token ids (ending in EOS)."""

    prompt_ids: list[int]
    program_ids: list[int]


def build_pairs(problems: list, tokenizer: Any, cfg: SFTConfig) -> tuple[list[Pair], int]:
    """Tokenised (prompt, tab re-indented solution + EOS) pairs; returns (pairs, dropped too long).

    A program longer than ``max_target_tokens`` is dropped rather than cut (a cut program ending in
    EOS would teach the model to stop mid-program).
    """
    # The same encodings as `sample` and `annotate` use, so the checkpoint sees what it was trained on.
    from bcoder_core.model.tokenizer import encode_program
    from bcoder_core.prompts import reindent_with_tabs
    from bcoder_core.rl.sampling import encode_prompt

    pairs: list[Pair] = []
    dropped = 0
    for problem in problems:
        solutions = problem.solutions
        if cfg.max_solutions_per_problem:
            solutions = solutions[: cfg.max_solutions_per_problem]
        if not solutions:
            continue
        prompt_ids = encode_prompt(problem, tokenizer, cfg.max_source_tokens)
        for code in solutions:
            program = encode_program(tokenizer, reindent_with_tabs(code))
            if len(program) > cfg.max_target_tokens:
                dropped += 1
                continue
            pairs.append(Pair(prompt_ids, program))
    return pairs, dropped


def collate_pairs(pairs: list[Pair], pad_id: int) -> dict[str, torch.Tensor]:
    """``input_ids``/``attention_mask`` [B,S] and ``labels`` [B,T] (padding −100)."""
    s_len = max(len(p.prompt_ids) for p in pairs)
    t_len = max(len(p.program_ids) for p in pairs)
    input_ids = torch.full((len(pairs), s_len), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(pairs), s_len), dtype=torch.long)
    labels = torch.full((len(pairs), t_len), -100, dtype=torch.long)
    for b, p in enumerate(pairs):
        input_ids[b, : len(p.prompt_ids)] = torch.tensor(p.prompt_ids)
        attention_mask[b, : len(p.prompt_ids)] = 1
        labels[b, : len(p.program_ids)] = torch.tensor(p.program_ids)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class EpochSampler:
    """Deterministic, infinite index batches over ``n`` examples, reshuffled every epoch.

    Batch ``k`` is a pure function of ``k`` (like :class:`~bcoder_core.rl.transitions.MixedBatchSampler`):
    the state is the step, so resume is exact. ``batch_size`` is the global batch; rank ``r`` takes
    positions ``r, r + W, ...`` of it.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if n == 0:
            raise BcoderError("no training examples: the problem set has no usable reference solutions")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.step = 0
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {k: v for k, v in self._perms.items() if k >= epoch - 1}
            self._perms[epoch] = np.random.default_rng([self.seed & 0xFFFFFFFF, epoch]).permutation(self.n)
        return self._perms[epoch]

    def global_batch(self, step: int) -> list[int]:
        out: list[int] = []
        pos = step * self.batch_size
        while len(out) < self.batch_size:
            epoch, off = divmod(pos, self.n)
            chunk = self._perm(epoch)[off : off + self.batch_size - len(out)]
            out.extend(int(i) for i in chunk)
            pos += len(chunk)
        return out

    def batch(self, step: int) -> list[int]:
        """This rank's part of batch ``step``."""
        return self.global_batch(step)[self.rank :: self.world_size]

    def __next__(self) -> list[int]:
        out = self.batch(self.step)
        self.step += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "n": self.n, "batch_size": self.batch_size, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key in ("n", "batch_size", "seed"):
            if state[key] != getattr(self, key):
                raise BcoderError(
                    f"cannot resume the sft data order: {key} was {state[key]}, is {getattr(self, key)}"
                )
        self.step = int(state["step"])


def _train_tokenizer(problems: list, vocab_size: int, cfg: SFTConfig) -> Any:
    """A tiny byte-level BPE trained on the problem set's prompts and tab re-indented programs."""
    from bcoder_core.model.tokenizer import train_tiny_tokenizer
    from bcoder_core.prompts import build_prompt, reindent_with_tabs

    texts: list[str] = []
    for p in problems:
        texts.append(build_prompt(p, None, cfg.max_source_tokens))
        texts.extend(reindent_with_tabs(s) for s in p.solutions)
    return train_tiny_tokenizer(texts, vocab_size=vocab_size)


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------


def train_sft(cfg: SFTConfig) -> TrainResult:
    """Fine-tune the whole T5 as ``cfg`` says (resuming from ``<output>/latest``); returns the final URI and loss curve."""
    from bcoder_core.model.qmodel import BCoderModel
    from bcoder_core.model.tokenizer import load_tokenizer
    from bcoder_core.problems import read_problems
    from bcoder_core.rl.losses import sft_loss

    validate_common(cfg)
    scratch = tempfile.TemporaryDirectory(prefix="bcoder-sft-")
    try:
        # ---- data: problems and their reference solutions
        problems = read_problems(storage.input_path(cfg.problems))

        # ---- resume point, tokenizer and initial weights. The tokenizer comes first: a random
        # init sizes its vocabulary to it. "train:<V>" trains one on the problem set
        # (deterministic, so every rank gets the same); a resumed run reads its checkpoint's.
        # All before the process group exists: transformers' save_pretrained writes only on rank 0
        # of an initialised group, and every rank needs its own copy of a random init.
        ckpt.seed_everything(cfg.seed)
        start_step = ckpt.read_latest(cfg.output) or 0
        resume_dir = ckpt.fetch_checkpoint(cfg.output, start_step) if start_step else None
        spec = cfg.model.tokenizer
        if resume_dir is not None:
            init_dir = str(resume_dir / "model")
            tokenizer = load_tokenizer(init_dir)
        else:
            if spec.startswith("train:"):
                tokenizer = _train_tokenizer(problems, _vocab_from_spec(spec), cfg)
            elif cfg.model.init:
                tokenizer = None  # known once the checkpoint is resolved ("auto": the one in it)
            else:
                tokenizer = load_tokenizer("codet5" if spec == "auto" else spec)
            shape = {} if tokenizer is None else {"vocab_size": len(tokenizer)}
            init_dir = resolve_init(cfg, cfg.seed, scratch.name, **shape)
            if tokenizer is None:
                tokenizer = load_tokenizer(resolve_tokenizer_spec(cfg, init_dir))

        info = init_distributed(cfg.device)
        setup_logging(info)
        with stage_telemetry(STAGE, info, cfg):
            pairs, dropped = build_pairs(problems, tokenizer, cfg)
            global_batch = cfg.batch_size * cfg.grad_accum * info.world_size
            sampler = EpochSampler(len(pairs), global_batch, cfg.seed, info.rank, info.world_size)
            log.info(
                "sft: %d problems, %d pairs (%d dropped: program > %d tokens), global batch %d",
                len(problems), len(pairs), dropped, cfg.max_target_tokens, global_batch,
            )  # fmt: skip

            # ---- model: the whole T5, trainable
            model = BCoderModel.from_pretrained(init_dir, stage=STAGE, dropout=cfg.dropout)
            if len(tokenizer) > _vocab_size(model):
                raise BcoderError(
                    f"tokenizer has {len(tokenizer)} tokens, the model's vocabulary only {_vocab_size(model)}"
                )
            model.to(info.device)
            model.train()
            params = list(model.trainable_parameters(STAGE))
            bf16 = use_bf16(cfg, info)
            pad_id = tokenizer.pad_token_id or 0

            # ---- loss, optimiser, schedule
            net = wrap_ddp(LossModule(model, sft_loss), info, cfg)
            optimizer = make_optimizer(params, cfg.optim)
            scheduler = make_scheduler(optimizer, cfg.optim, cfg.max_steps)

            # ---- resume
            if resume_dir is not None:
                step, data_state = ckpt.load_training_state(
                    resume_dir, info, optimizer=optimizer, scheduler=scheduler
                )
                sampler.load_state_dict(data_state)
                log.info("sft: resumed from %s", ckpt.step_uri(cfg.output, step))
            else:
                step = 0
                ckpt.seed_everything(cfg.seed + info.rank)

            def write_model(path: Path) -> None:
                model.save_pretrained(str(path), STAGE, tokenizer=tokenizer)
                model.train()  # saving may switch shared submodules to eval mode (no dropout)

            logger = StepLogger(STAGE, info, cfg.max_steps, cfg.log_every, start_step=step)
            history = ckpt.existing_steps(cfg.output, step)

            # ---- data loading: this rank's part of each global batch, as collated micro-batches
            def load(indices: list[int]) -> list[dict[str, torch.Tensor]]:
                parts = split_micro(indices, cfg.grad_accum)
                return [collate_pairs([pairs[i] for i in part], pad_id) for part in parts]

            loader = Prefetcher(load, sampler.batch, workers=cfg.num_workers, last_step=cfg.max_steps)

            # ---- the loop
            while step < cfg.max_steps:
                t0 = time.perf_counter()
                micro = loader.get(step, next(sampler))
                optimizer.zero_grad(set_to_none=True)
                stats_sum: dict[str, float] = {}
                tokens = 0
                for j, part in enumerate(micro):
                    tokens += count_tokens(part)  # on the host copy: no device sync
                    batch = to_device(part, info.device)
                    with no_sync(net, last=j == len(micro) - 1):  # DDP all-reduces on the last only
                        with autocast(bf16, info.device):
                            loss, stats = net(batch)
                        (loss / cfg.grad_accum).backward()
                    for k, v in stats.items():
                        stats_sum[k] = stats_sum.get(k, 0.0) + float(v) / len(micro)
                grad_norm = global_grad_norm(params, cfg.optim.grad_clip)
                lr = scheduler.get_last_lr()[0]
                optimizer.step()
                scheduler.step()
                step += 1
                logger.step(
                    step, stats=stats_sum, tokens=tokens, seconds=time.perf_counter() - t0, lr=lr,
                    grad_norm=grad_norm,
                )  # fmt: skip
                if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.max_steps:
                    seconds = ckpt.save_checkpoint(
                        info, cfg.output, step, stage=STAGE, write_model=write_model,
                        optimizer=optimizer, scheduler=scheduler, data_state=sampler.state_dict(),
                        config=cfg, keep=cfg.keep_checkpoints, history=history,
                    )  # fmt: skip
                    if info.is_main:
                        telemetry.record_checkpoint(STAGE, seconds)
                        log.info("sft: saved %s (%.1fs)", ckpt.step_uri(cfg.output, step), seconds)

            loader.close()
            # Free DDP (and its reducer's hold on the process group) while every rank is still here:
            # a gloo group torn down after a peer exited can block its destructor forever.
            del net

            # ---- export: a plain HF T5 directory with its tokenizer (the stand-in checkpoint)
            final = ckpt.export_final(info, cfg.output, write_model, cfg, logger.history)
            log.info("sft: done, model in %s", final)
            return TrainResult(final=final, history=logger.history)
    finally:
        scratch.cleanup()
        cleanup()


def _vocab_size(model: Any) -> int:
    return int(model.config.vocab_size)


def _vocab_from_spec(spec: str) -> int:
    try:
        return int(spec.removeprefix("train:"))
    except ValueError:
        raise BcoderError(f"config: model.tokenizer {spec!r}: expected train:<vocab_size>") from None
