"""Prompts (DESIGN §3.2): CodeRL's exact format, truncation that keeps ANSWER:, tab re-indent, MBPP."""

from __future__ import annotations

import ast
import dataclasses
import json
import textwrap

import pytest
from helpers.paths import FIXTURES

from bcoder_core.data import load_apps, load_humaneval, load_mbpp
from bcoder_core.prompts import CHARS_PER_TOKEN, build_mbpp_prompt, build_prompt, reindent_with_tabs

TRAIN = FIXTURES / "apps" / "train"
APPS = {p.id: p for p in load_apps(TRAIN).problems}


def _codet5():
    try:
        from bcoder_core.model.tokenizer import load_tokenizer

        return load_tokenizer("codet5")
    except Exception as exc:  # the model package or transformers missing
        pytest.skip(f"CodeT5 tokenizer unavailable: {exc}")


class WordTokenizer:
    """A stand-in tokenizer: one token per whitespace-separated word, plus <s> and </s>."""

    def encode(self, text: str) -> list[int]:
        return [1] + [0] * len(text.split()) + [2]


def test_exact_coderl_prompt_stdin():
    question = (TRAIN / "0001" / "question.txt").read_text(encoding="utf-8")
    assert build_prompt(APPS["apps/train/0001"], max_source_tokens=None) == (
        "\nQUESTION:\n" + question + "\nUse Standard Input format\nANSWER:\n"
    )


def test_exact_coderl_prompt_call_with_starter_code():
    question = (TRAIN / "2404" / "question.txt").read_text(encoding="utf-8")
    starter = (TRAIN / "2404" / "starter_code.py").read_text(encoding="utf-8")
    expected = "\nQUESTION:\n" + question + "\n" + starter + "\nUse Call-Based format\nANSWER:\n"
    assert build_prompt(APPS["apps/train/2404"], max_source_tokens=None) == expected
    assert expected.endswith(
        "arr[i] < arr[j] for 1 <= i < j <= arr.length\nclass Solution:\n"
        "    def findKthPositive(self, arr: List[int], k: int) -> int:\n        \nUse Call-Based format\nANSWER:\n"
    )
    # short enough not to be cut with the default character budget
    assert build_prompt(APPS["apps/train/2404"]) == expected


def test_character_truncation_keeps_format_line_and_answer():
    p = APPS["apps/train/0001"]
    full = build_prompt(p, max_source_tokens=None)
    cut = build_prompt(p, max_source_tokens=100)
    assert len(full) > 100 * CHARS_PER_TOKEN
    assert len(cut) == 100 * CHARS_PER_TOKEN
    assert cut.startswith("\nQUESTION:\n" + p.question[:50])
    assert cut.endswith(
        p.question[: len(cut) - len("\nQUESTION:\n\nUse Standard Input format\nANSWER:\n")]
        + "\nUse Standard Input format\nANSWER:\n"
    )


def test_token_truncation_with_a_tokenizer():
    p = APPS["apps/train/4184"]
    tok = WordTokenizer()
    cut = build_prompt(p, tok, max_source_tokens=60)
    assert len(tok.encode(cut)) <= 60
    assert cut.endswith("\n" + p.starter_code + "\nUse Call-Based format\nANSWER:\n")
    # maximal: one more character of the question would not fit
    q_len = (
        len(cut) - len("\nQUESTION:\n") - len("\n" + p.starter_code + "\nUse Call-Based format\nANSWER:\n")
    )
    longer = (
        "\nQUESTION:\n"
        + p.question[: q_len + 1]
        + "\n"
        + p.starter_code
        + "\nUse Call-Based format\nANSWER:\n"
    )
    assert len(tok.encode(longer)) > 60 or q_len == len(p.question)


def test_budget_smaller_than_the_fixed_parts_still_keeps_answer():
    p = APPS["apps/train/2404"]
    cut = build_prompt(p, WordTokenizer(), max_source_tokens=5)
    assert cut.startswith("\nQUESTION:\n") and cut.endswith("\nUse Call-Based format\nANSWER:\n")
    with pytest.raises(ValueError):
        build_prompt(p, max_source_tokens=0)


def test_codet5_token_budget_on_every_fixture():
    tok = _codet5()
    for p in APPS.values():
        prompt = build_prompt(p, tok, max_source_tokens=600)
        full = build_prompt(p, max_source_tokens=None)
        n = len(tok.encode(prompt))
        assert n <= 600
        assert prompt.endswith("format\nANSWER:\n")
        if prompt != full:
            assert n >= 590  # cut close to the budget, not far below it
    # 0001 is long: CodeRL's tail-cut would have lost ANSWER:, here it survives.
    ids = tok.encode(build_prompt(APPS["apps/train/0001"], max_source_tokens=None))
    assert len(ids) > 600


