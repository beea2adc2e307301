"""Length-bucketed batches (DESIGN §2.7): the samplers' ``length_bucketing`` modes and the step's
token-mean loss.

What must hold in every mode (off, micro, window): ρ_real exact in every global batch; batch k a
pure function of k (asked for in any order, by a fresh sampler, or by a resumed one); the ranks'
parts disjoint and together the global batch; micro regroups a step's programs without changing
which programs the step sees, window regroups them among the steps of a window without changing
which programs the window sees; and the gradient of one optimiser step equals, to float32
rounding, the gradient of the token-mean loss of its whole global batch as ONE padded batch —
whatever the grouping into micro-batches, for T5 and a causal Llama, for sft, phi and theta, and
across simulated DDP ranks.
"""

from __future__ import annotations

import collections
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers.models import load, make_checkpoint
from helpers.numeric import assert_close_f32
from helpers.training import make_store

from bcoder_core.config import OptimConfig, PhiConfig, SFTConfig, ThetaConfig
from bcoder_core.errors import BcoderError
from bcoder_core.rl.transitions import TransitionStore, collate
from bcoder_core.train import fingerprint
from bcoder_core.train.dist import DistInfo
from bcoder_core.train.loading import Prefetcher, store_loader
from bcoder_core.train.samplers import (
    BUCKETING,
    EpochSampler,
    MixedBatchSampler,
    cut_by_length,
    deal,
    length_keys,
    store_lengths,
)
from bcoder_core.train.sft import Pair, collate_pairs, pair_lengths
from bcoder_core.train.step import accumulate, setup_training, split_micro, train_step

MODES = BUCKETING


def _records(n: int = 300, gt_every: int = 4, seed: int = 0) -> list[SimpleNamespace]:
    """Records of the lengths a sampler looks at: programs 2-300 tokens, prompts 20-80."""
    rng = np.random.default_rng(seed)
    return [
        SimpleNamespace(
            is_gt=i % gt_every == 0,
            program_ids=np.zeros(int(rng.integers(2, 300))),
            prompt_ids=np.zeros(int(rng.integers(20, 80))),
        )
        for i in range(n)
    ]


RECORDS = _records()


def _mixed(mode: str, batch: int = 32, rho: float = 0.5, *, rank: int = 0, world: int = 1,
           accum: int = 1, window: int = 4, seed: int = 3, records=RECORDS) -> MixedBatchSampler:  # fmt: skip
    return MixedBatchSampler(
        records, batch, rho, seed, rank=rank, world_size=world, grad_accum=accum, bucketing=mode,
        bucket_window=window,
    )  # fmt: skip


def _epoch(mode: str, batch: int = 32, *, rank: int = 0, world: int = 1, accum: int = 1,
           window: int = 4, seed: int = 3) -> EpochSampler:  # fmt: skip
    keys = store_lengths(RECORDS)
    return EpochSampler(
        len(RECORDS), batch, seed, rank, world, lengths=keys, grad_accum=accum, bucketing=mode,
        bucket_window=window,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# The samplers


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("batch", "rho", "world", "accum"), [(32, 0.5, 1, 1), (32, 0.5, 2, 4), (24, 0.3, 3, 2),
                                                               (16, 0.0, 1, 4), (16, 1.0, 2, 2), (12, 0.75, 1, 3)])  # fmt: skip
