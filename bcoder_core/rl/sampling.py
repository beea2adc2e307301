"""Batched top-p sampling of m programs per problem from π_θ = softmax(ℓ_θ / T) (DESIGN §2.8).

θ is loaded as a plain Hugging Face model of its family (``T5ForConditionalGeneration``, or an
``AutoModelForCausalLM``; that is how ``train theta`` and ``train sft`` save it, a LoRA θ merged):
V is not needed to sample. The family (``model/family.py``) supplies the prompt ids, the decoding
loop and the program's text (cut from a chat completion's code fence, ``model/completions.py``).

Determinism. Every sample (problem p, sample j) owns a stream of uniforms drawn from a generator
seeded with a hash of ``(seed, p, j)``; the token at step t is the inverse-CDF pick of the top-p
distribution at the uniform ``u[t]``. So a sample depends on the seed, the problem and its index
only — not on the batch it lands in, the batch size, or how the problems are sharded over pods
(up to floating-point differences between batch shapes, which do not occur on CPU in practice).

The loop: prompts of a batch are encoded (T5) or prefilled (causal) once per problem, not once per
sample, decoding runs with a KV cache, and rows that emitted EOS leave the batch, so long programs
do not make the finished ones pay for their steps.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bcoder_core.errors import BcoderError
from bcoder_core.rl.configs import SamplingConfig
from bcoder_core.shards import parse_shard, shard_items

# --------------------------------------------------------------------------------------------------
# Small shared helpers (also used by annotate and rank)


def output_file(local: Path, default_name: str) -> Path:
    """The JSONL file to write inside what ``storage.output_path`` yielded (a file or a directory)."""
    return local / default_name if local.is_dir() else local


def resolve_model_dir(uri: str) -> str:
    """A local directory for a model URI (artifact or path), or the string itself (a hub id)."""
    from bcoder_core import storage

    if uri.startswith("s3://") or Path(uri).exists():
        return str(storage.input_path(uri))
    if uri.count("/") == 1 and not uri.startswith((".", "/")):
        return uri  # a Hugging Face hub id; from_pretrained resolves it
    raise BcoderError(f"{uri}: no such model directory or artifact")


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")


def load_tokenizer_for(model_dir: str, tokenizer: str | None = None):
    """``tokenizer`` if given, else the tokenizer saved with the checkpoint, else CodeT5's."""
    from bcoder_core.model.tokenizer import load_tokenizer

    if tokenizer:
        return load_tokenizer(tokenizer)
    d = Path(model_dir)
    if d.is_dir() and any((d / f).exists() for f in _TOKENIZER_FILES):
        return load_tokenizer(str(d))
    return load_tokenizer("codet5")


def encode_prompt(
    problem, tokenizer, max_source_tokens: int, family: str = "t5", prompt_format: str = "completion"
) -> list[int]:
    """Prompt token ids as ``family``'s model sees them (DESIGN §3.2; truncated by the prompt builder)."""
    from bcoder_core.model.family import get_family

    return get_family(family).prompt_ids(problem, tokenizer, max_source_tokens, prompt_format)


def pick_device(device: str | None = None):
    import torch

    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def progress_bar(total: int, desc: str, enabled: bool = True, unit: str = "prog"):
    from tqdm.auto import tqdm

    tty = sys.stderr.isatty()
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        disable=not enabled,
        file=sys.stderr,
        mininterval=0.5 if tty else 30.0,
        dynamic_ncols=True,
    )


def record_samples_metric(n: int) -> None:
    try:
        from bcoder_core import telemetry
    except ImportError:
        return
    fn = getattr(telemetry, "record_samples", None)
    if fn is not None:
        fn(n)


# --------------------------------------------------------------------------------------------------
# The sampling kernel


