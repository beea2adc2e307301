"""Checkpoint module: layout, `latest` written last, pruning, exact state restore, schedules."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from bcoder_core import storage
from bcoder_core.config import OptimConfig, PhiConfig, load_config
from bcoder_core.errors import BcoderError
from bcoder_core.train import checkpoint as ckpt
from bcoder_core.train import fingerprint
from bcoder_core.train.dist import DistInfo
from bcoder_core.train.optim import lr_factor, make_optimizer, make_scheduler

INFO = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 1))
    cfg = OptimConfig(lr=1e-2, schedule="linear", warmup_steps=2)
    opt = make_optimizer(model.parameters(), cfg)
    sched = make_scheduler(opt, cfg, max_steps=10)
    return model, opt, sched


def _train(model, opt, sched, steps: int) -> None:
    for _ in range(steps):
        x = torch.randn(5, 4)
        loss = nn.functional.dropout(model(x), 0.5).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def _save(out: str, step: int, model, opt, sched, history, keep=2, data_state=None) -> None:
    cfg = load_config(PhiConfig, None, [f"output={out}", "transitions=t"])

    def write_model(path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "model.safetensors"))

    ckpt.save_checkpoint(
        INFO, out, step, stage="phi", write_model=write_model, optimizer=opt, scheduler=sched,
        data_state=data_state or {"step": step}, config=cfg, keep=keep, history=history,
    )  # fmt: skip


def test_layout_and_latest(tmp_path):
    out = str(tmp_path / "run")
    assert ckpt.read_latest(out) is None
    model, opt, sched = _setup()
    _train(model, opt, sched, 3)
    history: list[int] = []
    _save(out, 3, model, opt, sched, history)
    step_dir = Path(out) / "step_3"
    names = {p.name for p in step_dir.iterdir()}
    assert {"model", "optimizer.pt", "scheduler.pt", "rank_0.pt", "trainer_state.json", "config.yaml",
            "manifest.json"} <= names  # fmt: skip
    assert (Path(out) / "latest").read_text() == "step_3"
    assert ckpt.read_latest(out) == 3
    assert json.loads((step_dir / "trainer_state.json").read_text())["world_size"] == 1
    assert yaml.safe_load((step_dir / "config.yaml").read_text())["output"] == out
    manifest = storage.read_manifest(str(step_dir))
    assert manifest["kind"] == "checkpoint"
    assert any(f["path"] == "model/model.safetensors" for f in manifest["files"])
    # the output root with its `latest` marker resolves to the newest checkpoint
    assert storage.input_path(out).resolve() == step_dir.resolve()


def test_pruning_keeps_newest(tmp_path):
    out = str(tmp_path / "run")
    model, opt, sched = _setup()
    history: list[int] = []
    for step in (1, 2, 3, 4):
        _train(model, opt, sched, 1)
        _save(out, step, model, opt, sched, history, keep=2)
    assert sorted(p.name for p in Path(out).glob("step_*")) == ["step_3", "step_4"]
    assert history == [3, 4]
    _save(out, 5, model, opt, sched, history, keep=0)
    assert len(list(Path(out).glob("step_*"))) == 3


def test_exact_restore(tmp_path):
    """Continuing after a save and resuming from it give bit-identical parameters."""
    out = str(tmp_path / "run")
    model, opt, sched = _setup()
    random.seed(1)
    np.random.seed(1)
    _train(model, opt, sched, 3)
    _save(out, 3, model, opt, sched, [], data_state={"step": 3, "pos": 42})
    expected_py, expected_np = random.random(), np.random.rand()
    _train(model, opt, sched, 4)
    want = {k: v.clone() for k, v in model.state_dict().items()}
    want_lr = sched.get_last_lr()

    model2, opt2, sched2 = _setup(seed=123)  # different init: everything must come from the checkpoint
    local = ckpt.fetch_checkpoint(out, ckpt.read_latest(out))
    model2.load_state_dict(load_file(str(local / "model" / "model.safetensors")))
    step, data_state = ckpt.load_training_state(local, INFO, optimizer=opt2, scheduler=sched2)
    assert step == 3 and data_state == {"step": 3, "pos": 42}
    assert (random.random(), np.random.rand()) == (expected_py, expected_np)
    _train(model2, opt2, sched2, 4)
    for k, v in model2.state_dict().items():
        assert torch.equal(v, want[k]), k
    assert sched2.get_last_lr() == want_lr


def test_world_size_mismatch(tmp_path):
    out = str(tmp_path / "run")
    model, opt, sched = _setup()
    _save(out, 1, model, opt, sched, [])
    other = DistInfo(rank=0, local_rank=0, world_size=2, device=torch.device("cpu"))
    with pytest.raises(BcoderError, match="written by 1 processes, this run has 2"):
        ckpt.load_training_state(Path(out) / "step_1", other, optimizer=opt, scheduler=sched)


def test_bad_marker(tmp_path):
    (tmp_path / "latest").write_text("garbage")
    with pytest.raises(BcoderError, match="unreadable marker"):
        ckpt.read_latest(str(tmp_path))


def test_partial_save_is_invisible(tmp_path):
    """A save killed before `latest` was rewritten leaves the previous checkpoint in charge."""
    out = str(tmp_path / "run")
    model, opt, sched = _setup()
    history: list[int] = []
    _save(out, 1, model, opt, sched, history)
    partial = Path(out) / "step_2"
    (partial / "model").mkdir(parents=True)  # what a killed writer leaves: files, no manifest
    assert ckpt.read_latest(out) == 1
    assert not storage.exists(str(partial))
    _save(out, 2, model, opt, sched, history)  # the re-run replaces it
    assert storage.exists(str(partial)) and ckpt.read_latest(out) == 2


def test_schedules():
    const = OptimConfig(schedule="constant")
    assert [lr_factor(s, const, 10) for s in (0, 5, 9)] == [1.0, 1.0, 1.0]
    lin = OptimConfig(schedule="linear")
    # no warm-up: the first step uses the peak, the last one 1/max_steps of it
    assert [lr_factor(s, lin, 4) for s in range(4)] == [1.0, 0.75, 0.5, 0.25]
    warm = OptimConfig(schedule="linear", warmup_steps=2)
    assert [lr_factor(s, warm, 6) for s in range(6)] == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]


def test_no_weight_decay_on_vectors():
    model = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    opt = make_optimizer(model.parameters(), OptimConfig(weight_decay=0.05))
    decays = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decays[id(model[0].weight)] == 0.05
    assert decays[id(model[0].bias)] == 0.0 and decays[id(model[1].weight)] == 0.0


def test_resumed_run_prunes_inherited_checkpoints(tmp_path):
    out = str(tmp_path / "run")
    model, opt, sched = _setup()
    first: list[int] = []
    for step in (1, 2, 3):
        _save(out, step, model, opt, sched, first, keep=3)
    (Path(out) / "step_9").mkdir()  # a partial save (no manifest) is not a checkpoint
    history = ckpt.existing_steps(out, ckpt.read_latest(out))
    assert history == [1, 2, 3]
    _save(out, 4, model, opt, sched, history, keep=2)
    assert sorted(p.name for p in Path(out).glob("step_*") if storage.exists(str(p))) == ["step_3", "step_4"]
    assert ckpt.existing_steps(out, 0) == []


# --------------------------------------------------------------------------------------------------
# The settings fingerprint: a resume must not mix two runs' settings


def _phi_cfg(out: str, *overrides: str):
    return load_config(PhiConfig, None, [f"output={out}", "transitions=t", *overrides])


def _saved_run(tmp_path) -> tuple[str, Path]:
    out = str(tmp_path / "run")
    model, opt, sched = _setup()
    _save(out, 1, model, opt, sched, [])
    return out, Path(out) / "step_1"


def test_checkpoint_records_the_settings_that_change_the_result(tmp_path):
    _, step_dir = _saved_run(tmp_path)
    state = json.loads((step_dir / "trainer_state.json").read_text())
    saved = state["settings"]
    assert state["fingerprint"] == fingerprint.digest(saved)
    assert {"seed", "optim.lr", "batch_size", "model.init", "transitions", "gamma", "rho_real"} <= set(saved)
    for exempt in ("output", "log_every", "save_every", "keep_checkpoints", "metrics.enable", "num_workers",
                   "device", "ddp_find_unused", "max_steps"):  # fmt: skip
        assert exempt not in saved  # max_steps: the default schedule is constant
    linear = fingerprint.settings(_phi_cfg("x", "optim.schedule=linear"))
    assert "max_steps" in linear  # a linear schedule's every lr depends on it


def test_resume_with_a_changed_setting_is_refused(tmp_path):
    out, step_dir = _saved_run(tmp_path)
    with pytest.raises(BcoderError) as err:
        fingerprint.check_resume(step_dir, _phi_cfg(out, "optim.lr=3e-05"), out)
    assert str(err.value) == (
        f"{out}: cannot resume: optim.lr was 1e-05, now 3e-05 (use a new output, or delete {out} to start afresh)"
    )
    with pytest.raises(BcoderError, match=r"seed was 0, now 1; gamma was 0\.999, now 0\.9 \(use a new"):
        fingerprint.check_resume(step_dir, _phi_cfg(out, "seed=1", "gamma=0.9"), out)
    with pytest.raises(BcoderError, match="transitions was 't', now 'other'"):
        fingerprint.check_resume(step_dir, _phi_cfg(out, "transitions=other"), out)
    with pytest.raises(BcoderError, match=r"cannot resume: optim\.schedule was 'constant', now 'linear' \("):
        fingerprint.check_resume(step_dir, _phi_cfg(out, "optim.schedule=linear"), out)


def test_max_steps_matters_under_a_linear_schedule_only(tmp_path):
    out = str(tmp_path / "run")
    _, opt, sched = _setup()
    linear = _phi_cfg(out, "optim.schedule=linear", "max_steps=10")
    ckpt.save_checkpoint(
        INFO, out, 1, stage="phi", write_model=lambda path: path.mkdir(), optimizer=opt, scheduler=sched,
        data_state={"step": 1}, config=linear, keep=0, history=[],
    )  # fmt: skip
    with pytest.raises(BcoderError, match="cannot resume: max_steps was 10, now 20 "):
        fingerprint.check_resume(
            Path(out) / "step_1", _phi_cfg(out, "optim.schedule=linear", "max_steps=20"), out
        )


def test_resume_ignores_the_exempt_keys(tmp_path):
    out, step_dir = _saved_run(tmp_path)
    moved = str(tmp_path / "moved")
    cfg = _phi_cfg(moved, "log_every=1", "save_every=7", "keep_checkpoints=0", "metrics.enable=false",
                   "metrics.port=9999", "num_workers=0", "device=cpu", "ddp_find_unused=true",
                   "max_steps=5000")  # fmt: skip
    fingerprint.check_resume(step_dir, cfg, moved)  # no error
    fingerprint.check_resume(step_dir, _phi_cfg(out), out)


def test_resume_of_another_stage_is_refused(tmp_path):
    from bcoder_core.config import ThetaConfig

    out, step_dir = _saved_run(tmp_path)
    theta = load_config(ThetaConfig, None, [f"output={out}", "transitions=t"])
    with pytest.raises(BcoderError, match="cannot resume: it holds a phi run, this is theta"):
        fingerprint.check_resume(step_dir, theta, out)


def test_a_key_the_checkpoint_does_not_record_matches_its_default(tmp_path):
    """A key added to the config after the checkpoint was written: the old run had its default."""
    out, step_dir = _saved_run(tmp_path)
    state_file = step_dir / "trainer_state.json"
    state = json.loads(state_file.read_text())
    del state["settings"]["optim.value_head_lr_mult"]
    state_file.write_text(json.dumps(state))
    fingerprint.check_resume(step_dir, _phi_cfg(out), out)
    with pytest.raises(BcoderError, match=r"optim\.value_head_lr_mult was 1\.0, now 2\.0"):
        fingerprint.check_resume(step_dir, _phi_cfg(out, "optim.value_head_lr_mult=2"), out)


def test_checkpoint_without_a_fingerprint_resumes_with_a_warning(tmp_path, monkeypatch, caplog):
    out = str(tmp_path / "run")
    model, opt, sched = _setup()
    monkeypatch.setattr(fingerprint, "record", lambda cfg: {})  # what earlier versions wrote
    _save(out, 1, model, opt, sched, [])
    assert "settings" not in json.loads((Path(out) / "step_1" / "trainer_state.json").read_text())
    with caplog.at_level("WARNING", logger="bcoder.train"):
        fingerprint.check_resume(Path(out) / "step_1", _phi_cfg(out, "optim.lr=3e-05"), out)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert (
        len(warnings) == 1
        and "records no settings fingerprint (written by an earlier version)" in warnings[0]
    )
