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
It also times phi and theta with the encoder cache of the training loops warm (``phi+cache``,
``theta+cache``: the batch's prompt states read, not computed; ``train/encoder_cache.py``) and
prints their ratios to the uncached steps.

    python bench/bench_train_steps.py            # mid shape, batch 4 x (128 + 128) tokens
    python bench/bench_train_steps.py --tiny     # seconds (what the tests run)

**The causal family** (``--family causal``): the same three steps on a Llama-shaped decoder-only
model (``bcoder_core/model/causal.py``; each network runs over ``[prompt ; program[:-1]]``):

    sft    the whole language model trains (cross-entropy)
    phi    φ = a copy of the network (no LM head) + value head; full fine-tuning
    theta  θ = the whole language model + h1 (L_Q + 0.1 L_adv + 0.5 L_ce); full fine-tuning

(``--lora``: phi and theta train LoRA adapters on the frozen model instead; sft stays full). The
default shape is a mid-size Llama (``CAUSAL_MID``: hidden 512, 8 layers, 8 heads, 4 KV heads,
intermediate 1408, CodeT5's 32,100-token vocabulary, untied LM head: 56.5M parameters);
``--tiny`` a tiny one; ``--shape`` takes a configs/models name or JSON of a causal model.

It then compares the **memory of a theta step with LoRA** (r 16, alpha 32, all-linear; θ's adapter
and h1 train) **against full fine-tuning** (the whole model and h1 train), same shape and batch,
and prints ``lora/full theta memory`` (target ≤ 0.5). Peak RSS of a process is no measure of one
step on a CPU (the allocator keeps freed memory, other models live in the same process), so the
memory is counted tensor by tensor after one step of a fresh model and optimiser
(``gpu_step_bench.held_memory``): bytes of unique storages of

    weights      every parameter and buffer (the frozen base included)
    grads        every parameter's .grad after the step
    optimizer    AdamW's state tensors (exp_avg, exp_avg_sq, step)
    activations  the tensors autograd saved for backward in the forward pass and the loss
                 (saved_tensors_hooks; storages of weights excluded), i.e. what the graph holds
                 when backward starts

and the total of the four. Not counted: transient buffers inside an op, activation gradients
during backward, the batch, allocator caching: a lower bound of the peak, the same for both.

    python bench/bench_train_steps.py --family causal          # mid Llama, 4 x (128 + 128), ~2 min
    python bench/bench_train_steps.py --family causal --tiny   # seconds (what the tests run)
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_step_bench import build, build_causal, held_memory, make_batch, time_steps

from bcoder_core.rl.transitions import prompt_key

_LAYOUT = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
CAUSAL_MID = {
    "model_type": "llama", "hidden_size": 512, "num_hidden_layers": 8, "num_attention_heads": 8,
    "num_key_value_heads": 4, "intermediate_size": 1408, "vocab_size": 32100,
    "max_position_embeddings": 2048, "tie_word_embeddings": False, **_LAYOUT,
}  # fmt: skip
CAUSAL_TINY = {
    "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "intermediate_size": 176, "vocab_size": 512,
    "max_position_embeddings": 256, "tie_word_embeddings": False, **_LAYOUT,
}  # fmt: skip
LORA = {"r": 16, "alpha": 32.0, "dropout": 0.0, "target_modules": "all-linear"}
STAGES = ("sft", "phi", "theta")


def interleaved(built: dict[str, tuple], data: dict, warmup: int, steps: int) -> dict[str, list[float]]:
    """Seconds of each timed step per stage, the stages' steps taken round-robin (one per round)."""
    times: dict[str, list[float]] = {stage: [] for stage in built}
    for round_ in range(warmup + steps):
        for stage, (model, loss_fn, optimizer) in built.items():
            (t,) = time_steps(model, loss_fn, optimizer, data, warmup=0, steps=1, bf16=False)
            if round_ >= warmup:
                times[stage].append(t)
    return times


def main(argv: list[str] | None = None) -> dict[str, float]:
    from bcoder_core.model.build import model_config

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", choices=("t5", "causal"), default="t5", help="model family (default t5)")
    ap.add_argument("--tiny", action="store_true", help="tiny shape and batch (seconds; for tests)")
    ap.add_argument("--shape", default=None, help="configs/models name or JSON (default: the mid shape)")
    ap.add_argument("--lora", action="store_true", help="causal: phi and theta train LoRA adapters")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--src", type=int, default=None)
    ap.add_argument("--tgt", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    args = ap.parse_args(argv)
    if args.family == "causal":
        return main_causal(args)
    if args.lora:
        ap.error("--lora is for --family causal (T5 trains whole decoders)")

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
    for stage in ("phi", "theta"):  # the same steps, their prompts' encoder states cached
        built[f"{stage}+cache"] = cached(*build(stage, config, device, t5))
    data["prompt_keys"] = tuple(prompt_key(row.tolist()) for row in data["input_ids"].cpu())
    times = interleaved(built, data, warmup, steps)
    # The fastest round: interference from other processes only ever adds time.
    seconds = {stage: min(ts) for stage, ts in times.items()}
    for stage in built:
        n_train = sum(p.numel() for p in built[stage][0].trainable_parameters(stage.partition("+")[0]))
        print(
            f"{stage:>11}: {seconds[stage] * 1e3:9.1f} ms/step  ({n_train / 1e6:.1f}M trainable parameters)"
        )
    ratios = {f"{s}/sft": seconds[s] / seconds["sft"] for s in ("phi", "theta")}
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}  (target <= 1.0)")
    for s in ("phi", "theta"):
        ratios[f"{s}+cache/{s}"] = seconds[f"{s}+cache"] / seconds[s]
        print(f"{s}+cache/{s}: {ratios[f'{s}+cache/{s}']:.2f}  (the encoder's share of a step, saved)")
    return ratios


def cached(model: Any, loss_fn: Any, optimizer: Any) -> tuple[Any, Any, Any]:
    """A built stage whose loss reads the prompts' encoder states from a warm EncoderCache."""
    from bcoder_core.train.encoder_cache import EncoderCache

    cache = EncoderCache()
    return model, functools.partial(loss_fn, encoder_cache=cache), optimizer


def main_causal(args: argparse.Namespace) -> dict[str, float]:
    """``--family causal``: step times of the three stages, then LoRA vs full theta memory."""
    from bcoder_core.model.build import model_config, random_model
    from bcoder_core.model.causal import FAMILY
    from bcoder_core.model.family import family_for_config

    if args.shape:
        shape, config = args.shape, model_config(args.shape)
        if family_for_config(config).name != "causal":
            raise SystemExit(f"--shape {args.shape}: not a causal model (use --family t5)")
    else:
        fields = CAUSAL_TINY if args.tiny else CAUSAL_MID
        shape, config = ("llama-tiny" if args.tiny else "llama-mid"), FAMILY.build_config(dict(fields))
    batch = args.batch or 4
    src, tgt = args.src or (32 if args.tiny else 128), args.tgt or (24 if args.tiny else 128)
    warmup, steps = args.warmup or 1, args.steps or (2 if args.tiny else 3)
    device = torch.device("cpu")
    data = make_batch(config.vocab_size, batch, src, tgt, device)
    lm = random_model(config, seed=0)  # every stage starts from a copy of the same weights
    n_params = sum(p.numel() for p in lm.parameters())
    print(f"causal shape {shape} ({config.model_type}, hidden {config.hidden_size}, "
          f"{config.num_hidden_layers} layers, vocab {config.vocab_size}, {n_params / 1e6:.1f}M parameters), "
          f"batch {batch} x ({src} + {tgt}) tokens, fp32 on CPU, {torch.get_num_threads()} threads, "
          f"fastest of {steps} rounds after {warmup} warm-up (stages interleaved), "
          f"phi/theta {'LoRA r ' + str(LORA['r']) if args.lora else 'full fine-tuning'}")  # fmt: skip
    built = {stage: build_causal(stage, lm, device, LORA if args.lora else None) for stage in STAGES}
    times = interleaved(built, data, warmup, steps)
    seconds = {stage: min(ts) for stage, ts in times.items()}
    for stage in STAGES:
        n_train = sum(p.numel() for p in built[stage][0].trainable_parameters(stage))
        print(f"{stage:>5}: {seconds[stage] * 1e3:9.1f} ms/step  ({n_train / 1e6:.1f}M trainable parameters)")
    results = {f"{s}/sft": seconds[s] / seconds["sft"] for s in ("phi", "theta")}
    for name, value in results.items():
        print(f"{name}: {value:.2f}  (target <= 1.0)")
    results.update({f"{stage}_s": seconds[stage] for stage in STAGES})
    del built

    # Memory of one theta step: full fine-tuning against LoRA, each on a fresh model and optimiser.
    mem = {}
    for name, settings in (("full", None), ("lora", LORA)):
        model, loss_fn, optimizer = build_causal("theta", lm, device, settings)
        mem[name] = held_memory(model, loss_fn, optimizer, data)
        del model, loss_fn, optimizer
    mib = 2**20
    for name, m in mem.items():
        print(f"theta {name:>4} memory: {m['total'] / mib:8.1f} MiB  (weights {m['weights'] / mib:.1f} + "
              f"grads {m['grads'] / mib:.1f} + AdamW {m['optimizer'] / mib:.1f} + "
              f"activations {m['activations'] / mib:.1f} MiB)")  # fmt: skip
    ratio = mem["lora"]["total"] / mem["full"]["total"]
    print(f"lora/full theta memory: {ratio:.2f}  (target <= 0.5)")
    results["lora/full memory"] = ratio
    results.update({f"{name}_bytes": float(m["total"]) for name, m in mem.items()})
    return results


if __name__ == "__main__":
    main()
