"""T5 shapes by name and randomly initialised checkpoints (tests, benchmarks, the built-in benchmark).

Shapes live in ``configs/models/<name>.json`` (T5 ``config.json`` fields; a ``_comment`` key is
ignored): ``codet5-large`` (the paper's model, DESIGN §5), ``mid``, ``small``, ``tiny``. Every shape
uses CodeT5's token layout: pad 0 (= decoder start), bos 1, eos 2.
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
    "random_t5",
    "save_random_checkpoint",
]

MODEL_CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "models"
_LAYOUT = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "decoder_start_token_id": 0}


def model_config_names() -> list[str]:
    """The shape names found in ``configs/models``."""
    return sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.json"))


def model_config(name_or_path: str | Path, **overrides: Any) -> Any:
    """A ``T5Config`` from a shape name (``tiny``, ``small``, ``mid``, ``codet5-large``), a JSON file
    or a checkpoint directory, with ``overrides`` (e.g. ``vocab_size=len(tokenizer)``) applied."""
    from transformers import T5Config

    path = Path(name_or_path)
    if path.is_dir():
        path = path / "config.json"
    elif not path.suffix:
        path = MODEL_CONFIG_DIR / f"{name_or_path}.json"
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
    try:
        return T5Config(**fields)
    except (TypeError, ValueError) as exc:
        raise BcoderError(f"model shape {path}: {exc}") from exc


def random_t5(config: Any, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> Any:
    """A ``T5ForConditionalGeneration`` of ``config``'s shape with seeded random weights.

    The global RNG state is left as it was.
    """
    from transformers import T5ForConditionalGeneration

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        t5 = T5ForConditionalGeneration(config)
    return t5.to(dtype)


def save_random_checkpoint(config: Any, out: str | Path, *, seed: int = 0, tokenizer: Any = None) -> Path:
    """Write a randomly initialised T5 checkpoint directory (and the tokenizer, if given)."""
    out = Path(out)
    random_t5(config, seed=seed).save_pretrained(str(out))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    return out


def count_parameters(config: Any, *, untied_lm_head: bool = False) -> int:
    """Parameter count of ``config``'s T5, built on the meta device (nothing allocated)."""
    from transformers import T5ForConditionalGeneration

    with torch.device("meta"):
        t5 = T5ForConditionalGeneration(config)
    n = sum(p.numel() for p in t5.parameters())
    if untied_lm_head and t5.lm_head.weight is t5.shared.weight:
        n += t5.lm_head.weight.numel()
    return n
