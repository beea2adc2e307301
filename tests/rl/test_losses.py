"""Losses and learned reward (DESIGN §2.3–§2.8) against slow token-by-token references.

Every test runs for each model variant (``helpers.models.FAMILY_VARIANTS``): T5, the causal Llama,
Qwen2 and GPT-2 shapes with full fine-tuning, and Llama with LoRA adapters."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers.models import FAMILY_VARIANTS, annotate, load, make_batch, make_checkpoint
from helpers.numeric import assert_close_f32, f32_tolerance

from bcoder_core.errors import BcoderError
from bcoder_core.model.qmodel import PHI_HEAD_INIT_BIAS
from bcoder_core.rl import losses
from bcoder_core.rl.bounds import R_MAX, bound
from bcoder_core.rl.losses import (
    advantages_from_logits,
    ckpt_columns,
    gather_advantage,
    learned_rewards,
    phi_loss,
    program_scores,
    sft_loss,
    theta_loss,
    token_logit_stats,
    token_masks,
)

GAMMA = 0.999
"""γ of every loss here (the paper's)."""


@pytest.fixture(scope="module", params=FAMILY_VARIANTS)
def ckpt(request, tmp_path_factory):
    """A tiny random checkpoint: every loss here is compared with a slow reference on its outputs."""
    return make_checkpoint(tmp_path_factory.mktemp("losses"), variant=request.param)


@pytest.fixture(scope="module")
def phi_dir(ckpt, tmp_path_factory):
    """A φ with a non-trivial head and decoder (as after some training)."""
    phi = load(ckpt, "phi")
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in phi.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    out = tmp_path_factory.mktemp("phi") / "phi"
    phi.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def batch(ckpt, phi_dir):
    return annotate(ckpt, make_batch(), phi_path=phi_dir)


def enc_of(model, batch):
    return model.encode(batch["input_ids"], batch["attention_mask"])


# ----------------------------------------------------------------------------------- references
def rows(batch):
    """Per program: its real labels (python list)."""
    out = []
    for row in batch["labels"].tolist():
        out.append([a for a in row if a != -100])
    return out


def ref_phi_loss(u_phi, batch, gamma):
    """Eq. 12, token by token: [r_t + γ V(s_{t+1}) − (A_ckpt(s_t,a_t) + V(s_t))]², V(s_{T+1}) = 0."""
    total, count = 0.0, 0
    for b, labels in enumerate(rows(batch)):
        n = len(labels)
        for t in range(n):
            v_t = R_MAX - math.log(math.cosh(u_phi[b][t] / 2))
            v_next = R_MAX - math.log(math.cosh(u_phi[b][t + 1] / 2)) if t + 1 < n else 0.0
            r = float(batch["reward"][b]) if t == n - 1 else 0.0
            pred = float(batch["ckpt_adv"][b, t]) + v_t
            total += (r + gamma * v_next - pred) ** 2
            count += 1
    return total / count


def ref_theta_loss(logits, u_r, batch, gamma, beta_adv, beta_ce, alpha=1.0):
    """Eq. 8/15/17 token by token with python floats, bootstrapping with the checkpoint's greedy token."""
    lq, nq, ladv, lce, ngt = 0.0, 0, 0.0, 0.0, 0
    for b, labels in enumerate(rows(batch)):
        n = len(labels)

        def v(t, b=b):
            return R_MAX - math.log(math.cosh((float(u_r[b, t]) + float(batch["v_phi"][b, t])) / 2))

        def adv(t, a, b=b):
            row = logits[b, t].tolist()
            return alpha * (row[a] - max(row))

        for t in range(n):
            a = labels[t]
            q = adv(t, a) + v(t)
            if t + 1 < n:
                greedy = int(batch["ckpt_greedy"][b, t + 1])
                q_next = adv(t + 1, greedy) + v(t + 1)
            else:
                q_next = 0.0
            r = float(batch["reward"][b]) if t == n - 1 else 0.0
            lq += (r + gamma * q_next - q) ** 2
            nq += 1
            if bool(batch["is_gt"][b]):
                row = logits[b, t].tolist()
                lse = math.log(sum(math.exp(x) for x in row))
                ladv += abs(adv(t, a))
                lce += lse - row[a]
                ngt += 1
    l_q = lq / nq
    l_adv = ladv / ngt if ngt else 0.0
    l_ce = lce / ngt if ngt else 0.0
    return l_q + beta_adv * l_adv + beta_ce * l_ce, l_q, l_adv, l_ce


def ref_rewards(logits, u_r, u_phi, batch, gamma):
    out = torch.zeros(batch["labels"].shape, dtype=torch.float64)
    for b, labels in enumerate(rows(batch)):
        n = len(labels)
        vs = [R_MAX - math.log(math.cosh((float(u_r[b, t]) + float(u_phi[b, t])) / 2)) for t in range(n)]
        for t in range(n):
            row = logits[b, t].tolist()
            q = row[labels[t]] - max(row) + vs[t]
            out[b, t] = q - gamma * (vs[t + 1] if t + 1 < n else 0.0)
    return out


# ----------------------------------------------------------------------------------- pieces
@pytest.mark.parametrize("chunk", [1 << 25, 7 * 97])
def test_token_logit_stats_values_and_gradients(monkeypatch, chunk):
    monkeypatch.setattr(losses, "_CHUNK_ELEMENTS", chunk)  # several chunks of rows
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 11, 97, generator=g, dtype=torch.float64, requires_grad=True)
    a = torch.randint(0, 97, (3, 11), generator=g)
    gr = torch.randint(0, 97, (3, 11), generator=g)
    gr[0, :3] = a[0, :3]  # action = greedy
    a[1, :2] = logits[1, :2].argmax(-1)  # action = argmax
    w = torch.randn(4, 3, 11, generator=g, dtype=torch.float64)
    outs = token_logit_stats(logits, a, gr)
    ref = (
        logits.gather(-1, a[..., None])[..., 0],
        logits.gather(-1, gr[..., None])[..., 0],
        logits.max(-1).values,
        torch.logsumexp(logits, -1),
    )
    for o, r in zip(outs, ref, strict=True):
        assert o.dtype == torch.float64
        torch.testing.assert_close(o, r)
    (grad,) = torch.autograd.grad(sum((o.double() * wi).sum() for o, wi in zip(outs, w, strict=True)), logits)
    (grad_ref,) = torch.autograd.grad(sum((r * wi).sum() for r, wi in zip(ref, w, strict=True)), logits)
    torch.testing.assert_close(grad, grad_ref)
    small = torch.randn(1, 3, 7, generator=g, dtype=torch.float64, requires_grad=True)
    sa, sg = a[:1, :3] % 7, gr[:1, :3] % 7
    assert torch.autograd.gradcheck(lambda x: torch.stack(token_logit_stats(x, sa, sg)), (small,))
    no_lse = token_logit_stats(logits, a, gr, need_lse=False)
    assert (no_lse[3] == 0).all()


