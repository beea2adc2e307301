"""Building blocks for the model / loss tests: tiny random T5 checkpoints and annotated batches."""

from __future__ import annotations

from pathlib import Path

import torch

from bcoder_core.model.build import model_config, save_random_checkpoint
from bcoder_core.model.qmodel import BCoderModel
from bcoder_core.rl.losses import ckpt_columns

VOCAB = 97


def tiny_config(vocab_size: int = VOCAB, **kw):
    """The ``tiny`` shape, no dropout (deterministic), small vocabulary."""
    return model_config("tiny", vocab_size=vocab_size, dropout_rate=kw.pop("dropout_rate", 0.0), **kw)


def make_checkpoint(root: Path, *, seed: int = 0, **kw) -> Path:
    return save_random_checkpoint(tiny_config(**kw), root / f"ckpt-{seed}", seed=seed)


def make_batch(
    *,
    batch: int = 4,
    src: int = 9,
    lengths: tuple[int, ...] = (7, 4, 1, 6),
    gt: tuple[bool, ...] = (True, False, True, False),
    rewards: tuple[float, ...] = (1.0, -0.3, -0.6, -1.0),
    vocab: int = VOCAB,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A right-padded batch of random programs ending in EOS (2), prompts with some padding."""
    g = torch.Generator().manual_seed(seed)
    t = max(lengths)
    input_ids = torch.randint(5, vocab, (batch, src), generator=g)
    attention_mask = torch.ones(batch, src, dtype=torch.long)
    for b in range(batch):
        keep = src - (b % 3)
        input_ids[b, keep:] = 0
        attention_mask[b, keep:] = 0
    labels = torch.full((batch, t), -100, dtype=torch.long)
    for b, n in enumerate(lengths[:batch]):
        labels[b, : n - 1] = torch.randint(5, vocab, (n - 1,), generator=g)
        labels[b, n - 1] = 2
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "reward": torch.tensor(rewards[:batch]),
        "is_gt": torch.tensor(gt[:batch]),
    }


def annotate(ckpt: Path | str, batch: dict, phi_path: Path | str | None = None) -> dict:
    """Add ckpt_adv / ckpt_greedy (and v_phi with ``phi_path``) as the annotate stage does."""
    model = BCoderModel.from_pretrained(ckpt, stage="annotate", phi_path=phi_path).eval()
    enc = model.encode(batch["input_ids"], batch["attention_mask"])
    logits = model.ckpt_logits(enc, batch["attention_mask"], batch["labels"])
    out = dict(batch)
    out["ckpt_adv"], out["ckpt_greedy"] = ckpt_columns(logits, batch["labels"])
    if phi_path is not None:
        with torch.no_grad():
            out["v_phi"] = model.phi_values(enc, batch["attention_mask"], batch["labels"])
    return out


def save_tiny_checkpoint(path: Path, tokenizer, *, seed: int = 0) -> Path:
    """A random ``tiny`` T5 for ``tokenizer`` (no dropout), saved with it as an sft output would be."""
    cfg = model_config("tiny", vocab_size=len(tokenizer), dropout_rate=0.0)
    return save_random_checkpoint(cfg, path, seed=seed, tokenizer=tokenizer)