def sample_seed(seed: int, problem_id: str, sample_id: int) -> int:
    """A 63-bit seed for one sample's random stream (stable across machines and versions)."""
    h = hashlib.sha256(f"{seed}\x00{problem_id}\x00{sample_id}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def sample_uniforms(seed: int, keys: Sequence[tuple[str, int]], steps: int):
    """[len(keys), steps] float64 uniforms, row k from the stream of sample ``keys[k]``."""
    import torch

    out = torch.empty(len(keys), steps, dtype=torch.float64)
    g = torch.Generator()
    for k, (pid, sid) in enumerate(keys):
        g.manual_seed(sample_seed(seed, pid, sid))
        out[k] = torch.rand(steps, generator=g, dtype=torch.float64)
    return out


def pick_tokens(logits, u, temperature: float, top_p: float):
    """One token per row of ``logits`` [B,V] from softmax(logits/T) restricted to its top-p set.

    ``u`` [B] are uniforms in [0, 1): the token is the first of the descending-probability order
    whose cumulative (renormalised) probability exceeds u. T = 0 is greedy.
    """
    import torch

    logits = logits.float()
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p >= 1.0:  # no nucleus: the inverse CDF in vocabulary order, no sorting at all
        cum = probs.cumsum(dim=-1)
        return _inverse_cdf(cum, probs, u)
    # The nucleus lies among the k most probable tokens once their mass reaches top_p: a partial
    # top-k (k = 64, 512, 4096, ... V) replaces a full sort of the vocabulary (56 ms for 16 x 32k on
    # one CPU core), and a trained model's nucleus is small.
    vocab = probs.shape[-1]
    k = min(vocab, 64)
    while True:
        top_v, top_i = torch.topk(probs, k, dim=-1, sorted=True)
        cum = top_v.cumsum(dim=-1)
        if k == vocab or bool((cum[:, -1] >= top_p).all()):
            break
        k = min(vocab, k * 8)
    # keep a token if the mass before it is below top_p (the first token is always kept)
    keep = (cum - top_v) < top_p
    top_v = top_v * keep
    pos = _inverse_cdf(top_v.cumsum(dim=-1), top_v, u)
    return top_i.gather(1, pos.unsqueeze(1)).squeeze(1)


def collect_steps(
    steps: Sequence[tuple[Any, Any]], rows: int, eos_ids: set[int]
) -> list[tuple[list[int], bool]]:
    """Per row, the tokens of (alive rows, tokens) steps up to its first EOS, and whether it ended."""
    out: list[list[int]] = [[] for _ in range(rows)]
    ended = [False] * rows
    for alive, toks in steps:
        for r, tok in zip(alive.tolist(), toks.tolist(), strict=True):
            if ended[r]:
                continue
            if tok in eos_ids:
                ended[r] = True
            else:
                out[r].append(tok)
    return list(zip(out, ended, strict=True))


def _inverse_cdf(cum, p, u):
    """Per row, the first position whose cumulative mass exceeds u·total (never a zero-mass one)."""
    import torch

    target = (u.to(cum.device, torch.float64) * cum[:, -1].double()).to(cum.dtype).unsqueeze(1)
    pos = torch.searchsorted(cum, target, right=True).clamp_(max=cum.shape[1] - 1).squeeze(1)
    # u·total can round up to the total: step back to the last position with mass
    last = (p > 0).cumsum(dim=-1).argmax(dim=-1)
    return torch.minimum(pos, last)


# --------------------------------------------------------------------------------------------------
# Problems → samples


def sample_problems(
    model,
    tokenizer,
    problems: Sequence,
    cfg: SamplingConfig,
    *,
    model_name: str = "",
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Sample ``cfg.num_samples`` programs for each problem; yields sample records in order."""
    import torch

    from bcoder_core.model.family import family_for_config

    family = family_for_config(model.config)
    fmt = cfg.prompt_format
    prompts = [family.prompt_ids(p, tokenizer, cfg.max_source_tokens, fmt) for p in problems]
    rows = [(k, j) for k in range(len(problems)) for j in range(cfg.num_samples)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    eos = family.eos_ids(tokenizer, model)
    bar = progress_bar(len(rows), "sample", progress)
    try:
        for b0 in range(0, len(rows), cfg.batch_size):
            chunk = rows[b0 : b0 + cfg.batch_size]
            pks = sorted({k for k, _ in chunk})
            slot = {k: n for n, k in enumerate(pks)}
            s_len = max(len(prompts[k]) for k in pks)
            ids = torch.full((len(pks), s_len), pad, dtype=torch.long)
            am = torch.zeros((len(pks), s_len), dtype=torch.long)
            for n, k in enumerate(pks):
                ids[n, : len(prompts[k])] = torch.tensor(prompts[k])
                am[n, : len(prompts[k])] = 1
            keys = [(problems[k].id, j) for k, j in chunk]
            u = sample_uniforms(cfg.seed, keys, cfg.max_new_tokens)
            decoded = family.generate(
                model,
                ids,
                am,
                u,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                max_new_tokens=cfg.max_new_tokens,
                eos_ids=eos,
                rows_of_prompt=[slot[k] for k, _ in chunk],
            )
            for (k, j), (toks, finished) in zip(chunk, decoded, strict=True):
                yield {
                    "problem_id": problems[k].id,
                    "sample_id": j,
                    "code": family.program_text(tokenizer, toks, fmt),
                    "model": model_name,
                    "temperature": cfg.temperature,
                    "top_p": cfg.top_p,
                    "seed": cfg.seed,
                    "num_tokens": len(toks) + int(finished),
                    "finished": finished,
                }
            bar.update(len(chunk))
            if on_batch is not None:
                on_batch(len(chunk))
    finally:
        bar.close()


def load_theta(model_dir: str, device=None, dtype: str = "auto"):
    """θ (or any checkpoint) as its family's plain Hugging Face model, in eval mode."""
    from bcoder_core.model.family import family_for_checkpoint

    dev = pick_device(device)
    model = family_for_checkpoint(model_dir).load_lm(model_dir, dtype=_dtype(dtype, dev))
    return model.to(dev).eval()


def _dtype(name: str, device):
    import torch

    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
    except KeyError:
        raise BcoderError(f"--dtype {name!r}: expected auto, fp32, bf16 or fp16") from None


def run_sample(
    model: str,
    problems: str,
    out: str,
    cfg: SamplingConfig,
    *,
    shard: str | None = None,
    progress: bool = True,
) -> int:
    """The ``bcoder sample`` stage: returns the number of samples written."""
    from bcoder_core import storage
    from bcoder_core.problems import read_problems

    tokenizer, device, dtype = cfg.tokenizer, cfg.device, cfg.dtype

    shard_spec = parse_shard(shard)
    storage.check_output(out, kind="samples")  # before the model is loaded
    model_dir = resolve_model_dir(model)
    probs = shard_items(read_problems(storage.input_path(problems)), shard_spec)
    tok = load_tokenizer_for(model_dir, tokenizer)
    from bcoder_core.rl.engines import select_engine

    engine = select_engine(cfg.engine, model_dir, device, dtype)
    config = {"command": "sample", "model": model, "problems": problems, "shard": list(shard_spec)}
    config.update(asdict(cfg))
    n = 0
    with storage.output_path(out, kind="samples", config=config) as local:
        path = output_file(local, "samples.jsonl")
        with path.open("w", encoding="utf-8") as f:
            for rec in engine.sample(
                tok, probs, cfg, model_name=model, progress=progress, on_batch=record_samples_metric
            ):
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                n += 1
    return n
