"""The ``bcoder execute`` stage: run every sample of a samples file, write one result line per sample.

Results are appended and flushed one by one, so a killed run keeps what it finished; run again with
the same ``--out``, it skips the samples already there (a torn last line is cut off and redone).
An S3 output is staged in a local file (the existing results downloaded first) and published at the
end; a local one is written in place and gets its manifest at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bcoder_core.errors import BcoderError
from bcoder_core.execution.config import ExecutionConfig
from bcoder_core.execution.executor import Executor
from bcoder_core.execution.judge import VERDICTS

SAMPLE_KEYS = ("problem_id", "sample_id", "code")
ISOLATION_SHOWN = ("fs_view", "pidns", "proc", "tmp_mb", "memory_cgroup", "netns", "user", "hidden")


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
        local.touch()
        yield local
        return
    with storage.scratch_dir("execute") as staging:
        local = staging / Path(out_uri.rstrip("/")).name
        with contextlib.suppress(BcoderError):  # nothing there yet: start from scratch
            if storage.exists(out_uri):
                local.write_bytes(storage.input_path(out_uri).read_bytes())
        local.touch()
        yield local


def _digest(items: Iterable[object]) -> str:
    """sha256 of JSON items in order: what a resume must run again is the same samples on the same tests."""
    h = hashlib.sha256()
    for item in items:
        h.update(json.dumps(item, ensure_ascii=False, sort_keys=True).encode() + b"\n")
    return h.hexdigest()


def _run_file(results: Path) -> Path:
    """Beside a results file while a run writes it: the inputs and settings of that run (for a resume
    after a kill, when there is no manifest yet)."""
    return results.with_name(results.name + ".run.json")


def _previous_run(out_uri: str) -> dict | None:
    """Inputs and settings of the run that wrote what is at ``out_uri`` (its manifest, or the run file
    a killed run left); None when nothing says."""
    from bcoder_core import storage

    config = storage.manifest_config(out_uri)
    if config is not None:
        return config
    if not storage.is_s3(out_uri):
        with contextlib.suppress(OSError, ValueError):
            config = json.loads(_run_file(Path(out_uri)).read_text(encoding="utf-8"))
            if isinstance(config, dict):
                return config
    return None


_BY_CONTENT = ("problems", "samples")
"""Input URIs: a moved file may be resumed; they are compared by their content's sha256 instead."""


def _check_resume(
    out_uri: str,
    previous: dict | None,
    current: dict,
    done: set[tuple[str, str]],
    wanted: set[tuple[str, str]],
) -> None:
    """Resume only into results of the same inputs and settings; otherwise one line saying what differs."""
    fresh = f"use another --out, or delete {out_uri} to start afresh"
    if previous is None:
        _note(f"warning: {out_uri} has results but no record of the run that wrote them; resuming as is")
    else:
        for key in sorted(set(previous) | set(current)):
            if key in _BY_CONTENT:
                continue
            if key in current and key in previous and previous[key] != current[key]:
                raise BcoderError(
                    f"{out_uri}: cannot resume: {key} was {previous[key]!r}, now {current[key]!r} ({fresh})"
                )
    stray = done - wanted
    if stray:
        pid, sid = (json.loads(x) for x in sorted(stray)[0])
        raise BcoderError(
            f"{out_uri}: cannot resume: holds {len(stray)} result(s) of samples not in this run, e.g. {pid}/{sid} ({fresh})"
        )


class _Progress:
    """``executing k/N`` on stderr, at most once a second (and at the end).

    Hand-made rather than tqdm: the evaluator image, which runs this stage, installs no tqdm.
    """

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled, self.done = total, enabled and total > 0, 0
        self._shown = 0.0

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self._shown >= 1.0 or self.done == self.total):
            self._shown = now
            print(f"\rexecuting {self.done}/{self.total}", end="", file=sys.stderr, flush=True)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled and self._shown:
            print(file=sys.stderr, flush=True)


def _progress(total: int, enabled: bool) -> _Progress:
    return _Progress(total, enabled)


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
    from bcoder_core.jsonl import read_keyed, recover_jsonl
    from bcoder_core.problems import read_problems
    from bcoder_core.shards import parse_shard, shard_items

    shard_spec = parse_shard(shard)
    storage.check_output(out_uri, kind="results", resume=True)  # before any work; a killed run resumes
    problems = read_problems(storage.input_path(problems_uri))
    by_id = {p.id: p for p in problems}
    in_shard = {p.id for p in shard_items(problems, shard_spec)}
    samples = list(read_keyed(storage.input_path(samples_uri), "sample", required=SAMPLE_KEYS))
    for s in samples:
        if s["problem_id"] not in by_id:
            raise BcoderError(
                f"{samples_uri}: sample {s['sample_id']!r} refers to unknown problem id {s['problem_id']!r}"
            )
    wanted = [s for s in samples if s["problem_id"] in in_shard]
    manifest_config = {"problems": problems_uri, "samples": samples_uri, "shard": shard}
    for key in ("timeout_s", "program_timeout_s", "memory_mb", "sandbox", "compare", "tests"):
        manifest_config[key] = getattr(config, key)
    manifest_config["samples_sha256"] = _digest([s["problem_id"], s["sample_id"], s["code"]] for s in wanted)
    manifest_config["problems_sha256"] = _digest(p.to_json() for p in problems if p.id in in_shard)
    previous = _previous_run(out_uri)

    counts: Counter[str] = Counter()
    started = time.monotonic()
    with _results_file(out_uri) as local:
        done = {result_key(r) for r in recover_jsonl(local, "result", required=("problem_id", "sample_id"))}
        if done:
            _check_resume(out_uri, previous, manifest_config, done, {result_key(s) for s in wanted})
        if not storage.is_s3(out_uri):
            # The file is about to change: a manifest describing it now would lie until the end; the run
            # file says what it is being made from, for a resume after a kill.
            Path(str(local) + storage.FILE_MANIFEST_SUFFIX).unlink(missing_ok=True)
        _run_file(local).write_text(json.dumps(manifest_config) + "\n", encoding="utf-8")
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
        _run_file(local).unlink(missing_ok=True)
    return ExecuteSummary(
        out=out_uri, counts=dict(counts), resumed=resumed, seconds=time.monotonic() - started
    )
