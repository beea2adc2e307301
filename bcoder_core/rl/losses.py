"""Losses of the three training stages and the learned reward (DESIGN §2.2–§2.8).

Batches (``rl/transitions.py``): ``input_ids [B,S]``, ``attention_mask [B,S]``, ``labels [B,T]``
(program tokens ending in EOS, right-padded with −100), ``reward [B]``, ``is_gt [B] bool``,
``ckpt_adv [B,T]``, ``ckpt_greedy [B,T] long``, ``v_phi [B,T]`` (raw u_φ), and optionally
``enc [B,S,d]``: the frozen encoder's states of the prompts, precomputed (e.g. once per problem;
DESIGN §2.6) — then ``input_ids`` is not read. Position t is the state s_t = (D, w_<t) with action a_t = labels[t]; the last real token (the EOS) is step T, the only one
with a reward (r_T = reward); there is no state after it: V(s_{T+1}) = Q(s_{T+1}, ·) = 0.

- ``phi_loss`` (Eq. 12): [r_t + γ·sg(V_φ(s_{t+1})) − (A_ckpt(s_t,a_t) + V_φ(s_t))]², token mean;
  V_φ = bound(u_φ); A_ckpt comes from the ``ckpt_adv`` column. Runs the φ decoder only.
- ``theta_loss`` (Eq. 8/15/17): L_Q + β_adv·L_adv + β_ce·L_ce with
  A_θ = α(ℓ_θ − max ℓ_θ), V_θ = bound(u^r + u_φ) (u_φ from the ``v_phi`` column),
  Q_θ = A_θ + V_θ, target r_t + γ·sg(Q_θ(s_{t+1}, â_{t+1})), â_{t+1} = ``ckpt_greedy[t+1]``
  (the checkpoint's greedy token: the conservative operator B^q, Eq. 14); L_Q over every token,
  L_adv = mean |A_θ(s*_t, a*_t)| and L_ce = mean −log softmax(ℓ_θ)(a*_t) over ground-truth tokens
  only (0 when the batch has none). Runs the θ decoder and the frozen encoder only.
- ``learned_rewards``: r̃_t = Q_θ(s_t,a_t) − γ·V_θ(s_{t+1}) (Eq. 18–20), V_θ(s_{T+1}) = 0.

Per-token numbers from the [B,T,V] logits (ℓ(a_t), ℓ(â), max ℓ, logsumexp ℓ) are computed by one
fused autograd function (``token_logit_stats``) that reads the logits in row chunks and writes
exactly one [B,T,V] gradient in backward — no log-softmax, one-hot or advantage tensor of the full
vocabulary is kept. Loss arithmetic is in fp32 whatever the autocast dtype.

Each loss returns ``(loss, stats)``; ``stats`` is a dict of floats: ``loss`` and every term
``loss_<term>`` (theta: ``loss_q``, ``loss_adv``, and ``loss_ce`` unless β_ce = 0; phi: ``loss_v``), ``q_mean``, ``v_mean``, ``adv_mean`` (token means over the batch), ``tokens`` and
``gt_tokens``. They are read from the device with a single synchronisation.

**A micro-batch of a global batch** carries ``loss_norm`` = ``{"tokens": N, "gt_tokens": N_gt}``
(``train.step.train_step`` sets it): every token mean divides by those counts of the whole global
batch (per rank, DDP averaging the ranks) instead of the micro-batch's own, so the micro-batches'
losses and mean statistics *sum* to the token means of the global batch, exactly as one big batch
would give them, however the programs are grouped (DESIGN §2.7). The counts stay per batch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bcoder_core.errors import BcoderError
from bcoder_core.rl.bounds import R_MAX, bound

__all__ = [
    "advantages_from_logits",
    "ckpt_columns",
    "gather_advantage",
    "learned_rewards",
    "phi_loss",
    "program_scores",
    "sft_loss",
    "theta_loss",
    "token_logit_stats",
    "token_masks",
]

_CHUNK_ELEMENTS = 1 << 25  # rows per chunk × vocabulary ≈ 32M (128 MiB of fp32 scratch)


# -------------------------------------------------------------------------------------- pieces
class _TokenLogitStats(torch.autograd.Function):
    """(ℓ[a], ℓ[g], max ℓ, logsumexp ℓ) per row of flat logits [N, V]; outputs [N] in fp32 (fp64 for fp64).

    Backward writes a single gradient buffer: g_a·1[a] + g_g·1[g] + g_max·1[argmax] + g_lse·softmax.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, actions: Tensor, greedy: Tensor, need_lse: bool) -> tuple[Tensor, ...]:
        n, v = logits.shape
        acc = torch.promote_types(logits.dtype, torch.float32)  # fp32 for bf16/fp16, fp64 stays fp64
        l_max, argmax = logits.max(dim=-1)
        l_a = logits.gather(1, actions[:, None]).squeeze(1).to(acc)
        l_g = logits.gather(1, greedy[:, None]).squeeze(1).to(acc)
        l_max_acc = l_max.to(acc)
        lse = torch.zeros(n, dtype=acc, device=logits.device)
        if need_lse:  # lse = max + log Σ exp(ℓ − max), reusing the max already taken
            step = max(1, _CHUNK_ELEMENTS // v)
            for i in range(0, n, step):
                m = l_max_acc[i : i + step, None]
                lse[i : i + step] = (logits[i : i + step].to(acc) - m).exp_().sum(-1).log_().add_(m[:, 0])
        ctx.need_lse = need_lse
        ctx.save_for_backward(logits, actions, greedy, argmax, lse)
        return l_a, l_g, l_max_acc, lse

    @staticmethod
    def backward(ctx, g_a: Tensor, g_g: Tensor, g_max: Tensor, g_lse: Tensor):
        logits, actions, greedy, argmax, lse = ctx.saved_tensors
        n, v = logits.shape
        acc = lse.dtype
        grad = torch.empty_like(logits)
        step = max(1, _CHUNK_ELEMENTS // v)
        for i in range(0, n, step):
            sl = slice(i, i + step)
            # work in place in the gradient buffer when it has the accumulation dtype (fp32/fp64)
            in_place = grad.dtype == acc
            chunk = grad[sl] if in_place else torch.empty(logits[sl].shape, dtype=acc, device=grad.device)
            if ctx.need_lse:
                torch.sub(logits[sl].to(acc), lse[sl, None], out=chunk)
                chunk.exp_().mul_(g_lse[sl, None])
            else:
                chunk.zero_()
            chunk.scatter_add_(1, actions[sl, None], g_a[sl, None].to(acc))
            chunk.scatter_add_(1, greedy[sl, None], g_g[sl, None].to(acc))
            chunk.scatter_add_(1, argmax[sl, None], g_max[sl, None].to(acc))
            if not in_place:
                grad[sl] = chunk
        return grad, None, None, None


def token_logit_stats(
    logits: Tensor, actions: Tensor, greedy: Tensor | None = None, *, need_lse: bool = True
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-token ``(ℓ(a), ℓ(g), max ℓ, logsumexp ℓ)`` of ``actions``' shape [..], in fp32 (fp64 for fp64).

    ``logits`` [.., V]; ``actions``/``greedy`` [..] long, valid ids (replace −100 first);
    ``greedy=None`` uses ``actions``. With ``need_lse=False`` the logsumexp is 0 (not computed).
    Differentiable with one [.., V] gradient buffer.
    """
    shape = actions.shape
    v = logits.shape[-1]
    flat = logits.reshape(-1, v)
    a = actions.reshape(-1)
    g = a if greedy is None else greedy.reshape(-1)
    out = _TokenLogitStats.apply(flat, a, g, bool(need_lse))
    return tuple(t.view(shape) for t in out)  # type: ignore[return-value]


def advantages_from_logits(logits: Tensor, alpha: float = 1.0) -> Tensor:
    """A(s, ·) = α(ℓ(s, ·) − max ℓ(s, ·)) ≤ 0, the full [.., V] tensor (small batches, tests)."""
    return alpha * (logits - logits.max(dim=-1, keepdim=True).values)


def gather_advantage(logits: Tensor, actions: Tensor, alpha: float = 1.0) -> Tensor:
    """A(s_t, a_t) = α(ℓ(s_t, a_t) − max ℓ(s_t, ·)) [..] for ``actions`` [..] (−100 allowed → 0)."""
    valid = actions != -100
    safe = actions.masked_fill(~valid, 0)
    l_a = logits.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    adv = alpha * (l_a - logits.max(dim=-1).values)
    return adv.masked_fill(~valid, 0.0)


@torch.no_grad()
def ckpt_columns(ckpt_logits: Tensor, labels: Tensor, alpha: float = 1.0) -> tuple[Tensor, Tensor]:
    """The annotation columns of DESIGN §2.6 from the checkpoint's logits [B, T, V].

    Returns ``ckpt_adv`` [B, T] fp32 = A_ckpt(s_t, a_t) (0 on padding) and ``ckpt_greedy`` [B, T]
    long = argmax ℓ_ckpt(s_t, ·) (``0`` on padding).
    """
    valid = labels != -100
    l_max, greedy = ckpt_logits.max(dim=-1)
    l_a = ckpt_logits.gather(-1, labels.masked_fill(~valid, 0).unsqueeze(-1)).squeeze(-1)
    adv = (alpha * (l_a.float() - l_max.float())).masked_fill_(~valid, 0.0)
    return adv, greedy.masked_fill_(~valid, 0)


def token_masks(labels: Tensor, reward: Tensor | None = None) -> dict[str, Tensor]:
    """Masks of a right-padded label batch [B, T].

    ``mask``: real tokens; ``next``: real tokens that have a successor (t+1 < T_b); ``last``: the
    last real token; ``safe``: labels with −100 → 0; ``r``: the per-token reward (``reward`` [B]
    at the last token, else 0) when ``reward`` is given.
    """
    mask = labels != -100
    nxt = torch.zeros_like(mask)
    nxt[:, :-1] = mask[:, 1:]
    nxt &= mask
    last = mask & ~nxt
    out = {"mask": mask, "next": nxt, "last": last, "safe": labels.masked_fill(~mask, 0)}
    if reward is not None:
        out["r"] = last.float() * reward.float()[:, None]
    return out


def _shift_left(x: Tensor, nxt: Tensor) -> Tensor:
    """x[:, t+1] where t has a successor, else 0 (V(s_{T+1}) = 0)."""
    out = torch.zeros_like(x)
    out[:, :-1] = x[:, 1:]
    return out * nxt


def _masked_mean(x: Tensor, mask: Tensor, denom: float | None = None) -> Tensor:
    """Σ x over ``mask`` divided by ``denom``, or by the mask's count when ``denom`` is None."""
    m = mask.to(x.dtype)
    return (x * m).sum() / (m.sum().clamp_min(1.0) if denom is None else denom)


def _norm(batch: dict[str, Any], key: str) -> float | None:
    """The denominator of a token mean over a whole global batch (``loss_norm[key]``, set by
    ``train_step`` on each micro-batch), or None: the mean is over this batch's own tokens."""
    norm = batch.get("loss_norm")
    return None if norm is None else float(norm[key])


def _check_contiguous(labels: Tensor, masks: dict[str, Tensor]) -> None:
    # Right padding: every row is real tokens, then −100 only. (One cheap reduction.)
    if bool((masks["mask"][:, 1:] & ~masks["mask"][:, :-1]).any()):
        raise BcoderError("batch labels must be right-padded (-100 only after the last real token)")


def _stats(**values: Tensor | float) -> dict[str, float]:
    keys = list(values)
    tensors = [
        v.detach().float().reshape(()) if torch.is_tensor(v) else torch.tensor(float(v))
        for v in values.values()
    ]
    device = next((t.device for t in tensors if t.device.type != "cpu"), torch.device("cpu"))
    flat = torch.stack([t.to(device) for t in tensors]).tolist()  # one device → host copy
    return dict(zip(keys, flat, strict=True))


def _batch(batch: dict[str, Any], *names: str) -> list[Tensor]:
    missing = [n for n in names if n not in batch]
    if missing:
        raise BcoderError(f"batch has no column {', '.join(missing)} (annotate the programs first)")
    return [batch[n] for n in names]


def _encode(m: Any, batch: dict[str, Any], encoder_cache: Any = None) -> Tensor:
    """The frozen encoder's states: the batch's precomputed ``enc`` [B,S,d] if present, else from
    ``encoder_cache`` (``train.encoder_cache``: each prompt encoded once per run) when the batch
    names its prompts (``prompt_keys``), else encoded now."""
    enc = batch.get("enc")
    if enc is not None:
        return enc
    input_ids, attention_mask = _batch(batch, "input_ids", "attention_mask")
    if encoder_cache is not None and "prompt_keys" in batch:
        return encoder_cache.encode(m, input_ids, attention_mask, batch["prompt_keys"])
    return m.encode(input_ids, attention_mask)


def _core(model: Any) -> Any:
    """The BCoderModel inside a DDP / wrapper (``.module``), or the model itself."""
    return getattr(model, "module", model)


# -------------------------------------------------------------------------------------- losses
def sft_loss(model: Any, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
    """Token-mean cross-entropy of the labels (stage sft: the full T5; stage theta: θ's head)."""
    m = _core(model)
    input_ids, attention_mask, labels = _batch(batch, "input_ids", "attention_mask", "labels")
    logits = m.sft_logits(input_ids, attention_mask, labels)
    masks = token_masks(labels)
    l_a, _, _, lse = token_logit_stats(logits, masks["safe"], need_lse=True)
    loss = _masked_mean(lse - l_a, masks["mask"], _norm(batch, "tokens"))
    return loss, _stats(loss=loss, loss_ce=loss, tokens=masks["mask"].sum())


def phi_loss(
    model: Any, batch: dict[str, Any], gamma: float, r_max: float = R_MAX, encoder_cache: Any = None
) -> tuple[Tensor, dict[str, float]]:
    """L_V(φ) of DESIGN §2.4 (paper Eq. 12): TD regression of Q_φ = A_ckpt + V_φ."""
    m = _core(model)
    attention_mask, labels, reward, ckpt_adv = _batch(batch, "attention_mask", "labels", "reward", "ckpt_adv")
    masks = token_masks(labels, reward)
    _check_contiguous(labels, masks)
    enc = _encode(m, batch, encoder_cache)
    u_phi = m.phi_values(enc, attention_mask, labels).float()
    v = bound(u_phi, r_max)
    q = ckpt_adv.float() + v
    target = masks["r"] + gamma * _shift_left(v.detach(), masks["next"])
    mask = masks["mask"]
    n = _norm(batch, "tokens")
    loss = _masked_mean((target - q) ** 2, mask, n)
    gt_tokens = (mask & batch["is_gt"].bool()[:, None]).sum() if "is_gt" in batch else 0
    return loss, _stats(
        loss=loss,
        loss_v=loss,
        q_mean=_masked_mean(q.detach(), mask, n),
        v_mean=_masked_mean(v.detach(), mask, n),
        adv_mean=_masked_mean(ckpt_adv.float(), mask, n),
        tokens=mask.sum(),
        gt_tokens=gt_tokens,
    )


def theta_loss(
    model: Any,
    batch: dict[str, Any],
    gamma: float,
    beta_adv: float,
    beta_ce: float,
    alpha: float = 1.0,
    r_max: float = R_MAX,
    beta_q: float = 1.0,
    encoder_cache: Any = None,
) -> tuple[Tensor, dict[str, float]]:
    """L_ft = β_q·L_Q + β_adv·L_adv + β_ce·L_ce of DESIGN §2.5 (paper Eq. 8, 15, 17).

    β_q is 1 in the paper; the L_ce-only ablation sets β_q = β_adv = 0 (L_Q is still reported).
    """
    m = _core(model)
    attention_mask, labels, reward, is_gt, greedy, u_phi = _batch(
        batch, "attention_mask", "labels", "reward", "is_gt", "ckpt_greedy", "v_phi"
    )
    masks = token_masks(labels, reward)
    _check_contiguous(labels, masks)
    mask, nxt = masks["mask"], masks["next"]
    gt = mask & is_gt.bool()[:, None]
    enc = _encode(m, batch, encoder_cache)
    logits, u_r = m.theta_outputs(enc, attention_mask, labels)
    l_a, l_g, l_max, lse = token_logit_stats(
        logits, masks["safe"], greedy.masked_fill(~mask, 0), need_lse=beta_ce != 0.0
    )
    v = bound(u_r.float() + u_phi.float(), r_max)
    adv = alpha * (l_a - l_max)  # A_θ(s_t, a_t) ≤ 0
    q = adv + v
    q_greedy = alpha * (l_g - l_max) + v  # Q_θ(s_t, â_t), â_t = checkpoint's greedy token
    target = masks["r"] + gamma * _shift_left(q_greedy.detach(), nxt)
    n, n_gt = _norm(batch, "tokens"), _norm(batch, "gt_tokens")
    loss_q = _masked_mean((target - q) ** 2, mask, n)
    loss_adv = _masked_mean(adv.abs(), gt, n_gt)
    terms = {"loss_q": loss_q, "loss_adv": loss_adv}
    loss = beta_q * loss_q + beta_adv * loss_adv
    if beta_ce != 0.0:  # the logsumexp is only computed when L_ce is part of the loss
        terms["loss_ce"] = _masked_mean(lse - l_a, gt, n_gt)
        loss = loss + beta_ce * terms["loss_ce"]
    return loss, _stats(
        loss=loss,
        **terms,
        q_mean=_masked_mean(q.detach(), mask, n),
        v_mean=_masked_mean(v.detach(), mask, n),
        adv_mean=_masked_mean(adv.detach(), mask, n),
        tokens=mask.sum(),
        gt_tokens=gt.sum(),
    )


# -------------------------------------------------------------------------------------- reward
@torch.no_grad()
def learned_rewards(
    model: Any, batch: dict[str, Any], gamma: float, alpha: float = 1.0, r_max: float = R_MAX
) -> Tensor:
    """Per-token learned reward r̃_t = Q_θ(s_t, a_t) − γ·V_θ(s_{t+1}) [B, T] fp32, 0 on padding.

    u_φ comes from the batch's ``v_phi`` column, or is computed by the model's φ (stage eval with
    ``phi_path``) when the column is absent. One teacher-forced pass of θ (and φ).
    """
    m = _core(model)
    attention_mask, labels = _batch(batch, "attention_mask", "labels")
    masks = token_masks(labels)
    _check_contiguous(labels, masks)
    enc = _encode(m, batch)
    logits, u_r = m.theta_outputs(enc, attention_mask, labels)
    if "v_phi" in batch:
        u_phi = batch["v_phi"]
    elif m.has_phi:
        u_phi = m.phi_values(enc, attention_mask, labels)
    else:
        raise BcoderError("learned rewards need V_phi: a v_phi column or a model loaded with phi_path")
    l_max = logits.max(dim=-1).values.float()
    l_a = logits.gather(-1, masks["safe"].unsqueeze(-1)).squeeze(-1).float()
    v = bound(u_r.float() + u_phi.float(), r_max)
    q = alpha * (l_a - l_max) + v
    r = q - gamma * _shift_left(v, masks["next"])
    return r * masks["mask"]


def program_scores(model: Any, batch: dict[str, Any], gamma: float, alpha: float = 1.0) -> Tensor:
    """R̃(W) = Σ_t r̃_t per program [B] (the ranking score, DESIGN §2.8)."""
    return learned_rewards(model, batch, gamma, alpha).sum(dim=1)
