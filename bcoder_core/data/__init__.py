"""Loaders of the public problem sets into ``bcoder_core.problems.Problem`` (DESIGN §3.1).

``load_dataset(kind, source, ...)`` is the one entry point the ``bcoder data prepare`` command uses;
each loader returns a ``LoadResult`` (problems kept, records skipped with their reasons).
"""

from __future__ import annotations

from pathlib import Path

from bcoder_core.data.apps import load_apps, load_apps_folder, load_apps_jsonl
from bcoder_core.data.common import BadRecord, LoadResult
from bcoder_core.data.humaneval import default_humaneval_path, load_humaneval
from bcoder_core.data.mbpp import SPLITS as MBPP_SPLITS
from bcoder_core.data.mbpp import load_mbpp, mbpp_split
from bcoder_core.errors import BcoderError

DATASETS = ("apps", "mbpp", "humaneval")

__all__ = [
    "DATASETS",
    "MBPP_SPLITS",
    "BadRecord",
    "LoadResult",
    "default_humaneval_path",
    "load_apps",
    "load_apps_folder",
    "load_apps_jsonl",
    "load_dataset",
    "load_humaneval",
    "load_mbpp",
    "mbpp_split",
]


def load_dataset(
    kind: str,
    source: str | Path | None,
    *,
    split: str | None = None,
    name: str | None = None,
    strict: bool = False,
) -> LoadResult:
    """Load ``kind`` (apps, mbpp, humaneval) from ``source``.

    ``name`` (APPS layout only) replaces ``apps`` as the problems' ``source`` and id prefix, for
    problem sets in the APPS layout such as the built-in benchmark.
    """
    if kind == "apps":
        if source is None:
            raise BcoderError("apps: --source is required (an APPS folder or JSONL export)")
        return load_apps(source, split=split, name=name or "apps", strict=strict)
    if name is not None:
        raise BcoderError(f"--name is only for the APPS layout, not {kind}")
    if kind == "mbpp":
        if source is None:
            raise BcoderError("mbpp: --source is required (mbpp.jsonl)")
        return load_mbpp(source, split=split, strict=strict)
    if kind == "humaneval":
        if split not in (None, "test"):
            raise BcoderError(f"--split {split!r}: HumanEval has only the test split")
        return load_humaneval(source, strict=strict)
    raise BcoderError(f"unknown dataset {kind!r}; choose one of {', '.join(DATASETS)}")
