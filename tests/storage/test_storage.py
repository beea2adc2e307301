"""Storage on local paths: layout, manifests, atomic outputs, verification; the backend protocol and
its registry (no server needed)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

from bcoder_core import storage
from bcoder_core.errors import ArtifactCorrupt, ArtifactNotFound, BcoderError
from bcoder_core.storage import backend
from bcoder_core.storage.backend import clean_parts
from bcoder_core.storage.local import LocalBackend
from bcoder_core.storage.s3 import S3Backend


def _leftovers(directory: Path) -> list[str]:
    """Staging or trash entries a writer left behind."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_directory_output_has_manifest_written_with_everything(tmp_path: Path) -> None:
    uri = str(tmp_path / "run" / "store")
    with storage.output_path(uri, kind="transitions", config={"shard_size": 2}) as out:
        assert out.is_dir() and out != Path(uri)
        (out / "shard-00000.bin").write_bytes(b"\x00\x01" * 100)
        (out / "nested").mkdir()
        (out / "nested" / "index.json").write_text('{"n": 2}')

    root = Path(uri)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["format"] == "bcoder-artifact/1"
    assert manifest["kind"] == "transitions" and manifest["layout"] == "directory"
    assert manifest["config"] == {"shard_size": 2}
    assert manifest["command"] == sys.argv
    assert manifest["code_version"]["bcoder"]
    assert manifest["created"].endswith("Z")
    files = {f["path"]: f for f in manifest["files"]}
    assert set(files) == {"shard-00000.bin", "nested/index.json"}
    assert files["shard-00000.bin"]["size"] == 200
    assert files["nested/index.json"]["sha256"] == hashlib.sha256(b'{"n": 2}').hexdigest()
    assert manifest["total_bytes"] == 200 + 8
    assert storage.read_manifest(uri) == manifest
    assert storage.exists(uri)
    assert storage.input_path(uri) == root
    assert _leftovers(root.parent) == []


def test_file_output_gets_a_sibling_manifest(tmp_path: Path) -> None:
    uri = str(tmp_path / "results.jsonl")
    with storage.output_path(uri, kind="results") as out:
        assert out.name == "results.jsonl" and not out.exists()
        out.write_text('{"problem_id": "p", "sample_id": 0}\n')
    manifest = json.loads(Path(uri + ".manifest.json").read_text())
    assert manifest["layout"] == "file" and manifest["kind"] == "results"
    assert [f["path"] for f in manifest["files"]] == ["results.jsonl"]
    assert storage.input_path(uri) == Path(uri)
    assert storage.fetch(uri) == Path(uri)
    assert _leftovers(tmp_path) == []


def test_failed_stage_leaves_nothing_and_keeps_the_previous_artifact(tmp_path: Path) -> None:
    uri = str(tmp_path / "samples")
    with pytest.raises(RuntimeError), storage.output_path(uri, kind="samples") as out:
        (out / "part.jsonl").write_text("half")
        raise RuntimeError("stage crashed")
    assert not Path(uri).exists()
    assert _leftovers(tmp_path) == []

    with storage.output_path(uri, kind="samples") as out:
        (out / "a.jsonl").write_text("good\n")
    with pytest.raises(RuntimeError), storage.output_path(uri, kind="samples") as out:
        (out / "b.jsonl").write_text("bad")
        raise RuntimeError("second run crashed")
    assert sorted(os.listdir(uri)) == ["a.jsonl", "manifest.json"]
    storage.fetch(uri)  # still verifies
    assert _leftovers(tmp_path) == []


def test_rewriting_an_output_replaces_it_whole(tmp_path: Path) -> None:
    uri = str(tmp_path / "out")
    with storage.output_path(uri, kind="x") as out:
        (out / "old.txt").write_text("old")
    with storage.output_path(uri, kind="x") as out:
        (out / "new.txt").write_text("new")
    assert sorted(os.listdir(uri)) == ["manifest.json", "new.txt"]
    assert [f["path"] for f in storage.read_manifest(uri)["files"]] == ["new.txt"]
    assert _leftovers(tmp_path) == []