def test_token_logit_stats_bf16():
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(2, 5, 301, generator=g) * 3).bfloat16().requires_grad_()
    a = torch.randint(0, 301, (2, 5), generator=g)
    l_a, _, _, lse = token_logit_stats(logits, a)
    assert l_a.dtype == torch.float32
    torch.testing.assert_close(lse, torch.logsumexp(logits.float(), -1), rtol=1e-5, atol=1e-5)
    (lse - l_a).sum().backward()
    assert logits.grad.dtype == torch.bfloat16
    ref = torch.softmax(logits.float(), -1) - F.one_hot(a, 301)
    torch.testing.assert_close(logits.grad.float(), ref, rtol=2e-2, atol=2e-2)


def test_advantage_helpers_and_annotation_columns():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 4, 13, generator=g)
    labels = torch.tensor([[3, 5, 2, -100], [7, 2, -100, -100]])
    adv_full = advantages_from_logits(logits)
    assert (adv_full <= 0).all() and (adv_full.max(-1).values == 0).all()
    adv, greedy = ckpt_columns(logits, labels)
    assert torch.equal(greedy[labels != -100], logits.argmax(-1)[labels != -100])
    assert (greedy[labels == -100] == 0).all() and (adv[labels == -100] == 0).all()
    for b in range(2):
        for t in range(4):
            if labels[b, t] != -100:
                assert adv[b, t].item() == pytest.approx(adv_full[b, t, labels[b, t]].item())
    torch.testing.assert_close(gather_advantage(logits, labels), adv)
    assert (gather_advantage(logits, greedy)[labels != -100] == 0).all()  # A(s, greedy) = 0


