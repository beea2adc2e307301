"""Example tests parsed from an APPS problem statement (best effort), for the filtered protocol.

APPS ships no separate example tests; the examples are in the statement text. What is recognised:

stdin problems (``format == "stdin"``)
  * Codeforces style: a section ``-----Example-----`` / ``-----Examples-----`` whose body holds
    ``Input`` … ``Output`` … blocks (markers alone on a line, optionally with a colon, optionally
    ``Sample Input 1:`` as on Kattis), one or more pairs.
  * AtCoder / CodeChef style: sections ``-----Sample Input-----`` / ``-----Sample Input 1-----`` /
    ``-----Sample Input:-----`` followed by a matching ``-----Sample Output…-----`` section.
  * Section headers may also be written with ``=====`` instead of ``-----``.
  An input block runs to its ``Output`` marker or the next section header (leading and trailing
  blank lines removed); an output block runs to its first blank line (the prose that often follows
  is not part of it). Blocks are stored with a final newline, like APPS's own test strings.

call-based problems (``format == "call"``)
  * LeetCode style lines ``Input: arr = [2,3,4,7,11], k = 5`` followed by ``Output: 9``.
  * ``Input`` / ``Output`` blocks as above whose text is Python (or JSON) literals: the input
    block is read as an argument list (``[1, 2], 3`` or one argument per line or ``a = 1, b = 2``),
    the output block as one value.
  * Codewars style lines ``fn_name(args) == value`` (also ``==>``, ``=>``, ``->``, ``returns``,
    ``should return``, ``# =>``).
  Arguments are taken in the order written; JSON's ``true``/``false``/``null`` are accepted.

Anything that does not parse completely is left out; when inputs and outputs do not pair up,
the statement yields no examples at all. The result is ``{}`` or ``{"inputs": [...], "outputs":
[...]}`` in the shape of the problem's hidden tests (call-based outputs are plain values, not the
one-element lists some APPS problems use; the executor accepts both).
"""

from __future__ import annotations

import ast
import re
from typing import Any

_HEADER = re.compile(r"^\s*(?:-{3,}|={3,})\s*(.*?)\s*(?:-{3,}|={3,})\s*$")
_INPUT_MARK = re.compile(r"^\s*(?:sample\s+|example\s+)?input(?:\s*\d+)?\s*:?\s*$", re.IGNORECASE)
_OUTPUT_MARK = re.compile(r"^\s*(?:sample\s+|example\s+)?output(?:\s*\d+)?\s*:?\s*$", re.IGNORECASE)
_EXAMPLE_TITLE = re.compile(r"^(?:examples?|samples?|sample\s+tests?|example\s+tests?)\s*\d*\s*:?$", re.I)
_SAMPLE_INPUT_TITLE = re.compile(r"^(?:sample|example)\s+input(?:\s*\d+)?\s*:?$", re.IGNORECASE)
_SAMPLE_OUTPUT_TITLE = re.compile(r"^(?:sample|example)\s+output(?:\s*\d+)?\s*:?$", re.IGNORECASE)
_LEETCODE_INPUT = re.compile(r"^\s*Input\s*:\s*(\S.*?)\s*$")
_LEETCODE_OUTPUT = re.compile(r"^\s*Output\s*:\s*(\S.*?)\s*$")
_RESULT_SEPARATORS = r"(?:==>|==|=>|->|→|#\s*=>|#\s*->|#\s*returns?|should\s+return|returns?)"


def parse_examples(question: str, fmt: str, fn_name: str | None = None) -> dict[str, Any]:
    """Example tests found in ``question``, or ``{}`` (see the module docstring)."""
    if fmt == "stdin":
        pairs = _block_pairs(question)
        return _as_tests(pairs) if pairs else {}
    if fmt == "call":
        pairs = _leetcode_pairs(question)
        if not pairs:
            pairs = _call_block_pairs(question)
        if not pairs and fn_name:
            pairs = _codewars_pairs(question, fn_name)
        return _as_tests(pairs) if pairs else {}
    return {}


