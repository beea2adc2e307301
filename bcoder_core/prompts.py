"""Prompts the public checkpoints were trained on (DESIGN §3.2), truncation, and tab re-indent.

APPS-style problems (``stdin`` / ``call``) get CodeRL's prompt, byte for byte::

    "\\nQUESTION:\\n" + question + ("\\n" + starter_code if starter_code) +
    ("\\nUse Call-Based format" if format == "call" else "\\nUse Standard Input format") + "\\nANSWER:\\n"

``assert`` problems (MBPP, HumanEval) get the zero-shot instruction template the paper takes from
WizardCoder (see ``build_mbpp_prompt``).

Truncation. CodeRL cut the encoded prompt at ``max_source_tokens`` from the end, which removed the
format line and ``ANSWER:`` from long statements. Here the *question* is cut from its end instead, so
what follows it always survives. With a tokenizer (anything with ``encode(text) -> list``, e.g. a
Hugging Face tokenizer; special tokens count, as in CodeRL's ``encode(..., max_length=600)``) the
budget is in tokens and the longest question prefix that fits is found by bisection on the whole
encoded prompt; without one it is a character budget of ``CHARS_PER_TOKEN`` characters per token.
``max_source_tokens=None`` turns truncation off. If the fixed parts alone are over the budget, the
starter code is cut from its end too; the format line and ``ANSWER:`` (or ``### Response:``) are
never cut, even when that leaves the prompt over the budget.
"""

from __future__ import annotations

import ast
import io
import tokenize
from collections.abc import Callable
from typing import Any

from bcoder_core.problems import Problem

CHARS_PER_TOKEN = 4
"""Character budget per token when no tokenizer is given (CodeT5's BPE averages about 3-4 on APPS)."""

MBPP_INSTRUCTION = (
    "Below is an instruction that describes a task. Write a response that appropriately completes "
    "the request.\n\n### Instruction:\nCreate a Python script for this problem:\n{body}\n\n### Response:"
)
"""WizardCoder's instruction template (``src/mbpp_gen.py``, ``src/humaneval_gen.py``)."""

MBPP_PROMPT_OVERRIDES: dict[str, str] = {
    # WizardCoder shows only the signature for this task: its test assertions are thousands of
    # characters of floating-point polygons.
    "mbpp/493": "calculate_polygons(startx, starty, endx, endy, radius)",
}


def build_prompt(problem: Problem, tokenizer: Any = None, max_source_tokens: int | None = 600) -> str:
    """The prompt for ``problem``: CodeRL's for ``stdin``/``call``, the MBPP template for ``assert``."""
    if problem.format == "assert":
        return build_mbpp_prompt(problem, tokenizer, max_source_tokens)
    fmt_line = "\nUse Call-Based format" if problem.format == "call" else "\nUse Standard Input format"
    starter = "\n" + problem.starter_code if problem.starter_code else ""
    return _fit(
        "\nQUESTION:\n", problem.question, starter, fmt_line + "\nANSWER:\n", tokenizer, max_source_tokens
    )


def build_mbpp_prompt(
    problem: Problem,
    tokenizer: Any = None,
    max_source_tokens: int | None = 600,
    tests: str = "all",
) -> str:
    """Zero-shot instruction prompt for an ``assert`` problem, in WizardCoder's MBPP format.

    The body is ``"\\n" + question + "\\nTest examples:" + "\\n" + assertion ...`` with every
    assertion of the hidden tests (``tests="all"``, WizardCoder's choice), only the example tests
    (``"example"``) or none (``"none"``); four-space runs become tabs, as WizardCoder does. HumanEval
    problems (``starter_code`` set: the question is the code to complete) show the question alone.
    The question is what truncation cuts.
    """
    if tests not in ("all", "example", "none"):
        raise ValueError(f"tests must be 'all', 'example' or 'none', not {tests!r}")
    if problem.starter_code or tests == "none":
        head, question, tail = "", problem.question, ""
    else:
        override = MBPP_PROMPT_OVERRIDES.get(problem.id)
        chosen = problem.tests if tests == "all" else problem.example_tests
        lines = [override] if override and tests == "all" else list(chosen.get("asserts", []))
        head, question, tail = "\n", problem.question, "\nTest examples:" + "".join("\n" + t for t in lines)
    before, after = MBPP_INSTRUCTION.split("{body}")
    tab = "    "
    return _fit(
        before + head.replace(tab, "\t"),
        question.replace(tab, "\t"),
        tail.replace(tab, "\t"),
        after,
        tokenizer,
        max_source_tokens,
    )