def test_token_masks():
    labels = torch.tensor([[5, 6, 2], [7, 2, -100], [2, -100, -100]])
    m = token_masks(labels, torch.tensor([1.0, -0.3, -1.0]))
    assert m["mask"].tolist() == [[1, 1, 1], [1, 1, 0], [1, 0, 0]]
    assert m["next"].tolist() == [[1, 1, 0], [1, 0, 0], [0, 0, 0]]
    assert m["last"].tolist() == [[0, 0, 1], [0, 1, 0], [1, 0, 0]]
    assert m["r"].tolist() == [[0, 0, 1.0], [0, pytest.approx(-0.3), 0], [-1.0, 0, 0]]


# ----------------------------------------------------------------------------------- losses
def test_sft_loss_is_token_mean_cross_entropy(ckpt, batch):
    model = load(ckpt, "sft").eval()
    loss, stats = sft_loss(model, batch)
    with torch.no_grad():
        logits = model.sft_logits(batch["input_ids"], batch["attention_mask"], batch["labels"])
    ref = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(loss, ref)
    assert stats["tokens"] == float((batch["labels"] != -100).sum())


@pytest.mark.parametrize("gamma", [GAMMA, 0.5, 1.0])
def test_phi_loss_matches_token_by_token_reference(ckpt, phi_dir, batch, gamma):
    model = load(ckpt, "phi", phi_path=phi_dir).eval()
    loss, stats = phi_loss(model, batch, gamma)
    with torch.no_grad():
        u = model.phi_values(enc_of(model, batch), batch["attention_mask"], batch["labels"]).double()
    assert loss.item() == pytest.approx(ref_phi_loss(u.tolist(), batch, gamma), rel=1e-5)
    assert stats["loss"] == pytest.approx(loss.item()) and stats["loss_v"] == stats["loss"]
    assert stats["v_mean"] <= R_MAX and stats["adv_mean"] <= 0
    assert set(stats) == {"loss", "loss_v", "q_mean", "v_mean", "adv_mean", "tokens", "gt_tokens"}
    assert all(isinstance(v, float) for v in stats.values())


def test_phi_learns_from_its_initialisation(ckpt, batch):
    """The head starts at u = PHI_HEAD_INIT_BIAS (not the stationary u = 0): gradients flow, TD error falls."""
    model = load(ckpt, "phi").train()
    # programs the checkpoint would write itself (A_ckpt ≈ 0) that fail: V_φ must come down from R_max
    batch = {
        **batch,
        "ckpt_adv": torch.zeros_like(batch["ckpt_adv"]),
        "reward": torch.tensor([-1.0, -0.6, -0.3, 1.0]),
    }
    loss, stats = phi_loss(model, batch, GAMMA)
    expected_v = R_MAX - math.log(math.cosh(PHI_HEAD_INIT_BIAS / 2))
    assert stats["v_mean"] == pytest.approx(expected_v, abs=f32_tolerance(expected_v))
    init = [[PHI_HEAD_INIT_BIAS] * batch["labels"].shape[1] for _ in range(batch["labels"].shape[0])]
    assert loss.item() == pytest.approx(ref_phi_loss(init, batch, GAMMA), rel=1e-5)
    loss.backward()
    assert model.phi_head.bias.grad.abs().item() > 0 and model.phi_head.weight.grad.abs().sum() > 0
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=3e-3, weight_decay=0.05)
    first = loss.item()
    for _ in range(40):
        opt.step()
        opt.zero_grad()
        loss, _ = phi_loss(model, batch, GAMMA)
        loss.backward()
    assert loss.item() < 0.5 * first
    head = {id(p) for p in model.phi_head.parameters()}
    network = [p for p in model.trainable_parameters() if id(p) not in head]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in network)


