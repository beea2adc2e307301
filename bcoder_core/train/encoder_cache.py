"""The frozen encoder's states kept per prompt across the steps of phi and theta (DESIGN §2.6).

In phi and theta a T5's encoder is frozen, so a prompt's states never change during a run, yet every
program of the prompt's problem (its reference solutions and samples, read again every epoch) would
run the encoder again: about a quarter of a step on the demo's T5. :class:`EncoderCache` encodes each
distinct prompt once, the first time a batch holds it, and lays the states of a batch's prompts out
as the encoder would have given them ([B, S, d], right padding; the padded rows are zeros, which the
cross-attention masks like the encoder's own padded states).

**Each prompt is encoded alone** (a batch of one, unpadded), never inside the batch that first holds
it: its states then do not depend on which batch that was, so a resumed run, whose cache starts
empty and fills in another order, computes exactly what the uninterrupted run computed. Whether the
cache is used at all is settled before the first step, from the size of every distinct prompt of the
store (:func:`cache_for_stage`): it is either on for every prompt or off, never partly, for the same
reason. A causal LM has no separate encoder (its prompts run with the program): nothing to cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from bcoder_core.train.logs import log


class EncoderCache:
    """Encoder states [S_i, d] of each prompt seen so far, keyed by the batch's ``prompt_keys``
    (``rl.transitions.prompt_key``: the prompt's int32 token bytes)."""

    def __init__(self) -> None:
        self.states: dict[bytes, Tensor] = {}
        self.hits = 0
        """Rows whose prompt was already encoded (diagnostics and tests)."""
        self.misses = 0

    def __len__(self) -> int:
        return len(self.states)

    def encode(self, model: Any, input_ids: Tensor, attention_mask: Tensor, keys: Sequence[bytes]) -> Tensor:
        """The states [B, S, d] of a batch's prompts (``keys`` from its host copy, row by row); the
        prompts not seen before are encoded now, one at a time."""
        for b, key in enumerate(keys):
            if key in self.states:
                self.hits += 1
                continue
            self.misses += 1
            n = len(key) // 4
            self.states[key] = model.encode(input_ids[b : b + 1, :n], attention_mask[b : b + 1, :n])[0]
        rows = [self.states[k] for k in keys]
        out = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
        width = input_ids.shape[1]
        if out.shape[1] < width:  # the batch was padded past its longest prompt
            out = torch.nn.functional.pad(out, (0, 0, 0, width - out.shape[1]))
        return out


def estimate_bytes(store: Any, model: Any) -> int:
    """Bytes the states of every distinct prompt of ``store`` take (fp32, the model's width)."""
    return int(store.prompt_token_count()) * int(model.d_model) * 4


def cache_for_stage(model: Any, store: Any, budget_mb: int, stage: str) -> EncoderCache | None:
    """An :class:`EncoderCache` for a phi or theta run on ``store``, or None: budget 0, a model
    without a frozen encoder (a causal LM), or states that would not fit in ``budget_mb`` MiB (then
    every batch runs the encoder, as without a cache)."""
    if budget_mb <= 0 or getattr(model, "encoder", None) is None:
        return None
    need = estimate_bytes(store, model)
    if need > budget_mb * 2**20:
        log.info(
            "%s: encoder cache off: the store's prompts need %.0f MiB of states, encoder_cache_mb is %d",
            stage, need / 2**20, budget_mb,
        )  # fmt: skip
        return None
    log.info("%s: encoder cache on (at most %.1f MiB for the store's prompts)", stage, need / 2**20)
    return EncoderCache()
