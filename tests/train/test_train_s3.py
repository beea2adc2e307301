"""Checkpoints through S3 (a real SeaweedFS server on loopback): save, `latest`, resume, export."""

from __future__ import annotations

import torch
from helpers.training import common, make_store, weights, write_shape, write_yaml

from bcoder_core import storage


def test_theta_checkpoints_and_resume_on_s3(s3_env, tmp_path):
    from bcoder_core.config import ThetaConfig, load_config
    from bcoder_core.train import checkpoint
    from bcoder_core.train.theta import train_theta

    t5 = write_shape(tmp_path / "t5.json", dropout=0.1)
    store = make_store(tmp_path / "store", v_phi=True, n_problems=3, per_problem=4)
    remote = s3_env.uri("theta")

    def cfg(output: str, steps: int) -> ThetaConfig:
        data = common(output, t5, transitions=str(store), max_steps=steps, save_every=2, keep_checkpoints=0,
                      optim={"lr": 1e-3, "schedule": "constant"})  # fmt: skip
        return load_config(ThetaConfig, write_yaml(tmp_path / "cfg.yaml", data))

    train_theta(cfg(str(tmp_path / "local"), 6))  # reference: 6 steps straight, locally
    train_theta(cfg(remote, 4))
    assert storage.read_text(storage.join(remote, "latest")) == "step_4"
    assert checkpoint.read_latest(remote) == 4
    manifest = storage.read_manifest(storage.join(remote, "step_4"))
    assert manifest["kind"] == "checkpoint"
    assert {"optimizer.pt", "scheduler.pt", "rank_0.pt", "config.yaml", "model/model.safetensors"} <= {
        f["path"] for f in manifest["files"]
    }

    result = train_theta(cfg(remote, 6))  # continues from s3://.../step_4
    assert [h["step"] for h in result.history] == [6]
    assert checkpoint.read_latest(remote) == 6
    final = storage.fetch(result.final)
    assert (final / "config.json").is_file() and (final / "heads.safetensors").is_file()
    want, got = weights(tmp_path / "local" / "final"), weights(final)
    for name, tensor in want.items():
        assert torch.equal(tensor, got[name]), f"{name} differs after resuming from S3"