def _trained_theta(ckpt, seed=5, scale=0.05):
    model = load(ckpt, "theta").eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


@pytest.mark.parametrize(
    ("gamma", "beta_adv", "beta_ce", "gt"),
    [
        (GAMMA, 0.1, 0.5, (True, False, True, False)),
        (0.9, 0.3, 0.0, (True, True, True, True)),
        (1.0, 0.1, 0.5, (False, False, False, False)),  # no ground truth: L_adv = L_ce = 0
    ],
)
def test_theta_loss_matches_token_by_token_reference(ckpt, batch, gamma, beta_adv, beta_ce, gt):
    model = _trained_theta(ckpt)
    b = {**batch, "is_gt": torch.tensor(gt)}
    loss, stats = theta_loss(model, b, gamma, beta_adv, beta_ce)
    with torch.no_grad():
        logits, u_r = model.theta_outputs(enc_of(model, b), b["attention_mask"], b["labels"])
    total, l_q, l_adv, l_ce = ref_theta_loss(logits.double(), u_r.double(), b, gamma, beta_adv, beta_ce)
    assert loss.item() == pytest.approx(total, rel=1e-5)
    assert stats["loss_q"] == pytest.approx(l_q, rel=1e-5)
    assert stats["loss_adv"] == pytest.approx(l_adv, rel=1e-5, abs=1e-9)
    if beta_ce:
        assert stats["loss_ce"] == pytest.approx(l_ce, rel=1e-5, abs=1e-9)
    else:
        assert "loss_ce" not in stats  # not computed, not reported
    if not any(gt):
        assert stats["loss_adv"] == 0.0 and stats["loss_ce"] == 0.0 and stats["gt_tokens"] == 0.0
    assert set(stats) - {"loss_ce"} == {"loss", "loss_q", "loss_adv", "q_mean", "v_mean", "adv_mean", "tokens",
                                        "gt_tokens"}  # fmt: skip
    assert stats["adv_mean"] <= 0 and stats["v_mean"] <= R_MAX


def test_theta_loss_gradient_matches_reference_autograd(ckpt, batch):
    """The fused per-token path gives the same gradients as a plain autograd formulation."""
    model = _trained_theta(ckpt)
    loss, _ = theta_loss(model, batch, GAMMA, 0.1, 0.5)
    grads = torch.autograd.grad(loss, model.trainable_parameters())

    enc = enc_of(model, batch)
    logits, u_r = model.theta_outputs(enc, batch["attention_mask"], batch["labels"])
    m = token_masks(batch["labels"], batch["reward"])
    adv_all = logits - logits.max(-1, keepdim=True).values
    v = bound(u_r + batch["v_phi"])
    q = adv_all.gather(-1, m["safe"][..., None])[..., 0] + v
    qg = adv_all.gather(-1, batch["ckpt_greedy"][..., None])[..., 0] + v
    nxt = torch.zeros_like(qg)
    nxt[:, :-1] = qg[:, 1:]
    target = m["r"] + GAMMA * (nxt * m["next"]).detach()
    mask, gt = m["mask"].float(), (m["mask"] & batch["is_gt"][:, None]).float()
    l_q = (((target - q) ** 2) * mask).sum() / mask.sum()
    logp = torch.log_softmax(logits, -1).gather(-1, m["safe"][..., None])[..., 0]
    l_adv = (-(q - v) * gt).sum() / gt.sum()
    l_ce = (-logp * gt).sum() / gt.sum()
    ref = l_q + 0.1 * l_adv + 0.5 * l_ce
    torch.testing.assert_close(loss, ref)
    ref_grads = torch.autograd.grad(ref, model.trainable_parameters())
    for a, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-6)


