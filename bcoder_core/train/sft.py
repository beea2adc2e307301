"""SFT stage: supervised fine-tuning of a whole model (T5 or causal LM) on (prompt, reference program) pairs.

This makes the stand-in checkpoint θ_ckpt where no public one exists (the built-in benchmark): the
prompt is DESIGN §3.2's CodeRL prompt, the target the reference solution re-indented with tabs,
ending in EOS; the loss is the token-mean cross-entropy. With ``model.tokenizer: train:<V>`` a tiny
byte-level BPE is trained on the problem set's prompts and programs first and saved with the model.
Read top to bottom: data, tokenizer, model, loss, optimiser, schedule, resume, the loop, export.

Run: ``bcoder train sft --config configs/train/sft-tiny.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bcoder_core import storage
from bcoder_core.config import SFTConfig
from bcoder_core.errors import BcoderError
from bcoder_core.train import setup
from bcoder_core.train.loading import Prefetcher, bucketing_label, global_batch_size
from bcoder_core.train.logs import log
from bcoder_core.train.progress import Progress, TrainResult
from bcoder_core.train.samplers import EpochSampler
from bcoder_core.train.step import setup_training, split_micro, train_step

STAGE = "sft"


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """One training example: prompt token ids and program token ids (ending in EOS)."""

    prompt_ids: list[int]
    program_ids: list[int]


def build_pairs(problems: list, tokenizer: Any, cfg: SFTConfig, family: str = "t5") -> tuple[list[Pair], int]:
    """Tokenised (prompt, tab re-indented solution + EOS) pairs; returns (pairs, dropped too long).

    A program longer than ``max_target_tokens`` is dropped rather than cut (a cut program ending in
    EOS would teach the model to stop mid-program).
    """
    # The same encodings as `sample` and `annotate` use, so the checkpoint sees what it was trained on.
    from bcoder_core.model.family import get_family
    from bcoder_core.prompts import reindent_with_tabs

    fam = get_family(family)
    fmt = cfg.prompt_format
    pairs: list[Pair] = []
    dropped = 0
    for problem in problems:
        solutions = problem.solutions
        if cfg.max_solutions_per_problem:
            solutions = solutions[: cfg.max_solutions_per_problem]
        if not solutions:
            continue
        prompt_ids = fam.prompt_ids(problem, tokenizer, cfg.max_source_tokens, fmt)
        for code in solutions:
            program = fam.program_ids(tokenizer, reindent_with_tabs(code), fmt)
            if len(program) > cfg.max_target_tokens:
                dropped += 1
                continue
            pairs.append(Pair(prompt_ids, program))
    return pairs, dropped


def pair_lengths(pairs: list[Pair]) -> Any:
    """The length-bucketing sort keys [n, 2] of ``pairs``: program, then prompt length."""
    from bcoder_core.train.samplers import length_keys

    return length_keys([len(p.program_ids) for p in pairs], [len(p.prompt_ids) for p in pairs])


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
    """Fine-tune the whole T5 as ``cfg`` says (resuming from ``<output>/latest``); returns the URI of
    the exported stand-in checkpoint and the loss curve."""
    from bcoder_core.model.family import family_for_checkpoint
    from bcoder_core.model.qmodel import BCoderModel
    from bcoder_core.model.tokenizer import load_tokenizer
    from bcoder_core.problems import read_problems
    from bcoder_core.rl.losses import sft_loss

    setup.validate_common(cfg)
    with setup.run_scope(STAGE) as scratch:
        # ---- data: problems and their reference solutions
        problems = read_problems(storage.input_path(cfg.problems))

        # ---- resume point, tokenizer and initial weights, all before the process group. The
        # tokenizer comes first: a random init sizes its vocabulary to it. "train:<V>" trains one on
        # the problem set (deterministic, so every rank gets the same); a resumed run reads its
        # checkpoint's.
        resume_dir = setup.find_resume(cfg)
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
            init_dir = setup.resolve_init(cfg, cfg.seed, scratch, **shape)
            if tokenizer is None:
                tokenizer = load_tokenizer(setup.resolve_tokenizer_spec(cfg, init_dir))

        family = family_for_checkpoint(init_dir).name
        with setup.join_ranks(STAGE, cfg) as info:
            pairs, dropped = build_pairs(problems, tokenizer, cfg, family)
            global_batch = global_batch_size(cfg, info)
            sampler = EpochSampler(
                len(pairs), global_batch, cfg.seed, info.rank, info.world_size,
                lengths=pair_lengths(pairs), grad_accum=cfg.grad_accum,
                bucketing=cfg.length_bucketing, bucket_window=cfg.bucket_window,
            )  # fmt: skip
            log.info(
                "sft: %d problems, %d pairs (%d dropped: program > %d tokens), global batch %d, "
                "length bucketing %s",
                len(problems), len(pairs), dropped, cfg.max_target_tokens, global_batch,
                bucketing_label(cfg),
            )  # fmt: skip
            pad_id = tokenizer.pad_token_id or 0

            def load(indices: list[int]) -> list[dict[str, torch.Tensor]]:
                """This rank's part of a global batch, as collated micro-batches."""
                micro = split_micro(indices, cfg.grad_accum)
                return [collate_pairs([pairs[i] for i in part], pad_id) for part in micro]

            # ---- model: the whole language model, trainable
            model = BCoderModel.from_pretrained(init_dir, stage=STAGE, dropout=cfg.dropout)
            if len(tokenizer) > _vocab_size(model):
                raise BcoderError(
                    f"tokenizer has {len(tokenizer)} tokens, the model's vocabulary only {_vocab_size(model)}"
                )

            # ---- loss, optimiser, schedule
            parts = setup_training(model, sft_loss, STAGE, cfg, info)

            def write_model(path: Path) -> None:
                model.save_pretrained(str(path), STAGE, tokenizer=tokenizer)

            # ---- resume, then the loop
            progress = Progress(STAGE, info, cfg, model, parts, sampler, write_model, resume_dir)
            with Prefetcher(load, sampler, workers=cfg.num_workers, last_step=cfg.max_steps) as loader:
                for step in range(progress.start_step, cfg.max_steps):
                    done = train_step(parts, loader, step)  # micro-batches, DDP all-reduce, clip, AdamW
                    progress.after_step(step + 1, done)  # the step log, a checkpoint when due

            # ---- export: a plain HF model directory with its tokenizer (the stand-in checkpoint)
            return progress.export(write_model)


def _vocab_size(model: Any) -> int:
    return int(model.config.vocab_size)


def _vocab_from_spec(spec: str) -> int:
    try:
        return int(spec.removeprefix("train:"))
    except ValueError:
        raise BcoderError(f"config: model.tokenizer {spec!r}: expected train:<vocab_size>") from None
