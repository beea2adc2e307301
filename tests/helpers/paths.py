"""Where the tests find the repository and their data, wherever a test module sits under tests/."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
"""The repository root (the directory holding pyproject.toml)."""
FIXTURES = REPO / "tests" / "fixtures"
"""Real data the tests use: MBPP, APPS problems, the CodeT5 tokenizer files."""
