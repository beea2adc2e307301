"""Shards of a problem list: pod I of an N-pod Indexed Job takes every problem whose index is I mod N.

One parser and one filter for every sharded command (sample, execute, annotate, rank), so that the
same ``--shard I/N`` means the same problems everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from bcoder_core.errors import BcoderError

T = TypeVar("T")

WHOLE: tuple[int, int] = (0, 1)
"""The shard that holds every problem."""


def parse_shard(spec: str | None) -> tuple[int, int]:
    """``"I/N"`` → (I, N); None (no ``--shard`` given) → (0, 1), the whole list.

    An empty string is an error, not the whole list: it is what an unset ``$(JOB_COMPLETION_INDEX)``
    or a blank template variable renders to, and reading every problem in each of N pods would
    repeat the work N times.
    """
    if spec is None:
        return WHOLE
    try:
        i_s, n_s = spec.split("/")
        i, n = int(i_s), int(n_s)
    except ValueError:
        raise BcoderError(f"--shard {spec!r}: expected I/N, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise BcoderError(f"--shard {spec!r}: need 0 <= I < N")
    return i, n


def shard_items(items: Sequence[T], shard: tuple[int, int]) -> list[T]:
    """Every item whose index is congruent to I mod N."""
    i, n = shard
    return [x for k, x in enumerate(items) if k % n == i]
