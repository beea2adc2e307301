"""Corrupt files in a user's plain directory (no manifest to verify them against) end in one line.

Every command that reads model weights, a model or tokenizer config, or a transition store is run on a
copy of a good directory with one file truncated or overwritten with garbage: it must exit 2 with a
single ``error: `` line on stderr that names the file, no traceback, and write nothing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.models import make_checkpoint
from helpers.rl import make_problems
from helpers.training import ENV, REPO, common, make_store, write_shape, write_yaml

from bcoder_core.model.qmodel import BCoderModel
from bcoder_core.model.tokenizer import load_tokenizer
from bcoder_core.problems import write_problems


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("corrupt")
    tok = load_tokenizer("tiny")
    ckpt = make_checkpoint(root, vocab_size=len(tok))
    tok.save_pretrained(str(ckpt))
    theta = root / "theta"  # θ with φ beside it, as `train theta` exports it with phi set
    BCoderModel.from_pretrained(ckpt, stage="eval").save_pretrained(theta, "theta", tokenizer=tok)
    BCoderModel.from_pretrained(ckpt, stage="phi").save_pretrained(theta, "phi")
    problems = root / "problems.jsonl"
    write_problems(make_problems(2), problems)
    samples = root / "samples.jsonl"
    samples.write_text('{"problem_id": "toy/train/0000", "sample_id": 0, "code": "print(1)\\n"}\n')
    store = make_store(root / "store", v_phi=True, n_problems=3, per_problem=8)  # 24 records: 2 shards
    assert (store / "shard-00001.safetensors").is_file()
    return {"root": root, "ckpt": ckpt, "theta": theta, "store": store, "problems": problems,
            "samples": samples, "t5": write_shape(root / "t5.json")}  # fmt: skip


def _corrupt(src: Path, name: str, how: str, dest: Path) -> Path:
    """A copy of directory ``src`` whose file ``name`` is cut in half or replaced by garbage."""
    shutil.copytree(src, dest)
    target = dest / name
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2] if how == "truncated" else b"\x93NUMPY\x00garbage" * 40)
    return dest


def _command(command: str, bad: Path, world: dict, tmp_path: Path) -> tuple[list[str], Path]:
    """The command line reading ``bad`` and the output it must not write."""
    out = tmp_path / "out"
    p, s = str(world["problems"]), str(world["samples"])
    if command == "sample":
        args = ["sample", "--model", str(bad), "--problems", p, "--out", str(out), "-m", "1"]
    elif command == "annotate":
        args = ["annotate", "--model", str(bad), "--problems", p, "--out", str(out)]
    elif command == "rank":
        args = [
            "rank",
            "--model",
            str(bad),
            "--phi",
            str(bad),
            "--problems",
            p,
            "--samples",
            s,
            "--out",
            str(out),
        ]
    elif command == "value-report":
        return [sys.executable, "-m", "jobs.cli", "value-report", "--transitions", str(bad)], out
    else:  # train <stage>: the bad directory as the store, the init checkpoint or phi
        stage, role = command.split(":")[1:]
        data = common(out, world["t5"], transitions=str(world["store"]), max_steps=2)
        if role == "transitions":
            data["transitions"] = str(bad)
        elif role == "init":
            data["model"] = {"init": str(bad), "tokenizer": "auto"}
        else:
            data[role] = str(bad)
        args = ["train", stage, "--config", str(write_yaml(tmp_path / "cfg.yaml", data))]
    return [sys.executable, "-m", "jobs.cli", *args], out


CASES = [
    # command, source directory, file, corruption
    ("sample", "theta", "config.json", "garbage"),
    ("sample", "theta", "model.safetensors", "truncated"),
    ("sample", "theta", "tokenizer.json", "truncated"),
    ("annotate", "ckpt", "model.safetensors", "truncated"),
    ("annotate", "ckpt", "config.json", "truncated"),
    ("annotate", "ckpt", "tokenizer_config.json", "garbage"),
    ("rank", "theta", "model.safetensors", "garbage"),
    ("rank", "theta", "heads.safetensors", "garbage"),
    ("rank", "theta", "phi.safetensors", "truncated"),
    ("rank", "theta", "phi_config.json", "garbage"),
    ("train:phi:transitions", "store", "shard-00001.safetensors", "truncated"),
    ("train:phi:transitions", "store", "index.json", "garbage"),
    ("train:phi:init", "ckpt", "model.safetensors", "garbage"),
    ("train:theta:phi", "theta", "phi.safetensors", "truncated"),
    ("value-report", "store", "shard-00000.safetensors", "garbage"),
    ("value-report", "store", "index.json", "truncated"),
]


@pytest.mark.parametrize(("command", "source", "name", "how"), CASES)
def test_corrupt_file_is_one_error_line(world, tmp_path, command, source, name, how):
    bad = _corrupt(world[source], name, how, tmp_path / "bad")
    cmd, out = _command(command, bad, world, tmp_path)
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert str(bad / name) in errors[0], errors[0]
    assert not out.exists()
