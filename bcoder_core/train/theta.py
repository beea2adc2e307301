"""Theta stage: fine-tune Q_θ (DESIGN §2.5, paper Eq. 8, 15, 17).

    L_ft = β_q·L_Q + β_adv·L_adv + β_ce·L_ce        (β_q = 1; 0 for the "no RL" ablation)
    L_Q  = mean_t [ r_t + γ·sg(A_θ(s_{t+1}, â_{t+1}) + V_θ(s_{t+1})) − (A_θ(s_t, a_t) + V_θ(s_t)) ]²

with â_{t+1} the checkpoint's greedy token (``ckpt_greedy``) and V_θ = bound(u^r_θ + u_φ), u_φ from
the store's ``v_phi`` column: a step runs the frozen encoder (no grad) and the θ decoder only, the
cost of a supervised fine-tuning step (DESIGN §2.6). Read top to bottom: data, model, loss,
optimiser, schedule, resume, the loop, export.

Run: ``bcoder train theta --config configs/train/theta-apps.yaml`` (or under
``torchrun --standalone --nproc_per_node=8``).
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

from bcoder_core import storage
from bcoder_core.config import ThetaConfig
from bcoder_core.errors import BcoderError
from bcoder_core.train import setup
from bcoder_core.train.encoder_cache import cache_for_stage
from bcoder_core.train.loading import mixed_sampler, store_prefetcher
from bcoder_core.train.progress import Progress, TrainResult
from bcoder_core.train.step import setup_training, train_step

STAGE = "theta"


def train_theta(cfg: ThetaConfig) -> TrainResult:
    """Train Q_θ as ``cfg`` says (resuming from ``<output>/latest`` if present); returns the URI of
    ``<output>/final`` (θ, with φ beside it when ``cfg.phi`` is set) and the loss curve."""
    from bcoder_core.model.qmodel import PHI_CONFIG, PHI_WEIGHTS, BCoderModel
    from bcoder_core.model.tokenizer import load_tokenizer
    from bcoder_core.rl.losses import theta_loss
    from bcoder_core.rl.transitions import open_store

    setup.validate_common(cfg)
    setup.validate_rho_real(cfg)
    if cfg.phi:
        _check_phi(cfg.phi)
    with setup.run_scope(STAGE) as scratch:
        # ---- starting point: the latest checkpoint (θ saved as a plain HF T5 + heads), else the
        # initial T5 (both before the process group)
        resume_dir = setup.find_resume(cfg)
        init_dir = str(resume_dir / "model") if resume_dir else setup.resolve_init(cfg, cfg.seed, scratch)
        with setup.join_ranks(STAGE, cfg) as info:
            # ---- data: the transition store, batches mixed to rho_real ground truth (DESIGN §2.7)
            store = open_store(cfg.transitions)  # a local store, a store of parts, or S3
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
            sampler = mixed_sampler(store, cfg, info, STAGE)

            # ---- model: frozen encoder + θ decoder, LM head and residual value heads h1 − h2
            model = BCoderModel.from_pretrained(
                init_dir, stage=STAGE, dropout=cfg.dropout, **setup.model_options(cfg, info)
            )
            # The tokenizer travels with θ (sample and rank read it from the model directory).
            tokenizer = load_tokenizer(
                init_dir if resume_dir else setup.resolve_tokenizer_spec(cfg, init_dir)
            )
            model.alpha = cfg.alpha  # saved with the heads; `rank` scores with it

            # ---- loss, optimiser, schedule
            weights = {
                "beta_q": cfg.beta_q,
                "beta_adv": cfg.beta_adv,
                "beta_ce": cfg.beta_ce,
                "alpha": cfg.alpha,
            }
            cache = cache_for_stage(model, store, cfg.encoder_cache_mb, STAGE)  # frozen encoder, §2.6
            loss_fn = functools.partial(theta_loss, gamma=cfg.gamma, encoder_cache=cache, **weights)
            parts = setup_training(model, loss_fn, STAGE, cfg, info)

            def write_model(path: Path) -> None:
                model.save_pretrained(str(path), STAGE, tokenizer=tokenizer)

            # ---- resume, then the loop
            progress = Progress(STAGE, info, cfg, model, parts, sampler, write_model, resume_dir)
            with store_prefetcher(store, sampler, cfg, model.pad_token_id) as loader:
                for step in range(progress.start_step, cfg.max_steps):
                    done = train_step(parts, loader, step)  # micro-batches, DDP all-reduce, clip, AdamW
                    progress.after_step(step + 1, done)  # the step log, a checkpoint when due

            # ---- export: θ as a plain HF T5 (+ heads), read by sample and rank
            def write_final(path: Path) -> None:
                write_model(path)
                if cfg.phi:
                    # θ and φ side by side: `bcoder rank --model F --phi F` works on one directory.
                    phi_dir = storage.input_path(cfg.phi)
                    for name in (PHI_WEIGHTS, PHI_CONFIG):
                        shutil.copy2(phi_dir / name, path / name)

            return progress.export(write_final)


def _check_phi(uri: str) -> None:
    """φ is copied into final/ unread: a missing, truncated or garbage φ stops the run before training."""
    from bcoder_core.model.files import open_safetensors, read_json_object
    from bcoder_core.model.qmodel import PHI_CONFIG, PHI_WEIGHTS

    phi_dir = storage.input_path(uri)
    if not (phi_dir / PHI_WEIGHTS).is_file():
        raise BcoderError(f"config: phi {uri}: no {PHI_WEIGHTS} (not a phi checkpoint)")
    with open_safetensors(phi_dir / PHI_WEIGHTS):
        pass  # the header parses: the file is whole
    if (phi_dir / PHI_CONFIG).is_file():
        read_json_object(phi_dir / PHI_CONFIG)
