"""Storage through S3 against a real SeaweedFS server on loopback (the test of record).

The server comes from ``tests/servers.py`` (``s3_server`` / ``s3_env``); each test has its own
bucket and artifact cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers.paths import REPO
from helpers.servers import S3Env, free_ports, start_seaweed

from bcoder_core import storage
from bcoder_core.errors import ArtifactCorrupt, ArtifactNotFound, BcoderError
from bcoder_core.storage import s3 as s3_backend


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _keys(env: S3Env, sub: str = "") -> list[str]:
    """Keys under the test's prefix (relative to it) that start with ``sub``."""
    response = env.client().list_objects_v2(Bucket=env.bucket, Prefix=env.key(sub))
    return sorted(o["Key"][len(env.prefix) + 1 :] for o in response.get("Contents", []))


def test_endpoint_comes_from_the_standard_variables(s3_env: S3Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """boto3 honours AWS_ENDPOINT_URL_S3 and the generic AWS_ENDPOINT_URL without our help."""
    uri = s3_env.uri("marker")
    storage.write_text(uri, "via AWS_ENDPOINT_URL_S3")
    endpoint = os.environ["AWS_ENDPOINT_URL_S3"]
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    assert storage.read_text(uri) == "via AWS_ENDPOINT_URL_S3"
    assert s3_backend.client().meta.endpoint_url == endpoint
    assert s3_backend.client().meta.config.retries["mode"] == "adaptive"


def test_round_trip_of_every_artifact_kind(s3_env: S3Env, tmp_path: Path) -> None:
    # A problem set and samples/results: single-file artifacts.
    problems = [{"id": f"apps/train/{i:04d}", "question": "q" * i} for i in range(5)]
    for name, kind, rows in (
        ("problems.jsonl", "problems", problems),
        (
            "samples.jsonl",
            "samples",
            [{"problem_id": "p", "sample_id": i, "code": "print(1)"} for i in range(3)],
        ),
        ("results.jsonl", "results", [{"problem_id": "p", "sample_id": 0, "verdict": "passed"}]),
    ):
        uri = s3_env.uri("run", name)
        with storage.output_path(uri, kind=kind, config={"name": name}) as out:
            out.write_text("".join(json.dumps(r) + "\n" for r in rows))
        assert _keys(s3_env, f"run/{name}") == [f"run/{name}", f"run/{name}.manifest.json"]
        local = storage.input_path(uri)
        assert [json.loads(line) for line in local.read_text().splitlines()] == rows
        manifest = storage.read_manifest(uri)
        assert (
            manifest["kind"] == kind and manifest["layout"] == "file" and manifest["config"] == {"name": name}
        )

    # A transition store: a directory of binary shards and an index.
    store = s3_env.uri("run", "transitions")
    with storage.output_path(store, kind="transitions") as out:
        for i in range(4):
            (out / f"shard-{i:05d}.bin").write_bytes(os.urandom(50_000 + i))
        (out / "index.json").write_text(json.dumps({"shards": 4}))
        written = _tree(out)
    assert storage.exists(store)
    local = storage.input_path(store)
    assert {k: v for k, v in _tree(local).items() if k != "manifest.json"} == written

    # A checkpoint root: step directories published, then the `latest` marker.
    root = s3_env.uri("run", "phi")
    for step in (10, 20):
        step_dir = tmp_path / f"step_{step}"
        (step_dir / "model").mkdir(parents=True)
        (step_dir / "model" / "model.safetensors").write_bytes(os.urandom(4096))
        (step_dir / "trainer_state.json").write_text(json.dumps({"step": step}))
        storage.publish(step_dir, storage.join(root, f"step_{step}"), kind="checkpoint")
        storage.write_text(storage.join(root, "latest"), f"step_{step}")
    assert storage.read_text(storage.join(root, "latest")) == "step_20"
    resolved = storage.input_path(root)
    assert json.loads((resolved / "trainer_state.json").read_text()) == {"step": 20}
    assert (
        _tree(resolved)["model/model.safetensors"]
        == (tmp_path / "step_20/model/model.safetensors").read_bytes()
    )
    assert storage.read_text(storage.join(root, "nothing")) is None

    # Pruning an old checkpoint removes its manifest and every object under it; the newer one stays.
    old = storage.join(root, "step_10")
    storage.delete(old)
    assert not storage.exists(old)
    assert _keys(s3_env, "run/phi/step_10") == []
    assert storage.exists(storage.join(root, "step_20"))
    storage.delete(old)  # idempotent


def test_large_file_goes_up_in_parts(s3_env: S3Env, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BCODER_S3_MULTIPART_THRESHOLD", str(5 << 20))
    monkeypatch.setenv("BCODER_S3_MULTIPART_CHUNKSIZE", str(5 << 20))
    big = tmp_path / "weights" / "model.safetensors"
    big.parent.mkdir()
    payload = os.urandom((12 << 20) + 123)
    big.write_bytes(payload)
    uri = s3_env.uri("models", "big")
    storage.publish(big.parent, uri, kind="model")
    head = s3_env.client().head_object(Bucket=s3_env.bucket, Key=s3_env.key("models/big/model.safetensors"))
    assert head["ContentLength"] == len(payload)
    assert head["ETag"].strip('"').endswith("-3")  # a multipart upload of 3 parts
    local = storage.fetch(uri)
    assert (
        hashlib.sha256((local / "model.safetensors").read_bytes()).digest()
        == hashlib.sha256(payload).digest()
    )


def test_prefix_without_manifest_does_not_exist(s3_env: S3Env) -> None:
    client = s3_env.client()
    # What a writer that died before its manifest leaves: data objects only.
    client.put_object(Bucket=s3_env.bucket, Key=s3_env.key("partial/shard-00000.bin"), Body=b"half")
    client.put_object(Bucket=s3_env.bucket, Key=s3_env.key("partial.jsonl"), Body=b"half")
    for uri in (s3_env.uri("partial"), s3_env.uri("partial.jsonl"), s3_env.uri("never-written")):
        assert not storage.exists(uri)
        with pytest.raises(ArtifactNotFound, match=uri):
            storage.input_path(uri)
        with pytest.raises(ArtifactNotFound):
            storage.read_manifest(uri)


def test_shards_of_an_indexed_job_read_as_one_directory_once_all_are_there(
    s3_env: S3Env, tmp_path: Path
) -> None:
    prefix = s3_env.uri("run", "samples")
    rows = {i: [{"problem_id": f"p{j}", "sample_id": i} for j in range(i + 1)] for i in range(3)}

    def write_part(i: int) -> None:
        with storage.output_path(f"{prefix}/part-{i}-of-3.jsonl", kind="samples") as out:
            out.write_text("".join(json.dumps(r) + "\n" for r in rows[i]))

    write_part(0)
    write_part(2)
    # An unfinished shard: data without its manifest does not count either.
    s3_env.client().put_object(
        Bucket=s3_env.bucket, Key=s3_env.key("run/samples/part-1-of-3.jsonl"), Body=b"x"
    )
    assert not storage.exists(prefix)
    with pytest.raises(
        ArtifactNotFound, match=r"incomplete: 1 of 3 shards not published yet \(missing part-1-of-3\.jsonl\)"
    ):
        storage.input_path(prefix)

    write_part(1)
    assert storage.exists(prefix)
    manifest = storage.read_manifest(prefix)
    assert manifest["collection"] and manifest["kind"] == "samples"
    local = storage.input_path(prefix)
    assert sorted(p.name for p in local.glob("*.jsonl")) == [f"part-{i}-of-3.jsonl" for i in range(3)]
    for i in range(3):
        lines = (local / f"part-{i}-of-3.jsonl").read_text().splitlines()
        assert [json.loads(line) for line in lines] == rows[i]
    # Each part is verified like any artifact.
    s3_env.client().put_object(
        Bucket=s3_env.bucket, Key=s3_env.key("run/samples/part-1-of-3.jsonl"), Body=b"y" * 5
    )
    with pytest.raises(ArtifactCorrupt, match=rf"{prefix}/part-1-of-3\.jsonl: size 5 bytes"):
        storage.fetch(prefix, tmp_path / "elsewhere")


def test_corrupted_object_fails_verification_naming_the_key(s3_env: S3Env) -> None:
    uri = s3_env.uri("store")
    with storage.output_path(uri, kind="transitions") as out:
        (out / "shard-00000.bin").write_bytes(b"a" * 1000)
        (out / "shard-00001.bin").write_bytes(b"b" * 1000)
    client = s3_env.client()
    client.put_object(Bucket=s3_env.bucket, Key=s3_env.key("store/shard-00001.bin"), Body=b"c" * 1000)
    with pytest.raises(ArtifactCorrupt, match=rf"{uri}/shard-00001\.bin: sha256 does not match"):
        storage.input_path(uri)
    client.put_object(Bucket=s3_env.bucket, Key=s3_env.key("store/shard-00001.bin"), Body=b"b" * 999)
    with pytest.raises(ArtifactCorrupt, match=rf"{uri}/shard-00001\.bin: size 999 bytes, manifest says 1000"):
        storage.input_path(uri)
    client.delete_object(Bucket=s3_env.bucket, Key=s3_env.key("store/shard-00001.bin"))
    with pytest.raises(ArtifactCorrupt, match=rf"{uri}/shard-00001\.bin: listed in the manifest but missing"):
        storage.input_path(uri)
    # Nothing half-downloaded is left in the cache to be trusted later.
    cache = Path(os.environ["BCODER_CACHE_DIR"])
    assert not any(p.name == "shard-00000.bin" for p in cache.rglob("*"))


def test_second_read_comes_from_the_cache(s3_env: S3Env) -> None:
    uri = s3_env.uri("results.jsonl")
    with storage.output_path(uri, kind="results") as out:
        out.write_text("r\n")
    first = storage.input_path(uri)
    s3_env.client().delete_object(
        Bucket=s3_env.bucket, Key=s3_env.key("results.jsonl")
    )  # only the manifest is read now
    assert storage.input_path(uri) == first and first.read_text() == "r\n"


def test_republish_replaces_the_manifest(s3_env: S3Env, tmp_path: Path) -> None:
    uri = s3_env.uri("model")
    for version in (1, 2):
        src = tmp_path / f"v{version}"
        src.mkdir()
        (src / f"w{version}.bin").write_bytes(bytes([version]) * 10)
        storage.publish(src, uri, kind="model", config={"version": version})
    assert storage.read_manifest(uri)["config"] == {"version": 2}
    assert "w2.bin" in os.listdir(storage.input_path(uri))


def test_failed_stage_uploads_nothing(s3_env: S3Env) -> None:
    uri = s3_env.uri("samples.jsonl")
    with pytest.raises(ValueError), storage.output_path(uri, kind="samples") as out:
        out.write_text("partial")
        raise ValueError("boom")
    assert _keys(s3_env) == []


# --------------------------------------------------------------------------------------------------
# Errors are one line naming the URI, and come quickly


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_wrong_secret_key(s3_env: S3Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    uri = s3_env.uri("problems.jsonl")
    with pytest.raises(BcoderError) as exc:
        storage.input_path(uri)
    assert (
        _one_line(exc)
        == f"{uri}: the secret key is wrong (SignatureDoesNotMatch); check the AWS credentials and permissions"
    )


def test_unknown_access_key(s3_env: S3Env, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    (tmp_path / "f.txt").write_text("x")
    uri = s3_env.uri("out")
    with pytest.raises(BcoderError) as exc:
        storage.publish(tmp_path / "f.txt", uri, kind="x")
    text = _one_line(exc)
    assert text.startswith(f"{uri}") and "InvalidAccessKeyId" in text


def test_missing_credentials(s3_env: S3Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    uri = s3_env.uri("samples.jsonl")
    with pytest.raises(BcoderError) as exc:
        storage.input_path(uri)
    assert _one_line(exc).startswith(f"{uri}: no AWS credentials found")


def test_unknown_bucket(s3_env: S3Env, tmp_path: Path) -> None:
    uri = "s3://no-such-bucket-bcoder/run/samples.jsonl"
    with pytest.raises(BcoderError) as exc:
        storage.input_path(uri)
    assert _one_line(exc) == f"{uri}: bucket 'no-such-bucket-bcoder' does not exist"
    (tmp_path / "x.jsonl").write_text("x")
    with pytest.raises(BcoderError) as exc:
        storage.publish(tmp_path / "x.jsonl", uri, kind="samples")
    assert _one_line(exc) == f"{uri}: bucket 'no-such-bucket-bcoder' does not exist"


def test_unreachable_endpoint_fails_in_bounded_time(s3_env: S3Env, monkeypatch: pytest.MonkeyPatch) -> None:
    closed = free_ports(1)[0]
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{closed}")
    uri = s3_env.uri("store")
    started = time.monotonic()
    with pytest.raises(BcoderError) as exc:
        storage.input_path(uri)
    elapsed = time.monotonic() - started
    assert _one_line(exc) == (
        f"{uri}: cannot reach the S3 endpoint http://127.0.0.1:{closed} (EndpointConnectionError)"
    )
    assert elapsed < 120  # bounded: 3 attempts here (s3_env), ~20 s with the default 5 in adaptive mode


# --------------------------------------------------------------------------------------------------
# A server that dies in the middle of an upload


_PUBLISH_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from bcoder_core import storage
    from bcoder_core.errors import BcoderError
    try:
        storage.publish(Path(sys.argv[1]), sys.argv[2], kind="checkpoint")
    except BcoderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    """
)


@pytest.mark.slow
def test_server_killed_mid_upload_leaves_no_artifact_and_retry_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = start_seaweed(tmp_path / "weed")  # our own server: this test kills it
    try:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("BCODER_CACHE_DIR", str(tmp_path / "cache"))
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
        bucket = server.new_bucket("crash")
        uri = f"s3://{bucket}/run/phi/step_100"

        src = tmp_path / "step_100"
        src.mkdir()
        (src / "trainer_state.json").write_text('{"step": 100}')
        (src / "model.safetensors").write_bytes(os.urandom(96 << 20))
        env = {
            **os.environ,
            "BCODER_S3_MULTIPART_THRESHOLD": str(5 << 20),
            "BCODER_S3_MULTIPART_CHUNKSIZE": str(5 << 20),
            "BCODER_S3_MAX_CONCURRENCY": "1",
        }
        writer = subprocess.Popen(
            [sys.executable, "-c", _PUBLISH_SCRIPT, str(src), uri],
            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        client = server.client()
        deadline = time.monotonic() + 120
        while not client.list_multipart_uploads(Bucket=bucket).get("Uploads"):
            assert writer.poll() is None, (
                f"the writer ended before its multipart upload started: {writer.stderr.read()}"
            )
            assert time.monotonic() < deadline, "the multipart upload never started"
            time.sleep(0.02)
        server.stop(kill=True)  # SIGKILL in the middle of the parts

        _, stderr = writer.communicate(timeout=180)  # bounded retries: the writer gives up by itself
        assert writer.returncode == 2, stderr
        last = stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: {uri}") and "S3 endpoint" in last

        server.start()
        assert not storage.exists(uri)
        with pytest.raises(ArtifactNotFound):
            storage.input_path(uri)

        storage.publish(src, uri, kind="checkpoint")  # the retried Job
        local = storage.input_path(uri)
        assert (local / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
    finally:
        server.stop()
