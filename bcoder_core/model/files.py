"""Reading the files of a model directory that may be a user's plain directory (no manifest to verify).

An artifact with a manifest is checked against its sha256 sums before anyone reads it; a plain
directory is not, so a truncated download or a stray file reaches the parsers. Each reader here turns
the parser's exception into one :class:`~bcoder_core.errors.BcoderError` that names the file.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bcoder_core.errors import BcoderError

__all__ = ["check_t5_dir", "first_line", "load_safetensors", "open_safetensors", "read_json_object"]

# What from_pretrained reads besides the tokenizer (which load_tokenizer checks).
_T5_JSON = ("config.json", "generation_config.json", "model.safetensors.index.json")


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its type name when it has none): one line per error."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _not_safetensors(path: Path, exc: BaseException) -> BcoderError:
    return BcoderError(f"{path}: not a readable safetensors file ({first_line(exc)})")


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; BcoderError if it is not readable JSON or not an object."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: JSONDecodeError and UnicodeDecodeError
        raise BcoderError(f"{path}: not a readable JSON file ({first_line(exc)})") from None
    if not isinstance(value, dict):
        raise BcoderError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


@contextlib.contextmanager
def open_safetensors(path: Path, framework: str = "pt") -> Iterator[Any]:
    """``safe_open(path)``; a truncated or garbage file (or a missing tensor) is a BcoderError naming it."""
    from safetensors import SafetensorError, safe_open

    try:
        handle = safe_open(str(path), framework=framework)
    except (OSError, SafetensorError) as exc:
        raise _not_safetensors(path, exc) from None
    try:
        with handle as f:
            yield f
    except SafetensorError as exc:
        raise _not_safetensors(path, exc) from None


def load_safetensors(path: Path) -> dict[str, Any]:
    """Every tensor of ``path`` (as ``safetensors.torch.load_file`` returns them), errors named."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise _not_safetensors(path, exc) from None


def check_t5_dir(directory: Path) -> None:
    """Parse the JSON files and safetensors headers ``from_pretrained`` will read in ``directory``.

    Header parsing is cheap (no tensor is read) and catches what would otherwise surface deep in
    transformers as an unnamed error: a file that is not JSON, a truncated or garbage weights file.
    """
    for name in _T5_JSON:
        if (directory / name).is_file():
            read_json_object(directory / name)
    for weights in sorted(directory.glob("model*.safetensors")):
        with open_safetensors(weights):
            pass
