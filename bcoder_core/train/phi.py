"""Phi stage: pre-train V_φ with the conservative TD loss (DESIGN §2.4, paper Eq. 12).

    L_V(φ) = mean_t [ r_t + γ·sg(V_φ(s_{t+1})) − (A_ckpt(s_t, a_t) + V_φ(s_t)) ]²

A_ckpt comes from the transition store (``ckpt_adv``, written by ``bcoder annotate``), so a step
runs the frozen encoder (no grad) and the φ decoder only. Read top to bottom: data, model, loss,
optimiser, schedule, resume, the loop, checkpoints, export.

Run: ``bcoder train phi --config configs/train/phi-apps.yaml`` (or under
``torchrun --standalone --nproc_per_node=4``).
"""

from __future__ import annotations

import functools
import tempfile
import time
from pathlib import Path

from bcoder_core import storage, telemetry
from bcoder_core.config import PhiConfig
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
    setup_logging,
    stage_telemetry,
    store_loader,
    to_device,
    use_bf16,
    validate_common,
    wrap_ddp,
)
from bcoder_core.train.dist import cleanup, init_distributed
from bcoder_core.train.optim import make_optimizer, make_scheduler

STAGE = "phi"


def train_phi(cfg: PhiConfig) -> TrainResult:
    """Train V_φ as ``cfg`` says (resuming from ``<output>/latest`` if present); returns the final URI and loss curve."""
    from bcoder_core.model.qmodel import BCoderModel
    from bcoder_core.rl.losses import phi_loss
    from bcoder_core.rl.transitions import MixedBatchSampler, open_store

    validate_common(cfg)
    if not 0.0 <= cfg.rho_real <= 1.0:
        raise BcoderError(f"config: rho_real must lie in [0, 1], got {cfg.rho_real}")
    scratch = tempfile.TemporaryDirectory(prefix="bcoder-phi-")
    try:
        # ---- starting point: the latest checkpoint, the initial T5. Resolved before the process
        # group exists: transformers' save_pretrained writes only on rank 0 of an initialised
        # group, and every rank needs its own copy of a random init.
        ckpt.seed_everything(cfg.seed)
        start_step = ckpt.read_latest(cfg.output) or 0
        resume_dir = ckpt.fetch_checkpoint(cfg.output, start_step) if start_step else None
        init_dir = resolve_init(cfg, cfg.seed, scratch.name)
        info = init_distributed(cfg.device)
        setup_logging(info)
        with stage_telemetry(STAGE, info, cfg):
            # ---- data: the transition store, batches mixed to rho_real ground truth (DESIGN §2.7)
            store = open_store(storage.input_path(cfg.transitions))
            global_batch = cfg.batch_size * cfg.grad_accum * info.world_size
            sampler = MixedBatchSampler(
                store, global_batch, cfg.rho_real, cfg.seed, rank=info.rank, world_size=info.world_size
            )
            log.info(
                "phi: %d programs (%d ground truth, %d generated), global batch %d = %d x %d x %d ranks",
                len(store), store.num_gt, store.num_generated, global_batch, cfg.batch_size,
                cfg.grad_accum, info.world_size,
            )  # fmt: skip

            # ---- model: frozen encoder + φ decoder and zero-initialised value head (a resumed run
            # loads φ from its checkpoint)
            phi_path = str(resume_dir / "model") if resume_dir else None
            model = BCoderModel.from_pretrained(init_dir, stage=STAGE, phi_path=phi_path, dropout=cfg.dropout)
            model.to(info.device)
            model.train()
            params = list(model.trainable_parameters(STAGE))
            bf16 = use_bf16(cfg, info)
            pad_id = model.pad_token_id

            # ---- loss, optimiser, schedule
            loss_fn = functools.partial(phi_loss, gamma=cfg.gamma)
            net = wrap_ddp(LossModule(model, loss_fn), info, cfg)
            optimizer = make_optimizer(params, cfg.optim, model.value_head_parameters(STAGE))
            scheduler = make_scheduler(optimizer, cfg.optim, cfg.max_steps)

            # ---- resume: optimiser, scheduler, RNG and data position exactly where they were
            if resume_dir is not None:
                step, data_state = ckpt.load_training_state(
                    resume_dir, info, optimizer=optimizer, scheduler=scheduler
                )
                sampler.load_state_dict(data_state)
                log.info("phi: resumed from %s", ckpt.step_uri(cfg.output, step))
            else:
                step = 0
                ckpt.seed_everything(cfg.seed + info.rank)  # distinct dropout masks per rank

            def write_model(path: Path) -> None:
                model.save_pretrained(str(path), STAGE)
                model.train()  # saving may switch shared submodules to eval mode (no dropout)

            logger = StepLogger(STAGE, info, cfg.max_steps, cfg.log_every, start_step=step)
            history = ckpt.existing_steps(cfg.output, step)

            # ---- data loading: this rank's part of each global batch, as collated micro-batches
            loader = Prefetcher(
                store_loader(store.path, cfg.grad_accum, pad_id), sampler.batch,
                workers=cfg.num_workers, last_step=cfg.max_steps,
            )  # fmt: skip

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
                        log.info("phi: saved %s (%.1fs)", ckpt.step_uri(cfg.output, step), seconds)

            loader.close()
            # Free DDP (and its reducer's hold on the process group) while every rank is still here:
            # a gloo group torn down after a peer exited can block its destructor forever.
            del net

            # ---- export: φ decoder + value head, read by annotate --phi, theta and rank
            final = ckpt.export_final(info, cfg.output, write_model, cfg, logger.history)
            log.info("phi: done, model in %s", final)
            return TrainResult(final=final, history=logger.history)
    finally:
        scratch.cleanup()
        cleanup()