def test_mbpp_prompt_wizardcoder_format():
    p = {q.id: q for q in load_mbpp(FIXTURES / "mbpp" / "mbpp.jsonl", split="test").problems}["mbpp/11"]
    body = "\n" + p.question + "\nTest examples:" + "".join("\n" + t for t in p.tests["asserts"])
    expected = (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nCreate a Python script for this problem:\n"
        + body
        + "\n\n### Response:"
    )
    assert build_mbpp_prompt(p) == expected
    assert build_prompt(p) == expected  # assert-format problems get the MBPP template
    assert build_mbpp_prompt(p, tests="example").count("assert ") == 1
    assert "Test examples" not in build_mbpp_prompt(p, tests="none")
    with pytest.raises(ValueError):
        build_mbpp_prompt(p, tests="some")


def test_mbpp_prompt_overrides_and_tabs():
    p = {q.id: q for q in load_mbpp(FIXTURES / "mbpp" / "mbpp.jsonl", split="test").problems}["mbpp/493"]
    prompt = build_mbpp_prompt(p, max_source_tokens=None)
    assert (
        "\nTest examples:\ncalculate_polygons(startx, starty, endx, endy, radius)\n\n### Response:" in prompt
    )
    spaced = dataclasses.replace(p, question="Indented:\n    like this")
    assert "Indented:\n\tlike this" in build_mbpp_prompt(spaced)


def test_mbpp_truncation_keeps_tests_and_response():
    p = {q.id: q for q in load_mbpp(FIXTURES / "mbpp" / "mbpp.jsonl", split="test").problems}["mbpp/11"]
    long = dataclasses.replace(p, question="word " * 2000)
    cut = build_mbpp_prompt(long, WordTokenizer(), max_source_tokens=100)
    assert len(WordTokenizer().encode(cut)) <= 100
    assert cut.endswith(p.tests["asserts"][-1] + "\n\n### Response:")


def test_humaneval_prompt():
    p = load_humaneval().problems[0]
    prompt = build_prompt(p)
    assert prompt.startswith("Below is an instruction")
    assert "Create a Python script for this problem:\nfrom typing import List" in prompt
    assert "\tfor idx, elem" not in prompt and '\t""" Check if' in prompt
    assert prompt.endswith("\n\n### Response:")


# ------------------------------------------------------------------------------ tab re-indent


def _same_program(a: str, b: str) -> bool:
    return ast.dump(ast.parse(a)) == ast.dump(ast.parse(b))


def test_reindent_all_reference_solutions_round_trip():
    n = 0
    for folder in sorted(TRAIN.iterdir()):
        for code in json.loads((folder / "solutions.json").read_text()):
            out = reindent_with_tabs(code)
            try:
                ast.parse(code)
            except SyntaxError:
                assert out == code  # unparsable: unchanged
                continue
            n += 1
            assert _same_program(code, out)
            try:
                compile(code, "<original>", "exec")
            except SyntaxError:
                pass  # e.g. a solution with 'return' at module level (parses, does not compile)
            else:
                compile(out, "<reindented>", "exec")
            assert reindent_with_tabs(out) == out  # idempotent
            if "\n    " in code and "\t" not in code:
                assert "\n\t" in out
    assert n > 90


def test_reindent_units_and_what_is_left_alone():
    code = textwrap.dedent(
        '''\
        class A:
          def f(self, x):
              # a comment at the block's level
              if x:   # trailing comment
                    return [1,
                            2]
              s = """
            keep
          this"""
          # a comment at an outer level
              return s \\
                  + "x"
        '''
    )
    out = reindent_with_tabs(code)
    assert out == (
        "class A:\n"
        "\tdef f(self, x):\n"
        "\t\t# a comment at the block's level\n"
        "\t\tif x:   # trailing comment\n"
        "\t\t\treturn [1,\n"
        "                    2]\n"
        '\t\ts = """\n'
        "    keep\n"
        '  this"""\n'
        "\t# a comment at an outer level\n"
        "\t\treturn s \\\n"
        '          + "x"\n'
    )
    assert _same_program(code, out)


@pytest.mark.parametrize(
    "code",
    [
        "def f(:\n    pass\n",  # syntax error
        "if x:\n\tpass\n        pass\n",  # inconsistent tabs and spaces
        "",
        "x = 1",
    ],
)
def test_reindent_leaves_unparsable_or_flat_code_alone(code):
    assert reindent_with_tabs(code) == code


def test_reindent_tabs_and_crlf():
    assert reindent_with_tabs("if x:\r\n    y = 1\r\n") == "if x:\r\n\ty = 1\r\n"
    assert reindent_with_tabs("if x:\n\tif y:\n\t\tz()\n") == "if x:\n\tif y:\n\t\tz()\n"
    two = "for i in r:\n  if i:\n    print(i)\n  else:\n    pass\n"
    assert reindent_with_tabs(two) == "for i in r:\n\tif i:\n\t\tprint(i)\n\telse:\n\t\tpass\n"
