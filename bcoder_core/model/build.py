"""Model shapes by name and randomly initialised checkpoints (tests, benchmarks, the built-in benchmark).

Shapes live in ``configs/models/<name>.json`` (``config.json`` fields of a Hugging Face config; a
``_comment`` key is ignored; ``model_type`` picks the family, T5 when absent): the T5 shapes
``codet5-large`` (the paper's model, DESIGN §5), ``mid``, ``small``, ``tiny``, and causal shapes
``llama-tiny``, ``llama-demo``, ``qwen2.5-coder-1.5b``, ``qwen2.5-coder-7b``. Every shape uses
CodeT5's token layout unless it says otherwise (the Qwen shapes keep Qwen's): pad 0 (= T5's
decoder start), bos 1, eos 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from bcoder_core.errors import BcoderError

__all__ = [
    "MODEL_CONFIG_DIR",
    "count_parameters",
    "model_config",
    "model_config_names",
    "random_model",
    "random_t5",
    "save_random_checkpoint",
]

MODEL_CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "models"
_LAYOUT = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "decoder_start_token_id": 0}


def model_config_names() -> list[str]:
    """The shape names found in ``configs/models``."""
    return sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.json"))


def model_config(name_or_path: str | Path, **overrides: Any) -> Any:
    """A config from a shape name (``tiny``, ``small``, ``mid``, ``codet5-large``, ``llama-tiny`` ...),
    a JSON file or a checkpoint directory, with ``overrides`` (e.g. ``vocab_size=len(tokenizer)``)
    applied: a ``T5Config``, or the causal family's config of the ``model_type`` named."""
    from bcoder_core.model.family import family_for_fields

    path = Path(name_or_path)
    if path.is_dir():
        path = path / "config.json"
    elif not path.suffix or (not path.exists() and (MODEL_CONFIG_DIR / f"{name_or_path}.json").is_file()):
        path = MODEL_CONFIG_DIR / f"{name_or_path}.json"  # a shape name (may hold dots: qwen2.5-...)
    if not path.is_file():
        raise BcoderError(
            f"model shape {name_or_path!r}: no such file ({path}); known: {', '.join(model_config_names())}"
        )
    try:
        fields = json.loads(path.read_text())
    except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError for a binary file
        raise BcoderError(f"model shape {path}: not JSON ({exc})") from exc
    if not isinstance(fields, dict):
        raise BcoderError(f"model shape {path}: expected a JSON object, found {type(fields).__name__}")
    fields = {k: v for k, v in fields.items() if not k.startswith("_")}
    fields = {**_LAYOUT, **fields, **overrides}
    family = family_for_fields(fields, where=path)
    try:
        return family.build_config(fields)
    except (TypeError, ValueError, KeyError) as exc:
        raise BcoderError(f"model shape {path}: {exc}") from exc


def random_model(config: Any, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> Any:
    """A language model of ``config``'s shape (any family) with seeded random weights.

    The global RNG state is left as it was.
    """
    from bcoder_core.model.family import family_for_config

    return family_for_config(config).random_model(config, seed=seed, dtype=dtype)


def random_t5(config: Any, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> Any:
    """A ``T5ForConditionalGeneration`` of ``config``'s shape with seeded random weights."""
    from bcoder_core.model.t5 import FAMILY

    return FAMILY.random_model(config, seed=seed, dtype=dtype)


def save_random_checkpoint(config: Any, out: str | Path, *, seed: int = 0, tokenizer: Any = None) -> Path:
    """Write a randomly initialised checkpoint directory of any family (and the tokenizer, if given)."""
    out = Path(out)
    random_model(config, seed=seed).save_pretrained(str(out))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    return out


def count_parameters(config: Any, *, untied_lm_head: bool = False) -> int:
    """Parameter count of ``config``'s model, built on the meta device (nothing allocated)."""
    from bcoder_core.model.family import family_for_config

    with torch.device("meta"):
        lm = family_for_config(config).random_model(config, seed=0, dtype=torch.float32)
    n = sum(p.numel() for p in lm.parameters())
    out, inp = lm.get_output_embeddings(), lm.get_input_embeddings()
    if untied_lm_head and out is not None and out.weight is inp.weight:
        n += out.weight.numel()
    return n
