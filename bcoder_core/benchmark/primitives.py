"""The primitives of the built-in benchmark: steps that compose into short programs.

A problem is a pipeline: an input value (a list of integers or a string of lowercase letters), one
to three *transform* steps applied in order, then one *terminal* step that turns the value into the
answer. Each primitive carries

- English phrasings (a small closed vocabulary; ``{k}``, ``{x}``, ``{y}`` name its parameters and
  ``{verb}`` is ``print`` or ``return`` in terminals),
- a canonical Python implementation (``apply``) that computes the hidden tests' expected outputs,
- code renderings in three styles (``comp``: comprehensions and slicing, ``loop``: explicit loops,
  ``builtin``: ``map``/``filter``/library calls), which become the reference solutions after the
  generator has checked them against the canonical outputs.

Rendered code uses the variable ``a`` for the list family and ``s`` for the string family; code
lines are 4-space indented (the prompt builder re-indents with tabs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

STYLES: tuple[str, ...] = ("comp", "loop", "builtin")
FAMILIES: tuple[str, ...] = ("list", "string")

# The list family: n in [1, LIST_MAX_LEN], values in [LIST_MIN_VALUE, LIST_MAX_VALUE].
LIST_MAX_LEN = 10
LIST_MIN_VALUE = -10
LIST_MAX_VALUE = 10
# The string family: 1..STRING_MAX_LEN letters from ALPHABET.
STRING_MAX_LEN = 12
ALPHABET = "abcdeilmnorstu"
VOWELS = "aeiou"

Lines = list[str]


@dataclass(frozen=True)
class Primitive:
    """One step kind. ``params`` lists the allowed parameter values (empty: no parameter)."""

    name: str
    family: str
    role: str  # "filter" | "map" | "order" | "terminal"
    phrases: tuple[str, ...]
    apply: Callable[[Any, Any], Any]
    render: Callable[[str, Any, str], Lines]  # (style, param, fmt) -> code lines
    params: tuple[Any, ...] = ()

    @property
    def is_terminal(self) -> bool:
        return self.role == "terminal"

    def phrase(self, index: int, param: Any, fmt: str) -> str:
        verb = "print" if fmt == "stdin" else "return"
        kw: dict[str, Any] = {"verb": verb}
        if isinstance(param, tuple):
            kw["x"], kw["y"] = param
        elif isinstance(param, str):
            kw["x"] = param
        elif param is not None:
            kw["k"] = param
            kw["k1"] = param - 1
        return self.phrases[index % len(self.phrases)].format(**kw)


# --------------------------------------------------------------------------------------------------
# Rendering helpers: the list family


def _list_filter(pred: str, builtin: str | None = None) -> Callable[[str, Any, str], Lines]:
    """Render a filter whose predicate on ``x`` is ``pred`` (``{k}`` substituted)."""

    def render(style: str, k: Any, fmt: str) -> Lines:
        p = pred.format(k=k)
        if style == "comp":
            return [f"a = [x for x in a if {p}]"]
        if style == "loop":
            return ["b = []", "for x in a:", f"    if {p}:", "        b.append(x)", "a = b"]
        if builtin is not None:
            return [builtin.format(k=k)]
        return [f"a = list(filter(lambda x: {p}, a))"]

    return render


def _list_map(expr: str) -> Callable[[str, Any, str], Lines]:
    def render(style: str, k: Any, fmt: str) -> Lines:
        e = expr.format(k=k)
        if style == "comp":
            return [f"a = [{e} for x in a]"]
        if style == "loop":
            return ["b = []", "for x in a:", f"    b.append({e})", "a = b"]
        return [f"a = list(map(lambda x: {e}, a))"]

    return render


def _render_sort(style: str, k: Any, fmt: str) -> Lines:
    return {"comp": ["a = sorted(a)"], "loop": ["a.sort()"], "builtin": ["a = sorted(a)"]}[style]


def _render_reverse(style: str, k: Any, fmt: str) -> Lines:
    return {"comp": ["a = a[::-1]"], "loop": ["a.reverse()"], "builtin": ["a = list(reversed(a))"]}[style]


def _render_take(style: str, k: Any, fmt: str) -> Lines:
    if style == "loop":
        return ["b = []", "for x in a:", f"    if len(b) < {k}:", "        b.append(x)", "a = b"]
    if style == "builtin":
        return [f"a = list(a[:{k}])"]
    return [f"a = a[:{k}]"]


def _out(fmt: str, expr: str) -> str:
    return f"print({expr})" if fmt == "stdin" else f"return {expr}"


def _list_terminal_sum(style: str, k: Any, fmt: str) -> Lines:
    if style == "loop":
        return ["t = 0", "for x in a:", "    t += x", _out(fmt, "t")]
    return [_out(fmt, "sum(a)")]


def _list_terminal_count(style: str, k: Any, fmt: str) -> Lines:
    if style == "loop":
        return ["c = 0", "for x in a:", "    c += 1", _out(fmt, "c")]
    return [_out(fmt, "len(a)")]


def _list_terminal_extreme(op: str, cmp: str) -> Callable[[str, Any, str], Lines]:
    def render(style: str, k: Any, fmt: str) -> Lines:
        if style == "loop":
            return [
                "m = None",
                "for x in a:",
                f"    if m is None or x {cmp} m:",
                "        m = x",
                _out(fmt, "0 if m is None else m"),
            ]
        if style == "builtin":
            return [_out(fmt, f"{op}(a, default=0)")]
        return [_out(fmt, f"{op}(a) if a else 0")]

    return render


def _list_terminal_list(style: str, k: Any, fmt: str) -> Lines:
    if fmt == "stdin":
        return {
            "comp": ["print(' '.join(map(str, a)))"],
            "loop": ["print(' '.join(str(x) for x in a))"],
            "builtin": ["print(*a)"],
        }[style]
    return {
        "comp": ["return a"],
        "loop": ["r = []", "for x in a:", "    r.append(x)", "return r"],
        "builtin": ["return list(a)"],
    }[style]


def _list_terminal_distinct(style: str, k: Any, fmt: str) -> Lines:
    if style == "loop":
        return [
            "seen = []",
            "for x in a:",
            "    if x not in seen:",
            "        seen.append(x)",
            _out(fmt, "len(seen)"),
        ]
    return [_out(fmt, "len(set(a))")]


def _max0(a: list[int]) -> int:
    return max(a) if a else 0


def _min0(a: list[int]) -> int:
    return min(a) if a else 0


_THRESHOLDS = tuple(range(-3, 7))
_SMALL = tuple(range(1, 10))

LIST_PRIMITIVES: tuple[Primitive, ...] = (
    # filters
    Primitive(
        "keep_even",
        "list",
        "filter",
        ("keep only the even numbers", "remove every odd number"),
        lambda a, k: [x for x in a if x % 2 == 0],
        _list_filter("x % 2 == 0"),
    ),
    Primitive(
        "keep_odd",
        "list",
        "filter",
        ("keep only the odd numbers", "remove every even number"),
        lambda a, k: [x for x in a if x % 2 != 0],
        _list_filter("x % 2 == 1"),
    ),
    Primitive(
        "keep_positive",
        "list",
        "filter",
        ("keep only the positive numbers", "keep only the numbers greater than zero"),
        lambda a, k: [x for x in a if x > 0],
        _list_filter("x > 0"),
    ),
    Primitive(
        "keep_negative",
        "list",
        "filter",
        ("keep only the negative numbers", "keep only the numbers less than zero"),
        lambda a, k: [x for x in a if x < 0],
        _list_filter("x < 0"),
    ),
    Primitive(
        "keep_greater",
        "list",
        "filter",
        ("keep only the numbers greater than {k}", "remove every number that is at most {k}"),
        lambda a, k: [x for x in a if x > k],
        _list_filter("x > {k}"),
        _THRESHOLDS,
    ),
    Primitive(
        "keep_at_least",
        "list",
        "filter",
        ("keep only the numbers that are at least {k}", "remove every number less than {k}"),
        lambda a, k: [x for x in a if x >= k],
        _list_filter("x >= {k}"),
        _THRESHOLDS,
    ),
    Primitive(
        "keep_less",
        "list",
        "filter",
        ("keep only the numbers less than {k}", "remove every number that is at least {k}"),
        lambda a, k: [x for x in a if x < k],
        _list_filter("x < {k}"),
        _THRESHOLDS,
    ),
    Primitive(
        "keep_multiples",
        "list",
        "filter",
        ("keep only the multiples of {k}", "keep only the numbers divisible by {k}"),
        lambda a, k: [x for x in a if x % k == 0],
        _list_filter("x % {k} == 0"),
        (3, 4, 5),
    ),
    Primitive(
        "drop_multiples",
        "list",
        "filter",
        ("remove every multiple of {k}", "keep only the numbers not divisible by {k}"),
        lambda a, k: [x for x in a if x % k != 0],
        _list_filter("x % {k} != 0"),
        (3, 4, 5),
    ),
    # maps
    Primitive(
        "add",
        "list",
        "map",
        ("add {k} to every number", "increase every number by {k}"),
        lambda a, k: [x + k for x in a],
        _list_map("x + {k}"),
        _SMALL,
    ),
    Primitive(
        "subtract",
        "list",
        "map",
        ("subtract {k} from every number", "decrease every number by {k}"),
        lambda a, k: [x - k for x in a],
        _list_map("x - {k}"),
        _SMALL,
    ),
    Primitive(
        "multiply",
        "list",
        "map",
        ("multiply every number by {k}", "replace every number x by {k} * x"),
        lambda a, k: [x * k for x in a],
        _list_map("x * {k}"),
        (2, 3, 4, 5),
    ),
    Primitive(
        "square",
        "list",
        "map",
        ("square every number", "replace every number by its square"),
        lambda a, k: [x * x for x in a],
        _list_map("x * x"),
    ),
    Primitive(
        "negate",
        "list",
        "map",
        ("negate every number", "replace every number x by -x"),
        lambda a, k: [-x for x in a],
        _list_map("-x"),
    ),
    Primitive(
        "absolute",
        "list",
        "map",
        ("replace every number by its absolute value", "drop the sign of every number"),
        lambda a, k: [abs(x) for x in a],
        _list_map("abs(x)"),
    ),
    Primitive(
        "modulo",
        "list",
        "map",
        (
            "replace every number by its remainder modulo {k} (from 0 to {k1})",
            "replace every number x by x mod {k} (a value from 0 to {k1})",
        ),
        lambda a, k: [x % k for x in a],
        _list_map("x % {k}"),
        (2, 3, 4, 5),
    ),
    Primitive(
        "halve",
        "list",
        "map",
        ("halve every number, rounding down", "replace every number x by x / 2 rounded down"),
        lambda a, k: [x // 2 for x in a],
        _list_map("x // 2"),
    ),
    # orders
    Primitive(
        "sort",
        "list",
        "order",
        ("sort the numbers in increasing order", "arrange the numbers from smallest to largest"),
        lambda a, k: sorted(a),
        _render_sort,
    ),
    Primitive(
        "reverse",
        "list",
        "order",
        ("reverse the order of the numbers", "reverse the list"),
        lambda a, k: a[::-1],
        _render_reverse,
    ),
    Primitive(
        "take",
        "list",
        "order",
        (
            "keep only the first {k} numbers (all of them if there are fewer)",
            "drop everything after the first {k} numbers",
        ),
        lambda a, k: a[:k],
        _render_take,
        (1, 2, 3, 4, 5),
    ),
    # terminals
    Primitive(
        "sum",
        "list",
        "terminal",
        ("{verb} the sum of the numbers", "{verb} the total of all numbers"),
        lambda a, k: sum(a),
        _list_terminal_sum,
    ),
    Primitive(
        "count",
        "list",
        "terminal",
        ("{verb} how many numbers there are", "{verb} the number of numbers left"),
        lambda a, k: len(a),
        _list_terminal_count,
    ),
    Primitive(
        "max",
        "list",
        "terminal",
        (
            "{verb} the largest number, or 0 if there are none",
            "{verb} the maximum, or 0 if the list is empty",
        ),
        lambda a, k: _max0(a),
        _list_terminal_extreme("max", ">"),
    ),
    Primitive(
        "min",
        "list",
        "terminal",
        (
            "{verb} the smallest number, or 0 if there are none",
            "{verb} the minimum, or 0 if the list is empty",
        ),
        lambda a, k: _min0(a),
        _list_terminal_extreme("min", "<"),
    ),
    Primitive(
        "list",
        "list",
        "terminal",
        ("{verb} the remaining numbers in order", "{verb} the resulting list"),
        lambda a, k: list(a),
        _list_terminal_list,
    ),
    Primitive(
        "distinct",
        "list",
        "terminal",
        ("{verb} how many different values there are", "{verb} the number of distinct numbers"),
        lambda a, k: len(set(a)),
        _list_terminal_distinct,
    ),
)


# --------------------------------------------------------------------------------------------------
# The string family


def _str_filter(pred: str, builtin: str | None = None) -> Callable[[str, Any, str], Lines]:
    def render(style: str, p: Any, fmt: str) -> Lines:
        x = p if isinstance(p, str) else ""
        q = pred.format(x=x)
        if style == "comp":
            return [f"s = ''.join(c for c in s if {q})"]
        if style == "loop":
            return ["t = ''", "for c in s:", f"    if {q}:", "        t += c", "s = t"]
        if builtin is not None:
            return [builtin.format(x=x)]
        return [f"s = ''.join(filter(lambda c: {q}, s))"]

    return render


def _str_map(expr: str, builtin: str | None = None) -> Callable[[str, Any, str], Lines]:
    def render(style: str, p: Any, fmt: str) -> Lines:
        x, y = p if isinstance(p, tuple) else ("", "")
        e = expr.format(x=x, y=y)
        if style == "comp":
            return [f"s = ''.join({e} for c in s)"]
        if style == "loop":
            return ["t = ''", "for c in s:", f"    t += {e}", "s = t"]
        if builtin is not None:
            return [builtin.format(x=x, y=y)]
        return [f"s = ''.join(map(lambda c: {e}, s))"]

    return render


def _render_every_second(style: str, p: Any, fmt: str) -> Lines:
    if style == "loop":
        return ["t = ''", "for i in range(len(s)):", "    if i % 2 == 0:", "        t += s[i]", "s = t"]
    if style == "builtin":
        return ["s = ''.join(s[i] for i in range(0, len(s), 2))"]
    return ["s = s[::2]"]


def _render_str_reverse(style: str, p: Any, fmt: str) -> Lines:
    if style == "loop":
        return ["t = ''", "for c in s:", "    t = c + t", "s = t"]
    if style == "builtin":
        return ["s = ''.join(reversed(s))"]
    return ["s = s[::-1]"]


def _render_str_sort(style: str, p: Any, fmt: str) -> Lines:
    if style == "loop":
        return ["t = list(s)", "t.sort()", "s = ''.join(t)"]
    return ["s = ''.join(sorted(s))"]


def _render_rotate(style: str, k: Any, fmt: str) -> Lines:
    if style == "loop":
        return [f"t = s[:{k}]", f"s = s[{k}:] + t"]
    return [f"s = s[{k}:] + s[:{k}]"]


def _render_dedupe(style: str, p: Any, fmt: str) -> Lines:
    if style == "loop":
        return ["t = ''", "for c in s:", "    if c not in t:", "        t += c", "s = t"]
    if style == "builtin":
        return ["s = ''.join(dict.fromkeys(s))"]
    return ["s = ''.join(c for i, c in enumerate(s) if c not in s[:i])"]


def _str_terminal_string(style: str, p: Any, fmt: str) -> Lines:
    return [_out(fmt, "s")]


def _str_terminal_length(style: str, p: Any, fmt: str) -> Lines:
    if style == "loop":
        return ["n = 0", "for c in s:", "    n += 1", _out(fmt, "n")]
    return [_out(fmt, "len(s)")]


def _str_terminal_count(style: str, x: Any, fmt: str) -> Lines:
    if style == "loop":
        return ["n = 0", "for c in s:", f"    if c == '{x}':", "        n += 1", _out(fmt, "n")]
    if style == "builtin":
        return [_out(fmt, f"sum(1 for c in s if c == '{x}')")]
    return [_out(fmt, f"s.count('{x}')")]


def _str_terminal_upper(style: str, p: Any, fmt: str) -> Lines:
    if style == "loop":
        return ["t = ''", "for c in s:", "    t += c.upper()", _out(fmt, "t")]
    if style == "builtin":
        return [_out(fmt, "''.join(map(str.upper, s))")]
    return [_out(fmt, "s.upper()")]


def _str_terminal_distinct(style: str, p: Any, fmt: str) -> Lines:
    if style == "loop":
        return [
            "seen = ''",
            "for c in s:",
            "    if c not in seen:",
            "        seen += c",
            _out(fmt, "len(seen)"),
        ]
    return [_out(fmt, "len(set(s))")]


def _dedupe(s: str) -> str:
    out: list[str] = []
    for c in s:
        if c not in out:
            out.append(c)
    return "".join(out)


_LETTERS = tuple(ALPHABET)
_LETTER_PAIRS = tuple((x, y) for x in ALPHABET for y in ALPHABET if x != y)

STRING_PRIMITIVES: tuple[Primitive, ...] = (
    Primitive(
        "drop_vowels",
        "string",
        "filter",
        ("remove every vowel", "keep only the consonants"),
        lambda s, p: "".join(c for c in s if c not in VOWELS),
        _str_filter("c not in 'aeiou'"),
    ),
    Primitive(
        "keep_vowels",
        "string",
        "filter",
        ("keep only the vowels", "remove every consonant"),
        lambda s, p: "".join(c for c in s if c in VOWELS),
        _str_filter("c in 'aeiou'"),
    ),
    Primitive(
        "drop_letter",
        "string",
        "filter",
        ("remove every letter '{x}'", "delete all occurrences of '{x}'"),
        lambda s, x: s.replace(x, ""),
        _str_filter("c != '{x}'", builtin="s = s.replace('{x}', '')"),
        _LETTERS,
    ),
    Primitive(
        "every_second",
        "string",
        "filter",
        (
            "keep only the first, third, fifth, ... letters",
            "keep every second letter, starting with the first",
        ),
        lambda s, p: s[::2],
        _render_every_second,
    ),
    Primitive(
        "replace",
        "string",
        "map",
        ("replace every letter '{x}' by '{y}'", "change each '{x}' into '{y}'"),
        lambda s, p: s.replace(p[0], p[1]),
        _str_map("'{y}' if c == '{x}' else c", builtin="s = s.replace('{x}', '{y}')"),
        _LETTER_PAIRS,
    ),
    Primitive(
        "double",
        "string",
        "map",
        ("write every letter twice", "double every letter"),
        lambda s, p: "".join(c + c for c in s),
        _str_map("c + c", builtin="s = ''.join(map(lambda c: c * 2, s))"),
    ),
    Primitive(
        "str_reverse",
        "string",
        "order",
        ("reverse the string", "write the letters in reverse order"),
        lambda s, p: s[::-1],
        _render_str_reverse,
    ),
    Primitive(
        "str_sort",
        "string",
        "order",
        ("sort the letters alphabetically", "arrange the letters in alphabetical order"),
        lambda s, p: "".join(sorted(s)),
        _render_str_sort,
    ),
    Primitive(
        "rotate",
        "string",
        "order",
        (
            "move the first {k} letters to the end (all of them if there are fewer)",
            "rotate the string left by {k} positions, moving the first {k} letters to the end",
        ),
        lambda s, k: s[k:] + s[:k],
        _render_rotate,
        (1, 2, 3),
    ),
    Primitive(
        "dedupe",
        "string",
        "order",
        (
            "remove repeated letters, keeping only the first occurrence of each",
            "delete every letter that already appeared earlier",
        ),
        lambda s, p: _dedupe(s),
        _render_dedupe,
    ),
    Primitive(
        "string",
        "string",
        "terminal",
        ("{verb} the resulting string", "{verb} the string"),
        lambda s, p: s,
        _str_terminal_string,
    ),
    Primitive(
        "length",
        "string",
        "terminal",
        ("{verb} the length of the string", "{verb} how many letters are left"),
        lambda s, p: len(s),
        _str_terminal_length,
    ),
    Primitive(
        "count_letter",
        "string",
        "terminal",
        ("{verb} how many times '{x}' occurs", "{verb} the number of letters '{x}'"),
        lambda s, x: s.count(x),
        _str_terminal_count,
        _LETTERS,
    ),
    Primitive(
        "upper",
        "string",
        "terminal",
        ("{verb} the string in upper case", "{verb} the string with every letter capitalized"),
        lambda s, p: s.upper(),
        _str_terminal_upper,
    ),
    Primitive(
        "str_distinct",
        "string",
        "terminal",
        ("{verb} how many different letters there are", "{verb} the number of distinct letters"),
        lambda s, p: len(set(s)),
        _str_terminal_distinct,
    ),
)

PRIMITIVES: dict[str, Primitive] = {p.name: p for p in LIST_PRIMITIVES + STRING_PRIMITIVES}


def family_primitives(family: str) -> tuple[Primitive, ...]:
    return LIST_PRIMITIVES if family == "list" else STRING_PRIMITIVES


def transforms(family: str) -> tuple[Primitive, ...]:
    return tuple(p for p in family_primitives(family) if not p.is_terminal)


def terminals(family: str) -> tuple[Primitive, ...]:
    return tuple(p for p in family_primitives(family) if p.is_terminal)
