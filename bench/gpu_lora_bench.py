"""LoRA theta steps of a Qwen2.5-1.5B-shaped causal LM on one GPU: tokens/s, MFU and peak memory.

One short command on a GPU machine (well under 3 minutes: the random model is built on the GPU):

    python bench/gpu_lora_bench.py                       # Qwen2.5-1.5B shape, bf16, 8 x (512 + 512)
    python bench/gpu_lora_bench.py --tiny --device cpu   # tiny shape, fp32 on CPU (what the tests run)

The model is the Qwen2.5-1.5B shape (``QWEN2_1_5B``: hidden 1536, 28 layers, 12 heads / 2 KV heads,
intermediate 8960, vocabulary 151,936, tied embeddings, rope theta 1e6; 1,543.7M parameters) with
random weights in bf16, built directly on the device (nothing is downloaded). θ is a LoRA adapter
(r 16, alpha 32, dropout 0, all-linear: every linear layer of the network, not the LM head) on the
frozen base, plus the residual head h1 (``bcoder_core/model/causal.py``); peft keeps the adapters in
fp32. Each step is the real theta step: ``theta_loss`` (L_Q + 0.1 L_adv + 0.5 L_ce) under bf16
autocast, backward, AdamW over the adapter and h1 (``train/optim.py``). The batch is a micro-batch
of 8 programs with 512-token prompts and 512-token programs, every annotation column filled
(``gpu_step_bench.make_batch``); the network runs over P = S + T − 1 = 1023 positions per row
(``[prompt ; program[:-1]]``). Steps are timed with CUDA synchronisation; the median of ``--steps``
after ``--warmup`` is reported. tokens/s = batch · (S + T) / step time.

FLOPs counted (matmuls only, 2 FLOPs per multiply-add), per sequence:

    F = 4 N_base P                 frozen linear layers: forward (2) + input gradient (2); no
                                   weight gradient for a frozen weight
      + 6 N_lora P                 LoRA A, B: forward + input gradient + weight gradient
      + 12 L P^2 d_attn            attention scores and values: forward 4 L P^2 d_attn, backward
                                   2x that (no weights; the full P^2, not halved for the causal
                                   mask, as in gpu_step_bench)
      + 4 d V T                    the frozen (tied) LM head at the T program positions only:
                                   forward + input gradient

with N_base the parameters of the network's linear layers (q, k, v, o, gate, up, down; weights and
biases; embeddings, norms and the LM head excluded), N_lora the adapter's parameters, L layers,
d_attn = heads x head_dim, d = hidden, V = vocabulary, summed over the batch. (Layer 0's q/k/v need
no input gradient, their input being the frozen embedding: < 1% over.) Full fine-tuning would
count the usual 6 N P; a frozen base costs 2/3 of that. MFU = F / step time / peak, with the dense
bf16 peak of the detected card (``gpu_step_bench.PEAKS_TFLOPS``: H100 SXM and H200 989.4 TFLOP/s,
H100 PCIe 756, A100 312; ``--peak-tflops`` overrides). Peak memory is
``torch.cuda.max_memory_allocated`` over warm-up and timed steps (weights included); on a CPU it
is n/a and the memory the step holds is counted instead (``gpu_step_bench.held_memory``). If the
micro-batch does not fit, it is halved (and said so) until it does.
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_step_bench import held_memory, make_batch, peak_flops, stage_loss

QWEN2_1_5B = {
    "model_type": "qwen2", "hidden_size": 1536, "num_hidden_layers": 28, "num_attention_heads": 12,
    "num_key_value_heads": 2, "intermediate_size": 8960, "vocab_size": 151936,
    "tie_word_embeddings": True, "rope_theta": 1000000.0, "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6, "use_sliding_window": False, "bos_token_id": 151643, "eos_token_id": 151643,
}  # fmt: skip
TINY = {
    "model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "intermediate_size": 176, "vocab_size": 512, "tie_word_embeddings": True,
    "rope_theta": 1000000.0, "max_position_embeddings": 256, "rms_norm_eps": 1e-6,
    "use_sliding_window": False, "bos_token_id": 1, "eos_token_id": 2,
}  # fmt: skip
KEYS = ("step", "loss", "tokens/s", "TFLOP/s", "MFU", "peak memory")
"""The lines every run prints, each as ``key: value`` (what the smoke test checks)."""


@dataclass
class Counts:
    """What the FLOP formula needs (module docstring)."""

    n_base: int
    n_lora: int
    layers: int
    d_attn: int
    d: int
    vocab: int


def lora_theta_flops(c: Counts, batch: int, src: int, tgt: int) -> float:
    """Counted FLOPs of one LoRA theta step (module docstring)."""
    p = src + tgt - 1
    per_seq = 4 * c.n_base * p + 6 * c.n_lora * p + 12 * c.layers * p * p * c.d_attn + 4 * c.d * c.vocab * tgt
    return float(per_seq * batch)


def base_linear_params(config: Any) -> int:
    """Parameters of the network's linear layers (no embeddings, norms or LM head), on the meta device."""
    from transformers import AutoModelForCausalLM

    from bcoder_core.model.causal import backbone

    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(config)
    return sum(
        p.numel() for m in backbone(lm).modules() if isinstance(m, torch.nn.Linear) for p in m.parameters()
    )


