"""The frozen encoder's states kept per prompt in phi and theta (train/encoder_cache.py, DESIGN §2.6).

The cache must give the states the encoder gives a padded batch, encode each prompt once, give a
phi or theta step the loss and gradients of the uncached step, and be on for every prompt or off
(budget, causal LM) before the first step. Exact resume with the cache on is checked by
tests/train/test_train_resume.py, whose phi and theta runs use the default budget.
"""

from __future__ import annotations

import functools
import logging

import pytest
import torch
from helpers.models import load, make_checkpoint
from helpers.numeric import assert_close_f32
from helpers.training import make_store

from bcoder_core.rl.losses import phi_loss, theta_loss
from bcoder_core.rl.transitions import TransitionStore, collate, prompt_key
from bcoder_core.train.encoder_cache import EncoderCache, cache_for_stage, estimate_bytes


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("cache"), variant="t5")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """6 problems of 8 programs each (prompts of 6-13 tokens), with v_phi."""
    return TransitionStore(make_store(tmp_path_factory.mktemp("store") / "s", v_phi=True))


def _batch(store, indices):
    return collate([store[i] for i in indices], pad_id=0)


def test_cached_states_are_the_encoders_states_of_the_padded_batch(t5, store):
    model = load(t5, "phi").eval()
    cache = EncoderCache()
    # programs of three problems, their prompts of different lengths, two rows per prompt
    batch = _batch(store, [0, 1, 8, 9, 16, 17])
    lengths = batch["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) > 1  # the batch pads some prompts
    got = cache.encode(model, batch["input_ids"], batch["attention_mask"], batch["prompt_keys"])
    want = model.encode(batch["input_ids"], batch["attention_mask"])
    assert got.shape == want.shape
    real = batch["attention_mask"].bool()
    assert torch.allclose(got[real], want[real], atol=1e-5)
    assert not got[~real].any()  # padded positions are zeros (the cross-attention masks them)
    assert (len(cache), cache.misses, cache.hits) == (3, 3, 3)

    # a later batch: nothing encoded again for the prompts seen, one new prompt encoded
    again = _batch(store, [2, 24, 10])
    out = cache.encode(model, again["input_ids"], again["attention_mask"], again["prompt_keys"])
    assert (len(cache), cache.misses, cache.hits) == (4, 4, 5)
    assert torch.equal(out[0, : int(lengths[0])], got[0, : int(lengths[0])])


def test_each_prompt_is_encoded_alone_unpadded(t5, store, monkeypatch):
    """A batch of one, no padding: a prompt's states then cannot depend on the batch that first held
    it, which keeps a resumed run (its cache refilled in another order) exact."""
    model = load(t5, "theta").eval()
    calls = []
    encode = model.encode

    def spy(input_ids, attention_mask):
        calls.append((tuple(input_ids.shape), bool(attention_mask.all())))
        return encode(input_ids, attention_mask)

    monkeypatch.setattr(model, "encode", spy)
    cache = EncoderCache()
    batch = _batch(store, [0, 8, 16, 9])  # problem 0's long prompt beside shorter ones
    cache.encode(model, batch["input_ids"], batch["attention_mask"], batch["prompt_keys"])
    lengths = sorted(len(k) // 4 for k in set(batch["prompt_keys"]))
    assert sorted(c[0][1] for c in calls) == lengths
    assert all(shape[0] == 1 and unpadded for shape, unpadded in calls)
    key = prompt_key(store[0].prompt_ids)
    alone = _batch(store, [1])
    assert torch.equal(cache.states[key], encode(alone["input_ids"], alone["attention_mask"])[0])


@pytest.mark.parametrize("stage", ["phi", "theta"])
def test_a_step_with_the_cache_has_the_loss_and_gradients_of_one_without(t5, store, stage):
    loss_fn = (
        functools.partial(phi_loss, gamma=0.999)
        if stage == "phi"
        else functools.partial(theta_loss, gamma=0.999, beta_adv=0.1, beta_ce=0.5, alpha=1.0)
    )
    batch = _batch(store, [0, 1, 2, 8, 9, 16, 40, 41])

    def run(cache):
        torch.manual_seed(0)
        model = load(t5, stage)
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():  # value heads start at zero: give every gradient something to carry
            for p in model.trainable_parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
        loss, _ = loss_fn(model, batch, encoder_cache=cache)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return loss.detach(), grads

    cache = EncoderCache()
    plain_loss, plain = run(None)
    cached_loss, cached = run(cache)
    assert cache.misses == 4  # four distinct prompts in eight rows
    assert cached_loss == pytest.approx(float(plain_loss), rel=1e-5)
    assert plain.keys() == cached.keys() and plain
    for name in plain:
        assert_close_f32(cached[name], plain[name], ulps=4096)


def test_the_size_estimate_counts_each_shards_prompts_once(t5, store, tmp_path):
    model = load(t5, "phi")
    distinct = {prompt_key(r.prompt_ids) for r in store}
    assert len(distinct) == 6
    # 16 records a shard, 8 a problem: every prompt lies in exactly one shard here
    assert store.prompt_token_count() == sum(len(k) // 4 for k in distinct)
    assert estimate_bytes(store, model) == store.prompt_token_count() * model.d_model * 4
    assert isinstance(cache_for_stage(model, store, 1, "phi"), EncoderCache)
    assert cache_for_stage(model, store, 0, "phi") is None  # 0 turns it off
    llama = load(make_checkpoint(tmp_path, variant="llama"), "phi")
    assert cache_for_stage(llama, store, 1024, "phi") is None  # no separate encoder to cache


def test_an_oversized_store_turns_the_cache_off_and_says_so(t5, tmp_path, monkeypatch, caplog):
    model = load(t5, "theta")
    store = TransitionStore(make_store(tmp_path / "s", v_phi=True))
    monkeypatch.setattr(store, "prompt_token_count", lambda: 2**20)  # 2^20 tokens x d x 4 bytes
    with caplog.at_level(logging.INFO):
        assert cache_for_stage(model, store, 64, "theta") is None
    assert "encoder cache off" in caplog.text and "encoder_cache_mb is 64" in caplog.text
    assert isinstance(cache_for_stage(model, store, 4 * model.d_model, "theta"), EncoderCache)