def test_rho_real_is_exact_in_every_global_batch(mode, batch, rho, world, accum):
    n_real = math.floor(rho * batch + 0.5)
    samplers = [_mixed(mode, batch, rho, rank=r, world=world, accum=accum) for r in range(world)]
    for k in range(40):  # several windows and epochs of both pools
        glob = samplers[0].global_batch(k)
        assert len(glob) == batch
        assert sum(RECORDS[i].is_gt for i in glob) == n_real
        parts = [s.batch(k) for s in samplers]
        assert all(len(p) == batch // world for p in parts)
        assert collections.Counter(i for p in parts for i in p) == collections.Counter(glob)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("make", [_mixed, _epoch], ids=["mixed", "epoch"])
def test_batch_k_is_a_pure_function_of_k(mode, make):
    walked = make(mode, world=2, accum=2)
    seq = [next(walked) for _ in range(30)]
    fresh = make(mode, world=2, accum=2)
    for k in np.random.default_rng(0).permutation(30):  # out of order: windows and epochs out of order
        assert fresh.batch(int(k)) == seq[k]
    assert make(mode, world=2, accum=2, seed=4).batch(0) != seq[0]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("make", [_mixed, _epoch], ids=["mixed", "epoch"])
def test_a_resumed_sampler_continues_identically(mode, make):
    full = make(mode)
    want = [next(full) for _ in range(25)]
    first = make(mode)
    for _ in range(11):  # mid-window (window 4)
        next(first)
    resumed = make(mode)
    resumed.load_state_dict(first.state_dict())
    assert [next(resumed) for _ in range(14)] == want[11:]
    other = next(m for m in MODES if m != mode)
    with pytest.raises(BcoderError, match=f"length_bucketing was {mode} in the checkpoint, is {other} now"):
        make(other).load_state_dict(first.state_dict())
    if mode == "window":
        with pytest.raises(BcoderError, match="bucket_window was 4 in the checkpoint, is 8 now"):
            make(mode, window=8).load_state_dict(first.state_dict())


@pytest.mark.parametrize("make", [_mixed, _epoch], ids=["mixed", "epoch"])
def test_a_checkpoint_from_before_bucketing_resumes_only_without_it(make):
    state = make("off").state_dict()
    for key in ("length_bucketing", "bucket_window"):
        del state[key]  # what a sampler before length bucketing saved
    make("off").load_state_dict(state)
    with pytest.raises(BcoderError, match="length_bucketing was off in the checkpoint, is window now"):
        make("window").load_state_dict(state)
    # the settings fingerprint says the same, before any model is built
    assert fingerprint.BEFORE["length_bucketing"] == "off"


@pytest.mark.parametrize("make", [_mixed, _epoch], ids=["mixed", "epoch"])
def test_micro_regroups_a_step_and_window_regroups_a_window_never_more(make):
    off, micro, window = (make(m, world=2, accum=2, window=4) for m in MODES)
    for k in range(24):  # micro: every step sees off's programs
        assert collections.Counter(micro.global_batch(k)) == collections.Counter(off.global_batch(k))
    for w in range(6):  # window: every window of 4 steps sees off's programs
        steps = range(4 * w, 4 * w + 4)
        got = collections.Counter(i for k in steps for i in window.global_batch(k))
        assert got == collections.Counter(i for k in steps for i in off.global_batch(k))
    # and the regrouping is real: window's batches are not off's
    assert any(set(window.global_batch(k)) != set(off.global_batch(k)) for k in range(4))


def test_off_is_the_order_before_bucketing():
    """off keeps the sampling order (ground truth first): runs that predate bucketing see the same."""
    s = _mixed("off", 8, 0.5)
    glob = s.global_batch(0)
    assert [RECORDS[i].is_gt for i in glob] == [True] * 4 + [False] * 4
    assert s.global_batch(0) == MixedBatchSampler(RECORDS, 8, 0.5, 3).global_batch(0)


def test_deal_hands_each_micro_batch_one_length_sorted_run():
    keys = store_lengths(RECORDS)
    world, accum = 2, 3
    batch = list(range(48))
    runs = cut_by_length([batch], keys, world * accum)
    dealt = deal(batch, keys, world * accum)
    for r in range(world):
        for j, micro in enumerate(split_micro(dealt[r::world], accum)):
            assert micro == runs[j * world + r].tolist()  # rank r's micro-batch j: run j·W + r

    # runs ordered by length (groups of runs by program length) and much less padding than off
    def padded(parts):
        return sum(len(p) * (keys[p, 0].max() + keys[p, 1].max()) for p in parts)

    strided = [batch[r::world][j::accum] for r in range(world) for j in range(accum)]
    assert padded([np.array(r) for r in runs]) < 0.8 * padded([np.array(p) for p in strided])


def test_bucketing_cuts_prompts_too_where_they_vary_more():
    """A 2-D cut: programs all alike, prompts not: the runs are cut by prompt length."""
    rng = np.random.default_rng(0)
    keys = length_keys(rng.integers(48, 53, size=32), np.arange(32) * 10)
    runs = cut_by_length([rng.permutation(32)], keys, 4)
    assert [sorted(keys[r, 1].tolist()) for r in runs] == [
        list(range(80 * c, 80 * c + 80, 10)) for c in range(4)
    ]


def test_window_batches_pair_length_quantiles_of_both_pools():
    records = [
        SimpleNamespace(is_gt=r.is_gt, program_ids=r.program_ids, prompt_ids=np.zeros(30)) for r in RECORDS
    ]
    s = _mixed("window", 16, 0.5, window=8, records=records)
    keys = store_lengths(records)
    batches = [s.global_batch(k) for k in range(8)]
    gt_max = [max(keys[i, 0] for i in b if records[i].is_gt) for b in batches]
    gen_max = [max(keys[i, 0] for i in b if not records[i].is_gt) for b in batches]
    # the batch with the longest ground truth also has the longest generated programs
    assert np.argsort(gt_max).tolist() == np.argsort(gen_max).tolist()


def test_bad_settings_are_errors():
    with pytest.raises(BcoderError, match="length_bucketing 'sorted': expected one of off, micro, window"):
        _mixed("sorted")
    with pytest.raises(BcoderError, match="needs the programs' lengths"):
        EpochSampler(10, 4, 0, bucketing="micro")
    with pytest.raises(BcoderError, match="bucket_window must be >= 1"):
        _mixed("window", window=0)
    with pytest.raises(BcoderError, match="not a multiple of 3 micro-batches"):
        _mixed("micro", 32, accum=3)


def test_a_store_reports_its_record_lengths(tmp_path):
    store = TransitionStore(make_store(tmp_path / "s", v_phi=False))
    lengths = store.record_lengths()
    assert lengths.tolist() == [[r.num_tokens, len(r.prompt_ids)] for r in store]
    assert store_lengths(store) is lengths


# --------------------------------------------------------------------------------------------------
# The step: the gradient of the global batch's token mean, whatever the grouping


VARIANTS = ("t5", "llama")


@pytest.fixture(scope="module", params=VARIANTS)
def ckpt(request, tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("bucketing"), variant=request.param)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """48 programs of 4-11 tokens (prompts 6-13), 2 ground truth per problem, with v_phi."""
    return TransitionStore(make_store(tmp_path_factory.mktemp("store") / "s", v_phi=True))


def _loss_fn(stage: str):
    from functools import partial

    from bcoder_core.rl.losses import phi_loss, sft_loss, theta_loss

    if stage == "sft":
        return sft_loss
    if stage == "phi":
        return partial(phi_loss, gamma=0.999)
    return partial(theta_loss, gamma=0.999, beta_adv=0.1, beta_ce=0.5, alpha=1.0)


def _config(stage: str, batch_size: int, accum: int, mode: str):
    common = dict(
        output="unused", batch_size=batch_size, grad_accum=accum, length_bucketing=mode, bucket_window=2,
        optim=OptimConfig(lr=1e-6), precision="fp32", device="cpu",
    )  # fmt: skip
    if stage == "sft":
        return SFTConfig(problems="unused", **common)
    cls = PhiConfig if stage == "phi" else ThetaConfig
    return cls(transitions="unused", **common)


def _perturbed(model) -> None:
    """Value heads start at zero (their gradient flows only through them): move every trainable
    parameter a little so that every gradient is non-trivial."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_grads(got: dict, want: dict) -> None:
    assert got.keys() == want.keys() and want
    for name, g in want.items():
        assert_close_f32(got[name], g, ulps=256)


def _step_data(stage, store, batch_size, accum, mode, world=1, rank=0):
    """(sampler, load, all records) of a stage on the store, as the loops build them."""
    records = list(store)
    if stage == "sft":
        pairs = [Pair(r.prompt_ids.tolist(), r.program_ids.tolist()) for r in records]
        sampler = EpochSampler(
            len(pairs), batch_size * accum * world, 1, rank, world, lengths=pair_lengths(pairs),
            grad_accum=accum, bucketing=mode, bucket_window=2,
        )  # fmt: skip

        def load(indices):
            return [collate_pairs([pairs[i] for i in part], 0) for part in split_micro(indices, accum)]

        def whole(indices):
            return collate_pairs([pairs[i] for i in indices], 0)

        return sampler, load, whole
    sampler = MixedBatchSampler(
        store, batch_size * accum * world, 0.5, 1, rank=rank, world_size=world, grad_accum=accum,
        bucketing=mode, bucket_window=2,
    )  # fmt: skip

    def whole(indices):
        return collate([records[i] for i in indices], 0)

    return sampler, store_loader(store, accum, 0), whole


@pytest.mark.parametrize("stage", ["sft", "phi", "theta"])
@pytest.mark.parametrize("mode", MODES)
def test_the_step_gradient_is_the_one_big_batch_gradient(ckpt, store, stage, mode):
    """train_step over 4 micro-batches (grouped as the mode groups them) against one padded batch of
    the same 16 programs; and the equal-weight average of micro-batch means (what the step did
    before) is not that gradient once the micro-batches are grouped by length."""
    model = load(ckpt, stage)
    _perturbed(model)
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    accum, bsz, step = 4, 4, 1
    sampler, load_micro, whole = _step_data(stage, store, bsz, accum, mode)
    loss_fn = _loss_fn(stage)
    cfg = _config(stage, bsz, accum, mode)
    info = DistInfo(0, 0, 1, torch.device("cpu"))
    parts = setup_training(model, loss_fn, stage, cfg, info)

    # the reference: one big batch of the step's programs, its own token means
    indices = sampler.global_batch(step)
    parts.optimizer.zero_grad(set_to_none=True)
    loss, _ = loss_fn(model, whole(indices))
    loss.backward()
    want = _grads(model)

    sampler.step = step
    with Prefetcher(load_micro, sampler, workers=0, last_step=step + 1) as loader:
        done = train_step(parts, loader, step)
    _assert_same_grads(_grads(model), want)
    # the step reports the global batch's mean
    assert done.stats["loss"] == pytest.approx(float(loss.detach()), rel=1e-5)

    # the equal-weight average of the micro-batches' own means: not the token mean in general
    model.load_state_dict(snapshot)
    parts.optimizer.zero_grad(set_to_none=True)
    micro = load_micro(sampler.batch(step))
    for m in micro:
        (loss_fn(model, m)[0] / accum).backward()
    naive = _grads(model)
    if mode != "off":  # length-grouped micro-batches hold very different token counts
        assert any(not torch.allclose(naive[n], want[n], rtol=1e-3, atol=1e-6) for n in want)


@pytest.mark.parametrize("mode", MODES)
def test_simulated_ddp_ranks_average_to_the_one_big_batch_gradient(ckpt, store, mode, monkeypatch):
    """Two ranks x 2 micro-batches: each rank's loss divides by half the global counts (the counts'
    all-reduce is simulated), DDP's average of the ranks' gradients is the big batch's."""
    import torch.distributed as torch_dist

    stage, world, accum, bsz, step = "theta", 2, 2, 4, 0
    loss_fn = _loss_fn(stage)
    model = load(ckpt, stage)
    _perturbed(model)
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    info = DistInfo(0, 0, 1, torch.device("cpu"))
    parts = setup_training(model, loss_fn, stage, _config(stage, bsz, accum, mode), info)
    ranks = [_step_data(stage, store, bsz, accum, mode, world, r) for r in range(world)]
    sampler0, _, whole = ranks[0]
    parts.optimizer.zero_grad(set_to_none=True)
    loss_fn(model, whole(sampler0.global_batch(step)))[0].backward()
    want = _grads(model)

    micro = [load(s.batch(step)) for s, load, _ in ranks]
    counts = torch.zeros(2, dtype=torch.float64)
    for m in (b for rank in micro for b in rank):
        real = m["labels"] != -100
        counts += torch.tensor([real.sum(), (real & m["is_gt"][:, None]).sum()], dtype=torch.float64)
    monkeypatch.setattr(torch_dist, "all_reduce", lambda t: t.copy_(counts))
    parts.world_size = world
    total: dict[str, torch.Tensor] = {}
    for rank_micro in micro:
        model.load_state_dict(snapshot)
        parts.optimizer.zero_grad(set_to_none=True)
        accumulate(parts, rank_micro)
        for n, g in _grads(model).items():
            total[n] = total.get(n, 0) + g / world  # DDP: the mean over ranks
    _assert_same_grads(total, want)
