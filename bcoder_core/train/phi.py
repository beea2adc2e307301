"""Phi stage: pre-train V_φ with the conservative TD loss (DESIGN §2.4, paper Eq. 12).

    L_V(φ) = mean_t [ r_t + γ·sg(V_φ(s_{t+1})) − (A_ckpt(s_t, a_t) + V_φ(s_t)) ]²

A_ckpt comes from the transition store (``ckpt_adv``, written by ``bcoder annotate``), so a step
runs the frozen encoder (no grad) and the φ decoder only. Read top to bottom: data, model, loss,
optimiser, schedule, resume, the loop, export.

Run: ``bcoder train phi --config configs/train/phi-apps.yaml`` (or under
``torchrun --standalone --nproc_per_node=4``).
"""

from __future__ import annotations

import functools
from pathlib import Path

from bcoder_core.config import PhiConfig
from bcoder_core.train import setup
from bcoder_core.train.encoder_cache import cache_for_stage
from bcoder_core.train.loading import mixed_sampler, store_prefetcher
from bcoder_core.train.progress import Progress, TrainResult
from bcoder_core.train.step import setup_training, train_step

STAGE = "phi"


def train_phi(cfg: PhiConfig) -> TrainResult:
    """Train V_φ as ``cfg`` says, resuming from ``<output>/latest`` if present.

    The φ decoder and value head go to ``<output>/final``; returns that URI and the loss curve.
    """
    from bcoder_core.model.qmodel import BCoderModel
    from bcoder_core.rl.losses import phi_loss
    from bcoder_core.rl.transitions import open_store

    setup.validate_common(cfg)
    setup.validate_rho_real(cfg)
    with setup.run_scope(STAGE) as scratch:
        # ---- starting point: the latest checkpoint, the initial T5 (both before the process group)
        resume_dir = setup.find_resume(cfg)
        init_dir = setup.resolve_init(cfg, cfg.seed, scratch)
        with setup.join_ranks(STAGE, cfg) as info:
            # ---- data: the transition store, batches mixed to rho_real ground truth (DESIGN §2.7)
            store = open_store(cfg.transitions)  # a local store, a store of parts, or S3
            sampler = mixed_sampler(store, cfg, info, STAGE)

            # ---- model: frozen encoder + φ decoder and zero-initialised value head (a resumed run
            # loads φ from its checkpoint)
            phi_path = str(resume_dir / "model") if resume_dir else None
            model = BCoderModel.from_pretrained(
                init_dir,
                stage=STAGE,
                phi_path=phi_path,
                dropout=cfg.dropout,
                **setup.model_options(cfg, info),
            )

            # ---- loss, optimiser, schedule (the frozen encoder's states kept per prompt, §2.6)
            cache = cache_for_stage(model, store, cfg.encoder_cache_mb, STAGE)
            loss_fn = functools.partial(phi_loss, gamma=cfg.gamma, encoder_cache=cache)
            parts = setup_training(model, loss_fn, STAGE, cfg, info)

            def write_model(path: Path) -> None:
                model.save_pretrained(str(path), STAGE)

            # ---- resume, then the loop
            progress = Progress(STAGE, info, cfg, model, parts, sampler, write_model, resume_dir)
            with store_prefetcher(store, sampler, cfg, model.pad_token_id) as loader:
                for step in range(progress.start_step, cfg.max_steps):
                    done = train_step(parts, loader, step)  # micro-batches, DDP all-reduce, clip, AdamW
                    progress.after_step(step + 1, done)  # the step log, a checkpoint when due

            # ---- export: φ decoder + value head, read by annotate --phi, theta and rank
            return progress.export(write_model)
