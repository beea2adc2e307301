"""Training-step throughput of sft, phi and theta on a GPU: tokens/s and model FLOPs utilisation.

One short command on a GPU machine (about 2–4 minutes, most of it building three random models):

    python bench/gpu_step_bench.py                      # CodeT5-large shape, bf16 autocast, batch 16
    python bench/gpu_step_bench.py --tiny               # tiny shape on CPU (what the tests run)
    python bench/gpu_step_bench.py --sweep --json step.json        # theta: the speed-up variants
    python bench/gpu_step_bench.py --tiny --sweep --device cpu     # the sweep's smoke test

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

Attention already goes through ``torch.nn.functional.scaled_dot_product_attention``: transformers
5.24's T5 picks its attention function from ``config._attn_implementation``, and the model
``bcoder_core.model.build.random_t5`` builds (``T5ForConditionalGeneration(config)``) gets
``"sdpa"`` (checked: the sweep prints it, tests/train/test_train_bench.py asserts it). Its sdpa
integration passes T5's relative position bias (plus the padding or causal mask) as sdpa's
additive float mask, so no attention of our own is written here. The flash kernel takes no such
mask, so on CUDA sdpa picks one that does (memory-efficient, cuDNN) or its math fallback.

**--sweep** (default stage: theta) runs, one after another in one process, variants of the step
(``--variants``: a subset, in order) and prints a line each, then the best variant and its MFU
against ``base``:

    base          the trainer today: fp32 weights, bf16 autocast, foreach AdamW, micro-batch 16
    fused         torch.optim.AdamW(fused=True) (CUDA only; skipped with the reason elsewhere)
    batch32/64    micro-batch 32 / 64 with fused AdamW (foreach on a CPU); a CUDA out-of-memory
                  skips the variant with the reason and the sweep goes on
    compile       the best batch so far with its optimiser, the model's stacks compiled in place
                  (``module.compile()`` on the encoder and the trained decoder, the whole T5 for
                  sft): the losses call the model's methods (encode, theta_outputs ...), not its
                  ``forward``, so ``torch.compile(model)`` would compile nothing they run. The
                  warm-up steps absorb the compilation; a failure prints one line and the sweep
                  goes on (so does the sweep after any other variant's error, printed as its
                  skip reason). Backend: ``--compile-backend`` (inductor; eager with --tiny, where
                  inductor's C++ build alone takes a minute on a small CPU)
    bf16-weights  the best non-compiled batch and optimiser, the model cast to bf16, no autocast,
                  AdamW on the bf16 parameters (no fp32 master copy). This changes the numerics;
                  the trainer does not do it.

The optimiser of every variant keeps ``train.optim.make_optimizer``'s parameter groups (its own
groups are rebuilt with ``fused=True`` for the fused variants; bcoder_core is not changed).
``--json PATH`` writes every result (per stage and variant: seconds, tokens_per_s, tflops, mfu,
peak_gib, batch, src, tgt, device, peak_tflops; a skipped variant: its reason), rewritten after each
variant so a run cut short by a timeout leaves what it measured; ``bench/apps_walltime.py`` reads it.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PEAKS_TFLOPS = (("H200", 989.4), ("H100 PCIE", 756.0), ("H100", 989.4), ("A100", 312.0))
VARIANTS = ("base", "fused", "batch32", "batch64", "compile", "bf16-weights")


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


def bench_optimizer(params: list[torch.nn.Parameter], *, fused: bool = False) -> torch.optim.AdamW:
    """The trainer's AdamW (``train.optim.make_optimizer``, foreach), or the same parameter groups
    and hyper-parameters with ``fused=True`` (the trainer avoids fused for bit-exact resume)."""
    from bcoder_core.config import OptimConfig
    from bcoder_core.train.optim import make_optimizer

    cfg = OptimConfig(lr=1e-5)
    trainer = make_optimizer(params, cfg)
    if not fused:
        return trainer
    # Its groups, not a copy of its grouping rule: the same decay / no-decay split by construction.
    keep = ("params", "lr", "weight_decay")
    groups = [{k: g[k] for k in keep} for g in trainer.param_groups]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=True)


def build(
    stage: str,
    config: Any,
    device: torch.device,
    t5: Any = None,
    *,
    fused: bool = False,
    bf16_weights: bool = False,
) -> tuple[Any, Any, Any]:
    """(model, loss function, AdamW) for one stage, from a copy of ``t5`` (random weights, built on
    the CPU once by the caller) or from fresh random weights; ``fused``: fused AdamW (CUDA);
    ``bf16_weights``: the model cast to bf16 before the optimiser is made (its state is bf16 too)."""
    import copy

    from bcoder_core.model.build import random_t5
    from bcoder_core.model.t5 import T5QModel

    t5 = copy.deepcopy(t5) if t5 is not None else random_t5(config, seed=0)
    model = T5QModel(t5, stage).to(device)
    if bf16_weights:
        model = model.to(torch.bfloat16)
    model.train()
    optimizer = bench_optimizer(model.trainable_parameters(stage), fused=fused)
    return model, stage_loss(stage), optimizer


def compile_stacks(model: Any, stage: str, backend: str) -> list[str]:
    """Compile, in place, the stacks a ``stage`` step runs; returns their names. (The losses call the
    model's methods, not its forward, so compiling the model object itself would compile nothing.)"""
    names = ["t5"] if stage == "sft" else ["encoder", f"{stage}_decoder"]
    for name in names:
        getattr(model, name).compile(backend=backend)
    return names


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


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _json_num(x: float | None) -> float | None:
    """JSON has no NaN: an unknown number (MFU on a CPU, memory off CUDA) is null."""
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def write_json(path: str, payload: dict[str, Any]) -> None:
    """Write ``payload`` atomically (a reader never sees half a file, a timeout keeps the last one)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


@dataclass
class Variant:
    """One configuration of the sweep's step (module docstring)."""

    name: str
    batch: int
    fused: bool = False
    compile: bool = False
    bf16_weights: bool = False

    def describe(self, device: torch.device, backend: str) -> str:
        parts = [f"batch {self.batch}", "fp32 weights + bf16 autocast" if device.type == "cuda" else "fp32"]
        if self.bf16_weights:
            parts[1] = "bf16 weights, no autocast"
        parts.append("fused AdamW" if self.fused else "foreach AdamW")
        if self.compile:
            parts.append(f"compiled ({backend})")
        return ", ".join(parts)


def measure(
    stage: str,
    v: Variant,
    *,
    config: Any,
    t5: Any,
    sh: Shape,
    device: torch.device,
    src: int,
    tgt: int,
    warmup: int,
    steps: int,
    peak: float | None,
    backend: str,
) -> dict[str, Any]:
    """Build ``stage`` as variant ``v`` says, time its steps, and return its record (JSON-ready)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model, loss_fn, optimizer = build(stage, config, device, t5, fused=v.fused, bf16_weights=v.bf16_weights)
    if v.compile:
        compile_stacks(model, stage, backend)
    batch_t = make_batch(sh.vocab, v.batch, src, tgt, device)
    autocast = device.type == "cuda" and not v.bf16_weights
    times = time_steps(model, loss_fn, optimizer, batch_t, warmup=warmup, steps=steps, bf16=autocast)
    sec = statistics.median(times)
    flops = step_flops(stage, sh, v.batch, src, tgt)
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {
        "variant": v.name,
        "seconds": sec,
        "tokens_per_s": v.batch * (src + tgt) / sec,
        "tflops": flops / sec / 1e12,
        "mfu": flops / sec / peak if peak else None,
        "peak_gib": mem,
        "batch": v.batch,
        "src": src,
        "tgt": tgt,
        "device": device_name(device),
        "peak_tflops": peak / 1e12 if peak else None,
        "fused": v.fused,
        "compile": v.compile,
        "bf16_weights": v.bf16_weights,
        "autocast": autocast,
    }


def _fmt_record(stage: str, r: dict[str, Any]) -> str:
    mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
    mem = "" if r["peak_gib"] is None else f"  peak mem {r['peak_gib']:.1f} GiB"
    return (
        f"{stage:>5} {r['variant']:<12}: batch {r['batch']:3d}  {r['seconds'] * 1e3:8.1f} ms/step  "
        f"{r['tokens_per_s']:10.0f} tokens/s  {r['tflops']:8.3g} TFLOP/s  MFU {mfu}{mem}"
    )


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def sweep_stage(
    stage: str,
    *,
    base_batch: int,
    variants: list[str],
    device: torch.device,
    backend: str,
    on_result: Any = None,
    **kw: Any,
) -> dict[str, dict[str, Any]]:
    """Run the selected variants of one stage in order (module docstring); a record or a skip each."""
    cuda = device.type == "cuda"
    out: dict[str, dict[str, Any]] = {}

    def best_so_far(exclude: tuple[str, ...] = ()) -> dict[str, Any] | None:
        done = [r for n, r in out.items() if "skipped" not in r and n not in exclude]
        return max(done, key=lambda r: r["tokens_per_s"], default=None)

    for name in variants:
        v: Variant | None = None
        reason = ""
        note = ""
        if name == "base":
            v = Variant(name, base_batch)
        elif name == "fused":
            if cuda:
                v = Variant(name, base_batch, fused=True)
            else:
                reason = f"fused AdamW is CUDA-only here (device {device.type})"
        elif name in ("batch32", "batch64"):
            v = Variant(name, int(name.removeprefix("batch")), fused=cuda)
            if not cuda:
                note = "  (foreach AdamW: fused is CUDA-only)"
        elif name == "compile":
            best = best_so_far()
            if best is None:
                reason = "no variant before it finished, so no best batch to compile"
            else:
                v = Variant(name, best["batch"], fused=best["fused"], compile=True)
                note = f"  (on {best['variant']}'s batch {best['batch']}, backend {backend})"
        elif name == "bf16-weights":
            best = best_so_far(exclude=("compile",))
            b, fused = (best["batch"], best["fused"]) if best else (base_batch, cuda)
            v = Variant(name, b, fused=fused, bf16_weights=True)
            note = "  (changes numerics: bf16 weights and AdamW state, no fp32 master; not the trainer)"
        else:
            raise SystemExit(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")

        record: dict[str, Any] | None = None
        oom = False
        if v is not None:
            try:
                record = measure(stage, v, device=device, backend=backend, **kw)
            except torch.cuda.OutOfMemoryError:
                oom = True  # freed below, outside the handler: its traceback pins the step's tensors
            except Exception as exc:
                # One line and go on: an unattended GPU run keeps the other variants' numbers.
                first = (str(exc).strip().splitlines() or [""])[0][:200]
                what = "torch.compile failed" if v.compile else "failed"
                reason = f"{what}: {type(exc).__name__}: {first}"
            finally:
                if v.compile:
                    import torch._dynamo as dynamo

                    dynamo.reset()  # drop compiled graphs (and the tensors they hold)
        if oom:
            reason = f"CUDA out of memory at micro-batch {v.batch}"
        _free(device)
        if record is None:
            out[name] = {"variant": name, "skipped": reason, "batch": v.batch if v else None}
            print(f"{stage:>5} {name:<12}: skipped: {reason}")
        else:
            record["describe"] = v.describe(device, backend)
            out[name] = record
            print(_fmt_record(stage, record) + note)
        if on_result is not None:
            on_result(stage, out)
    return out


def best_of(results: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The fastest measured variant and its ratio to ``base`` (MFU ratio = throughput ratio: the
    counted FLOPs per token do not depend on the batch size)."""
    done = {n: r for n, r in results.items() if "skipped" not in r}
    if not done:
        return None
    name = max(done, key=lambda n: done[n]["tokens_per_s"])
    base = done.get("base")
    ratio = done[name]["tokens_per_s"] / base["tokens_per_s"] if base else None
    return {"variant": name, "mfu": done[name]["mfu"], "ratio_to_base": ratio}


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    from bcoder_core.model.build import model_config

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny shape, small batch, CPU/fp32 (for tests)")
    ap.add_argument("--shape", default=None, help="configs/models name or T5 JSON (default codet5-large)")
    ap.add_argument("--batch", type=int, default=None, help="programs per step (default 16)")
    ap.add_argument("--src", type=int, default=None, help="prompt tokens (default 600)")
    ap.add_argument("--tgt", type=int, default=None, help="program tokens (default 512)")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--stages", default=None, help="default sft,phi,theta; theta with --sweep")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    ap.add_argument("--sweep", action="store_true", help="time the speed-up variants (module docstring)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="the sweep's variants, in order")
    ap.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor)")
    ap.add_argument("--json", default=None, metavar="PATH", help="write every result as JSON")
    args = ap.parse_args(argv)

    tiny = args.tiny
    device = torch.device(args.device or ("cpu" if tiny or not torch.cuda.is_available() else "cuda"))
    shape_name = args.shape or ("tiny" if tiny else "codet5-large")
    batch = args.batch or (4 if tiny else 16)
    src, tgt = args.src or (32 if tiny else 600), args.tgt or (24 if tiny else 512)
    warmup, steps = args.warmup or (1 if tiny else 3), args.steps or (2 if tiny else 10)
    stages = (args.stages or ("theta" if args.sweep else "sft,phi,theta")).split(",")
    bf16 = device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True

    config = model_config(shape_name)
    sh = shape_of(config)
    peak, peak_text = peak_flops(device, args.peak_tflops)
    print(f"shape {shape_name}: d_model {sh.d}, vocab {sh.vocab}, {sh.n_enc / 1e6:.1f}M encoder + "
          f"{sh.n_dec / 1e6:.1f}M decoder non-embedding params; batch {batch} x ({src} + {tgt}) tokens; "
          f"{'bf16 autocast' if bf16 else 'fp32'} on {device}; peak {peak_text}")  # fmt: skip
    batch_t = None if args.sweep else make_batch(sh.vocab, batch, src, tgt, device)
    from bcoder_core.model.build import random_t5

    t0 = time.perf_counter()
    t5 = random_t5(config, seed=0)  # once, on the CPU; every stage starts from a copy
    print(f"random init: {time.perf_counter() - t0:.0f}s")
    payload: dict[str, Any] = {
        "mode": "sweep" if args.sweep else "default",
        "shape": shape_name,
        "device": device_name(device),
        "peak_tflops": peak / 1e12 if peak else None,
        "batch": batch,
        "src": src,
        "tgt": tgt,
        "attn_implementation": t5.config._attn_implementation,
        "results": {},
        "best": {},
    }
    if args.sweep:
        return _sweep(args, payload, stages, t5=t5, config=config, sh=sh, device=device, batch=batch,
                      src=src, tgt=tgt, warmup=warmup, steps=steps, peak=peak, tiny=tiny)  # fmt: skip

    results: dict[str, dict[str, float]] = {}
    for stage in stages:
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
        payload["results"][stage] = {
            "base": {
                "variant": "base", **{k: _json_num(x) for k, x in results[stage].items()},
                "peak_gib": _json_num(mem), "batch": batch, "src": src, "tgt": tgt,
                "device": payload["device"], "peak_tflops": payload["peak_tflops"],
                "fused": False, "compile": False, "bf16_weights": False, "autocast": bf16,
            }
        }  # fmt: skip
        del model, loss_fn, optimizer
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
    if "sft" in results:
        for stage in ("phi", "theta"):
            if stage in results:
                print(f"{stage}/sft step time: {results[stage]['seconds'] / results['sft']['seconds']:.2f}")
    if args.json:
        write_json(args.json, payload)
    return results


