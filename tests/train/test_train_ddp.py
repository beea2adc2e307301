"""DDP on CPU: `torchrun --standalone --nproc_per_node=2` (gloo) against one process.

The property tested: a run with W = 2 ranks, ``batch_size`` B and no accumulation makes exactly the
same optimiser updates as ONE process with ``batch_size`` B and ``grad_accum`` 2 on the same global
batches. Each global batch of 2B programs is split the same way in both runs (rank r / micro-batch r
takes positions r, r+2, ... — `split_micro` and the sampler's rank striding agree), every part's
loss is its own token mean, and the update uses the mean of the parts' gradients: DDP averages over
ranks, accumulation scales each micro-batch loss by 1/2. Scaling by 1/2 is exact in binary floating
point and a sum of two terms does not depend on their order, so the final weights must be equal
bit for bit (dropout off: ranks would draw different masks than a single process).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from helpers.training import ENV, REPO, common, make_store, run_train, weights, write_t5_config, write_yaml


@pytest.mark.slow
def test_ddp_two_ranks_equals_accumulation(tmp_path):
    t5 = write_t5_config(tmp_path / "t5.json", dropout=0.0)
    store = make_store(tmp_path / "store", v_phi=True)
    shared = dict(
        transitions=str(store), max_steps=4, save_every=2, keep_checkpoints=0, log_every=1,
        optim={"lr": 1e-3, "schedule": "linear"},
    )  # fmt: skip
    ddp_cfg = write_yaml(
        tmp_path / "ddp.yaml", common(tmp_path / "ddp", t5, batch_size=2, grad_accum=1, **shared)
    )
    one_cfg = write_yaml(
        tmp_path / "one.yaml", common(tmp_path / "one", t5, batch_size=2, grad_accum=2, **shared)
    )

    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "jobs.cli", "train", "theta", "--config", str(ddp_cfg),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # rank 0 alone logs: one line per step, not two
    assert proc.stderr.count("theta step 4/4") == 1
    assert "global batch 4 = 2 x 1 x 2 ranks" in proc.stderr
    run_train("theta", one_cfg)

    ddp, one = weights(tmp_path / "ddp" / "final"), weights(tmp_path / "one" / "final")
    assert ddp.keys() == one.keys()
    for name, tensor in one.items():
        assert torch.equal(tensor, ddp[name]), f"{name}: max diff {(tensor - ddp[name]).abs().max()}"
    # the runs did train (the comparison is not between two untouched models)
    early = weights(tmp_path / "ddp" / "step_2" / "model")
    assert any(not torch.equal(early[k], ddp[k]) for k in early if "lm_head" in k or "h1" in k)
    # the checkpoint holds every rank's RNG and data state
    assert (tmp_path / "ddp" / "step_4" / "rank_1.pt").is_file()
