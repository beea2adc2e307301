"""Cutting the program to execute out of a causal LM's completion, and the canonical completion of a program.

Two prompt formats (``PROMPT_FORMATS``):

- ``"completion"``: the prompt is plain text ending in ``ANSWER:\\n`` and the model writes the code
  directly; a model used to markdown may still wrap it in a fence, or end its code with a stray one.
- ``"chat"``: the prompt is a chat template's user turn + generation prompt; chat models answer with
  prose around a fenced block (`````python`` … `````).

Fences (a line-based subset of CommonMark, which is how chat models write them):

- An *opening fence* is a line that starts, at column 0, with a run of three or more backticks,
  followed by an optional info string that holds no backtick (so a line such as `````x = 1````` is
  inline code, not a fence). Its language tag is the info string's first word, lower-cased.
- The block *closes* at the next line that consists of a run of backticks at least as long as the
  opening run, optionally followed by whitespace. A line with backticks elsewhere (``s = "```"``) or
  with text after them never closes a block.
- Lines are split at ``\\n`` only (a ``\\r`` before it belongs to the line break); ``\\f``, ``\\v``,
  ``\\u2028`` and friends inside string literals are program text, not line breaks.

The program of a block is the text between its fence lines, whitespace kept exactly; only the line
break before the closing fence is dropped (``\\n``, or ``\\r\\n`` when the opening fence line ended in
``\\r\\n``, i.e. the completion uses CRLF line endings; the program's inner CRLFs are kept, Python
accepts them). A block with no closing fence (the model ran out of tokens) holds everything after its
opening fence line, except a trailing partial fence: a last line of only backticks (fewer than the
opening run), which a token budget can cut from ``\\n`````, is dropped with the line break before it.

Which block: the first Python-tagged one (``python``, ``py``, ``python3``, ``py3``, ``python3.11``, …;
any case); else the first untagged one; else the first block whatever its tag (a mislabelled
``cpp`` block is as likely to be the answer as anything else, and fails in the sandbox if it is not
Python). A Python-tagged block wins over an earlier untagged one because chat models tag their code
and leave examples (input/output) untagged.

No fence at all: the text as it is, in both formats (a completion model writes bare code; some chat
models answer with bare code too, and prose without code fails in the sandbox as it should).

``"completion"`` differs in one rule: text that comes before its first fence is code, not prose (the
model was prompted to write code directly). If the first fence line is *untagged* and comes after
non-blank text, it is a stray fence (the model closing an imagined block, then chatting), and the
program is the text before it, without the line break before it. Otherwise (the text opens with a
fence, maybe after blank lines, or the first fence is tagged, as in ``Here is the code:\\n```python``)
the block rules above apply.

Round trip: ``extract_program(render_program(c, f), f) == c`` for every program ``c`` that has no line
starting at column 0 with three or more backticks (such a line can only sit inside a multi-line string
literal); fence text is ambiguous there and no rule can read both it and a two-block chat answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "FENCE_CLOSE",
    "FENCE_OPEN",
    "PROMPT_FORMATS",
    "extract_program",
    "has_closed_fence",
    "render_program",
]

FENCE_OPEN = "```python\n"
"""The text a chat answer's program starts with (what ``render_program`` writes for ``"chat"``)."""

FENCE_CLOSE = "\n```"
"""The text a chat answer's program ends with: the line break, then the closing fence."""

PROMPT_FORMATS = ("completion", "chat")
"""The prompt formats ``extract_program`` and ``render_program`` know."""

# Run of >= 3 backticks, then an info string without backticks (CommonMark: else it is inline code).
_OPEN_RE = re.compile(r"(`{3,})([^`]*)")
# Run of >= 3 backticks, then only whitespace (the length check against the opening run is separate).
_CLOSE_RE = re.compile(r"(`{3,})\s*")
# A partial closing fence left at the very end by a token budget: backticks only, no line break after.
_PARTIAL_RE = re.compile(r"`+")
_PYTHON_TAG_RE = re.compile(r"py(thon)?[0-9.]*")


@dataclass(frozen=True)
class _Block:
    """One fenced block of a completion."""

    tag: str  # the language tag, lower-cased; "" when the fence has none
    program: str  # the text between the fence lines (see the module docstring for what is dropped)
    closed: bool  # False when the completion ended before a closing fence
    start: int  # offset of the opening fence line in the completion


def _lines(text: str) -> list[tuple[int, str]]:
    """(offset, line without its ``\\n``) for each line; a ``\\r`` before the ``\\n`` stays on the line."""
    out: list[tuple[int, str]] = []
    pos = 0
    for line in text.split("\n"):
        out.append((pos, line))
        pos += len(line) + 1
    return out


