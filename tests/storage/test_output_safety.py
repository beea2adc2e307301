"""Nothing lost, nothing faked: what an output may replace, one-line errors for unwritable outputs,
scratch that outlives no process, checks before the work, and committed outputs that are verified.

Each class of failure is tested through the storage API (both backends where it applies) and through
the commands that used to lose data or fail late.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.paths import REPO
from helpers.servers import S3Env

from bcoder_core import storage
from bcoder_core.errors import ArtifactCorrupt, BcoderError
from bcoder_core.train import checkpoint

SMOKE = REPO / "configs" / "smoke.yaml"


def _bcoder(*args: str, env: dict[str, str] | None = None, wrap: Callable[[list[str]], list[str]] = list):
    argv = wrap([sys.executable, "-m", "jobs.cli", *args])
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300, env=env, check=False)


def _one_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The single ``error:`` line of a command that failed as a user error should (exit 2, no traceback)."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _user_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("mine\n")
    (path / "sub").mkdir()
    (path / "sub" / "data.bin").write_bytes(b"\x00" * 10)
    return path


# --------------------------------------------------------------------------------------------------
# 1. A command replaces only an artifact of its own kind


def test_output_path_and_publish_replace_only_their_own_kind(tmp_path: Path) -> None:
    user = _user_dir(tmp_path / "user")
    plain = tmp_path / "plain.jsonl"
    plain.write_text("my own lines\n")
    samples = str(tmp_path / "samples.jsonl")
    with storage.output_path(samples, kind="samples") as out:
        out.write_text("s\n")
    store = str(tmp_path / "store")
    with storage.output_path(store, kind="transitions") as out:
        (out / "shard.bin").write_bytes(b"t")
    src = tmp_path / "src.jsonl"
    src.write_text("new\n")

    refused = [
        (str(user), "benchmark", "a directory that is not a bcoder benchmark artifact"),
        (str(user / "sub"), "samples", "a directory that is not a bcoder samples artifact"),
        (
            str(plain),
            "problems",
            "a file that is not a bcoder problems artifact (no .manifest.json beside it)",
        ),
        (samples, "results", "holds a bcoder samples artifact, not results"),
        (store, "benchmark", "holds a bcoder transitions artifact, not benchmark"),
    ]
    user_json = tmp_path / "user" / "x.jsonl"
    user_json.mkdir()
    refused.append((str(user_json), "samples", "a directory, not a bcoder samples file"))
    before = _tree(tmp_path)
    for uri, kind, message in refused:
        for attempt in ("check_output", "output_path", "publish"):
            with pytest.raises(BcoderError) as exc:
                if attempt == "check_output":
                    storage.check_output(uri, kind=kind)
                elif attempt == "output_path":
                    with storage.output_path(uri, kind=kind):
                        pytest.fail("output_path must refuse before the stage writes")
                else:
                    storage.publish(src, uri, kind=kind)
            text = str(exc.value)
            assert text.startswith(f"{uri}: ") and message in text and "\n" not in text, (attempt, text)
            assert text.endswith("refusing to replace it (choose another output, or delete it first)")
    assert _tree(tmp_path) == before  # nothing touched

    # Its own kind is replaced; an empty directory holds nothing to lose.
    with storage.output_path(samples, kind="samples") as out:
        out.write_text("s2\n")
    assert Path(samples).read_text() == "s2\n"
    storage.publish(src, store + "-copy", kind="x")
    storage.publish(src, store + "-copy", kind="x")
    (tmp_path / "empty").mkdir()
    storage.check_output(str(tmp_path / "empty"), kind="benchmark")
    with storage.output_path(str(tmp_path / "empty"), kind="benchmark") as out:
        (out / "b.json").write_text("{}")
    assert storage.exists(str(tmp_path / "empty"))


def test_a_user_manifest_json_does_not_make_a_directory_ours(tmp_path: Path) -> None:
    data = _user_dir(tmp_path / "dataset")
    (data / "manifest.json").write_text('{"files": [], "kind": "benchmark"}')
    with pytest.raises(BcoderError, match="not a bcoder benchmark artifact"):
        storage.check_output(str(data), kind="benchmark")


def test_resumable_output_accepts_what_a_killed_appender_left(tmp_path: Path) -> None:
    partial = tmp_path / "results.jsonl"
    partial.write_text('{"problem_id": "p", "sample_id": 0, "verdict": "passed"}\n{"problem_id": "p", "sam')
    storage.check_output(str(partial), kind="results", resume=True)
    (tmp_path / "empty.jsonl").touch()
    storage.check_output(str(tmp_path / "empty.jsonl"), kind="results", resume=True)
    text = tmp_path / "notes.jsonl"
    text.write_text("dear diary\n")
    for resume in (False, True):
        with pytest.raises(BcoderError, match="a file that is not a bcoder results artifact"):
            storage.check_output(str(text), kind="results", resume=resume)
    with pytest.raises(BcoderError, match="not a bcoder results artifact"):
        storage.check_output(str(partial), kind="results")  # only a resuming command takes it


def test_commands_refuse_what_is_not_theirs_before_any_work(tmp_path: Path) -> None:
    bench = tmp_path / "bench"
    assert (
        _bcoder("benchmark", "generate", "--out", str(bench), "--n-train", "24", "--n-test", "8").returncode
        == 0
    )
    user = _user_dir(tmp_path / "user")
    before = _tree(tmp_path)

    # benchmark generate: a non-empty directory of someone's, an artifact of another kind
    gen = _bcoder("benchmark", "generate", "--out", str(user))
    assert "a directory that is not a bcoder benchmark artifact" in _one_error(gen)
    # data prepare: X.jsonl a directory, the benchmark itself, a plain file
    (tmp_path / "x.jsonl").mkdir()
    plain = tmp_path / "plain.jsonl"
    plain.write_text("mine\n")
    before = _tree(tmp_path)
    for out, message in (
        (tmp_path / "x.jsonl", "a directory, not a bcoder problems file"),
        (bench, "holds a bcoder benchmark artifact, not problems"),
        (plain, "a file that is not a bcoder problems artifact"),
    ):
        proc = _bcoder(
            "data", "prepare", "apps", "--name", "builtin", "--source", f"{bench}/test", "--out", str(out)
        )
        assert message in _one_error(proc)
        assert "kept" not in proc.stderr  # refused before the data set was read
    # evaluate --out-md DIR and sample --out DIR: refused before their inputs or model are even looked at
    ev = _bcoder("evaluate", "--problems", "nope.jsonl", "--results", "nope.jsonl", "--out-md", str(user))
    assert "a directory that is not a bcoder evaluation artifact" in _one_error(ev)
    sample = _bcoder("sample", "--model", "no-such-model", "--problems", "nope.jsonl", "--out", str(user))
    assert "a directory that is not a bcoder samples artifact" in _one_error(sample)
    assert _tree(tmp_path) == before

    # Its own kind is replaced.
    again = _bcoder("benchmark", "generate", "--out", str(bench), "--n-train", "24", "--n-test", "8")
    assert again.returncode == 0, again.stderr


def test_execute_resumes_its_own_results_and_refuses_anything_else(tmp_path: Path) -> None:
    from helpers.problems import stdin_problem

    from bcoder_core.problems import write_problems

    write_problems([stdin_problem("p")], tmp_path / "problems.jsonl")
    samples = tmp_path / "samples.jsonl"
    samples.write_text(
        "".join(json.dumps({"problem_id": "p", "sample_id": i, "code": "print(3)"}) + "\n" for i in range(2))
    )
    argv = ["execute", "--problems", str(tmp_path / "problems.jsonl"), "--samples", str(samples), "--quiet"]

    notes = tmp_path / "notes.jsonl"
    notes.write_text("not results\n")
    assert "a file that is not a bcoder results artifact" in _one_error(_bcoder(*argv, "--out", str(notes)))
    assert notes.read_text() == "not results\n"
    assert "holds a bcoder samples artifact" in _one_error(
        _bcoder(*argv, "--out", str(_publish(tmp_path, "other.jsonl", "samples")))
    )

    out = tmp_path / "results.jsonl"
    first = _bcoder(*argv, "--out", str(out))
    assert first.returncode == 0, first.stderr
    done = out.read_text().splitlines()
    # A killed run: no manifest (execute removes it before appending), one result and a torn line.
    Path(str(out) + storage.FILE_MANIFEST_SUFFIX).unlink()
    out.write_text(done[0] + "\n" + done[1][:10])
    resumed = _bcoder(*argv, "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert "1 results already there" in resumed.stderr
    assert out.read_text().splitlines()[0] == done[0] and storage.exists(str(out))


def _publish(tmp_path: Path, name: str, kind: str) -> Path:
    src = tmp_path / f"src-{name}"
    src.write_text("{}\n")
    storage.publish(src, str(tmp_path / name), kind=kind)
    return tmp_path / name


# In-place outputs: a training run's output root holds step_N/ (checkpoint), final/ (model), latest


def _run_root(tmp_path: Path) -> str:
    root = str(tmp_path / "run")
    for step in (2, 4):
        with storage.output_path(checkpoint.step_uri(root, step), kind="checkpoint") as out:
            (out / "state.json").write_text("{}")
        storage.write_text(storage.join(root, "latest"), f"step_{step}")
    with storage.output_path(storage.join(root, "final"), kind="model") as out:
        (out / "config.json").write_text("{}")
    (Path(root) / ".step_6.tmp-abc").mkdir()  # an interrupted save's staging
    return root


def test_a_training_output_is_the_runs_own_or_refused(tmp_path: Path) -> None:
    checkpoint.check_output(str(tmp_path / "fresh"))  # absent
    (tmp_path / "empty").mkdir()
    checkpoint.check_output(str(tmp_path / "empty"))
    root = _run_root(tmp_path)
    checkpoint.check_output(root)  # a run of its own: resumed

    model = _user_dir(tmp_path / "my-model")
    with pytest.raises(BcoderError, match=r"holds 'notes.txt', which this command never writes"):
        checkpoint.check_output(str(model))
    (Path(root) / "step_8" / "model").mkdir(parents=True)  # a save killed half-way: its own, replaced
    checkpoint.check_output(root)
    with storage.output_path(checkpoint.step_uri(root, 8), kind="checkpoint", partial=True) as out:
        (out / "state.json").write_text("{}")
    assert storage.exists(checkpoint.step_uri(root, 8))
    storage.delete(storage.join(root, "final"))
    storage.publish(_publish(tmp_path, "s.jsonl", "samples"), storage.join(root, "final"), kind="samples")
    with pytest.raises(BcoderError, match=r"run/final: holds a bcoder samples artifact, not model"):
        checkpoint.check_output(root)
    with pytest.raises(BcoderError, match=r"holds a bcoder checkpoint artifact, not outputs of this command"):
        checkpoint.check_output(checkpoint.step_uri(root, 2))  # a checkpoint is not a run's output
    with pytest.raises(BcoderError, match=r"cannot write: not a directory"):
        checkpoint.check_output(str(tmp_path / "s.jsonl"))


def test_training_refuses_a_model_directory_as_its_output_before_training(tmp_path: Path) -> None:
    model = _user_dir(tmp_path / "my-model")
    before = _tree(model)
    proc = _bcoder(
        "train", "sft", "--config", "configs/train/sft-tiny.yaml", f"output={model}", "problems=nope.jsonl"
    )
    assert "holds 'notes.txt', which this command never writes" in _one_error(proc)
    assert _tree(model) == before


# --------------------------------------------------------------------------------------------------
# 2. Unwritable outputs: one line, exit 2, nothing partial


@pytest.fixture
def read_only_dir() -> Iterator[tuple[Path, Callable[[list[str]], list[str]]]]:
    """A directory no command can write in, and how to run a command so that it cannot.

    Root ignores permission bits, so as root the directory is bind-mounted read-only in a private
    mount namespace of the command; as anyone else ``chmod 0555`` does.
    """
    base = Path(tempfile.mkdtemp(prefix="bcoder-ro-test-"))
    ro = base / "ro"
    ro.mkdir()
    try:
        if os.geteuid() != 0:
            ro.chmod(0o555)
            yield ro, list
        else:
            unshare = shutil.which("unshare")
            probe = [unshare or "unshare", "-m", "sh", "-c", f"mount --bind -o ro {ro} {ro}"]
            if unshare is None or subprocess.run(probe, capture_output=True, check=False).returncode != 0:
                pytest.skip("root without mount namespaces: no way to make a directory read-only")

            def wrap(argv: list[str]) -> list[str]:
                script = 'mount --bind -o ro "$0" "$0" && exec "$@"'
                return [unshare, "-m", "sh", "-c", script, str(ro), *argv]

            yield ro, wrap
    finally:
        ro.chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


def test_an_output_in_a_read_only_directory_is_one_line(read_only_dir) -> None:
    ro, wrap = read_only_dir
    proc = _bcoder("benchmark", "generate", "--out", str(ro / "bench"), wrap=wrap)
    error = _one_error(proc)
    assert error.startswith(f"error: {ro / 'bench'}: cannot write: ") and error.endswith(f"({ro})"), error
    assert "read-only file system" in error or "permission denied" in error
    run = _bcoder("pipeline", "run", "--config", str(SMOKE), "--run-dir", str(ro / "run"), wrap=wrap)
    assert _one_error(run).startswith(f"error: {ro / 'run'}: cannot write: ")
    assert list(ro.iterdir()) == []


def test_an_output_under_a_file_is_one_line(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    proc = _bcoder("benchmark", "generate", "--out", str(afile / "deeper" / "bench"))
    assert _one_error(proc) == f"error: {afile / 'deeper' / 'bench'}: cannot write: not a directory ({afile})"
    run = _bcoder("pipeline", "run", "--config", str(SMOKE), "--run-dir", str(afile))
    assert _one_error(run) == f"error: {afile}: cannot write: not a directory ({afile})"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"] and afile.read_text() == "x"
    # The library without check_output first: the same line from output_path itself.
    with (
        pytest.raises(BcoderError, match=r"cannot write: not a directory"),
        storage.output_path(str(afile / "x.jsonl"), kind="samples"),
    ):
        pass


# --------------------------------------------------------------------------------------------------
# 3. Scratch: one home, removed on exit and on errors, swept once its process is gone

_HOLD_SCRATCH = """
import time
from bcoder_core import storage
with storage.scratch_dir("held") as d:
    (d / "big.bin").write_bytes(b"x" * 1000)
    print(d, flush=True)
    time.sleep(120)