def test_a_stage_that_writes_no_file_is_an_error(tmp_path: Path) -> None:
    uri = str(tmp_path / "results.jsonl")
    with pytest.raises(BcoderError, match="wrote no output"), storage.output_path(uri, kind="results"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_corrupted_local_artifact_names_the_file(tmp_path: Path) -> None:
    uri = str(tmp_path / "ckpt")
    with storage.output_path(uri, kind="checkpoint") as out:
        (out / "model.safetensors").write_bytes(b"w" * 64)
        (out / "config.json").write_text("{}")
    weights = Path(uri) / "model.safetensors"
    weights.write_bytes(b"x" * 64)  # same size, other bytes
    with pytest.raises(ArtifactCorrupt, match=r"model\.safetensors: sha256"):
        storage.input_path(uri)
    weights.write_bytes(b"w" * 10)
    with pytest.raises(ArtifactCorrupt, match=r"model\.safetensors: size 10 bytes, manifest says 64"):
        storage.fetch(uri)
    weights.unlink()
    with pytest.raises(ArtifactCorrupt, match=r"model\.safetensors: listed in the manifest but missing"):
        storage.fetch(uri)


def test_local_data_without_manifest_is_user_data(tmp_path: Path) -> None:
    data = tmp_path / "problems.jsonl"
    data.write_text("{}\n")
    assert storage.input_path(str(data)) == data
    assert not storage.exists(str(data))
    with pytest.raises(ArtifactNotFound, match=str(data)):
        storage.fetch(str(data))
    with pytest.raises(ArtifactNotFound):
        storage.read_manifest(str(data))
    # A manifest.json that is not ours (a dataset's own) does not make it an artifact.
    user_dir = tmp_path / "dataset"
    user_dir.mkdir()
    (user_dir / "manifest.json").write_text('{"files": ["a"]}')
    assert storage.input_path(str(user_dir)) == user_dir
    with pytest.raises(BcoderError, match="no such file or directory"):
        storage.input_path(str(tmp_path / "missing"))


def test_publish_in_place_writes_only_the_manifest(tmp_path: Path) -> None:
    step = tmp_path / "run" / "step_2"
    step.mkdir(parents=True)
    (step / "optimizer.pt").write_bytes(b"opt")
    manifest = storage.publish(step, str(step), kind="checkpoint", config={"lr": 1e-5})
    assert sorted(os.listdir(step)) == ["manifest.json", "optimizer.pt"]
    assert manifest == storage.read_manifest(str(step))
    # Publishing again (a re-run) is fine and does not list the manifest itself.
    manifest = storage.publish(step, str(step), kind="checkpoint")
    assert [f["path"] for f in manifest["files"]] == ["optimizer.pt"]


def test_publish_copies_to_another_local_uri(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(b"a")
    (src / "manifest.json").write_text("stale")  # replaced, never listed
    storage.publish(src, str(tmp_path / "dst"), kind="model")
    assert sorted(os.listdir(tmp_path / "dst")) == ["a.bin", "manifest.json"]
    single = tmp_path / "one.jsonl"
    single.write_text("x\n")
    storage.publish(single, str(tmp_path / "published" / "one.jsonl"), kind="samples")
    assert storage.input_path(str(tmp_path / "published" / "one.jsonl")).read_text() == "x\n"
    with pytest.raises(BcoderError, match="nothing to publish"):
        storage.publish(tmp_path / "nope", str(tmp_path / "x"), kind="x")


def test_latest_marker_is_followed(tmp_path: Path) -> None:
    run = str(tmp_path / "theta")
    for step in (1, 2):
        with storage.output_path(storage.join(run, f"step_{step}"), kind="checkpoint") as out:
            (out / "step.txt").write_text(str(step))
        storage.write_text(storage.join(run, "latest"), f"step_{step}")
    assert storage.read_text(storage.join(run, "latest")) == "step_2"
    assert storage.input_path(run) == Path(run) / "step_2"
    assert storage.read_manifest(run)["kind"] == "checkpoint"
    assert storage.read_text(storage.join(run, "missing")) is None


def test_fetch_to_dest_copies_a_verified_artifact(tmp_path: Path) -> None:
    uri = str(tmp_path / "art")
    with storage.output_path(uri, kind="x") as out:
        (out / "f.txt").write_text("f")
    dest = storage.fetch(uri, tmp_path / "copy")
    assert (dest / "f.txt").read_text() == "f"
    storage.fetch(str(dest))  # the copy carries the manifest and verifies


def test_join_and_uri_forms() -> None:
    assert storage.join("s3://b/run/", "step_3", "/x.bin") == "s3://b/run/step_3/x.bin"
    assert storage.join("/tmp/run", "latest") == "/tmp/run/latest"
    assert storage.is_s3("s3://bucket/p") and not storage.is_s3("/s3/x")
    with pytest.raises(BcoderError, match="not a valid S3 URI"):
        storage.read_text("s3:///key")


# --------------------------------------------------------------------------------------------------
# Backends


def test_registry_picks_the_backend_by_scheme(tmp_path: Path) -> None:
    local = storage.backend_for(str(tmp_path))
    assert isinstance(local, LocalBackend)
    assert storage.backend_for(f"file://{tmp_path}") is local
    assert storage.backend_for("relative/dir") is local
    assert isinstance(storage.backend_for("s3://bucket/key"), S3Backend)
    assert storage.local_path(f"file://{tmp_path}") == tmp_path
    assert storage.local_path("s3://bucket/key") is None
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "sub").mkdir()
    assert local.list_names(str(tmp_path)) == ["a.txt"]


def test_file_uris_are_local_paths(tmp_path: Path) -> None:
    uri = f"file://{tmp_path}/results.jsonl"
    with storage.output_path(uri, kind="results") as out:
        out.write_text("r\n")
    assert storage.input_path(uri) == tmp_path / "results.jsonl"
    assert storage.exists(str(tmp_path / "results.jsonl"))


@pytest.mark.parametrize("call", [storage.input_path, storage.exists, storage.read_text, storage.delete])
def test_an_unknown_scheme_is_one_clear_error(call: Callable[[str], object]) -> None:
    uri = "gs://bucket/run/samples.jsonl"
    with pytest.raises(BcoderError) as exc:
        call(uri)
    assert str(exc.value) == f"{uri}: no storage backend for gs:// URIs (known: local paths, file://, s3://)"


@contextmanager
def _scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


class MemoryBackend:
    """A remote store in a dict: the manifest logic must work through the protocol alone."""

    user_data = False

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}  # in write order

    def join(self, uri: str, *parts: str) -> str:
        return "/".join([uri.rstrip("/"), *clean_parts(parts)])

    def local_path(self, uri: str) -> None:
        return None

    def read_bytes(self, uri: str) -> bytes | None:
        return self.objects.get(uri)

    def write_bytes(self, uri: str, data: bytes, *, where: str | None = None) -> None:
        self.objects.pop(uri, None)
        self.objects[uri] = data

    def list_names(self, uri: str) -> list[str]:
        prefix = uri.rstrip("/") + "/"
        return sorted(
            k[len(prefix) :] for k in self.objects if k.startswith(prefix) and "/" not in k[len(prefix) :]
        )

    def delete(self, uri: str, *, tree: bool = False, where: str | None = None) -> None:
        self.objects.pop(uri, None)
        if tree:
            for key in [k for k in self.objects if k.startswith(uri.rstrip("/") + "/")]:
                del self.objects[key]

    def staging(self, uri: str) -> AbstractContextManager[Path]:
        return _scratch()

    def check_writable(self, uri: str) -> None:
        pass

    def install(
        self, src: Path, uri: str, *, files: list[str], manifest_uri: str, manifest: bytes, keep_src: bool
    ) -> None:
        self.delete(manifest_uri)
        pairs = [(uri, src)] if src.is_file() else [(self.join(uri, rel), src / rel) for rel in files]
        for key, path in pairs:
            self.write_bytes(key, path.read_bytes())
        self.write_bytes(manifest_uri, manifest)

    def download(self, items: list[tuple[str, Path]], *, where: str) -> None:
        for uri, path in items:
            if uri in self.objects:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(self.objects[uri])


