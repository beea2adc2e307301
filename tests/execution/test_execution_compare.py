"""Output comparison rules (DESIGN §4): strict and apps modes."""

from __future__ import annotations

import pytest

from bcoder_core.execution.compare import (
    apps_stdout_equal,
    apps_value_equal,
    floats_close,
    stdout_equal,
    strict_stdout_equal,
    strict_value_equal,
)


@pytest.mark.parametrize(
    ("out", "exp"),
    [
        ("3\n", "3\n"),
        ("3", "3\n"),  # missing final newline
        ("3   \n", "3\n"),  # trailing spaces
        ("1 2\t\n3\n\n\n", "1 2\n3\n"),  # trailing tabs and blank lines
        ("a\r\nb\r\n", "a\nb\n"),  # CRLF
        ("0.3333333\n", "0.333333333\n"),  # float within 1e-6
        ("1000000.1\n", "1000000.0\n"),  # relative tolerance
        ("1e-9 2\n", "0 2\n"),  # absolute tolerance
        ("YES 1.0000001\n", "YES 1\n"),
        (" 3\n", "3\n"),  # the line's tokens compare: spacing inside a line is not significant
        ("1   2\n", "1 2\n"),
    ],
)
def test_strict_accepts(out, exp):
    assert strict_stdout_equal(out, exp)


@pytest.mark.parametrize(
    ("out", "exp"),
    [
        ("4\n", "3\n"),
        ("2\n1\n", "1\n2\n"),  # lines out of order
        ("1\n1\n2\n", "1\n2\n"),  # duplicated line
        ("1 2\n", "1  2 3\n"),
        ("0.334\n", "0.333\n"),
        ("3\n\n4\n", "3\n4\n"),  # blank line in the middle
        ("inf\n", "-inf\n"),
        ("yes\n", "YES\n"),
        ("", "3\n"),
    ],
)
def test_strict_rejects(out, exp):
    assert not strict_stdout_equal(out, exp)


def test_floats_close_edges():
    assert floats_close(1.0, 1.0 + 1e-7)
    assert not floats_close(float("nan"), float("nan"))
    assert floats_close(float("inf"), float("inf"))
    assert not floats_close(1.0, 1.1)


def test_expected_as_list_of_lines():
    assert stdout_equal("1\n2\n", ["1", "2"], "strict")


@pytest.mark.parametrize(
    ("out", "exp", "strict", "apps"),
    [
        ("2\n1\n", "1\n2\n", False, True),  # APPS ignores line order (set of lines)
        ("1 2\n", "2 1\n", False, True),  # and token order within a line
        ("3\n\n\n4\n", "3\n4\n", False, True),  # and blank lines
        ("0.3334\n", "0.3333\n", False, True),  # rounds numbers to 3 decimals
        ("1.000001\n", "1.0\n", True, True),  # allclose
        ("4\n", "3\n", False, False),
        ("1\n1\n2\n", "1\n2\n", False, True),  # duplicates vanish in APPS's sets
    ],
)
def test_apps_cascade_is_lenient_where_apps_is(out, exp, strict, apps):
    assert strict_stdout_equal(out, exp) is strict
    assert apps_stdout_equal(out, exp) is apps


@pytest.mark.parametrize(
    ("out", "exp", "ok"),
    [
        (3, [3], True),  # APPS one-element-list convention
        ([3], [3], True),
        ([1, 2], [[1, 2]], True),
        ([1, 2], [1, 2], True),
        (3.0000001, [3], True),
        (True, [1], False),  # bool is not a number
        ({"1": "a"}, [{"1": "a"}], True),
        ("3", [3], False),
        ([2, 1], [[1, 2]], False),
        (None, [None], True),
        ({"__bcoder_unrepresentable__": "set"}, [[1, 2]], False),
    ],
)
def test_strict_values(out, exp, ok):
    assert strict_value_equal(out, exp) is ok


def test_apps_values():
    assert apps_value_equal(3, [3])
    assert apps_value_equal([[1, 2]], [[[1, 2]]])
    assert apps_value_equal({"1": 2}, {"1": 2})  # int keys restored on both sides
    assert not apps_value_equal(3.0000001, [3])  # exact floats
