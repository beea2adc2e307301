"""The ``bcoder execute`` stage: run every sample of a samples file, write one result line per sample.

Results are appended and flushed one by one, so a killed run keeps what it finished; run again with
the same ``--out``, it skips the samples already there (a torn last line is cut off and redone).
An S3 output is staged in a local file (the existing results downloaded first) and published at the
end; a local one is written in place and gets its manifest at the end.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bcoder_core.errors import BcoderError
from bcoder_core.execution.config import ExecutionConfig
from bcoder_core.execution.executor import Executor
from bcoder_core.execution.judge import VERDICTS

SAMPLE_KEYS = ("problem_id", "sample_id", "code")
ISOLATION_SHOWN = ("netns", "mountns", "user", "hidden")


@dataclass(frozen=True)
class ExecuteSummary:
    """What one ``execute`` run did."""

    out: str
    counts: dict[str, int] = field(default_factory=dict)
    """Verdict -> samples executed by this run (resumed results not included)."""
    resumed: int = 0
    """Results that were already in ``out`` and were not run again."""
    seconds: float = 0.0

    @property
    def executed(self) -> int:
        return sum(self.counts.values())

    def report(self) -> str:
        rate = self.executed / self.seconds if self.seconds > 0 else 0.0
        verdicts = ", ".join(f"{v} {self.counts.get(v, 0)}" for v in VERDICTS)
        return f"executed {self.executed} samples in {self.seconds:.1f}s ({rate:.1f}/s): {verdicts}"


def result_key(record: dict) -> tuple[str, str]:
    """Identity of a sample and of its result (ids compared as JSON: 1 and "1" differ)."""
    return json.dumps(record["problem_id"]), json.dumps(record["sample_id"])


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _results_file(out_uri: str) -> Iterator[Path]:
    """The local file results are appended to: ``out_uri`` itself, or a staged copy of an S3 object."""
    from bcoder_core import storage

    if not storage.is_s3(out_uri):
        local = Path(out_uri)
        local.parent.mkdir(parents=True, exist_ok=True)
        # The file is about to change: a manifest describing it now would lie until the end.
        Path(str(local) + storage.FILE_MANIFEST_SUFFIX).unlink(missing_ok=True)
        local.touch()
        yield local
        return
    staging = Path(tempfile.mkdtemp(prefix="bcoder-execute-"))
    try:
        local = staging / Path(out_uri.rstrip("/")).name
        with contextlib.suppress(BcoderError):  # nothing there yet: start from scratch
            if storage.exists(out_uri):
                local.write_bytes(storage.input_path(out_uri).read_bytes())
        local.touch()
        yield local
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="executing", unit="prog", disable=not enabled, file=sys.stderr)


def run_execute(
    problems_uri: str,
    samples_uri: str,
    out_uri: str,
    config: ExecutionConfig,
    *,
    shard: str | None = None,
    progress: bool = True,
) -> ExecuteSummary:
    """Execute the samples of ``samples_uri`` (those of the shard's problems) and append their results
    to ``out_uri``, resuming what is there. A sample of an unknown problem is a :class:`BcoderError`
    before anything runs; a framework failure raises :class:`ExecutionError` (a local ``out_uri`` keeps
    the results written so far, for a resume)."""
    from bcoder_core import storage
    from bcoder_core.jsonl import read_jsonl, recover_jsonl
    from bcoder_core.problems import read_problems
    from bcoder_core.shards import parse_shard, shard_items

    shard_spec = parse_shard(shard)
    problems = read_problems(storage.input_path(problems_uri))
    by_id = {p.id: p for p in problems}
    in_shard = {p.id for p in shard_items(problems, shard_spec)}
    samples = list(read_jsonl(storage.input_path(samples_uri), "sample", required=SAMPLE_KEYS))
    for s in samples:
        if s["problem_id"] not in by_id:
            raise BcoderError(
                f"{samples_uri}: sample {s['sample_id']!r} refers to unknown problem id {s['problem_id']!r}"
            )
    wanted = [s for s in samples if s["problem_id"] in in_shard]
    manifest_config = {"problems": problems_uri, "samples": samples_uri, "shard": shard}
    for key in ("timeout_s", "program_timeout_s", "memory_mb", "sandbox", "compare", "tests"):
        manifest_config[key] = getattr(config, key)

    counts: Counter[str] = Counter()
    started = time.monotonic()
    with _results_file(out_uri) as local:
        done = {result_key(r) for r in recover_jsonl(local, "result", required=("problem_id", "sample_id"))}
        todo = [s for s in wanted if result_key(s) not in done]
        resumed = len(wanted) - len(todo)
        if resumed:
            _note(f"resuming {out_uri}: {resumed} results already there, {len(todo)} to run")
        if todo:
            with Executor(config) as executor:
                iso = ", ".join(f"{k}={v}" for k, v in executor.isolation.items() if k in ISOLATION_SHOWN)
                _note(
                    f"execute: {len(todo)} samples, {config.workers} workers, sandbox {config.sandbox}, "
                    f"compare {config.compare}, tests {config.tests}; isolation: {iso}"
                )
                with local.open("a", encoding="utf-8") as f, _progress(len(todo), progress) as bar:
                    for r in executor.run(by_id, todo):
                        f.write(json.dumps(r, ensure_ascii=False) + "\n")
                        f.flush()
                        counts[r["verdict"]] += 1
                        bar.update(1)
        storage.publish(local, out_uri, kind="results", config=manifest_config)
    return ExecuteSummary(
        out=out_uri, counts=dict(counts), resumed=resumed, seconds=time.monotonic() - started
    )