"""


def _hold_scratch(env: dict[str, str]) -> tuple[subprocess.Popen[str], Path]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD_SCRATCH], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def test_scratch_of_a_killed_process_is_swept_by_the_next_start(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "scratch"
    monkeypatch.setenv("BCODER_SCRATCH", str(root))
    env = {**os.environ, "BCODER_SCRATCH": str(root)}
    killed, killed_dir = _hold_scratch(env)
    alive, alive_dir = _hold_scratch(env)
    try:
        assert killed_dir.is_relative_to(root) and (killed_dir / "big.bin").exists()
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        assert (killed_dir / "big.bin").exists()  # SIGKILL runs no cleanup

        # The next start-up (a process's first scratch) removes it, and leaves the live one's alone.
        start = subprocess.run(
            [sys.executable, "-c", "from bcoder_core import storage\nwith storage.scratch_dir('x'): pass"],
            cwd=REPO, env=env, check=True,
        )  # fmt: skip
        assert start.returncode == 0
        assert not killed_dir.parent.exists() and not Path(f"{killed_dir.parent}.lock").exists()
        assert (alive_dir / "big.bin").exists()
        assert storage.sweep_scratch() == []  # nothing else is dead
    finally:
        alive.kill()
        alive.wait()
    assert storage.sweep_scratch() == [alive_dir.parent]
    assert list(root.iterdir()) == []


def test_scratch_is_removed_on_errors_and_by_a_failing_command(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "scratch"
    monkeypatch.setenv("BCODER_SCRATCH", str(root))
    with pytest.raises(RuntimeError), storage.scratch_dir("boom") as d:
        (d / "f").write_text("x")
        raise RuntimeError("stage crashed")
    assert not d.exists() and d.parent.parent == root

    # A command that fails after making its scratch (training: run_scope) leaves nothing behind.
    env = {**os.environ, "BCODER_SCRATCH": str(root / "cli")}
    proc = _bcoder(
        "train", "sft", "--config", "configs/train/sft-tiny.yaml", f"output={tmp_path / 'sft'}",
        f"problems={tmp_path / 'missing.jsonl'}", env=env,
    )  # fmt: skip
    assert "missing.jsonl" in _one_error(proc)
    assert (root / "cli").is_dir() and list((root / "cli").iterdir()) == []


# --------------------------------------------------------------------------------------------------
# 4. The output location is checked before the work (S3: the real SeaweedFS server)


def _stage_calls(out: str) -> dict[str, Callable[[], object]]:
    """Every stage's core function with inputs that do not exist: only a check made first can answer."""
    from bcoder_core.evaluation import EvaluateConfig, run_evaluate
    from bcoder_core.execution import ExecutionConfig
    from bcoder_core.execution.run import run_execute
    from bcoder_core.rl.annotate import run_annotate
    from bcoder_core.rl.configs import AnnotateConfig, RankConfig, SamplingConfig
    from bcoder_core.rl.ranking import run_rank
    from bcoder_core.rl.sampling import run_sample

    io = {"problems": "no-such-problems.jsonl"}
    return {
        "sample": lambda: run_sample("no-such-model", io["problems"], f"{out}/s.jsonl", SamplingConfig()),
        "rank": lambda: run_rank(
            model="m", phi="p", samples="s.jsonl", out=f"{out}/r.jsonl", cfg=RankConfig(), **io
        ),
        "annotate": lambda: run_annotate(model="m", out=f"{out}/store", cfg=AnnotateConfig(), **io),
        "execute": lambda: run_execute(io["problems"], "s.jsonl", f"{out}/res.jsonl", ExecutionConfig()),
        "evaluate": lambda: run_evaluate(
            io["problems"], "r.jsonl", EvaluateConfig(), out_json=f"{out}/e.json"
        ),
        "train": lambda: checkpoint.check_output(f"{out}/theta"),
    }


