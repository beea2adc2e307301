"""DDP on CPU: `torchrun --standalone --nproc_per_node=2` (gloo) against one process.

The property tested: a run with W = 2 ranks, ``batch_size`` B and no accumulation makes exactly the
same optimiser updates as ONE process with ``batch_size`` B and ``grad_accum`` 2 on the same global
batches. Each global batch of 2B programs is split the same way in both runs (rank r / micro-batch r
takes positions r, r+2, ... — `split_micro` and the sampler's rank striding agree), every part's
loss is its own token mean, and the update uses the mean of the parts' gradients: DDP averages over
ranks, accumulation scales each micro-batch loss by 1/2. Scaling by 1/2 is exact in binary floating
point and a sum of two terms does not depend on their order, so the final weights must be equal
bit for bit (dropout off: ranks would draw different masks than a single process).

It runs for T5, a causal Llama with full fine-tuning, and LoRA adapters on a Llama checkpoint
(``helpers.training.VARIANTS``). T5's single-process run is a `bcoder train` subprocess; a causal
variant's is run in this process (one thread, as the ranks), which saves an interpreter start.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from helpers.training import (
    ENV,
    REPO,
    VARIANTS,
    common,
    make_store,
    model_keys,
    run_train,
    weights,
    write_yaml,
)


def _train_in_process(config) -> None:
    from bcoder_core.config import ThetaConfig, load_config
    from bcoder_core.train.theta import train_theta

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_theta(load_config(ThetaConfig, config))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_ddp_two_ranks_equals_accumulation(tmp_path, variant):
    shape, model = model_keys(variant, tmp_path / "model", dropout=0.0)
    store = make_store(tmp_path / "store", v_phi=True)
    shared = dict(
        transitions=str(store), max_steps=4, save_every=2, keep_checkpoints=0, log_every=1,
        optim={"lr": 1e-3, "schedule": "linear"}, **model,
    )  # fmt: skip
    ddp_cfg = write_yaml(
        tmp_path / "ddp.yaml", common(tmp_path / "ddp", shape, batch_size=2, grad_accum=1, **shared)
    )
    one_cfg = write_yaml(
        tmp_path / "one.yaml", common(tmp_path / "one", shape, batch_size=2, grad_accum=2, **shared)
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
    if variant == "t5":
        run_train("theta", one_cfg)
    else:
        _train_in_process(one_cfg)

    ddp, one = weights(tmp_path / "ddp" / "final"), weights(tmp_path / "one" / "final")
    assert ddp.keys() == one.keys()
    for name, tensor in one.items():
        assert torch.equal(tensor, ddp[name]), f"{name}: max diff {(tensor - ddp[name]).abs().max()}"
    # the runs did train (the comparison is not between two untouched models)
    early = weights(tmp_path / "ddp" / "step_2" / "model")
    assert any(not torch.equal(early[k], ddp[k]) for k in early if "lm_head" in k or "h1" in k)
    if variant.endswith("-lora"):  # θ's adapters trained (only they and h1 do), and they are compared
        assert any(not torch.equal(early[k], ddp[k]) for k in early if "lora_B" in k)
    # the checkpoint holds every rank's RNG and data state
    assert (tmp_path / "ddp" / "step_4" / "rank_1.pt").is_file()
