"""Loaders of the public problem sets into ``bcoder_core.problems.Problem`` (DESIGN §3.1).

``load_dataset(kind, source, ...)`` is the one entry point the ``bcoder data prepare`` command uses;
each loader returns a ``LoadResult`` (problems kept, records skipped with their reasons).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from bcoder_core.data.apps import load_apps, load_apps_folder, load_apps_jsonl
from bcoder_core.data.common import BadRecord, LoadResult
from bcoder_core.data.humaneval import default_humaneval_path, load_humaneval
from bcoder_core.data.mbpp import SPLITS as MBPP_SPLITS
from bcoder_core.data.mbpp import load_mbpp, mbpp_split
from bcoder_core.errors import BcoderError

__all__ = [
    "DATASETS",
    "MBPP_SPLITS",
    "BadRecord",
    "DatasetLoader",
    "LoadResult",
    "default_humaneval_path",
    "load_apps",
    "load_apps_folder",
    "load_apps_jsonl",
    "load_dataset",
    "load_humaneval",
    "load_mbpp",
    "mbpp_split",
    "register_dataset",
]


class DatasetLoader(Protocol):
    """Loads one public data set from its raw files into problems (records it cannot use are skipped)."""

    def __call__(
        self, source: str | Path | None, *, split: str | None, name: str | None, strict: bool
    ) -> LoadResult: ...


DATASETS: dict[str, DatasetLoader] = {}
"""Every loader ``bcoder data prepare`` knows, by name: a new data set is one :func:`register_dataset`."""


def register_dataset(kind: str) -> Callable[[DatasetLoader], DatasetLoader]:
    """Decorator: make ``kind`` a data set of ``load_dataset`` and of ``bcoder data prepare``."""

    def add(loader: DatasetLoader) -> DatasetLoader:
        DATASETS[kind] = loader
        return loader

    return add


@register_dataset("apps")
def _apps(source: str | Path | None, *, split: str | None, name: str | None, strict: bool) -> LoadResult:
    # ``name`` replaces ``apps`` as the problems' source and id prefix: problem sets in the APPS layout
    # such as the built-in benchmark.
    if source is None:
        raise BcoderError("apps: --source is required (an APPS folder or JSONL export)")
    return load_apps(source, split=split, name=name or "apps", strict=strict)


@register_dataset("mbpp")
def _mbpp(source: str | Path | None, *, split: str | None, name: str | None, strict: bool) -> LoadResult:
    _no_name("mbpp", name)
    if source is None:
        raise BcoderError("mbpp: --source is required (mbpp.jsonl)")
    return load_mbpp(source, split=split, strict=strict)


@register_dataset("humaneval")
def _humaneval(source: str | Path | None, *, split: str | None, name: str | None, strict: bool) -> LoadResult:
    _no_name("humaneval", name)
    if split not in (None, "test"):
        raise BcoderError(f"--split {split!r}: HumanEval has only the test split")
    return load_humaneval(source, strict=strict)


def _no_name(kind: str, name: str | None) -> None:
    if name is not None:
        raise BcoderError(f"--name is only for the APPS layout, not {kind}")


def load_dataset(
    kind: str,
    source: str | Path | None,
    *,
    split: str | None = None,
    name: str | None = None,
    strict: bool = False,
) -> LoadResult:
    """Load data set ``kind`` (a key of :data:`DATASETS`: apps, mbpp, humaneval) from ``source``."""
    loader = DATASETS.get(kind)
    if loader is None:
        raise BcoderError(f"unknown dataset {kind!r}; choose one of {', '.join(DATASETS)}")
    return loader(source, split=split, name=name, strict=strict)
