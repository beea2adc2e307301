"""Options that several stage commands share: the same spelling and help everywhere."""

from __future__ import annotations

from jobs.options import Param

PROBLEMS = Param("problems", ("--problems",), "Problem set (JSONL file, directory or URI).", required=True)
SAMPLES = Param(
    "samples", ("--samples",), "Samples JSONL (a file, a directory of shards, or a URI).", required=True
)
SHARD = Param("shard", ("--shard",), "I/N: only problems whose index is I mod N (Indexed Jobs).")
PROGRESS = Param(
    "progress", ("--progress",), "Show a progress bar.", default=True, type=bool, secondary="--no-progress"
)
PHI = Param("phi", ("--phi",), "φ directory or URI (train phi's output).", required=True)