def test_only_intended_parameters_get_gradients(ckpt, phi_dir, batch):
    theta = load(ckpt, "theta").train()
    loss, _ = theta_loss(theta, batch, GAMMA, 0.1, 0.5)
    loss.backward()
    got = {n for n, p in theta.named_parameters() if p.grad is not None}
    want = {n for n, p in theta.named_parameters() if any(p is q for q in theta.trainable_parameters())}
    assert got == want
    assert theta.h2.weight.grad is None and theta.h1.weight.grad.abs().sum() > 0
    if ckpt.family == "t5":
        assert all(n.startswith(("theta_decoder.block", "theta_decoder.final", "lm_head", "h1")) for n in got)
        assert theta.shared.weight.grad is None
        assert all(p.grad is None for p in theta.encoder.parameters())
        assert theta.lm_head.weight.grad.abs().sum() > 0
        # the theta step runs neither the checkpoint's decoder nor φ's: they are not even loaded
        assert theta.ckpt_decoder is None and theta.phi_decoder is None
    elif ckpt.lora:  # only θ's adapter and h1 train; the base (embeddings, LM head) stays frozen
        assert all((".lora_" in n and ".theta." in n) or n.startswith("h1.") for n in got)
        assert theta.base_lm.get_output_embeddings().weight.grad is None
    else:  # full fine-tuning: the whole language model trains, embeddings and LM head included
        assert theta.base_lm.get_input_embeddings().weight.grad is not None
        assert not theta.has_phi

    phi = load(ckpt, "phi", phi_path=phi_dir).train()
    loss, _ = phi_loss(phi, batch, GAMMA)
    loss.backward()
    got = {n for n, p in phi.named_parameters() if p.grad is not None}
    want = {n for n, p in phi.named_parameters() if any(p is q for q in phi.trainable_parameters())}
    assert got == want and any(n.startswith("phi_head") for n in got)
    if ckpt.family == "t5":
        assert all(n.startswith(("phi_decoder.block", "phi_decoder.final", "phi_head")) for n in got)
        assert phi.shared.weight.grad is None and all(p.grad is None for p in phi.encoder.parameters())
        assert phi.ckpt_decoder is None and phi.theta_decoder is None
    elif ckpt.lora:
        assert all((".lora_" in n and ".phi." in n) or n.startswith("phi_head.") for n in got)
    else:  # φ is a network + value head: no LM head is loaded
        assert phi.lm is None and phi.h1 is None


def test_q_theta_equals_q_phi_when_theta_starts(ckpt, phi_dir, batch):
    """θ from the checkpoint, h1 = h2, V_θ = bound(0 + u_φ): Q_θ(s,a) = A_ckpt(s,a) + V_φ(s) everywhere."""
    theta = load(ckpt, "theta").eval()
    with torch.no_grad():
        logits, u_r = theta.theta_outputs(enc_of(theta, batch), batch["attention_mask"], batch["labels"])
    assert (u_r == 0).all()
    mask = batch["labels"] != -100
    q_theta = gather_advantage(logits, batch["labels"]) + bound(u_r + batch["v_phi"])
    q_phi = batch["ckpt_adv"] + bound(batch["v_phi"])
    assert_close_f32(q_theta[mask], q_phi[mask])
    # and over all actions, not only the taken ones: the same policy softmax(ℓ_ckpt)
    ann = load(ckpt, "annotate").eval()
    ckpt_logits = ann.ckpt_logits(enc_of(ann, batch), batch["attention_mask"], batch["labels"])
    assert_close_f32(advantages_from_logits(logits), advantages_from_logits(ckpt_logits))


