"""Batched top-p sampling from a decoder-only (causal) language model with a KV cache.

The causal counterpart of the T5 loop ``bcoder_core.rl.sampling.generate``, with the same contract:
the distinct prompts are run once, each output row b takes the token ``pick_tokens(logits,
u[b, t])`` at step t, and rows that emitted EOS leave the batch. So a row's program depends on its
prompt and its uniforms only, not on the rows it is batched with (up to floating-point differences
between batch shapes).

Why left padding. A causal model reads its next-token logits at the last position of each row, and
the tokens it generates are appended on the right. With the real tokens of every prompt flush
against the right edge, the last column is every row's last real token and one new column per
step serves all rows; pads on the left are masked out and the positions (``position_ids``) count
real tokens only, so a padded row computes what the same prompt computes alone.

Why prefill once. ``rows_of_prompt`` typically repeats each prompt m times (m samples per
problem): the prompt is the long part, so it is encoded once per distinct prompt and its KV cache
is then copied to the rows (``DynamicCache.batch_select_indices`` indexes the batch dimension with
a tensor, which accepts repeated indices).

Transformers 5.x names the model's cache argument ``cache`` (``past_key_values`` is a deprecated
alias, due to go in 5.40), so the loop passes ``cache=``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import torch
from torch import Tensor


def left_align(input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Rows moved so that their real tokens sit at the right end (left padding), order kept.

    Accepts any padding (right, left, or pads in the middle). A stable sort of the mask puts a
    row's pads (0) first and its real tokens (1) after, each in their original order; pads keep
    their id. The shape is unchanged.
    """
    order = torch.argsort(attention_mask.to(torch.int8), dim=1, stable=True)
    return input_ids.gather(1, order), attention_mask.gather(1, order)


def position_ids(attention_mask: Tensor) -> Tensor:
    """Position of each token = number of real tokens before it: ``(cumsum(mask) - 1).clamp_min(0)``.

    Under left padding this makes a padded row's positions equal to the unpadded prompt's; pads get
    position 0 (they are masked, any valid position does).
    """
    return (attention_mask.long().cumsum(dim=1) - 1).clamp_min(0)


def generate_causal(
    model: Any,
    input_ids: Tensor,
    attention_mask: Tensor,
    uniforms: Tensor,
    *,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    eos_ids: Collection[int],
    rows_of_prompt: Sequence[int] | Tensor | None = None,
) -> list[tuple[list[int], bool]]:
    """Decode one completion per row: returns (token ids without EOS, ended with EOS) per row.

    ``model`` is a Hugging Face ``*ForCausalLM`` (or a peft model wrapping one), in eval mode.
    ``input_ids``/``attention_mask`` [P,S] are the distinct prompts, padded on either side (they
    are left-aligned here); ``rows_of_prompt`` [B] maps each row to its prompt (None: one row per
    prompt). ``uniforms`` [B, ≥max_new_tokens]: row b's token at step t is picked with
    ``uniforms[b, t]``. A row ends at the first token in ``eos_ids`` (not part of its output) or
    after ``max_new_tokens`` tokens.
    """
    from transformers.cache_utils import DynamicCache

    from bcoder_core.rl.sampling import collect_steps, pick_tokens

    n_rows = input_ids.shape[0] if rows_of_prompt is None else len(rows_of_prompt)
    if max_new_tokens <= 0 or n_rows == 0:
        return [([], False) for _ in range(n_rows)]
    if uniforms.shape[0] != n_rows or uniforms.shape[1] < max_new_tokens:
        raise ValueError(
            f"uniforms {tuple(uniforms.shape)}: expected [{n_rows}, >= {max_new_tokens}] (rows, steps)"
        )
    device = next(model.parameters()).device
    eos_set = {int(e) for e in eos_ids}
    with torch.inference_mode():
        ids, mask = left_align(input_ids.to(device), attention_mask.to(device))
        lens = mask.long().sum(dim=1)
        shortest, longest = (int(x) for x in lens.aminmax())  # one sync, before any model call
        if shortest == 0:
            raise ValueError("generate_causal: a prompt has no real token (its attention mask is all 0)")
        ids, mask = ids[:, -longest:], mask[:, -longest:]  # drop the columns that are pads in every row
        cache = DynamicCache(config=model.config)
        # Prefill: each distinct prompt once; only the last position's logits are needed.
        logits = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids(mask),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1, :]
        # sel: the cache row of each live row (prompt rows at first, then the live rows' own).
        if rows_of_prompt is None:
            sel = None
        else:
            sel = torch.as_tensor(rows_of_prompt, dtype=torch.long, device=device)
            logits, mask, lens = logits[sel], mask[sel], lens[sel]
        u = uniforms.to(device)
        eos = torch.tensor(sorted(eos_set), dtype=torch.long, device=device)
        alive = torch.arange(n_rows, device=device)  # original row of each live row
        steps: list[tuple[Tensor, Tensor]] = []  # (alive rows, tokens) per step, gathered at the end
        nxt = pick_tokens(logits, u[:, 0], temperature, top_p)
        steps.append((alive, nxt))
        for t in range(1, max_new_tokens):
            done = torch.isin(nxt, eos)
            if bool(done.any()):
                keep = (~done).nonzero().squeeze(1)
                if keep.numel() == 0:
                    break
                sel = keep if sel is None else sel[keep]
                mask, lens, alive, nxt = mask[keep], lens[keep], alive[keep], nxt[keep]
            if sel is not None:
                # One copy serves both the prompt → rows expansion (repeated indices) and the
                # removal of finished rows.
                cache.batch_select_indices(sel)
                sel = None
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            logits = model(
                input_ids=nxt.unsqueeze(1),
                attention_mask=mask,
                position_ids=lens.unsqueeze(1),  # real tokens before the new one
                cache=cache,
                use_cache=True,
            ).logits[:, -1, :]
            lens = lens + 1
            nxt = pick_tokens(logits, u[alive, t], temperature, top_p)
            steps.append((alive, nxt))
    return collect_steps(steps, n_rows, eos_set)
