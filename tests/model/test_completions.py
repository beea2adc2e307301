"""Cutting programs out of LM completions (both prompt formats), rendering them, and early-stop detection."""

from __future__ import annotations

import pytest

from bcoder_core.model.completions import (
    FENCE_CLOSE,
    FENCE_OPEN,
    extract_program,
    has_closed_fence,
    render_program,
)

CODE = "def f(x):\n    return x"

QWEN_ANSWER = (
    "Here is a solution:\n\n```python\ndef f(x):\n    return x\n```\n\n"
    "This works because the identity function returns its argument unchanged."
)

PROGRAMS = [
    CODE,
    "n = int(input())\nprint(n * 2)\n",
    "x = 1\n\n\n",
    "def g(a):\n\tif a:\n\t\treturn a\n\n\treturn 0\n",
    'FENCE = "```"\nprint(FENCE + "python")\n',
    "s = '''\n  ```python\n'''\nprint(s)",
    "   \n\tprint('leading blank lines')\n",
    "print('tail spaces')   ",
    "x = 1\r\ny = 2\r\n",
    "x = 1\r",
    "",
    "\n",
]


def test_constants():
    assert FENCE_OPEN == "```python\n"
    assert FENCE_CLOSE == "\n```"


@pytest.mark.parametrize("fmt", ["completion", "chat"])
def test_qwen_chat_answer(fmt):
    assert extract_program(QWEN_ANSWER, fmt) == CODE


@pytest.mark.parametrize("fmt", ["completion", "chat"])
@pytest.mark.parametrize("code", PROGRAMS)
def test_render_round_trip(fmt, code):
    assert extract_program(render_program(code, fmt), fmt) == code


def test_render():
    assert render_program(CODE) == CODE
    assert render_program(CODE, "completion") == CODE
    assert render_program(CODE, "chat") == "```python\ndef f(x):\n    return x\n```"


def test_unfenced_completion_is_kept_as_is():
    text = "n = int(input())\nfor i in range(n):\n\tprint(i)\n\n"
    assert extract_program(text) == text
    assert extract_program(text, "chat") == text  # bare-code chat answer


def test_chat_prose_without_code_is_returned_as_is():
    text = "I cannot solve this problem."
    assert extract_program(text, "chat") == text


@pytest.mark.parametrize("fmt", ["completion", "chat"])
def test_unclosed_fence_runs_to_the_end(fmt):
    text = "```python\ndef f(x):\n    if x:\n        return x\n    return"
    assert extract_program(text, fmt) == "def f(x):\n    if x:\n        return x\n    return"
    # a trailing newline before the budget ran out is program text, kept
    assert extract_program("```python\nprint(1)\n", fmt) == "print(1)\n"
    # only the opening fence was written
    assert extract_program("```python", fmt) == ""
    assert extract_program("```python\n", fmt) == ""


@pytest.mark.parametrize("fmt", ["completion", "chat"])
def test_partial_closing_fence_at_the_end_is_dropped(fmt):
    assert extract_program("```python\nprint(1)\n``", fmt) == "print(1)"
    assert extract_program("```python\nprint(1)\n`", fmt) == "print(1)"
    assert extract_program("```python\r\nprint(1)\r\n``", fmt) == "print(1)"


def test_prose_before_the_code_is_dropped():
    text = (
        "To solve this, read n and print the sum of 1..n.\n"
        "We use the closed formula n*(n+1)//2.\n\n"
        "```python\nn = int(input())\nprint(n * (n + 1) // 2)\n```\n"
    )
    assert extract_program(text, "chat") == "n = int(input())\nprint(n * (n + 1) // 2)"
    # a completion model that chatted first, then opened a tagged fence
    assert extract_program(text, "completion") == "n = int(input())\nprint(n * (n + 1) // 2)"


@pytest.mark.parametrize("tag", ["py", "python3", "Python", "py3", "python3.11", "python title=sol.py"])
def test_python_tags(tag):
    text = f"Solution:\n```{tag}\nprint(42)\n```\n"
    assert extract_program(text, "chat") == "print(42)"


def test_bare_fence():
    assert extract_program("Solution:\n```\nprint(42)\n```\nDone.", "chat") == "print(42)"
    assert extract_program("```\nprint(42)\n```", "completion") == "print(42)"
    assert extract_program("\n\n```\nprint(42)\n```\n", "completion") == "print(42)"


def test_example_block_then_python_block():
    text = (
        "For the example input\n\n```text\n3\n1 2 3\n```\n\nthe answer is 6. Code:\n\n"
        "```python\nn = int(input())\nprint(sum(map(int, input().split())))\n```\n"
    )
    expected = "n = int(input())\nprint(sum(map(int, input().split())))"
    assert extract_program(text, "chat") == expected
    assert extract_program(text, "completion") == expected


def test_python_block_beats_earlier_untagged_block():
    text = "Input:\n```\n3\n```\nOutput:\n```\n6\n```\nCode:\n```python\nprint(6)\n```\n"
    assert extract_program(text, "chat") == "print(6)"


