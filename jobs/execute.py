"""`bcoder execute`: run samples against their problems' tests in the sandbox; write verdicts and rewards."""

from __future__ import annotations

import json
import os
from collections import Counter
from enum import StrEnum
from pathlib import Path

import typer


class Sandbox(StrEnum):
    process = "process"
    bwrap = "bwrap"
    gvisor = "gvisor"


class CompareMode(StrEnum):
    strict = "strict"
    apps = "apps"


class TestSet(StrEnum):
    hidden = "hidden"
    example = "example"


def parse_shard(text: str | None) -> tuple[int, int] | None:
    from bcoder_core.errors import BcoderError

    if text is None:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise BcoderError(f"--shard {text!r}: expected I/N, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise BcoderError(f"--shard {text!r}: need 0 <= I < N")
    return i, n


def read_samples(path: Path) -> list[dict]:
    """Samples JSONL (a file, or a directory of *.jsonl shards)."""
    from bcoder_core.errors import BcoderError

    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    if not files:
        raise BcoderError(f"{path}: directory holds no *.jsonl sample shards")
    samples = []
    for file in files:
        with file.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    s = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise BcoderError(f"{file}:{lineno}: not valid JSON ({exc.msg})") from None
                if not isinstance(s, dict) or not {"problem_id", "sample_id", "code"} <= s.keys():
                    raise BcoderError(f"{file}:{lineno}: a sample needs problem_id, sample_id and code")
                samples.append(s)
    return samples


def load_done(path: Path) -> set[tuple[str, str]]:
    """Keys of the results already in ``path``; a torn last line (killed run) is cut off to be redone."""
    from bcoder_core.errors import BcoderError

    done: set[tuple[str, str]] = set()
    if not path.exists():
        return done
    data = path.read_bytes()
    good = 0
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        end = len(data) if nl < 0 else nl + 1
        line = data[pos:end]
        if line.strip():
            try:
                r = json.loads(line)
                key = (json.dumps(r["problem_id"]), json.dumps(r["sample_id"]))
            except (ValueError, KeyError, TypeError):
                if end == len(data):
                    break  # the torn last line of a killed run
                lineno = data[:pos].count(b"\n") + 1
                raise BcoderError(f"{path}: line {lineno} is not a result") from None
            if nl < 0:
                # Complete JSON but no newline: keep it, and finish the line before appending.
                with path.open("ab") as f:
                    f.write(b"\n")
                end += 1
            done.add(key)
        good = end
        pos = end
    if good < len(data):
        with path.open("r+b") as f:
            f.truncate(good)
    return done


def _key(sample: dict) -> tuple[str, str]:
    return (json.dumps(sample["problem_id"]), json.dumps(sample["sample_id"]))


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""

    @app.command("execute")
    def execute(
        problems: str = typer.Option(
            ..., "--problems", help="Problem set (JSONL file or directory, or URI)."
        ),
        samples: str = typer.Option(
            ..., "--samples", help="Samples JSONL: {problem_id, sample_id, code, ...}."
        ),
        out: str = typer.Option(..., "--out", help="Results JSONL to write; an existing file is resumed."),
        workers: int = typer.Option(os.cpu_count() or 1, "--workers", min=1, help="Parallel workers."),
        sandbox: Sandbox = typer.Option(Sandbox.process, "--sandbox", help="Boundary around the workers."),
        timeout: float = typer.Option(4.0, "--timeout", min=0.01, help="Wall-clock seconds per test."),
        program_timeout: float = typer.Option(
            60.0, "--program-timeout", min=0.01, help="Wall-clock seconds for all tests of one program."
        ),
        memory_mb: int = typer.Option(1024, "--memory-mb", min=16, help="Address space per program (MiB)."),
        compare: CompareMode = typer.Option(
            CompareMode.strict,
            "--compare",
            help="strict (DESIGN §4) or apps (the APPS harness's lenient cascade).",
        ),
        tests: TestSet = typer.Option(TestSet.hidden, "--tests", help="Run the hidden or the example tests."),
        shard: str | None = typer.Option(None, "--shard", help="I/N: only problems whose index ≡ I (mod N)."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    ) -> None:
        """Execute samples in the sandbox and write one result per sample (verdict, reward, tests passed)."""
        import tempfile
        import time

        from bcoder_core import storage
        from bcoder_core.errors import BcoderError
        from bcoder_core.execution import ExecutionConfig, ExecutionError, Executor
        from bcoder_core.problems import read_problems

        shard_spec = parse_shard(shard)
        all_problems = read_problems(storage.input_path(problems))
        problem_list = all_problems
        if shard_spec is not None:
            i, n = shard_spec
            problem_list = [p for k, p in enumerate(all_problems) if k % n == i]
        by_id = {p.id: p for p in all_problems}
        in_shard = {p.id for p in problem_list}
        all_samples = read_samples(storage.input_path(samples))
        for s in all_samples:
            if s["problem_id"] not in by_id:
                raise BcoderError(
                    f"{samples}: sample {s['sample_id']!r} refers to unknown problem id {s['problem_id']!r}"
                )
        todo_all = [s for s in all_samples if s["problem_id"] in in_shard]
        config = ExecutionConfig(
            timeout_s=timeout,
            program_timeout_s=program_timeout,
            memory_mb=memory_mb,
            workers=workers,
            sandbox=sandbox.value,
            compare=compare.value,
            tests=tests.value,
        )
        run_config = {
            "problems": problems,
            "samples": samples,
            "shard": shard,
            **{
                k: getattr(config, k)
                for k in ("timeout_s", "program_timeout_s", "memory_mb", "sandbox", "compare", "tests")
            },
        }

        s3 = storage.is_s3(out)
        staging = None
        if s3:
            staging = Path(tempfile.mkdtemp(prefix="bcoder-execute-"))
            local = staging / Path(out.rstrip("/")).name
            try:
                if storage.exists(out):
                    local.write_bytes(storage.input_path(out).read_bytes())
            except BcoderError:
                pass
        else:
            local = Path(out)
            local.parent.mkdir(parents=True, exist_ok=True)
            stale = Path(str(local) + storage.FILE_MANIFEST_SUFFIX)
            if stale.exists():
                stale.unlink()  # the file is about to change; the manifest is rewritten at the end
        local.touch()
        done = load_done(local)
        todo = [s for s in todo_all if _key(s) not in done]
        skipped = len(todo_all) - len(todo)
        if skipped:
            typer.echo(f"resuming {out}: {skipped} results already there, {len(todo)} to run", err=True)
        counts: Counter = Counter()
        started = time.monotonic()
        if todo:
            executor = Executor(config)
            iso = executor.isolation
            typer.echo(
                f"execute: {len(todo)} samples, {config.workers} workers, sandbox {config.sandbox}, "
                f"compare {config.compare}, tests {config.tests}; isolation: "
                + ", ".join(
                    f"{k}={v}" for k, v in iso.items() if k in ("netns", "mountns", "user", "hidden")
                ),
                err=True,
            )
            try:
                with local.open("a", encoding="utf-8") as f:
                    bar = None if quiet else typer.progressbar(length=len(todo), label="executing", file=None)
                    if bar is not None:
                        bar.__enter__()
                    try:
                        for r in executor.run(by_id, todo):
                            f.write(json.dumps(r, ensure_ascii=False) + "\n")
                            f.flush()
                            counts[r["verdict"]] += 1
                            if bar is not None:
                                bar.update(1)
                    finally:
                        if bar is not None:
                            bar.__exit__(None, None, None)
            except ExecutionError as exc:
                typer.echo(f"error: execution framework failure: {exc}", err=True)
                raise typer.Exit(3) from None
            finally:
                executor.close()
        storage.publish(local, out, kind="results", config=run_config)
        if staging is not None:
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
        took = time.monotonic() - started
        total = sum(counts.values())
        summary = ", ".join(
            f"{v} {counts[v]}" for v in ("passed", "failed", "runtime_error", "timeout", "compile_error")
        )
        typer.echo(
            f"executed {total} samples in {took:.1f}s ({total / took if took > 0 else 0:.1f}/s): {summary}"
        )
        typer.echo(f"wrote {out}")
