"""Tokenizers: CodeT5's byte-level BPE (bundled), a tiny trainable one, or any saved tokenizer.

bcoder's own tokenizers (bundled CodeT5, tiny, trained) have CodeT5's layout of special tokens:

    <pad> = 0   <s> = 1 (bos)   </s> = 2 (eos)   <unk> = 3   <mask> = 4

and the T5 decoding convention: the decoder starts from ``<pad>`` (decoder_start_token_id = 0) and
a program's token sequence ends with ``</s>``. ``tokenizer(text)`` wraps a text as ``<s> … </s>``
(as CodeT5's RobertaTokenizer does); ``add_special_tokens=False`` gives the bare tokens.

- ``load_tokenizer("codet5")``: CodeT5's tokenizer from the files bundled in
  ``bcoder_core/assets/codet5-tokenizer`` (vocab.json + merges.txt of Salesforce/codet5-*, 32,000
  entries) plus ``<extra_id_99>`` … ``<extra_id_0>`` as ids 32000 … 32099 (CodeT5's 32,100 tokens,
  ``<extra_id_0>`` last, as in its added_tokens.json). Nothing is downloaded.
- ``load_tokenizer("tiny")``: a byte-level tokenizer with no merges (the 5 specials + 256 byte
  symbols, 261 ids); needs no training, round-trips any text. For tests.
- ``load_tokenizer(DIR)``: ``AutoTokenizer.from_pretrained(DIR)``, local files only (a tokenizer
  saved with a checkpoint, e.g. one made by ``train_tiny_tokenizer``, or a causal LM's own such as
  Qwen2.5-Coder's: it keeps its ids; it must have an EOS token, and a missing pad token is fine —
  pads are masked and the causal family pads with the model's pad or EOS id).
- ``train_tiny_tokenizer(texts, vocab_size)``: a small byte-level BPE trained with Hugging Face
  ``tokenizers`` on the given texts (deterministic: same texts and size → same vocabulary), same
  special layout. Byte-level, so tabs, newlines and any Unicode round-trip exactly.

Decode with ``skip_special_tokens=True, clean_up_tokenization_spaces=False`` to get the program
text back exactly.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bcoder_core.errors import BcoderError

__all__ = [
    "BOS_ID",
    "CODET5_DIR",
    "CODET5_VOCAB_SIZE",
    "EOS_ID",
    "MASK_ID",
    "PAD_ID",
    "SPECIAL_TOKENS",
    "UNK_ID",
    "decode_program",
    "encode_program",
    "load_tokenizer",
    "train_tiny_tokenizer",
]

PAD_ID, BOS_ID, EOS_ID, UNK_ID, MASK_ID = 0, 1, 2, 3, 4
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "<mask>")
CODET5_VOCAB_SIZE = 32100
CODET5_DIR = Path(__file__).resolve().parent.parent / "assets" / "codet5-tokenizer"
_SPECIAL_KW = dict(
    pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>", mask_token="<mask>"
)


# The JSON files AutoTokenizer reads from a directory (config.json: to find the model type).
_TOKENIZER_JSON = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "config.json")  # fmt: skip


def load_tokenizer(name_or_path: str = "codet5") -> Any:
    """A tokenizer by name ("codet5", "tiny") or from a local directory (see module docstring)."""
    if name_or_path == "codet5":
        return _codet5()
    if name_or_path == "tiny":
        return train_tiny_tokenizer([], vocab_size=len(SPECIAL_TOKENS) + 256)
    path = Path(name_or_path)
    if not path.is_dir():
        raise BcoderError(f"tokenizer {name_or_path!r}: not 'codet5', 'tiny' or a tokenizer directory")
    from transformers import AutoTokenizer

    from bcoder_core.model.files import first_line, read_json_object

    for name in _TOKENIZER_JSON:
        if (path / name).is_file():
            read_json_object(path / name)  # a file that is not JSON, named
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    # Files that parse but hold no tokenizer fail inside transformers / tokenizers with whatever type
    # the failing line raises (KeyError, TypeError, tokenizers' bare Exception): all mean "cannot load".
    except Exception as exc:
        raise BcoderError(f"tokenizer {path}: cannot load ({first_line(exc)})") from exc
    _check_layout(tok, str(path))
    return tok


def _codet5() -> Any:
    from transformers import RobertaTokenizer

    vocab, merges = CODET5_DIR / "vocab.json", CODET5_DIR / "merges.txt"
    if not vocab.is_file() or not merges.is_file():
        raise BcoderError(f"tokenizer codet5: bundled files missing in {CODET5_DIR}")
    extra = [f"<extra_id_{i}>" for i in range(99, -1, -1)]
    tok = RobertaTokenizer(
        vocab=str(vocab),
        merges=str(merges),
        additional_special_tokens=extra,
        clean_up_tokenization_spaces=False,
        model_max_length=512,
        **_SPECIAL_KW,
    )
    if len(tok) != CODET5_VOCAB_SIZE:  # pragma: no cover - guards the bundled files
        raise BcoderError(f"tokenizer codet5: {len(tok)} tokens, expected {CODET5_VOCAB_SIZE}")
    _check_layout(tok, "codet5")
    return tok


def _check_layout(tok: Any, where: str) -> None:
    # Every program's labels end in EOS (the terminal step): a tokenizer without one cannot be used.
    if tok.eos_token_id is None:
        raise BcoderError(f"tokenizer {where}: no EOS token (every program must end in one)")


def train_tiny_tokenizer(texts: Iterable[str], vocab_size: int = 1024, min_frequency: int = 2) -> Any:
    """A deterministic byte-level BPE tokenizer trained on ``texts``.

    The vocabulary holds the 5 special tokens (ids 0–4, CodeT5's layout), the 256 byte symbols,
    then up to ``vocab_size − 261`` merges learned from ``texts`` (fewer if the texts don't have
    enough pairs seen ``min_frequency`` times). Returns a ``PreTrainedTokenizerFast`` that wraps
    text as ``<s> … </s>``; save it with ``save_pretrained`` and load with ``load_tokenizer(dir)``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < len(SPECIAL_TOKENS) + 256:
        raise BcoderError(f"tiny tokenizer: vocab_size {vocab_size} < 261 (5 specials + 256 bytes)")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Sorted, deduplicated input: the result does not depend on the order the caller found texts in.
    tok.train_from_iterator(sorted(set(texts)), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", BOS_ID), ("</s>", EOS_ID)],
    )
    for i, t in enumerate(SPECIAL_TOKENS):  # pragma: no cover - guaranteed by the trainer
        if tok.token_to_id(t) != i:
            raise BcoderError(f"tiny tokenizer: {t} got id {tok.token_to_id(t)}, expected {i}")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, clean_up_tokenization_spaces=False, model_max_length=100_000, **_SPECIAL_KW
    )


def encode_program(tokenizer: Any, code: str) -> list[int]:
    """A program's label ids as CodeT5 / CodeRL train them: ``<s> tokens </s>`` (ends with EOS)."""
    ids = tokenizer(code, add_special_tokens=True)["input_ids"]
    if not ids or ids[-1] != tokenizer.eos_token_id:
        ids = [*ids, tokenizer.eos_token_id]
    return ids


def decode_program(tokenizer: Any, ids: Iterable[int]) -> str:
    """The program text of label/generated ids (special tokens dropped, spacing kept exactly)."""
    return tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)