def test_first_python_block_wins():
    text = "```python\nprint(1)\n```\nOr, shorter:\n```python\nprint(2)\n```"
    assert extract_program(text, "chat") == "print(1)"


def test_untagged_block_beats_other_languages():
    text = "```text\n1 2\n```\n```\nprint(3)\n```"
    assert extract_program(text, "chat") == "print(3)"


def test_other_language_only_takes_first_block():
    text = "In C++:\n```cpp\nint main() {}\n```\n```bash\ng++ a.cpp\n```"
    assert extract_program(text, "chat") == "int main() {}"


def test_crlf_line_endings():
    text = "Here is a solution:\r\n\r\n```python\r\ndef f(x):\r\n    return x\r\n```\r\n\r\nDone.\r\n"
    # the program's own CRLFs are kept (Python accepts them); the break before the fence is dropped
    assert extract_program(text, "chat") == "def f(x):\r\n    return x"
    assert has_closed_fence(text)
    assert extract_program("n = 1\r\nprint(n)\r\n", "completion") == "n = 1\r\nprint(n)\r\n"


@pytest.mark.parametrize("fmt", ["completion", "chat"])
def test_backticks_inside_the_program(fmt):
    code = 'FENCE = "```"\nprint(f"{FENCE}python")\nprint("```")'
    assert extract_program(f"Here:\n```python\n{code}\n```\nBye", fmt) == code
    # an indented triple-backtick line (e.g. inside a docstring) does not close the block either
    doc = 'def f():\n    """Usage:\n    ```\n    f()\n    ```\n    """\n    return 1'
    assert extract_program(f"```python\n{doc}\n```", fmt) == doc
    # a line starting with ``` followed by code is inline code, not a closing fence
    inline = "x = 1\n```y = 2``` is not a fence\n"
    assert extract_program(f"```python\n{inline}```", fmt) == inline.removesuffix("\n")


def test_longer_fence_needs_a_long_enough_close():
    text = "````python\nprint('```')\n```\nprint(2)\n````\n"
    assert extract_program(text, "chat") == "print('```')\n```\nprint(2)"


@pytest.mark.parametrize("fmt", ["completion", "chat"])
def test_whitespace_kept_exactly(fmt):
    code = "def f(x):\n\tif x:\n\t\treturn x   \n\n\n\treturn 0\n\n"
    assert extract_program(f"```python\n{code}\n```", fmt) == code
    assert extract_program(f"```python\n{code}\n```   \n", fmt) == code  # whitespace after the close


@pytest.mark.parametrize("fmt", ["completion", "chat"])
def test_empty_completion(fmt):
    assert extract_program("", fmt) == ""
    assert not has_closed_fence("")
    assert extract_program("```python\n```", fmt) == ""


def test_completion_stray_closing_fence_ends_the_program():
    text = "n = int(input())\nprint(n)\n```\n\nThis reads n and prints it.\n```\nmore\n```"
    assert extract_program(text, "completion") == "n = int(input())\nprint(n)"
    assert extract_program("print(1)\r\n```\r\nchatter", "completion") == "print(1)"
    # in chat, prose before an untagged block is prose
    assert extract_program("Code:\n```\nprint(1)\n```", "chat") == "print(1)"


def test_unknown_prompt_format():
    with pytest.raises(ValueError, match="'instruct'"):
        extract_program(CODE, "instruct")
    with pytest.raises(ValueError, match="'Chat'"):
        render_program(CODE, "Chat")


def test_has_closed_fence():
    assert has_closed_fence(QWEN_ANSWER)
    assert has_closed_fence(render_program(CODE, "chat"))  # close at the very end counts
    assert has_closed_fence("Here:\n```py\nprint(1)\n```\n")
    assert not has_closed_fence("Here:\n```python\nprint(1)\n")  # still writing
    assert not has_closed_fence("Here:\n```python\nprint(1)\n``")  # close half written
    assert not has_closed_fence('Here:\n```python\nprint("```")\n')  # backticks inside the code
    assert not has_closed_fence("n = int(input())\n")
    # an untagged or example block may be followed by the real program: not a reason to stop
    assert not has_closed_fence("Input:\n```\n3\n```\n")
    assert not has_closed_fence("Input:\n```text\n3\n```\nCode:\n```python\nprint(")
    assert has_closed_fence("Input:\n```text\n3\n```\nCode:\n```python\nprint(3)\n```")


def test_stopping_at_has_closed_fence_keeps_the_program():
    """Where a streaming sampler first may stop, the program it gets is the whole one."""
    stops = [cut for cut in range(len(QWEN_ANSWER) + 1) if has_closed_fence(QWEN_ANSWER[:cut])]
    first = stops[0]
    assert QWEN_ANSWER[:first].endswith("return x\n```")
    assert extract_program(QWEN_ANSWER[:first], "chat") == CODE
    assert stops == list(range(first, len(QWEN_ANSWER) + 1))  # once true, stays true
