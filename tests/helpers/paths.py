"""Where the tests find the repository and their data, wherever a test module sits under tests/."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
"""The repository root (the directory holding pyproject.toml)."""
FIXTURES = REPO / "tests" / "fixtures"
"""Real data the tests use: MBPP, APPS problems, the CodeT5 tokenizer files."""


def load_bench(name: str) -> ModuleType:
    """The module of ``bench/<name>.py`` (the benches are scripts, not a package)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
