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
