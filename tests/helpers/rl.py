"""Shared fixtures' building blocks for the annotate / sample / rank tests: tiny random T5 models."""

from __future__ import annotations

from pathlib import Path

import torch

from bcoder_core.problems import Problem

SOLUTIONS = [
    "def f(x):\n\tif x:\n\t\treturn 1\n\treturn 0\n",
    "n = int(input())\nfor i in range(n):\n\tprint(i, end='\\t')\n",
    "import sys\nfor line in sys.stdin:\n\tprint(line.strip()[::-1])\n",
    "a, b = map(int, input().split())\nif a > b:\n\ta, b = b, a\nprint(a + b)\n",
]


def make_problems(n: int = 4, *, with_solutions: bool = True) -> list[Problem]:
    out = []
    for i in range(n):
        sols = [SOLUTIONS[i % len(SOLUTIONS)], SOLUTIONS[(i + 1) % len(SOLUTIONS)]] if with_solutions else []
        out.append(
            Problem(
                id=f"toy/train/{i:04d}",
                source="toy",
                split="train",
                question=f"Problem {i}: print something useful for input number {i}." + " Details." * i,
                format="stdin",
                tests={"inputs": ["1\n"], "outputs": ["1\n"]},
                solutions=sols,
            )
        )
    return out


def tiny_config(vocab_size: int, **kw):
    from transformers import T5Config

    args = dict(
        vocab_size=vocab_size,
        d_model=32,
        d_ff=64,
        d_kv=8,
        num_heads=4,
        num_layers=2,
        num_decoder_layers=2,
        feed_forward_proj="relu",
        dropout_rate=0.0,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=2,
    )
    args.update(kw)
    return T5Config(**args)


def tiny_t5(vocab_size: int, seed: int = 0, **kw):
    from transformers import T5ForConditionalGeneration

    torch.manual_seed(seed)
    return T5ForConditionalGeneration(tiny_config(vocab_size, **kw)).eval()


def save_checkpoint(model, tokenizer, path: Path) -> Path:
    """A T5 checkpoint directory with its tokenizer (what `train sft`/`train theta` write)."""
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


def one_thread():
    """Generator for an autouse fixture: tiny models run far faster on one thread (and a busy CI
    machine's OpenMP spin-waits make several threads much slower still)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