def test_advantage_and_value_bounds_hold_during_training(ckpt, batch):
    torch.manual_seed(0)
    model = load(ckpt, "theta").train()
    opt = torch.optim.SGD(model.trainable_parameters(), lr=0.5)
    for step in range(4):
        b = {**batch, "v_phi": torch.randn(batch["labels"].shape) * 5}
        loss, _ = theta_loss(model, b, GAMMA, 0.1, 0.5)
        opt.zero_grad()
        loss.backward()
        # large steps, but finite: a whole causal LM under SGD at lr 0.5 would overflow to NaN
        torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            logits, u_r = model.theta_outputs(enc_of(model, b), b["attention_mask"], b["labels"])
        assert (advantages_from_logits(logits) <= 0).all(), step
        assert (bound(u_r + b["v_phi"]) <= R_MAX).all(), step
        assert (u_r != 0).any()  # h1 moved away from h2


# ----------------------------------------------------------------------------------- learned reward
@pytest.mark.parametrize("gamma", [GAMMA, 1.0])
def test_learned_rewards_reference_sum_and_telescoping(ckpt, batch, gamma):
    model = _trained_theta(ckpt)
    r = learned_rewards(model, batch, gamma)
    with torch.no_grad():
        logits, u_r = model.theta_outputs(enc_of(model, batch), batch["attention_mask"], batch["labels"])
    ref = ref_rewards(logits.double(), u_r.double(), batch["v_phi"].double(), batch, gamma)
    torch.testing.assert_close(r.double(), ref, rtol=1e-5, atol=1e-5)
    assert (r[batch["labels"] == -100] == 0).all()
    scores = program_scores(model, batch, gamma)
    torch.testing.assert_close(scores, r.sum(1))
    # Σ_t r̃_t = Σ_t A(s_t,a_t) + V(s_0) + (1 − γ) Σ_{t≥1} V(s_t)   (V(s_{T+1}) = 0)
    mask = batch["labels"] != -100
    adv = gather_advantage(logits, batch["labels"]).double()
    v = bound(u_r + batch["v_phi"]).double() * mask
    tele = (adv * mask).sum(1) + v[:, 0] + (1 - gamma) * v[:, 1:].sum(1)
    torch.testing.assert_close(scores.double(), tele, rtol=1e-5, atol=1e-5)


def test_learned_rewards_computes_phi_on_the_fly_in_eval(ckpt, phi_dir, batch, tmp_path):
    trained = _trained_theta(ckpt)
    trained.save_pretrained(tmp_path / "theta")
    with_col = learned_rewards(trained, batch, GAMMA)
    ev = load(tmp_path / "theta", "eval", phi_path=phi_dir).eval()
    no_col = {k: v for k, v in batch.items() if k != "v_phi"}
    torch.testing.assert_close(learned_rewards(ev, no_col, GAMMA), with_col, rtol=1e-5, atol=1e-6)
    bare = load(tmp_path / "theta", "eval")
    with pytest.raises(BcoderError, match="V_phi"):
        learned_rewards(bare, no_col, GAMMA)


def test_precomputed_encoder_states_give_the_same_losses(ckpt, phi_dir, batch):
    theta = _trained_theta(ckpt)
    enc = enc_of(theta, batch)
    cached = {k: v for k, v in batch.items() if k != "input_ids"} | {"enc": enc}
    torch.testing.assert_close(
        theta_loss(theta, cached, GAMMA, 0.1, 0.5)[0], theta_loss(theta, batch, GAMMA, 0.1, 0.5)[0]
    )
    torch.testing.assert_close(learned_rewards(theta, cached, GAMMA), learned_rewards(theta, batch, GAMMA))
    phi = load(ckpt, "phi", phi_path=phi_dir)
    torch.testing.assert_close(phi_loss(phi, cached, GAMMA)[0], phi_loss(phi, batch, GAMMA)[0])


def test_batch_errors(ckpt, batch):
    model = load(ckpt, "theta")
    with pytest.raises(BcoderError, match="v_phi"):
        theta_loss(model, {k: v for k, v in batch.items() if k != "v_phi"}, GAMMA, 0.1, 0.5)
    left = dict(batch)
    labels = batch["labels"].clone()
    labels[0, 0] = -100
    left["labels"] = labels
    with pytest.raises(BcoderError, match="right-padded"):
        theta_loss(model, left, GAMMA, 0.1, 0.5)
