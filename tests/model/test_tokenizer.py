"""Tokenizers: bundled CodeT5 (ids as CodeT5 has them), the tiny trainable BPE, directories."""

from __future__ import annotations

import pytest

from bcoder_core.errors import BcoderError
from bcoder_core.model.tokenizer import (
    CODET5_VOCAB_SIZE,
    decode_program,
    encode_program,
    load_tokenizer,
    train_tiny_tokenizer,
)

PROGRAMS = [
    "def f(x):\n\tif x:\n\t\treturn x  + 1\n\treturn 0\n",
    "n = int(input())\r\nfor i in range(n):\r\n\tprint(i , end='\\t')\r\n",
    "s = 'ünïcödé ✓ 😀'\nprint(s [::-1])  # trailing spaces   \n\n\n",
    "\t\t\n   \n\tx=1 .\n",
    "print('<extra_id_0> is just text here? no: a special token')\n",
]


@pytest.fixture(scope="module")
def codet5():
    return load_tokenizer("codet5")


def test_codet5_size_and_special_ids(codet5):
    assert len(codet5) == CODET5_VOCAB_SIZE == 32100
    assert (codet5.pad_token_id, codet5.bos_token_id, codet5.eos_token_id) == (0, 1, 2)
    assert (codet5.unk_token_id, codet5.mask_token_id) == (3, 4)
    assert codet5.convert_tokens_to_ids(["<pad>", "<s>", "</s>", "<unk>", "<mask>"]) == [0, 1, 2, 3, 4]
    # CodeT5's added_tokens.json: <extra_id_99> = 32000 ... <extra_id_0> = 32099
    assert codet5.convert_tokens_to_ids("<extra_id_99>") == 32000
    assert codet5.convert_tokens_to_ids("<extra_id_0>") == 32099
    assert codet5.convert_tokens_to_ids("<extra_id_50>") == 32049


def test_codet5_known_token_ids(codet5):
    # ids of CodeT5's vocab.json (byte-level BPE: Ġ = leading space, Ċ = newline, ĉ = tab)
    assert codet5.convert_tokens_to_ids(["def", "Ġdef", "Ċ", "ĉ", "return", "Ġx"]) == [
        536,
        1652,
        203,
        202,
        2463,
        619,
    ]
    enc = codet5("def f(x):\n\treturn x")
    assert enc["input_ids"] == [1, 536, 284, 12, 92, 4672, 203, 202, 2463, 619, 2]
    assert codet5.convert_ids_to_tokens(enc["input_ids"]) == [
        "<s>", "def", "Ġf", "(", "x", "):", "Ċ", "ĉ", "return", "Ġx", "</s>",
    ]  # fmt: skip
    assert codet5("x", add_special_tokens=False)["input_ids"] == [92]


@pytest.mark.parametrize("program", PROGRAMS)
def test_codet5_round_trip(codet5, program):
    ids = encode_program(codet5, program)
    assert ids[0] == 1 and ids[-1] == 2
    if "<extra_id_0>" not in program:
        assert decode_program(codet5, ids) == program
    assert codet5.decode(ids[1:-1], clean_up_tokenization_spaces=False) == program


def test_codet5_decoding_keeps_spacing(codet5):
    # clean_up_tokenization_spaces would turn "x ." into "x."
    assert decode_program(codet5, codet5("a = x . y , z")["input_ids"]) == "a = x . y , z"


def test_tiny_byte_tokenizer_by_name():
    tok = load_tokenizer("tiny")
    assert len(tok) == 261
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id, tok.mask_token_id) == (
        0,
        1,
        2,
        3,
        4,
    )
    for p in PROGRAMS:
        ids = encode_program(tok, p)
        assert ids[0] == 1 and ids[-1] == 2 and 3 not in ids
        assert decode_program(tok, ids) == p


def test_train_tiny_tokenizer_deterministic_and_round_trips(tmp_path):
    corpus = PROGRAMS * 5 + ["import sys\nfor line in sys.stdin:\n\tprint(line.strip())\n"] * 7
    a = train_tiny_tokenizer(corpus, vocab_size=320)
    b = train_tiny_tokenizer(list(reversed(corpus)), vocab_size=320)
    assert a.get_vocab() == b.get_vocab()
    assert 261 < len(a) <= 320
    assert [a.convert_ids_to_tokens(i) for i in range(5)] == ["<pad>", "<s>", "</s>", "<unk>", "<mask>"]
    merged = a("for line in sys.stdin:\n\tprint(line)")["input_ids"]
    assert len(merged) < len("for line in sys.stdin:\n\tprint(line)") + 2  # merges were learned
    unseen = "λx: ψ(x)\t\t# ☃\r\n"
    for p in [*PROGRAMS, unseen]:
        ids = encode_program(a, p)
        assert ids[0] == 1 and ids[-1] == 2 and 3 not in ids
        assert decode_program(a, ids) == p
    a.save_pretrained(tmp_path / "tok")
    c = load_tokenizer(str(tmp_path / "tok"))
    assert len(c) == len(a)
    for p in [*PROGRAMS, unseen]:
        assert c(p)["input_ids"] == a(p)["input_ids"]
        assert decode_program(c, c(p)["input_ids"]) == p


def test_codet5_saved_and_reloaded_from_directory(codet5, tmp_path):
    codet5.save_pretrained(tmp_path / "t")
    again = load_tokenizer(str(tmp_path / "t"))
    assert len(again) == 32100
    for p in PROGRAMS:
        assert again(p)["input_ids"] == codet5(p)["input_ids"]


def test_errors(tmp_path):
    with pytest.raises(BcoderError, match="not 'codet5'"):
        load_tokenizer(str(tmp_path / "missing"))
    with pytest.raises(BcoderError, match="cannot load"):
        load_tokenizer(str(tmp_path))  # a directory without tokenizer files
    with pytest.raises(BcoderError, match="vocab_size"):
        train_tiny_tokenizer(["x"], vocab_size=100)
