"""Exact resume (DESIGN §5): a run SIGKILLed after a checkpoint and restarted ends with the same
weights, bit for bit, as an uninterrupted run (phi and theta, as real subprocesses; sft in-process,
by resuming a finished shorter run with a constant schedule).

The SIGKILL test runs for every model variant of ``helpers.training.VARIANTS``: T5, a causal Llama
with full fine-tuning, and LoRA adapters on a Llama checkpoint. The killed run is always a real
`bcoder train` process; T5's resumed run is one too (the family-independent path: a fresh process
rebuilds everything from the checkpoint), the causal variants resume in this process (what they add
is their model's save / load, read from disk either way; an interpreter start costs more than
their whole run)."""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers.training import (
    ENV,
    REPO,
    VARIANTS,
    assert_same_state,
    common,
    make_store,
    model_keys,
    run_train,
    train_cmd,
    training_state,
    weights,
    write_shape,
    write_yaml,
)

MAX_STEPS = 30


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    t5 = write_shape(root / "t5.json", dropout=0.1)  # dropout on: the RNG state must be restored
    return {
        "root": root,
        "t5": t5,
        # (shape, extra config keys) per model variant; dropout on everywhere
        "models": {
            v: (t5, {}) if v == "t5" else model_keys(v, root / "models", dropout=0.1) for v in VARIANTS
        },
        "phi": make_store(root / "store", v_phi=False),
        "theta": make_store(root / "store-phi", v_phi=True),
    }


def _kill_after_first_checkpoint(cmd: list[str], output: Path, log: Path) -> int:
    """Start ``cmd``, SIGKILL it as soon as `latest` names a checkpoint; return that step."""
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=err)
        latest = output / "latest"
        deadline = time.monotonic() + 300
        try:
            while not latest.exists():
                assert proc.poll() is None, (
                    f"run ended before its first checkpoint: {log.read_text()[-2000:]}"
                )
                assert time.monotonic() < deadline, "no checkpoint within 300 s"
                time.sleep(0.002)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    step = int(latest.read_text().removeprefix("step_"))
    assert step < MAX_STEPS, "the run finished before it could be killed"
    assert not (output / "final").exists()
    return step