def _opening(line: str) -> tuple[int, str] | None:
    """(backtick count, language tag) when ``line`` is an opening fence, else None."""
    m = _OPEN_RE.fullmatch(line)
    if m is None:
        return None
    words = m.group(2).split()
    return len(m.group(1)), (words[0].lower() if words else "")


def _closes(line: str, ticks: int) -> bool:
    """Whether ``line`` closes a block opened with ``ticks`` backticks."""
    m = _CLOSE_RE.fullmatch(line)
    return m is not None and len(m.group(1)) >= ticks


def _strip_break(body: str, crlf: bool) -> str:
    """``body`` without one trailing line break (``\\r\\n`` when the block uses CRLF, else ``\\n``)."""
    if body.endswith("\n"):
        body = body[:-1]
        if crlf and body.endswith("\r"):
            body = body[:-1]
    return body


def _blocks(text: str) -> list[_Block]:
    """The fenced blocks of ``text`` in order; the last may be unclosed (it then runs to the end)."""
    lines = _lines(text)
    blocks: list[_Block] = []
    i = 0
    while i < len(lines):
        start, line = lines[i]
        fence = _opening(line.removesuffix("\r"))
        if fence is None:
            i += 1
            continue
        ticks, tag = fence
        crlf = line.endswith("\r")
        body_start = min(start + len(line) + 1, len(text))
        j = i + 1
        while j < len(lines) and not _closes(lines[j][1], ticks):
            j += 1
        if j < len(lines):
            body = _strip_break(text[body_start : lines[j][0]], crlf)
            blocks.append(_Block(tag, body, closed=True, start=start))
            i = j + 1
            continue
        body = text[body_start:]
        head, sep, last = body.rpartition("\n")
        if _PARTIAL_RE.fullmatch(last.rstrip()):
            body = _strip_break(head + sep, crlf)
        blocks.append(_Block(tag, body, closed=False, start=start))
        break
    return blocks


def _is_python(tag: str) -> bool:
    """Whether a language tag names Python (``py``, ``python3.11``, ...): such a block is the program."""
    return _PYTHON_TAG_RE.fullmatch(tag) is not None


def _check_format(prompt_format: str) -> None:
    """Raise ``ValueError`` for an unknown format: a typo in a config must not silently pick a rule."""
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(
            f"unknown prompt_format {prompt_format!r} (expected one of {', '.join(PROMPT_FORMATS)})"
        )


def extract_program(text: str, prompt_format: str = "completion") -> str:
    """The program in a completion (text already cut at EOS by the sampler).

    The sampler hands over whatever the model wrote; the sandbox needs just the program. Rules (see
    the module docstring for the details and why): the first Python-tagged fenced block, else the
    first untagged one, else the first block; a block without closing fence runs to the end; no fence
    → the text as it is. For ``"completion"``, an untagged fence after non-blank text is a stray one
    and the program is the text before it. Whitespace is kept exactly except the line break before a
    closing fence. An empty completion gives ``""``.

    Raises ``ValueError`` for a ``prompt_format`` other than ``"completion"`` or ``"chat"``.
    """
    _check_format(prompt_format)
    blocks = _blocks(text)
    if not blocks:
        return text
    first = blocks[0]
    if prompt_format == "completion" and first.tag == "" and text[: first.start].strip():
        return _strip_break(text[: first.start], text[: first.start].endswith("\r\n"))
    for block in blocks:
        if _is_python(block.tag):
            return block.program
    for block in blocks:
        if block.tag == "":
            return block.program
    return first.program


def render_program(code: str, prompt_format: str = "completion") -> str:
    """The canonical completion text of a program: what the model is trained to produce.

    ``"completion"``: the code as is (the prompt ends in ``ANSWER:\\n``; the model writes code
    directly). ``"chat"``: ``FENCE_OPEN + code + FENCE_CLOSE``, the fenced block chat models answer
    with, without prose (prose carries no reward, and a bare block is what ``has_closed_fence`` and
    ``extract_program`` read back). ``extract_program(render_program(c, f), f) == c`` for any program
    without a column-0 line of three or more backticks (see the module docstring).

    Raises ``ValueError`` for an unknown ``prompt_format``.
    """
    _check_format(prompt_format)
    if prompt_format == "chat":
        return FENCE_OPEN + code + FENCE_CLOSE
    return code


def has_closed_fence(text: str) -> bool:
    """Whether a chat completion already holds a complete fenced block (lets a sampler stop early).

    True when ``text`` holds a closed *Python-tagged* block: ``extract_program`` picks the first such
    block whatever follows it, so the tokens after it (the model's explanation) can be skipped
    without changing the program. A closed untagged block does not count, since a Python-tagged block
    may still follow and would win (an untagged block is often an example input); a sampler then runs
    to EOS as it would without this check. A closing fence at the very end of ``text`` (no line break
    after it yet) counts.
    """
    return any(block.closed and _is_python(block.tag) for block in _blocks(text))