@pytest.fixture
def mem(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> MemoryBackend:
    monkeypatch.setattr(backend, "_backends", dict(backend._backends))  # the registration ends with the test
    monkeypatch.setenv("BCODER_CACHE_DIR", str(tmp_path / "cache"))
    store = MemoryBackend()
    storage.register("mem", store)
    return store


def test_a_registered_backend_gets_the_whole_manifest_logic(mem: MemoryBackend, tmp_path: Path) -> None:
    uri = "mem://b/run/step_1"
    with storage.output_path(uri, kind="checkpoint", config={"lr": 1}) as out:
        (out / "model").mkdir()
        (out / "model" / "w.bin").write_bytes(b"w" * 10)
        (out / "state.json").write_text("{}")
    assert list(mem.objects) == [f"{uri}/model/w.bin", f"{uri}/state.json", f"{uri}/manifest.json"]
    assert storage.read_manifest(uri)["config"] == {"lr": 1}
    local = storage.input_path(uri)
    assert local.is_relative_to(tmp_path / "cache") and (local / "model" / "w.bin").read_bytes() == b"w" * 10

    storage.write_text("mem://b/run/latest", "step_1")
    assert storage.input_path("mem://b/run") == local  # the marker is followed, the cache reused
    mem.objects[f"{uri}/model/w.bin"] = b"x" * 10
    with pytest.raises(ArtifactCorrupt, match=rf"{uri}/model/w\.bin: sha256"):
        storage.fetch(uri, tmp_path / "copy")
    assert not storage.exists("mem://b/nothing")
    with pytest.raises(ArtifactNotFound, match="mem://b/nothing: no artifact here"):
        storage.input_path("mem://b/nothing")

    storage.delete(uri)
    assert list(mem.objects) == ["mem://b/run/latest"]


def test_shards_on_a_registered_backend(mem: MemoryBackend) -> None:
    for i in (0, 1):
        assert not storage.exists("mem://b/samples")
        with storage.output_path(f"mem://b/samples/part-{i}-of-2.jsonl", kind="samples") as out:
            out.write_text(f"{i}\n")
    manifest = storage.read_manifest("mem://b/samples")
    assert manifest["collection"] and [f["path"] for f in manifest["files"]] == [
        "part-0-of-2.jsonl",
        "part-1-of-2.jsonl",
    ]
    assert (storage.input_path("mem://b/samples") / "part-1-of-2.jsonl").read_text() == "1\n"