def _as_tests(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
    return {"inputs": [p[0] for p in pairs], "outputs": [p[1] for p in pairs]}


# ----------------------------------------------------------------------------------- sections


def _sections(text: str) -> list[tuple[str, list[str]]]:
    """Split a statement at ``-----Title-----`` headers: ``[(title, body lines), ...]``."""
    sections: list[tuple[str, list[str]]] = [("", [])]
    for line in text.replace("\r\n", "\n").split("\n"):
        m = _HEADER.match(line)
        if m and m.group(1):
            sections.append((m.group(1).strip(), []))
        else:
            sections[-1][1].append(line)
    return sections


def _trim(lines: list[str]) -> list[str]:
    start, end = 0, len(lines)
    while start < end and not lines[start].strip():
        start += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    return lines[start:end]


def _until_blank(lines: list[str]) -> list[str]:
    lines = _trim(lines)
    for i, line in enumerate(lines):
        if not line.strip():
            return lines[:i]
    return lines


def _text(lines: list[str]) -> str:
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _raw_block_pairs(question: str) -> list[tuple[list[str], list[str]]]:
    """Input/output line blocks of the statement, in order, before any interpretation."""
    pairs: list[tuple[list[str], list[str]]] = []
    pending_input: list[str] | None = None
    for title, body in _sections(question):
        if _SAMPLE_INPUT_TITLE.match(title):
            pending_input = _trim(body)
        elif _SAMPLE_OUTPUT_TITLE.match(title):
            if pending_input is not None:
                pairs.append((pending_input, _until_blank(body)))
            pending_input = None
        elif _EXAMPLE_TITLE.match(title):
            pairs.extend(_pairs_in_example_body(body))
            pending_input = None
    return pairs


def _pairs_in_example_body(body: list[str]) -> list[tuple[list[str], list[str]]]:
    pairs: list[tuple[list[str], list[str]]] = []
    mode: str | None = None
    current_in: list[str] = []
    current_out: list[str] = []
    for line in body:
        if _INPUT_MARK.match(line):
            if mode == "out":
                pairs.append((_trim(current_in), _until_blank(current_out)))
            mode, current_in, current_out = "in", [], []
        elif _OUTPUT_MARK.match(line) and mode == "in":
            mode = "out"
        elif mode == "in":
            current_in.append(line)
        elif mode == "out":
            current_out.append(line)
    if mode == "out":
        pairs.append((_trim(current_in), _until_blank(current_out)))
    return pairs


def _block_pairs(question: str) -> list[tuple[str, str]]:
    raw = _raw_block_pairs(question)
    if not raw or any(not i or not o for i, o in raw):
        return []
    return [(_text(i), _text(o)) for i, o in raw]


# --------------------------------------------------------------------------- call-based forms


def _literal(node: ast.AST) -> Any:
    """Value of a literal expression; also JSON's true/false/null. Raises ValueError otherwise."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name) and node.id in {"true", "false", "null", "True", "False", "None"}:
        return {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}[
            node.id
        ]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand)
        if isinstance(value, bool) or not isinstance(value, (int, float, complex)):
            raise ValueError("sign on a non-number")
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, (ast.List, ast.Tuple)):
        # Tuples become lists: the tests are JSON, and the executor compares tuples as lists.
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise ValueError("dict unpacking")
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values, strict=True)}
    raise ValueError(f"not a literal: {type(node).__name__}")


def _value(text: str) -> Any:
    text = text.strip().strip("`").strip()
    try:
        return _literal(ast.parse(text, mode="eval").body)
    except (SyntaxError, ValueError, RecursionError):
        if text.endswith((".", ",", ";")):
            return _literal(ast.parse(text[:-1], mode="eval").body)
        raise


def _arguments(text: str) -> list[Any]:
    """An argument list written as ``1, [2]`` or ``a = 1, b = [2]`` (one style, not mixed)."""
    call = ast.parse(f"_f({text})", mode="eval").body
    if not isinstance(call, ast.Call):
        raise ValueError("not an argument list")
    if call.args and call.keywords:
        raise ValueError("positional and keyword arguments mixed")
    if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
        raise ValueError("starred arguments")
    if call.keywords:
        return [_literal(k.value) for k in call.keywords]
    return [_literal(a) for a in call.args]


def _safe(fn, *args):
    try:
        return fn(*args)
    except (SyntaxError, ValueError, RecursionError, TypeError):
        return _FAIL


_FAIL = object()


def _leetcode_pairs(question: str) -> list[tuple[list[Any], Any]]:
    lines = question.replace("\r\n", "\n").split("\n")
    pairs: list[tuple[list[Any], Any]] = []
    seen_input = False
    for i, line in enumerate(lines):
        m = _LEETCODE_INPUT.match(line)
        if not m:
            continue
        seen_input = True
        out = next(
            (_LEETCODE_OUTPUT.match(x) for x in lines[i + 1 : i + 4] if _LEETCODE_OUTPUT.match(x)), None
        )
        if out is None:
            return []
        args, value = _safe(_arguments, m.group(1)), _safe(_value, out.group(1))
        if args is _FAIL or value is _FAIL:
            return []
        pairs.append((args, value))
    return pairs if seen_input else []


def _call_block_pairs(question: str) -> list[tuple[list[Any], Any]]:
    raw = _raw_block_pairs(question)
    pairs: list[tuple[list[Any], Any]] = []
    for in_lines, out_lines in raw:
        ins = [x.strip() for x in in_lines if x.strip()]
        outs = [x.strip() for x in out_lines if x.strip()]
        if not ins or not outs:
            return []
        args, value = _safe(_arguments, ", ".join(ins)), _safe(_value, " ".join(outs))
        if args is _FAIL or value is _FAIL:
            return []
        pairs.append((args, value))
    return pairs


def _codewars_pairs(question: str, fn_name: str) -> list[tuple[list[Any], Any]]:
    pattern = re.compile(
        rf"(?<![\w.]){re.escape(fn_name)}\s*\((?P<args>.*)\)\s*{_RESULT_SEPARATORS}\s*(?P<out>.+?)\s*$"
    )
    pairs: list[tuple[list[Any], Any]] = []
    seen: set[str] = set()
    for line in question.replace("\r\n", "\n").split("\n"):
        m = pattern.search(line)
        if not m:
            continue
        args, value = _safe(_arguments, m.group("args")), _safe(_value, m.group("out"))
        if args is _FAIL or value is _FAIL:
            continue  # other languages' syntax in the same statement: skip the line
        key = repr((args, value))
        if key not in seen:
            seen.add(key)
            pairs.append((args, value))
    return pairs