def build_lm(config: Any, device: torch.device, dtype: torch.dtype, attn: str | None, seed: int = 0) -> Any:
    """A random ``*ForCausalLM`` of ``config``'s shape built directly on ``device`` in ``dtype``."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": dtype}
    if attn:
        kwargs["attn_implementation"] = attn
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        with torch.device(device):
            lm = AutoModelForCausalLM.from_config(config, **kwargs)
    return lm


def run_steps(model, loss_fn, optimizer, batch: dict, *, warmup: int, steps: int, bf16: bool):
    """Seconds of each timed step (zero_grad, loss, backward, AdamW) and the last step's stats."""
    device = batch["labels"].device
    times, stats = [], {}
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, stats = loss_fn(model, batch)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times, stats


def main(argv: list[str] | None = None) -> dict[str, float]:
    import peft
    import transformers

    from bcoder_core.config import OptimConfig
    from bcoder_core.model import lora as lora_lib
    from bcoder_core.model.causal import FAMILY, CausalQModel, LoraSettings
    from bcoder_core.train.optim import make_optimizer

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny shape and batch, fp32 (CPU smoke test)")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    ap.add_argument("--batch", type=int, default=None, help="programs per micro-batch (default 8)")
    ap.add_argument("--src", type=int, default=None, help="prompt tokens (default 512)")
    ap.add_argument("--tgt", type=int, default=None, help="program tokens (default 512)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 5)")
    ap.add_argument("--r", type=int, default=16, help="LoRA rank")
    ap.add_argument("--alpha", type=float, default=32.0, help="LoRA alpha")
    ap.add_argument("--attn", default=None, help="attn_implementation (default: transformers' choice)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak")
    args = ap.parse_args(argv)

    tiny = args.tiny
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not tiny else "cpu"))
    cuda = device.type == "cuda"
    bf16 = cuda and not tiny  # the tiny shape is fp32 everywhere (a smoke test)
    dtype = torch.bfloat16 if bf16 else torch.float32
    batch = args.batch or (4 if tiny else 8)
    src, tgt = args.src or (32 if tiny else 512), args.tgt or (24 if tiny else 512)
    warmup, steps = args.warmup or (1 if tiny else 2), args.steps or (2 if tiny else 5)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True

    shape_name = "qwen2-tiny" if tiny else "qwen2.5-1.5b"
    config = FAMILY.build_config(dict(TINY if tiny else QWEN2_1_5B))
    settings = LoraSettings(r=args.r, alpha=args.alpha, dropout=0.0, target_modules="all-linear")
    peak, peak_text = peak_flops(device, args.peak_tflops)

    t0 = time.perf_counter()
    lm = build_lm(config, device, dtype, args.attn)
    n_params = sum(p.numel() for p in lm.parameters())
    model = CausalQModel(lm, "theta", lora=settings)
    model.train()
    loss_fn = stage_loss("theta")
    optimizer = make_optimizer(model.trainable_parameters("theta"), OptimConfig(lr=1e-5))
    adapter = lora_lib.adapter_parameters(model.lm, "theta")
    heads_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    counts = Counts(
        n_base=base_linear_params(config), n_lora=sum(p.numel() for p in adapter),
        layers=config.num_hidden_layers, d_attn=config.num_attention_heads * heads_dim,
        d=config.hidden_size, vocab=config.vocab_size,
    )  # fmt: skip
    if cuda:
        torch.cuda.synchronize(device)
    build_s = time.perf_counter() - t0
    attn_impl = getattr(model.base_lm.config, "_attn_implementation", None)
    card = torch.cuda.get_device_name(device) if cuda else "CPU"
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}; "
          f"{card}; attention {attn_impl}")  # fmt: skip
    print(f"shape {shape_name}: hidden {config.hidden_size}, {config.num_hidden_layers} layers, "
          f"{config.num_attention_heads} heads / {config.num_key_value_heads} KV heads, vocab {config.vocab_size}, "
          f"{n_params / 1e6:.1f}M parameters ({counts.n_base / 1e6:.1f}M in linear layers) in {dtype}; "
          f"LoRA r {settings.r} alpha {settings.alpha:g} all-linear: {counts.n_lora / 1e6:.2f}M adapter "
          f"parameters ({adapter[0].dtype}); built in {build_s:.1f}s")  # fmt: skip

    while True:
        data = make_batch(config.vocab_size, batch, src, tgt, device)
        print(f"micro-batch {batch} x ({src} + {tgt}) tokens; {'bf16 autocast' if bf16 else 'fp32'} on "
              f"{device}; {steps} timed steps after {warmup} warm-up; peak {peak_text}")  # fmt: skip
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        try:
            times, stats = run_steps(model, loss_fn, optimizer, data, warmup=warmup, steps=steps, bf16=bf16)
            break
        except torch.cuda.OutOfMemoryError:
            if batch == 1:
                raise
            batch //= 2
            print(f"out of memory: retrying with micro-batch {batch}")
        del data
        optimizer.zero_grad(set_to_none=True)
        gc.collect()
        torch.cuda.empty_cache()

    sec = statistics.median(times)
    flops = lora_theta_flops(counts, batch, src, tgt)
    tok_s = batch * (src + tgt) / sec
    tflops = flops / sec / 1e12
    mfu = flops / sec / peak if peak else float("nan")
    loss = float(stats["loss"])
    spread = f"min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f}"
    print(f"step: {sec * 1e3:.1f} ms (median of {steps}; {spread})")
    print(f"loss: {loss:.4f} ({'finite' if math.isfinite(loss) else 'NOT FINITE'})")
    print(f"tokens/s: {tok_s:.0f}")
    print(f"TFLOP/s: {tflops:.3g} (counted {flops / 1e12:.4g} TFLOP per step, formula in the docstring)")
    if mfu == mfu:
        print(f"MFU: {100 * mfu:.1f}% of {peak_text}")
    else:
        print(f"MFU: {peak_text if peak_text.startswith('n/a') else f'n/a ({peak_text})'}")
    result = {
        "seconds": sec, "tokens_per_s": tok_s, "tflops": tflops, "mfu": mfu, "loss": loss,
        "batch": float(batch), "step_flops": flops,
    }  # fmt: skip
    if cuda:
        peak_mem = torch.cuda.max_memory_allocated(device)
        print(f"peak memory: {peak_mem / 2**30:.2f} GiB (torch.cuda.max_memory_allocated; "
              f"{torch.cuda.get_device_properties(device).total_memory / 2**30:.0f} GiB on the card)")  # fmt: skip
        result["peak_memory_bytes"] = float(peak_mem)
    else:
        held = held_memory(model, loss_fn, optimizer, data)
        print(f"peak memory: n/a on CPU; the step holds {held['total'] / 2**20:.1f} MiB (weights "
              f"{held['weights'] / 2**20:.1f} + grads {held['grads'] / 2**20:.1f} + AdamW "
              f"{held['optimizer'] / 2**20:.1f} + activations {held['activations'] / 2**20:.1f}, counted)")  # fmt: skip
        result["peak_memory_bytes"] = float("nan")
        result["held_bytes"] = float(held["total"])
    return result


if __name__ == "__main__":
    main()
