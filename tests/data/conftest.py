"""Helpers of the data-loader tests: raw rows written as a file, and what a loader made of them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest


def _write_rows(path: Path, rows: list[dict], tail: str = "") -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n" + tail)
    return path


def _kept_and_skipped(result) -> tuple[list[str], list[str]]:
    return [p.id for p in result.problems], [str(b) for b in result.skipped]


@pytest.fixture
def write_rows() -> Callable[..., Path]:
    """``write_rows(path, rows, tail="")``: one JSON line per row, then ``tail`` (e.g. a broken line)."""
    return _write_rows


@pytest.fixture
def kept_and_skipped() -> Callable[..., tuple[list[str], list[str]]]:
    """``kept_and_skipped(result)``: the ids of the problems a loader kept and its skipped records."""
    return _kept_and_skipped
