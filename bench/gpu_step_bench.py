"""Training-step throughput of sft, phi and theta on a GPU: tokens/s and model FLOPs utilisation.

One short command on a GPU machine (about 2–4 minutes, most of it building three random models):

    python bench/gpu_step_bench.py                      # CodeT5-large shape, bf16 autocast, batch 16
    python bench/gpu_step_bench.py --tiny               # tiny shape on CPU (what the tests run)

The model is the CodeT5-large shape of DESIGN §5 (configs/models/codet5-large.json) with random
weights (nothing is downloaded); the batch is the paper's per-GPU batch of 16 programs with
600-token prompts and 512-token programs. Each stage runs its real step: loss (bcoder_core.rl.losses),
backward, AdamW. Steps are timed with CUDA synchronisation; the median of ``--steps`` after
``--warmup`` is reported.

FLOPs counted (the usual "model FLOPs": matmuls only, forward = 2 FLOPs per multiply-add,
backward = 2 x forward for trained parts):

    F_enc  = 2 N_enc S + 4 L_enc S^2 d                (encoder, per sequence)
    F_dec  = 2 N_dec T + 4 L_dec (T^2 + T S) d        (decoder with self- and cross-attention)
    F_head = 2 d V T                                   (LM head)
    sft   = 3 (F_enc + F_dec + F_head)                 (everything trains)
    phi   = F_enc + 3 F_dec                            (frozen encoder: forward only; value head ~0)
    theta = F_enc + 3 (F_dec + F_head)

with N_enc, N_dec the non-embedding parameters of the stacks, d = d_model, V = vocabulary, S/T the
prompt/program lengths, summed over the batch. MFU = counted FLOPs / step time / peak, with the
dense bf16 peak of the detected card: H100 SXM and H200 989.4 TFLOP/s, H100 PCIe 756 TFLOP/s,
A100 312 TFLOP/s (``--peak-tflops`` overrides; unknown cards print MFU as n/a).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PEAKS_TFLOPS = (("H200", 989.4), ("H100 PCIE", 756.0), ("H100", 989.4), ("A100", 312.0))


@dataclass
class Shape:
    """What the FLOP formula needs from a T5 config."""

    d: int
    vocab: int
    n_enc: int
    n_dec: int
    layers_enc: int
    layers_dec: int


def make_batch(vocab: int, batch: int, src: int, tgt: int, device: torch.device, seed: int = 0) -> dict:
    """A full-length training batch with every annotation column (half ground truth)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(5, vocab, (batch, tgt), generator=g)
    labels[:, -1] = 2  # EOS ends every program
    out = {
        "input_ids": torch.randint(5, vocab, (batch, src), generator=g),
        "attention_mask": torch.ones(batch, src, dtype=torch.long),
        "labels": labels,
        "reward": torch.tensor([1.0, -0.3, -0.6, -1.0] * (batch // 4 + 1))[:batch],
        "is_gt": torch.arange(batch) % 2 == 0,
        "ckpt_adv": -torch.rand(batch, tgt, generator=g),
        "ckpt_greedy": torch.randint(5, vocab, (batch, tgt), generator=g),
        "v_phi": torch.randn(batch, tgt, generator=g) * 0.1,
    }
    return {k: v.to(device) for k, v in out.items()}


def shape_of(config: Any) -> Shape:
    """Non-embedding parameter counts of the encoder and decoder stacks (meta device, no memory)."""
    from transformers import T5ForConditionalGeneration

    with torch.device("meta"):
        t5 = T5ForConditionalGeneration(config)

    def count(stack: torch.nn.Module) -> int:
        return sum(p.numel() for n, p in stack.named_parameters() if not n.startswith("embed_tokens"))

    return Shape(
        d=config.d_model, vocab=config.vocab_size, n_enc=count(t5.encoder), n_dec=count(t5.decoder),
        layers_enc=config.num_layers, layers_dec=config.num_decoder_layers,
    )  # fmt: skip


def step_flops(stage: str, sh: Shape, batch: int, src: int, tgt: int) -> float:
    """Model FLOPs of one training step (module docstring)."""
    f_enc = 2 * sh.n_enc * src + 4 * sh.layers_enc * src * src * sh.d
    f_dec = 2 * sh.n_dec * tgt + 4 * sh.layers_dec * (tgt * tgt + tgt * src) * sh.d
    f_head = 2 * sh.d * sh.vocab * tgt
    per_seq = {
        "sft": 3 * (f_enc + f_dec + f_head),
        "phi": f_enc + 3 * f_dec,
        "theta": f_enc + 3 * (f_dec + f_head),
    }[stage]
    return float(per_seq * batch)


def build(stage: str, config: Any, device: torch.device, t5: Any = None) -> tuple[Any, Any, Any]:
    """(model, loss function, AdamW) for one stage, from a copy of ``t5`` (random weights, built on
    the CPU once by the caller) or from fresh random weights."""
    import copy
    import functools

    from bcoder_core.config import OptimConfig
    from bcoder_core.model.build import random_t5
    from bcoder_core.model.t5 import T5QModel
    from bcoder_core.rl.losses import phi_loss, sft_loss, theta_loss
    from bcoder_core.train.optim import make_optimizer

    t5 = copy.deepcopy(t5) if t5 is not None else random_t5(config, seed=0)
    model = T5QModel(t5, stage).to(device)
    model.train()
    loss_fn = {
        "sft": sft_loss,
        "phi": functools.partial(phi_loss, gamma=0.999),
        "theta": functools.partial(theta_loss, gamma=0.999, beta_adv=0.1, beta_ce=0.5),
    }[stage]
    optimizer = make_optimizer(model.trainable_parameters(stage), OptimConfig(lr=1e-5))
    return model, loss_fn, optimizer


def stage_loss(stage: str) -> Any:
    """The real loss of ``stage`` with the paper's coefficients (what every bench step runs)."""
    import functools

    from bcoder_core.rl.losses import phi_loss, sft_loss, theta_loss

    return {
        "sft": sft_loss,
        "phi": functools.partial(phi_loss, gamma=0.999),
        "theta": functools.partial(theta_loss, gamma=0.999, beta_adv=0.1, beta_ce=0.5),
    }[stage]


def build_causal(
    stage: str, lm: Any, device: torch.device, lora: dict[str, Any] | None = None
) -> tuple[Any, Any, Any]:
    """(model, loss function, AdamW) for one stage of the causal family, from a copy of the language
    model ``lm`` (random weights, built once by the caller); ``lora``: LoRA settings for phi/theta
    (``{"r", "alpha", "dropout", "target_modules"}``), None for full fine-tuning."""
    import copy

    from bcoder_core.config import OptimConfig
    from bcoder_core.model.causal import CausalQModel, LoraSettings
    from bcoder_core.train.optim import make_optimizer

    settings = LoraSettings.from_any(lora) if stage != "sft" else None
    model = CausalQModel(copy.deepcopy(lm), stage, lora=settings).to(device)
    model.train()
    optimizer = make_optimizer(model.trainable_parameters(stage), OptimConfig(lr=1e-5))
    return model, stage_loss(stage), optimizer


def held_memory(model, loss_fn, optimizer, batch: dict) -> dict[str, int]:
    """Bytes a training step holds, counted tensor by tensor (any device; the CPU measure).

    Runs one step (zero_grad, loss, backward, AdamW step) on ``model`` and counts, by unique
    storage (a storage shared by two tensors counts once):

    - ``weights``: every parameter and buffer of the model (frozen base included);
    - ``grads``: the ``.grad`` of every parameter after the step;
    - ``optimizer``: every tensor in the optimiser's state after the step (AdamW: exp_avg,
      exp_avg_sq, step; created at the first step, so a fresh optimiser is fine);
    - ``activations``: the tensors autograd saved for backward during the forward pass and the loss
      (``torch.autograd.graph.saved_tensors_hooks``; storages of weights left out, as counted above),
      i.e. what the graph holds when backward starts.

    Not counted: transient buffers inside an op, the activation gradients alive during backward,
    the batch itself, allocator caching and fragmentation — so this is a lower bound of the peak.
    """
    weights = {id(t): t for t in (*model.parameters(), *model.buffers())}
    weight_ptrs = {t.untyped_storage().data_ptr() for t in weights.values()}

    def storage_bytes(tensors) -> int:
        seen: dict[int, int] = {}
        for t in tensors:
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
        return sum(seen.values())

    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.layout == torch.strided:
            st = t.untyped_storage()
            if st.data_ptr() not in weight_ptrs:
                saved[st.data_ptr()] = st.nbytes()
        return t

    optimizer.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = loss_fn(model, batch)
    loss.backward()
    optimizer.step()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    out = {
        "weights": storage_bytes(weights.values()),
        "grads": storage_bytes(grads),
        "optimizer": storage_bytes(state),
        "activations": sum(saved.values()),
    }
    out["total"] = sum(out.values())
    return out


def time_steps(model, loss_fn, optimizer, batch: dict, *, warmup: int, steps: int, bf16: bool) -> list[float]:
    """Seconds of each timed training step (forward, backward, optimiser), after warm-up."""
    device = batch["labels"].device
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        ctx = (
            torch.autocast(device.type, dtype=torch.bfloat16)
            if bf16
            else torch.autocast("cpu", enabled=False)
        )
        with ctx:
            loss, _ = loss_fn(model, batch)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def peak_flops(device: torch.device, override: float | None) -> tuple[float | None, str]:
    if override:
        return override * 1e12, f"{override} TFLOP/s (given)"
    if device.type != "cuda":
        return None, "n/a (CPU)"
    name = torch.cuda.get_device_name(device).upper()
    for key, tflops in PEAKS_TFLOPS:
        if key in name:
            return tflops * 1e12, f"{tflops} TFLOP/s dense bf16 ({torch.cuda.get_device_name(device)})"
    return None, f"unknown card {torch.cuda.get_device_name(device)!r}: pass --peak-tflops"


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    from bcoder_core.model.build import model_config

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny shape, small batch, CPU/fp32 (for tests)")
    ap.add_argument("--shape", default=None, help="configs/models name or T5 JSON (default codet5-large)")
    ap.add_argument("--batch", type=int, default=None, help="programs per step (default 16)")
    ap.add_argument("--src", type=int, default=None, help="prompt tokens (default 600)")
    ap.add_argument("--tgt", type=int, default=None, help="program tokens (default 512)")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--stages", default="sft,phi,theta")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    args = ap.parse_args(argv)

    tiny = args.tiny
    device = torch.device(args.device or ("cpu" if tiny or not torch.cuda.is_available() else "cuda"))
    shape_name = args.shape or ("tiny" if tiny else "codet5-large")
    batch = args.batch or (4 if tiny else 16)
    src, tgt = args.src or (32 if tiny else 600), args.tgt or (24 if tiny else 512)
    warmup, steps = args.warmup or (1 if tiny else 3), args.steps or (2 if tiny else 10)
    bf16 = device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True

    config = model_config(shape_name)
    sh = shape_of(config)
    peak, peak_text = peak_flops(device, args.peak_tflops)
    print(f"shape {shape_name}: d_model {sh.d}, vocab {sh.vocab}, {sh.n_enc / 1e6:.1f}M encoder + "
          f"{sh.n_dec / 1e6:.1f}M decoder non-embedding params; batch {batch} x ({src} + {tgt}) tokens; "
          f"{'bf16 autocast' if bf16 else 'fp32'} on {device}; peak {peak_text}")  # fmt: skip
    batch_t = make_batch(sh.vocab, batch, src, tgt, device)
    from bcoder_core.model.build import random_t5

    t0 = time.perf_counter()
    t5 = random_t5(config, seed=0)  # once, on the CPU; every stage starts from a copy
    print(f"random init: {time.perf_counter() - t0:.0f}s")
    results: dict[str, dict[str, float]] = {}
    for stage in args.stages.split(","):
        model, loss_fn, optimizer = build(stage, config, device, t5)
        times = time_steps(model, loss_fn, optimizer, batch_t, warmup=warmup, steps=steps, bf16=bf16)
        sec = statistics.median(times)
        flops = step_flops(stage, sh, batch, src, tgt)
        tok_s = batch * (src + tgt) / sec
        mfu = flops / sec / peak if peak else float("nan")
        mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
        results[stage] = {"seconds": sec, "tokens_per_s": tok_s, "tflops": flops / sec / 1e12, "mfu": mfu}
        print(f"{stage:>5}: {sec * 1e3:8.1f} ms/step  {tok_s:10.0f} tokens/s  "
              f"{flops / sec / 1e12:7.1f} TFLOP/s  MFU {'n/a' if mfu != mfu else f'{100 * mfu:.1f}%'}"
              f"{'' if mem != mem else f'  peak mem {mem:.1f} GiB'}")  # fmt: skip
        del model, loss_fn, optimizer
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
    if "sft" in results:
        for stage in ("phi", "theta"):
            if stage in results:
                print(f"{stage}/sft step time: {results[stage]['seconds'] / results['sft']['seconds']:.2f}")
    return results


if __name__ == "__main__":
    main()
