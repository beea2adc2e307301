"""CPU benchmark: a phi step and a theta step against a supervised fine-tuning step (DESIGN §2.6).

DESIGN §2.6 makes it a requirement that, thanks to the annotation columns, a theta step costs no more
than a plain supervised fine-tuning step of the same model on the same batch (a naive
implementation runs three decoders). This script builds the mid-size T5 shape
(configs/models/mid.json, the T5-small shape with CodeT5's 32,100-token vocabulary) with random
weights, and times full training steps (loss, backward, AdamW) of

    sft    the whole T5 trains (cross-entropy)
    phi    frozen encoder (no grad) + φ decoder and value head (TD loss, Eq. 12)
    theta  frozen encoder (no grad) + θ decoder, LM head, h1 (L_Q + 0.1 L_adv + 0.5 L_ce)

on the same batch in one run (the three stages' steps interleaved round by round, so that load on
a shared machine hits them alike), and prints the ratios phi/sft and theta/sft (target ≤ 1.0).

    python bench/bench_train_steps.py            # mid shape, batch 4 x (128 + 128) tokens
    python bench/bench_train_steps.py --tiny     # seconds (what the tests run)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_step_bench import build, make_batch, time_steps


def main(argv: list[str] | None = None) -> dict[str, float]:
    from bcoder_core.model.build import model_config

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny shape and batch (seconds; for tests)")
    ap.add_argument("--shape", default=None, help="configs/models name or T5 JSON (default mid)")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--src", type=int, default=None)
    ap.add_argument("--tgt", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    args = ap.parse_args(argv)

    shape = args.shape or ("tiny" if args.tiny else "mid")
    batch = args.batch or 4
    src, tgt = args.src or (32 if args.tiny else 128), args.tgt or (24 if args.tiny else 128)
    warmup, steps = args.warmup or 1, args.steps or (2 if args.tiny else 5)
    device = torch.device("cpu")
    config = model_config(shape)
    data = make_batch(config.vocab_size, batch, src, tgt, device)
    print(f"shape {shape}, batch {batch} x ({src} + {tgt}) tokens, fp32 on CPU, {torch.get_num_threads()} threads, "
          f"fastest of {steps} rounds after {warmup} warm-up (stages interleaved)")  # fmt: skip
    # All three models live side by side and their steps are timed round-robin, so a shared, busy
    # machine slows each stage alike and the ratios stay meaningful.
    stages = ("sft", "phi", "theta")
    from bcoder_core.model.build import random_t5

    t5 = random_t5(config, seed=0)  # every stage starts from a copy of the same weights
    built = {stage: build(stage, config, device, t5) for stage in stages}
    times: dict[str, list[float]] = {stage: [] for stage in stages}
    for round_ in range(warmup + steps):
        for stage in stages:
            model, loss_fn, optimizer = built[stage]
            (t,) = time_steps(model, loss_fn, optimizer, data, warmup=0, steps=1, bf16=False)
            if round_ >= warmup:
                times[stage].append(t)
    # The fastest round: interference from other processes only ever adds time.
    seconds = {stage: min(ts) for stage, ts in times.items()}
    for stage in stages:
        n_train = sum(p.numel() for p in built[stage][0].trainable_parameters(stage))
        print(f"{stage:>5}: {seconds[stage] * 1e3:9.1f} ms/step  ({n_train / 1e6:.1f}M trainable parameters)")
    ratios = {f"{s}/sft": seconds[s] / seconds["sft"] for s in ("phi", "theta")}
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}  (target <= 1.0)")
    return ratios


if __name__ == "__main__":
    main()