def _run_in_process(stage: str, config: Path) -> None:
    """The uninterrupted run, in this process (saves an interpreter start) with one thread like the
    subprocesses, so the float reductions happen in the same order."""
    from bcoder_core.config import STAGE_CONFIGS, load_config
    from bcoder_core.train.phi import train_phi
    from bcoder_core.train.theta import train_theta

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train = {"phi": train_phi, "theta": train_theta}[stage]
        train(load_config(STAGE_CONFIGS[stage], config))
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def _train_log() -> Iterator[list[str]]:
    """The messages the trainers log in this process within the block (``bcoder.train`` does not
    propagate to the root logger, so caplog does not see them)."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = Collect(logging.INFO)
    logger = logging.getLogger("bcoder.train")
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)


# (variant, stage); the T5 cases keep their historical ids
CASES = [(v, s) for v in VARIANTS for s in ("phi", "theta")]
CASE_IDS = [s if v == "t5" else f"{v}-{s}" for v, s in CASES]


@pytest.mark.slow
@pytest.mark.parametrize(("variant", "stage"), CASES, ids=CASE_IDS)
def test_sigkill_and_resume_is_bit_exact(setup, variant, stage):
    root = setup["root"] / f"{variant}-{stage}"
    root.mkdir()
    shape, model = setup["models"][variant]
    extra = {"transitions": str(setup[stage]), **model}
    base = dict(max_steps=MAX_STEPS, save_every=5, log_every=10, optim={"lr": 1e-3, "schedule": "linear"})
    straight = write_yaml(root / "a.yaml", common(root / "a", shape, **base, **extra))
    interrupted = write_yaml(root / "b.yaml", common(root / "b", shape, **base, **extra))

    _run_in_process(stage, straight)
    killed_at = _kill_after_first_checkpoint(train_cmd(stage, interrupted), root / "b", root / "b.log")
    if variant == "t5":
        log = run_train(stage, interrupted).stderr
    else:
        with _train_log() as lines:
            _run_in_process(stage, interrupted)
        log = "\n".join(lines)
    assert f"resumed from {root / 'b'}/step_{killed_at}" in log

    want, got = weights(root / "a" / "final"), weights(root / "b" / "final")
    assert want.keys() == got.keys()
    for name, tensor in want.items():
        assert torch.equal(tensor, got[name]), f"{name} differs after resume"
    if variant.endswith("-lora"):  # the adapters are among the compared tensors (and no full copy of φ)
        assert any("lora_B" in k for k in got)
        assert stage == "theta" or all(k.split(":")[1].startswith(("adapter.", "head.")) for k in got)
    # the optimiser and schedule ended in the same state too (Adam moments of every trained tensor)
    assert_same_state(
        training_state(root / "a" / f"step_{MAX_STEPS}"), training_state(root / "b" / f"step_{MAX_STEPS}")
    )
    # and training really happened: the final weights differ from the killed run's checkpoint
    # (only the newest checkpoints are kept, so compare with the one still there)
    kept = sorted((root / "b").glob("step_*"), key=lambda p: int(p.name[5:]))[0]
    before = weights(kept / "model")
    assert any(not torch.equal(before[k], got[k]) for k in got if k in before)


@pytest.mark.parametrize("variant", ["t5", "llama"])
def test_sft_resume_is_bit_exact(setup, tmp_path, variant):
    """sft, cheaply: 6 steps straight == 3 steps, then the same run continued to 6 (constant lr);
    T5 and a causal Llama (random init of a shape sized to the trained tokenizer, dropout on)."""
    from bcoder_core.config import SFTConfig, load_config
    from bcoder_core.problems import Problem, write_problems
    from bcoder_core.train.sft import train_sft

    problems = [
        Problem(
            id=f"toy/train/{i}", source="toy", split="train", difficulty="introductory",
            question=f"Print the sum of the first {i} numbers of the input.", starter_code="",
            format="stdin", fn_name=None, tests={"inputs": [], "outputs": []}, example_tests={},
            solutions=[f"n = list(map(int, input().split()))\nprint(sum(n[:{i}]))\n",
                       f"import sys\nfor _ in range(1):\n    print(sum(list(map(int, sys.stdin.read().split()))[:{i}]))\n"],
        )
        for i in range(1, 9)
    ]  # fmt: skip
    write_problems(problems, tmp_path / "problems.jsonl")

    def cfg(out: str, steps: int) -> SFTConfig:
        data = common(tmp_path / out, setup["models"][variant][0], max_steps=steps, save_every=3, log_every=3,
                      problems=str(tmp_path / "problems.jsonl"), optim={"schedule": "constant", "lr": 1e-3},
                      model={"tokenizer": "train:300"}, max_source_tokens=64, max_target_tokens=96)  # fmt: skip
        return load_config(SFTConfig, write_yaml(tmp_path / f"{out}.yaml", data))

    straight = train_sft(cfg("a", 6))
    first = train_sft(cfg("b", 3))
    assert first.history[-1]["step"] == 3
    second = train_sft(cfg("b", 6))
    assert [h["step"] for h in second.history] == [6]  # continued from step 3, did not restart
    want, got = weights(Path(straight.final)), weights(Path(second.final))
    assert want.keys() == got.keys()
    for name, tensor in want.items():
        assert torch.equal(tensor, got[name]), f"{name} differs after resume"
    assert_same_state(training_state(tmp_path / "a" / "step_6"), training_state(tmp_path / "b" / "step_6"))

    # the export is a plain HF checkpoint with its (trained) tokenizer
    from transformers import AutoModelForCausalLM, T5ForConditionalGeneration

    from bcoder_core.model.tokenizer import load_tokenizer

    hf = (T5ForConditionalGeneration if variant == "t5" else AutoModelForCausalLM).from_pretrained(
        straight.final
    )
    tok = load_tokenizer(straight.final)
    assert hf.config.vocab_size == len(tok)
    assert hf.config.model_type == variant


# --------------------------------------------------------------------------------------------------
# Resume only what the checkpoint's settings describe (bcoder_core/train/fingerprint.py)


def _phi_config(setup, root: Path, name: str, steps: int, **extra) -> Path:
    keys = {"save_every": 2, "log_every": 2, "optim": {"lr": 1e-3, "schedule": "constant"}, **extra}
    data = common(root / name, setup["t5"], transitions=str(setup["phi"]), max_steps=steps, **keys)
    return write_yaml(root / f"{name}-{steps}-{len(extra)}.yaml", data)


def _same_weights(a: Path, b: Path) -> None:
    want, got = weights(a), weights(b)
    assert want.keys() == got.keys()
    for name, tensor in want.items():
        assert torch.equal(tensor, got[name]), f"{name} differs after resume"


def test_resume_with_a_changed_lr_stops_before_training(setup, tmp_path):
    _run_in_process("phi", _phi_config(setup, tmp_path, "run", 2))
    out = tmp_path / "run"
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    proc = subprocess.run(
        train_cmd("phi", _phi_config(setup, tmp_path, "run", 4), "optim.lr=3e-3"), cwd=REPO, env=ENV,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [
        f"error: {out}: cannot resume: optim.lr was 0.001, now 0.003 (use a new output, or delete {out} "
        "to start afresh)"
    ]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing trained, nothing written


def test_resume_with_changed_bookkeeping_is_bit_exact(setup, tmp_path):
    """log_every, save_every, keep_checkpoints, num_workers and metrics do not change the weights."""
    _run_in_process("phi", _phi_config(setup, tmp_path, "a", 4))
    _run_in_process("phi", _phi_config(setup, tmp_path, "b", 2))
    changed = _phi_config(setup, tmp_path, "b", 4, log_every=1, save_every=1, keep_checkpoints=0, num_workers=0,
                          metrics={"enable": False, "port": 9999})  # fmt: skip
    _run_in_process("phi", changed)
    assert (tmp_path / "b" / "step_3").is_dir()  # it did resume (and saved every step from there)
    _same_weights(tmp_path / "a" / "final", tmp_path / "b" / "final")


def test_checkpoint_of_an_earlier_version_resumes_with_a_warning(setup, tmp_path, monkeypatch, caplog):
    import logging

    from bcoder_core.train import fingerprint

    _run_in_process("phi", _phi_config(setup, tmp_path, "a", 4))
    with monkeypatch.context() as patch:
        patch.setattr(fingerprint, "record", lambda cfg: {})  # what checkpoints held before the fingerprint
        _run_in_process("phi", _phi_config(setup, tmp_path, "b", 2))
    logger = logging.getLogger("bcoder.train")
    logger.addHandler(caplog.handler)  # setup_logging stops "bcoder" propagating to caplog's root handler
    try:
        _run_in_process("phi", _phi_config(setup, tmp_path, "b", 4))
    finally:
        logger.removeHandler(caplog.handler)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"{tmp_path / 'b'}: checkpoint step_2 records no settings fingerprint (written by an earlier "
        "version); resuming without checking that the settings match"
    ]
    _same_weights(tmp_path / "a" / "final", tmp_path / "b" / "final")