# --------------------------------------------------------------------------------- truncation


def _measure(tokenizer: Any) -> Callable[[str], int]:
    if tokenizer is None:
        return len
    return lambda text: len(tokenizer.encode(text))


def _fit(head: str, question: str, middle: str, tail: str, tokenizer: Any, budget: int | None) -> str:
    """``head + question + middle + tail``, with ``question`` (then ``middle``) cut from the end to fit."""
    full = head + question + middle + tail
    if budget is None:
        return full
    if budget <= 0:
        raise ValueError("max_source_tokens must be positive")
    limit = budget if tokenizer is not None else budget * CHARS_PER_TOKEN
    size = _measure(tokenizer)
    if size(full) <= limit:
        return full
    n = _longest_prefix(question, lambda q: size(head + q + middle + tail) <= limit)
    if n > 0:
        return head + question[:n] + middle + tail
    m = _longest_prefix(middle, lambda s: size(head + s + tail) <= limit)
    return head + middle[:m] + tail


def _longest_prefix(text: str, fits: Callable[[str], bool]) -> int:
    """Largest n with ``fits(text[:n])`` (0 if none does), by bisection.

    Token counts of prefixes are monotone up to BPE merges at the cut, so the bisection result is
    checked and walked back until it really fits.
    """
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(text[:mid]):
            lo = mid
        else:
            hi = mid - 1
    while lo > 0 and not fits(text[:lo]):
        lo -= 1
    return lo


# ------------------------------------------------------------------------------- tab re-indent


def reindent_with_tabs(code: str) -> str:
    """``code`` with each block level indented by one tab (CodeRL trains on tab-indented code).

    The indentation structure comes from Python's own tokenizer: each line that starts a logical
    line gets ``depth`` tabs in place of its leading whitespace, whatever unit it used (4 spaces,
    2 spaces, a tab, a mix the compiler accepts). Comment lines indented like a block level follow
    that level. Continuation lines inside brackets or after a backslash and the contents of
    multi-line strings are left exactly as they are, so the program means the same (same AST).
    Code that does not parse is returned unchanged.
    """
    try:
        ast.parse(code)
        tokens = list(tokenize.generate_tokens(io.StringIO(code).readline))
    except (SyntaxError, ValueError, tokenize.TokenError, IndentationError, RecursionError, MemoryError):
        return code

    stack = [""]  # indentation strings of the open blocks
    depth_of_ws: dict[str, int] = {"": 0}  # each indentation string -> the block depth it first had
    depth_of_line: dict[int, int] = {}  # physical line (1-based) -> block depth, for logical-line starts
    comment_lines: dict[int, str] = {}  # comment-only lines -> their leading whitespace
    at_logical_start = True
    skip = {tokenize.NL, tokenize.COMMENT, tokenize.ENCODING, tokenize.ENDMARKER}
    for tok in tokens:
        if tok.type == tokenize.INDENT:
            stack.append(tok.string)
            depth_of_ws.setdefault(tok.string, len(stack) - 1)
        elif tok.type == tokenize.DEDENT:
            stack.pop()
        elif tok.type == tokenize.NEWLINE:
            at_logical_start = True
        elif tok.type == tokenize.COMMENT and at_logical_start and not tok.line[: tok.start[1]].strip():
            comment_lines[tok.start[0]] = tok.line[: tok.start[1]]
        elif tok.type not in skip and at_logical_start:
            depth_of_line[tok.start[0]] = len(stack) - 1
            at_logical_start = False

    lines = code.splitlines(keepends=True)
    for row, depth in depth_of_line.items():
        lines[row - 1] = "\t" * depth + lines[row - 1].lstrip(" \t\f")
    for row, ws in comment_lines.items():
        if row not in depth_of_line and ws in depth_of_ws:
            lines[row - 1] = "\t" * depth_of_ws[ws] + lines[row - 1].lstrip(" \t\f")
    result = "".join(lines)
    try:
        ast.parse(result)
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # pragma: no cover - defensive
        return code
    return result
