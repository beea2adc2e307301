"""Model families: what bcoder needs to know about an architecture, and how a checkpoint finds its own.

A family is one module (``model/t5.py``, ``model/causal.py``) with a ``FAMILY`` object implementing
:class:`ModelFamily`: the B-Coder model class of its networks (the operations of
``qmodel.QModel``), how a prompt and a program become token ids, how a plain language model is
loaded and built at random, and its sampling loop. ``register_family`` adds one; the family of a
checkpoint is read from its ``config.json`` (``family_for_checkpoint``), the family of a shape from
its config (``family_for_config``). Nothing here imports torch or transformers at import time.
"""

from __future__ import annotations

import importlib
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from bcoder_core.errors import BcoderError

__all__ = [
    "FAMILIES",
    "PROMPT_FORMATS",
    "ModelFamily",
    "PromptFormat",
    "family_for_checkpoint",
    "family_for_config",
    "family_for_fields",
    "get_family",
    "register_family",
]

PromptFormat = Literal["completion", "chat"]
PROMPT_FORMATS: tuple[str, ...] = ("completion", "chat")


class ModelFamily(Protocol):
    """One architecture family (module docstring)."""

    name: str

    def handles(self, fields: dict[str, Any]) -> bool:
        """Whether a checkpoint's ``config.json`` fields describe a model of this family."""
        ...

    def model_class(self) -> type:
        """The family's ``qmodel.BCoderModel`` subclass."""
        ...

    def build_config(self, fields: dict[str, Any]) -> Any:
        """A Hugging Face config of this family from JSON fields (a shape file)."""
        ...

    def random_model(self, config: Any, *, seed: int = 0, dtype: Any = None) -> Any:
        """A plain language model of ``config``'s shape with seeded random weights."""
        ...

    def load_lm(self, path: str, *, where: str | Path | None = None, **kwargs: Any) -> Any:
        """The plain Hugging Face language model in ``path`` (sampling; sft)."""
        ...

    def prompt_ids(
        self, problem: Any, tokenizer: Any, max_source_tokens: int, prompt_format: PromptFormat
    ) -> list[int]:
        """The prompt's token ids, at most ``max_source_tokens`` (DESIGN §3.2)."""
        ...

    def program_ids(self, tokenizer: Any, code: str, prompt_format: PromptFormat) -> list[int]:
        """A program's label ids as the family trains them; they end in EOS (the terminal step)."""
        ...

    def program_text(self, tokenizer: Any, ids: Sequence[int], prompt_format: PromptFormat) -> str:
        """The program to execute from generated ids (EOS already cut off)."""
        ...

    def eos_ids(self, tokenizer: Any, model: Any) -> set[int]:
        """Token ids that end a generated program."""
        ...

    def generate(
        self,
        model: Any,
        input_ids: Any,
        attention_mask: Any,
        uniforms: Any,
        *,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        eos_ids: Collection[int],
        rows_of_prompt: Any = None,
    ) -> list[tuple[list[int], bool]]:
        """The KV-cache sampling loop: (ids without EOS, ended with EOS) per row (``rl/sampling.py``)."""
        ...


FAMILIES: dict[str, str] = {"t5": "bcoder_core.model.t5", "causal": "bcoder_core.model.causal"}
"""Family name → module holding its ``FAMILY`` (imported on first use). Order: first match wins."""


def register_family(name: str, module: str) -> None:
    """Add a family: ``module`` (dotted path) defines ``FAMILY``, a :class:`ModelFamily`."""
    FAMILIES[name] = module


def get_family(name: str) -> ModelFamily:
    """The family called ``name``."""
    try:
        module = FAMILIES[name]
    except KeyError:
        raise BcoderError(f"model family {name!r}: expected one of {', '.join(FAMILIES)}") from None
    return importlib.import_module(module).FAMILY


def family_for_fields(fields: dict[str, Any], *, where: str | Path = "model") -> ModelFamily:
    """The family whose ``handles`` accepts these ``config.json`` fields."""
    for name in FAMILIES:
        fam = get_family(name)
        if fam.handles(fields):
            return fam
    kind = fields.get("model_type") or fields.get("architectures") or "unknown"
    raise BcoderError(
        f"{where}: model type {kind!r} is not supported (families: {', '.join(FAMILIES)}; "
        "a causal LM needs a transformers AutoModelForCausalLM architecture)"
    )


def family_for_checkpoint(local: str | Path, *, where: str | Path | None = None) -> ModelFamily:
    """The family of the checkpoint in directory ``local`` (its ``config.json``), or of a hub id."""
    from bcoder_core.model import files

    cfg = Path(local) / "config.json"
    if cfg.is_file():
        return family_for_fields(files.read_json_object(cfg), where=where or local)
    if Path(local).exists():
        raise BcoderError(f"model {where or local}: cannot load a checkpoint (no config.json)")
    text = str(local)
    if text.startswith(("/", ".", "~")) or text.count("/") != 1:
        raise BcoderError(f"model {where or local}: cannot load a checkpoint (no such directory)")
    try:  # a hub id: transformers resolves it (users with network)
        from transformers import AutoConfig

        fields = AutoConfig.from_pretrained(str(local)).to_dict()
    except (OSError, ValueError) as exc:
        raise BcoderError(
            f"model {where or local}: cannot read its config ({files.first_line(exc)})"
        ) from None
    return family_for_fields(fields, where=where or local)


def family_for_config(config: Any) -> ModelFamily:
    """The family of a Hugging Face config object (a shape)."""
    return family_for_fields(config.to_dict(), where=type(config).__name__)
