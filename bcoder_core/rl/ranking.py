"""Learned-reward ranking (DESIGN §2.8, paper Eq. 18–20): a score for every sample of any model.

R̃(W) = Σ_t r̃_θ(s_t, a_t),   r̃_θ(s_t, a_t) = Q_θ(s_t, a_t) − γ·V_θ(s_{t+1}),   V_θ(s_{T+1}) = 0,

computed after generation by ONE batched teacher-forced pass of θ and φ (model stage ``eval``,
``losses.program_scores`` / ``learned_rewards``), never inside the sampling loop. Each sample keeps
every field it had and gains ``score``; the order of the samples file is kept. Samples of any
model can be ranked (paper Table 3): only their ``code`` is read.

A program is tokenised as the training targets are (the model family's ``program_ids``: ``<s>
tokens </s>`` for T5, the tokens then EOS for a causal LM), so every program ends in EOS — the episode W ∘ EOS, also for a sample cut off by the sampler's
``max_new_tokens`` (its code is what was executed).

**Decision — programs longer than ``max_target_tokens`` (default 1024, twice the sampling limit,
so every program ``bcoder sample`` writes fits, with room for re-tokenisation) are scored on their
first ``max_target_tokens`` tokens, the last of them treated as terminal, and flagged with
``"score_truncated": true``** (the count is printed). Their score misses the tail of the sum, so
it is not comparable with full scores; raise the limit to score them fully (memory grows with the
length: the pass materialises [B, T, V] logits).

Efficiency: samples are streamed in windows; inside a window they are batched by length as
``annotate`` batches (``annotate.batch_positions``: a T5 by problem, a problem's samples by length
and the problems by median length, so a batch holds few distinct prompts — the encoder runs once
per distinct prompt — and little padding; a causal LM by program and prompt length), then written
back in file order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from bcoder_core.errors import BcoderError
from bcoder_core.rl.configs import RankConfig


@dataclass
class RankSummary:
    out: str = ""
    scored: int = 0
    truncated: int = 0
    problems: int = 0

    def line(self) -> str:
        s = f"rank: scored {self.scored} samples of {self.problems} problems, wrote {self.out}"
        if self.truncated:
            s += f"; {self.truncated} programs longer than --max-target-tokens were scored on their first tokens"
        return s


class _EncodedOnce:
    """The model as ``learned_rewards`` sees it, with encoder states computed beforehand.

    ``learned_rewards`` encodes its batch's prompts itself; a batch of m samples of one problem
    would encode the same prompt m times. This view hands it the states of each distinct prompt,
    encoded once, and forwards everything else to the model.
    """

    def __init__(self, model: Any, enc: Any) -> None:
        self._model = model
        self._enc = enc

    def encode(self, input_ids, attention_mask):
        return self._enc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def score_batch(
    model, ids_list, problem_keys, prompt_of, pad_id: int, device, cfg: RankConfig
) -> list[float]:
    """R̃ of each program (token id arrays ending in EOS) in one teacher-forced pass."""
    import torch

    from bcoder_core.rl.annotate import encode_shared, label_batch
    from bcoder_core.rl.losses import program_scores

    labels = label_batch(ids_list).to(device)
    with torch.no_grad():
        enc, am = encode_shared(model, problem_keys, prompt_of, pad_id, device)
        # input_ids are never read: the view answers encode() with the shared states
        batch = {"input_ids": am, "attention_mask": am, "labels": labels}
        alpha = cfg.alpha if cfg.alpha is not None else getattr(model, "alpha", 1.0)
        scores = program_scores(_EncodedOnce(model, enc), batch, cfg.gamma, alpha)
    return scores.float().cpu().tolist()


def scoring_batches(
    keys: Sequence[tuple[int, int]],
    batch_size: int,
    by: str = "problem",
    prompts: Sequence[int] | None = None,
) -> list[list[int]]:
    """A window's scoring batches: positions of its samples, whose ``keys`` are (problem index,
    program length), in ``annotate.batch_positions``' order ``by`` (``prompts``: the prompt
    lengths, for ``length``), cut into ``batch_size`` runs."""
    from bcoder_core.rl.annotate import batch_positions

    order = batch_positions([k[0] for k in keys], [k[1] for k in keys], prompts, batch_size, by)
    return [order[b0 : b0 + batch_size] for b0 in range(0, len(order), batch_size)]


def score_samples(
    model,
    tokenizer,
    problems,
    samples: Iterable[dict],
    cfg: RankConfig,
    *,
    device,
    dtype: str = "fp32",
    summary: RankSummary | None = None,
    progress=None,
) -> Iterator[dict]:
    """Yield each sample (a new dict: its fields + ``score``), in input order."""
    from bcoder_core.model.family import get_family
    from bcoder_core.rl.annotate import PromptCache, autocast_context, batch_order_for

    family = get_family(model.family)
    summary = summary if summary is not None else RankSummary()
    index = {p.id: k for k, p in enumerate(problems)}
    prompt_of = PromptCache(problems, tokenizer, cfg.max_source_tokens, family, cfg.prompt_format)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    seen_problems: set[int] = set()
    window_size = cfg.batch_size * cfg.window_batches
    by = batch_order_for(model)

    def flush(window: list[dict]) -> Iterator[dict]:
        keyed = []
        for n, rec in enumerate(window):
            pid = rec.get("problem_id")
            if pid not in index:
                raise BcoderError(f"sample {pid}/{rec.get('sample_id')}: problem not in the problem set")
            code = rec.get("code")
            if not isinstance(code, str):
                raise BcoderError(f"sample {pid}/{rec.get('sample_id')}: no code")
            ids = family.program_ids(tokenizer, code, cfg.prompt_format)
            truncated = len(ids) > cfg.max_target_tokens
            if truncated:
                ids = ids[: cfg.max_target_tokens]
                summary.truncated += 1
            keyed.append((index[pid], len(ids), n, np.asarray(ids, dtype=np.int64), truncated))
            seen_problems.add(index[pid])
        scores: dict[int, float] = {}
        prompts = [len(prompt_of(c[0])) for c in keyed] if by == "length" else None
        for positions in scoring_batches([(c[0], c[1]) for c in keyed], cfg.batch_size, by, prompts):
            chunk = [keyed[n] for n in positions]
            with autocast_context(device, dtype):
                got = score_batch(
                    model, [c[3] for c in chunk], [c[0] for c in chunk], prompt_of, pad, device, cfg
                )
            for c, s in zip(chunk, got, strict=True):
                scores[c[2]] = s
            if progress is not None:
                progress.update(len(chunk))
        flags = {c[2]: c[4] for c in keyed}
        for n, rec in enumerate(window):
            out = dict(rec)
            out["score"] = scores[n]
            if flags[n]:
                out["score_truncated"] = True
            summary.scored += 1
            yield out
        summary.problems = len(seen_problems)

    window: list[dict] = []
    for rec in samples:
        window.append(rec)
        if len(window) >= window_size:
            yield from flush(window)
            window = []
    if window:
        yield from flush(window)


def run_rank(
    *,
    model: str,
    phi: str,
    problems: str,
    samples: str,
    out: str,
    cfg: RankConfig,
    progress: bool = True,
    shard: str | None = None,
) -> RankSummary:
    """The ``bcoder rank`` stage (module docstring).

    ``shard`` ("I/N", ``bcoder_core.shards``): only the samples of the problems whose index is
    I mod N (pod I of an Indexed Job writes ``part-I-of-N.jsonl``; the prefix reads as one set).
    """
    import json

    from bcoder_core.shards import parse_shard, shard_items

    tokenizer, device, dtype = cfg.tokenizer, cfg.device, cfg.dtype

    from bcoder_core import storage
    from bcoder_core.jsonl import read_jsonl, read_keyed
    from bcoder_core.model.qmodel import BCoderModel
    from bcoder_core.problems import read_problems
    from bcoder_core.rl.sampling import (
        load_tokenizer_for,
        output_file,
        pick_device,
        progress_bar,
        resolve_model_dir,
    )

    shard_spec = parse_shard(shard)
    storage.check_output(out, kind="samples")  # before the model is loaded
    all_probs = read_problems(storage.input_path(problems))
    probs = shard_items(all_probs, shard_spec)
    known, in_shard = {p.id for p in all_probs}, {p.id for p in probs}
    samples_path = storage.input_path(samples)

    def wanted(recs: Iterable[dict]) -> Iterator[dict]:
        # Another shard's samples are skipped; a sample of no problem at all stays an error (below).
        return (r for r in recs if r.get("problem_id") in in_shard or r.get("problem_id") not in known)

    keyed = read_keyed(samples_path, "sample", required=("problem_id", "sample_id", "code"))
    n = sum(1 for _ in wanted(keyed))
    model_dir = resolve_model_dir(model)
    tok = load_tokenizer_for(model_dir, tokenizer)
    dev = pick_device(device)
    m = BCoderModel.from_pretrained(
        model_dir, stage="eval", phi_path=resolve_model_dir(phi), device=dev
    ).eval()
    if not m.has_phi:  # pragma: no cover - from_pretrained loads φ whenever phi_path is given
        raise BcoderError(f"rank: {phi} holds no phi")
    if cfg.alpha is None:
        cfg = replace(cfg, alpha=m.alpha)
    if len(tok) > m.vocab_size:
        raise BcoderError(f"tokenizer has {len(tok)} tokens but the model {model} only {m.vocab_size}")
    summary = RankSummary(out=out)
    config = {
        "command": "rank",
        "model": model,
        "phi": phi,
        "problems": problems,
        "samples": samples,
        "shard": list(shard_spec),
        **asdict(cfg),
    }
    bar = progress_bar(n, "rank", progress)
    try:
        with storage.output_path(out, kind="samples", config=config) as local:
            path = output_file(local, "samples.jsonl")
            with Path(path).open("w", encoding="utf-8") as f:
                for rec in score_samples(
                    m,
                    tok,
                    probs,
                    wanted(read_jsonl(samples_path, "samples")),
                    cfg,
                    device=dev,
                    dtype=dtype,
                    summary=summary,
                    progress=bar,
                ):
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    finally:
        bar.close()
    return summary