def _sweep(args: Any, payload: dict[str, Any], stages: list[str], **kw: Any) -> dict[str, dict[str, Any]]:
    """The --sweep branch of :func:`main`: every variant of every stage, then the best of each."""
    tiny = kw.pop("tiny")
    base_batch = kw.pop("batch")
    backend = args.compile_backend or ("eager" if tiny else "inductor")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    print(f"attention: {payload['attn_implementation']} (T5's position bias as sdpa's additive mask); "
          f"variants: {', '.join(variants)}")  # fmt: skip

    def on_result(stage: str, out: dict[str, dict[str, Any]]) -> None:
        payload["results"][stage] = out
        if args.json:
            write_json(args.json, payload)

    for stage in stages:
        out = sweep_stage(stage, base_batch=base_batch, variants=variants, backend=backend,
                          on_result=on_result, **kw)  # fmt: skip
        best = best_of(out)
        payload["best"][stage] = best
        if best is None:
            print(f"best {stage}: none (every variant was skipped)")
        else:
            r = out[best["variant"]]
            base = out.get("base", {})
            ratio = "n/a (base not run)" if best["ratio_to_base"] is None else f"{best['ratio_to_base']:.2f}x"
            if r["mfu"] is not None:
                base_mfu = "n/a" if base.get("mfu") is None else f"{100 * base['mfu']:.1f}%"
                vs = f"MFU {100 * r['mfu']:.1f}% = {ratio} the baseline's (base: MFU {base_mfu})"
            else:
                vs = f"{ratio} the baseline's tokens/s = its MFU ratio (MFU itself n/a: no peak on {r['device']})"
            caveat = "; bf16 weights: not the trainer's numerics" if r["bf16_weights"] else ""
            print(f"best {stage}: {best['variant']} ({r['describe']}): {vs}{caveat}")
        if args.json:
            write_json(args.json, payload)
    if args.json:
        print(f"results written to {args.json}")
    return payload["results"]


if __name__ == "__main__":
    main()
