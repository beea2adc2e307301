"""Building blocks for the model / loss tests: tiny random checkpoints of every family and annotated batches.

``FAMILY_VARIANTS`` names the variants the mathematics tests run for: T5, the causal Llama, Qwen2
(tied embeddings) and GPT-2 shapes with full fine-tuning, and Llama with LoRA. A checkpoint is a
:class:`Ckpt` (a path string that also says whether phi/theta use LoRA); :func:`load` builds a
stage's model from it with the variant's options.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bcoder_core.model.build import model_config, save_random_checkpoint
from bcoder_core.model.qmodel import BCoderModel
from bcoder_core.rl.losses import ckpt_columns

VOCAB = 97
FAMILY_VARIANTS = ("t5", "llama", "qwen2", "gpt2", "llama-lora")
LORA = {"enable": True, "r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": "all-linear"}

# Tiny causal shapes (CodeT5's token layout: pad 0, bos 1, eos 2); a larger init range than the
# default 0.02 so that a random model's distributions are far from uniform and errors show.
CAUSAL_SHAPES: dict[str, dict] = {
    "llama": dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  tie_word_embeddings=False, initializer_range=0.2),
    "qwen2": dict(model_type="qwen2", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  tie_word_embeddings=True, initializer_range=0.2),
    "gpt2": dict(model_type="gpt2", n_embd=32, n_layer=2, n_head=4, n_positions=256, resid_pdrop=0.0,
                 embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.2),
}  # fmt: skip


class Ckpt(str):
    """A checkpoint directory (as a string) that knows its variant (family, LoRA or not)."""

    variant: str = "t5"

    @property
    def lora(self) -> dict | None:
        return LORA if self.variant.endswith("-lora") else None

    @property
    def family(self) -> str:
        return "t5" if self.variant == "t5" else "causal"


def tiny_config(vocab_size: int = VOCAB, **kw):
    """The ``tiny`` shape, no dropout (deterministic), small vocabulary."""
    return model_config("tiny", vocab_size=vocab_size, dropout_rate=kw.pop("dropout_rate", 0.0), **kw)


def causal_config(kind: str, vocab_size: int = VOCAB, **kw):
    """A tiny causal config of ``kind`` (llama, qwen2, gpt2), no dropout."""
    from bcoder_core.model.causal import FAMILY

    fields = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **CAUSAL_SHAPES[kind]}
    return FAMILY.build_config({**fields, "vocab_size": vocab_size, **kw})


def variant_config(variant: str, vocab_size: int = VOCAB, **kw):
    """The tiny config of a variant of ``FAMILY_VARIANTS``."""
    if variant == "t5":
        return tiny_config(vocab_size, **kw)
    return causal_config(variant.removesuffix("-lora"), vocab_size, **kw)


def make_checkpoint(root: Path, *, seed: int = 0, variant: str = "t5", **kw) -> Ckpt:
    out = save_random_checkpoint(variant_config(variant, **kw), root / f"ckpt-{variant}-{seed}", seed=seed)
    ckpt = Ckpt(out)
    ckpt.variant = variant
    return ckpt


def load(ckpt: str, stage: str, **kw):
    """``BCoderModel.from_pretrained(ckpt, stage=stage)`` with the variant's LoRA settings for phi/theta."""
    lora = getattr(ckpt, "lora", None)
    if lora is not None and stage in ("phi", "theta") and "lora" not in kw:
        kw["lora"] = lora
    return BCoderModel.from_pretrained(str(ckpt), stage=stage, **kw)


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