@pytest.mark.parametrize("stage", ["sample", "rank", "annotate", "execute", "evaluate", "train"])
def test_a_missing_bucket_and_bad_credentials_fail_fast_before_any_work(
    s3_env: S3Env, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    storage.write_text(s3_env.uri("warm"), "x")  # the client exists: time the check, not boto3's import
    for out, credentials, expected in (
        ("s3://no-such-bucket-bcoder/run", {}, "bucket 'no-such-bucket-bcoder' does not exist"),
        (
            s3_env.uri("run"),
            {"AWS_SECRET_ACCESS_KEY": "wrong"},
            "the secret key is wrong (SignatureDoesNotMatch)",
        ),
        (s3_env.uri("run"), {"AWS_ACCESS_KEY_ID": "nobody"}, "(InvalidAccessKeyId)"),
    ):
        with monkeypatch.context() as m:
            for name, value in credentials.items():
                m.setenv(name, value)
            started = time.monotonic()
            with pytest.raises(BcoderError) as exc:
                _stage_calls(out)[stage]()
            elapsed = time.monotonic() - started
        text = str(exc.value)
        assert text.startswith(out) and expected in text and "\n" not in text, text
        assert elapsed < 1.0, (stage, out, elapsed)


def test_s3_outputs_follow_the_same_rule(s3_env: S3Env, tmp_path: Path) -> None:
    uri = s3_env.uri("samples.jsonl")
    src = tmp_path / "s.jsonl"
    src.write_text("s\n")
    storage.publish(src, uri, kind="samples")
    storage.check_output(uri, kind="samples")
    for attempt in (
        lambda: storage.check_output(uri, kind="results"),
        lambda: storage.publish(src, uri, kind="results"),
    ):
        with pytest.raises(BcoderError, match=r"holds a bcoder samples artifact, not results: refusing"):
            attempt()
    store = s3_env.uri("store")
    with storage.output_path(store, kind="transitions") as out:
        (out / "x.bin").write_bytes(b"x")
    with pytest.raises(BcoderError, match="holds a bcoder transitions artifact, not outputs of this command"):
        checkpoint.check_output(store)  # an artifact is no training run's output
    checkpoint.check_output(s3_env.uri("theta"))
    # Keys without a manifest are what a crashed writer left: written over.
    s3_env.client().put_object(Bucket=s3_env.bucket, Key=s3_env.key("crashed", "part.bin"), Body=b"half")
    storage.check_output(s3_env.uri("crashed"), kind="transitions")
    listed = s3_env.client().list_objects_v2(Bucket=s3_env.bucket, Prefix=s3_env.prefix)
    assert not [o["Key"] for o in listed.get("Contents", []) if "bcoder-probe" in o["Key"]]


def test_a_command_with_an_s3_output_fails_in_one_line_before_reading_its_input(s3_env: S3Env) -> None:
    out = "s3://no-such-bucket-bcoder/p.jsonl"
    proc = _bcoder("data", "prepare", "apps", "--source", "no-such-dir", "--out", out)
    assert (
        _one_error(proc)
        == "error: s3://no-such-bucket-bcoder/p.jsonl: bucket 'no-such-bucket-bcoder' does not exist"
    )


# --------------------------------------------------------------------------------------------------
# 5. Committed means verified


def test_verify_checks_sizes_and_with_sha256_every_byte(tmp_path: Path) -> None:
    uri = str(tmp_path / "store")
    with storage.output_path(uri, kind="transitions") as out:
        (out / "a.bin").write_bytes(b"abcd")
    storage.verify(uri)
    storage.verify(uri, sha256=True)
    (Path(uri) / "a.bin").write_bytes(b"abcX")  # same size
    storage.verify(uri)
    with pytest.raises(ArtifactCorrupt, match=r"a\.bin: sha256 does not match"):
        storage.verify(uri, sha256=True)
    (Path(uri) / "a.bin").write_bytes(b"ab")
    with pytest.raises(ArtifactCorrupt, match=r"a\.bin: size 2 bytes, manifest says 4"):
        storage.verify(uri)


def test_verify_an_s3_artifact(s3_env: S3Env, tmp_path: Path) -> None:
    src = tmp_path / "p.jsonl"
    src.write_text("abcd\n")
    uri = s3_env.uri("p.jsonl")
    storage.publish(src, uri, kind="problems")
    storage.verify(uri, sha256=True)
    s3_env.client().put_object(Bucket=s3_env.bucket, Key=s3_env.key("p.jsonl"), Body=b"abcX\n")
    storage.verify(uri)  # sizes of remote objects are not listed: the manifest is trusted
    with pytest.raises(ArtifactCorrupt, match="sha256 does not match"):
        storage.verify(uri, sha256=True)


def test_pipeline_redoes_a_stage_whose_committed_output_changed(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = ("pipeline", "run", "--config", str(SMOKE), "--run-dir", str(run_dir), "--only", "benchmark")
    args += ("--only", "prepare-test")
    first = _bcoder(*args)
    assert first.returncode == 0, first.stdout + first.stderr
    problems = run_dir / "problems" / "test.jsonl"
    good = problems.read_bytes()

    problems.write_bytes(good[: len(good) // 2])  # truncated: caught by sizes
    second = _bcoder(*args)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "benchmark: committed, skipped" in second.stdout
    assert f"prepare-test: changed since it was committed: {problems}: size" in second.stdout
    assert "prepare-test: done" in second.stdout and problems.read_bytes() == good

    problems.write_bytes(good[:-2] + (b"X" if good[-2:-1] != b"X" else b"Y") + good[-1:])  # same size
    third = _bcoder(*args)
    assert third.stdout.count("committed, skipped") == 2  # sizes alone cannot tell
    fourth = _bcoder(*args, "--verify")
    assert fourth.returncode == 0, fourth.stdout + fourth.stderr
    assert f"prepare-test: changed since it was committed: {problems}: sha256 does not match" in fourth.stdout
    assert "benchmark: committed, skipped" in fourth.stdout and problems.read_bytes() == good
    assert _bcoder(*args, "verify=sha256").stdout.count("committed, skipped") == 2
