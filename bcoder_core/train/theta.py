"""Theta stage: fine-tune Q_θ (DESIGN §2.5, paper Eq. 8, 15, 17).

    L_ft = β_q·L_Q + β_adv·L_adv + β_ce·L_ce        (β_q = 1; 0 for the "no RL" ablation)
    L_Q  = mean_t [ r_t + γ·sg(A_θ(s_{t+1}, â_{t+1}) + V_θ(s_{t+1})) − (A_θ(s_t, a_t) + V_θ(s_t)) ]²

with â_{t+1} the checkpoint's greedy token (``ckpt_greedy``) and V_θ = bound(u^r_θ + u_φ), u_φ from
the store's ``v_phi`` column: a step runs the frozen encoder (no grad) and the θ decoder only, the
cost of a supervised fine-tuning step (DESIGN §2.6). Read top to bottom: data, model, loss,
optimiser, schedule, resume, the loop, checkpoints, export.

Run: ``bcoder train theta --config configs/train/theta-apps.yaml`` (or under
``torchrun --standalone --nproc_per_node=8``).
"""

from __future__ import annotations

import functools
import shutil
import tempfile
import time
from pathlib import Path

from bcoder_core import storage, telemetry
from bcoder_core.config import ThetaConfig
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
    stage_telemetry,
    store_loader,
    to_device,
    use_bf16,
    validate_common,
    wrap_ddp,
)
from bcoder_core.train.dist import cleanup, init_distributed
from bcoder_core.train.optim import make_optimizer, make_scheduler

STAGE = "theta"


def train_theta(cfg: ThetaConfig) -> TrainResult:
    """Train Q_θ as ``cfg`` says (resuming from ``<output>/latest`` if present); returns the final URI and loss curve."""
    from bcoder_core.model.qmodel import PHI_CONFIG, PHI_WEIGHTS, BCoderModel
    from bcoder_core.model.tokenizer import load_tokenizer
    from bcoder_core.rl.losses import theta_loss
    from bcoder_core.rl.transitions import MixedBatchSampler, open_store

    validate_common(cfg)
    if not 0.0 <= cfg.rho_real <= 1.0:
        raise BcoderError(f"config: rho_real must lie in [0, 1], got {cfg.rho_real}")
    if cfg.phi and not (storage.input_path(cfg.phi) / PHI_WEIGHTS).is_file():
        raise BcoderError(f"config: phi {cfg.phi}: no {PHI_WEIGHTS} (not a phi checkpoint)")
    scratch = tempfile.TemporaryDirectory(prefix="bcoder-theta-")
    try:
        # ---- starting point: the latest checkpoint (θ saved as a plain HF T5 + heads), else the
        # initial T5. Resolved before the process group exists: transformers' save_pretrained
        # writes only on rank 0 of an initialised group, and every rank needs its own random init.
        ckpt.seed_everything(cfg.seed)
        start_step = ckpt.read_latest(cfg.output) or 0
        resume_dir = ckpt.fetch_checkpoint(cfg.output, start_step) if start_step else None
        init_dir = str(resume_dir / "model") if resume_dir else resolve_init(cfg, cfg.seed, scratch.name)
        info = init_distributed(cfg.device)
        setup_logging(info)
        with stage_telemetry(STAGE, info, cfg):
            # ---- data: the transition store, batches mixed to rho_real ground truth (DESIGN §2.7)
            store = open_store(storage.input_path(cfg.transitions))
            store_alpha = float(store.metadata.get("alpha", 1.0))
            if store_alpha != cfg.alpha:
                raise BcoderError(
                    f"{cfg.transitions}: annotated with alpha={store_alpha} but the config says "
                    f"alpha={cfg.alpha}; ckpt_adv, phi and theta must share one alpha"
                )
            if not store.has_v_phi:
                raise BcoderError(
                    f"{cfg.transitions}: the store has no v_phi column; annotate it with --phi first"
                )
            global_batch = cfg.batch_size * cfg.grad_accum * info.world_size
            sampler = MixedBatchSampler(
                store, global_batch, cfg.rho_real, cfg.seed, rank=info.rank, world_size=info.world_size
            )
            log.info(
                "theta: %d programs (%d ground truth, %d generated), global batch %d = %d x %d x %d ranks",
                len(store), store.num_gt, store.num_generated, global_batch, cfg.batch_size,
                cfg.grad_accum, info.world_size,
            )  # fmt: skip

            # ---- model: frozen encoder + θ decoder, LM head and residual value heads h1 − h2
            model = BCoderModel.from_pretrained(init_dir, stage=STAGE, dropout=cfg.dropout)
            # The tokenizer travels with θ (sample and rank read it from the model directory).
            tokenizer = load_tokenizer(init_dir if resume_dir else resolve_tokenizer_spec(cfg, init_dir))
            model.to(info.device)
            model.alpha = cfg.alpha  # saved with the heads; `rank` scores with it
            model.train()
            params = list(model.trainable_parameters(STAGE))
            bf16 = use_bf16(cfg, info)
            pad_id = model.pad_token_id

            # ---- loss, optimiser, schedule
            weights = {
                "beta_q": cfg.beta_q,
                "beta_adv": cfg.beta_adv,
                "beta_ce": cfg.beta_ce,
                "alpha": cfg.alpha,
            }
            loss_fn = functools.partial(theta_loss, gamma=cfg.gamma, **weights)
            net = wrap_ddp(LossModule(model, loss_fn), info, cfg)
            optimizer = make_optimizer(params, cfg.optim, model.value_head_parameters(STAGE))
            scheduler = make_scheduler(optimizer, cfg.optim, cfg.max_steps)

            # ---- resume: optimiser, scheduler, RNG and data position exactly where they were
            if resume_dir is not None:
                step, data_state = ckpt.load_training_state(
                    resume_dir, info, optimizer=optimizer, scheduler=scheduler
                )
                sampler.load_state_dict(data_state)
                log.info("theta: resumed from %s", ckpt.step_uri(cfg.output, step))
            else:
                step = 0
                ckpt.seed_everything(cfg.seed + info.rank)  # distinct dropout masks per rank

            def write_model(path: Path) -> None:
                model.save_pretrained(str(path), STAGE, tokenizer=tokenizer)
                model.train()  # saving builds an eval-mode HF view sharing θ's modules: undo that

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
                        log.info("theta: saved %s (%.1fs)", ckpt.step_uri(cfg.output, step), seconds)

            loader.close()
            # Free DDP (and its reducer's hold on the process group) while every rank is still here:
            # a gloo group torn down after a peer exited can block its destructor forever.
            del net

            # ---- export: θ as a plain HF T5 (+ heads), read by sample and rank
            def write_final(path: Path) -> None:
                write_model(path)
                if cfg.phi:
                    # θ and φ side by side: `bcoder rank --model F --phi F` works on one directory.
                    phi_dir = storage.input_path(cfg.phi)
                    for name in (PHI_WEIGHTS, PHI_CONFIG):
                        shutil.copy2(phi_dir / name, path / name)

            final = ckpt.export_final(info, cfg.output, write_final, cfg, logger.history)
            log.info("theta: done, model in %s", final)
            return TrainResult(final=final, history=logger.history)
    finally:
        scratch.cleanup()
        cleanup()
