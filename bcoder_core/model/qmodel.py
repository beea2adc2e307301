"""The B-Coder model of DESIGN §2.2 for any model family: θ_ckpt, φ and θ, and the parts they share.

A model family (``bcoder_core.model.family``) is the one place that knows an architecture; this
module holds what every family's model has in common:

- :class:`BCoderModel`, the base class and the front door: ``BCoderModel.from_pretrained(dir,
  stage=...)`` reads the checkpoint's ``config.json``, picks the family (T5 → ``model/t5.py``, a
  Hugging Face causal LM → ``model/causal.py``) and returns that family's model for the stage;
- the operations the losses, annotate, rank and sample call (:class:`QModel`), so a third family is
  one new module implementing them;
- the residual value heads h1, h2 of θ and φ's value head (same initialisation in every family),
  and the files they are saved in.

Each stage's model holds only the parts that stage needs (``ModelRole``):

=========  ===============================================  ===================================
stage      parts                                            trainable
=========  ===============================================  ===================================
sft        the whole language model                         everything
annotate   θ_ckpt (+ φ with ``phi_path``)                   nothing
phi        φ = network + value head (d → 1)                 φ (its adapter with LoRA) + head
theta      θ = network + LM head + residual heads h1, h2    θ (its adapter with LoRA) + h1
eval       θ (+ φ with ``phi_path``), for ranking           nothing
=========  ===============================================  ===================================

Conventions shared by every family: a batch's ``labels`` [B, T] are the program tokens (ending in
EOS, right-padded with −100); output position t belongs to the state s_t = (prompt, w_<t) and the
action a_t = labels[t]; every per-token output ([B, T] or [B, T, V]) is read at program positions
only — prompt positions never reach a loss.
"""

from __future__ import annotations

import math
import typing
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from bcoder_core.errors import BcoderError
from bcoder_core.model import files

__all__ = [
    "HEADS_WEIGHTS",
    "MODEL_ROLES",
    "PHI_CONFIG",
    "PHI_FORMAT",
    "PHI_HEAD_INIT_BIAS",
    "PHI_WEIGHTS",
    "BCoderModel",
    "ModelRole",
    "QModel",
    "load_phi",
]

ModelRole = Literal["sft", "annotate", "phi", "theta", "eval"]
"""What a loaded model is for: which parts it holds and which train (the ``stage=`` argument)."""
MODEL_ROLES: tuple[str, ...] = typing.get_args(ModelRole)
HEADS_WEIGHTS = "heads.safetensors"
PHI_WEIGHTS = "phi.safetensors"
PHI_CONFIG = "phi_config.json"
PHI_FORMAT = "bcoder-phi/1"
# u_φ at init (the "φ head" note in model/t5.py): V_φ = R_max − log cosh(0.05) ≈ R_max − 0.00125.
PHI_HEAD_INIT_BIAS = 0.1


@runtime_checkable
class QModel(Protocol):
    """What the losses (``rl/losses.py``), annotate, rank and the training loops call on a model.

    ``ctx`` is what :meth:`encode` returns for a prompt batch: the frozen encoder's states for T5
    (computed once per distinct prompt and shared), the left-aligned prompt tokens for a causal LM
    (whose prompt runs through each network). It supports ``ctx.index_select(0, rows)``.
    """

    stage: str
    alpha: float
    vocab_size: int
    pad_token_id: int
    family: str

    @property
    def has_phi(self) -> bool: ...

    def encode(self, input_ids: Tensor, attention_mask: Tensor) -> Any: ...

    def ckpt_logits(self, ctx: Any, attention_mask: Tensor, labels: Tensor) -> Tensor: ...

    def phi_values(self, ctx: Any, attention_mask: Tensor, labels: Tensor) -> Tensor: ...

    def theta_outputs(self, ctx: Any, attention_mask: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]: ...

    def sft_logits(self, input_ids: Tensor, attention_mask: Tensor, labels: Tensor) -> Tensor: ...

    def trainable_parameters(self, stage: str | None = None) -> list[nn.Parameter]: ...

    def value_head_parameters(self, stage: str | None = None) -> list[nn.Parameter]: ...

    def save_pretrained(self, path: str | Path, stage: str | None = None, tokenizer: Any = None) -> None: ...


class BCoderModel(nn.Module):
    """Base of every family's model (module docstring); ``from_pretrained`` picks the family."""

    family: str = ""

    def __init__(self, stage: ModelRole, *, alpha: float = 1.0) -> None:
        super().__init__()
        check_role(stage)
        self.stage: str = stage
        # The policy temperature θ was trained with; saved with the heads so that ranking scores
        # A_θ = α(ℓ_θ − max ℓ_θ) on the scale the value heads learned.
        self.alpha: float = float(alpha)
        self.phi_head: nn.Linear | None = None
        self.h1: nn.Linear | None = None
        self.h2: nn.Linear | None = None

    # ---------------------------------------------------------------------------------- building
    @classmethod
    def from_pretrained(cls, path: str | Path, *, stage: ModelRole, **kwargs: Any) -> BCoderModel:
        """``stage``'s model from a checkpoint directory (or URI / hub id) of any registered family.

        Called on a family's class, builds that family's model; on ``BCoderModel``, reads the
        family from the checkpoint's ``config.json`` first. ``kwargs``: ``phi_path``, ``dtype``,
        ``device``, ``dropout``, ``head_seed``, and (causal family) ``lora``.
        """
        if cls is not BCoderModel:
            raise NotImplementedError(f"{cls.__name__} must implement from_pretrained")
        from bcoder_core.model.family import family_for_checkpoint

        check_role(stage)
        local = resolve_dir(path)
        where = kwargs.pop("where", None) or path
        return (
            family_for_checkpoint(local, where=where)
            .model_class()
            .from_pretrained(local, stage=stage, where=where, **kwargs)
        )

    @classmethod
    def from_config(cls, config: Any, *, stage: ModelRole, **kwargs: Any) -> BCoderModel:
        """A randomly initialised model of ``config``'s shape (any registered family), for tests."""
        if cls is not BCoderModel:
            raise NotImplementedError(f"{cls.__name__} must implement from_config")
        from bcoder_core.model.family import family_for_config

        return family_for_config(config).model_class().from_config(config, stage=stage, **kwargs)

    # ---------------------------------------------------------------------------------- parts
    @property
    def has_phi(self) -> bool:
        """Whether φ is loaded (annotate's ``v_phi`` column, ranking without it)."""
        return self.phi_head is not None

    def _frozen_modules(self) -> list[nn.Module]:
        """Modules that stay in eval mode whatever ``train()`` says (frozen networks: no dropout)."""
        return []

    def train(self, mode: bool = True) -> BCoderModel:
        """As ``nn.Module.train``, but frozen parts always stay in eval mode (no dropout)."""
        super().train(mode)
        for m in self._frozen_modules():
            m.eval()
        return self

    def value_head_parameters(self, stage: str | None = None) -> list[nn.Parameter]:
        """The freshly initialised scalar value heads among ``stage``'s trainable parameters."""
        stage = stage or self.stage
        if stage == "phi" and self.phi_head is not None:
            return list(self.phi_head.parameters())
        if stage == "theta" and self.h1 is not None:
            return list(self.h1.parameters())
        return []

    def _freeze_all_but(self, stage: str) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        for p in self.trainable_parameters(stage):
            p.requires_grad_(True)

    # ---------------------------------------------------------------------------------- compute
    def forward(
        self, mode: str, input_ids: Tensor, attention_mask: Tensor, labels: Tensor, enc: Any = None
    ) -> dict[str, Tensor]:
        """One entry point for wrappers that need ``forward`` (DDP): mode sft|phi|theta|ckpt|eval.

        Returns a dict: sft/ckpt → ``logits``; phi → ``u_phi``; theta → ``logits``, ``u_r``;
        eval → ``logits``, ``u_r`` and, when φ is loaded, ``u_phi``.
        """
        if mode == "sft":
            return {"logits": self.sft_logits(input_ids, attention_mask, labels)}
        if enc is None:
            enc = self.encode(input_ids, attention_mask)
        if mode == "phi":
            return {"u_phi": self.phi_values(enc, attention_mask, labels)}
        if mode == "ckpt":
            return {"logits": self.ckpt_logits(enc, attention_mask, labels)}
        if mode in ("theta", "eval"):
            logits, u_r = self.theta_outputs(enc, attention_mask, labels)
            out = {"logits": logits, "u_r": u_r}
            if mode == "eval" and self.has_phi:
                out["u_phi"] = self.phi_values(enc, attention_mask, labels)
            return out
        raise BcoderError(f"model forward mode {mode!r}: expected sft, phi, theta, ckpt or eval")

    def residual_value(self, h: Tensor) -> Tensor:
        """u^r = h1(x) − h2(x) [..] from θ's last hidden states [.., d]."""
        # (W1 − W2)·x + (b1 − b2): one thin matmul; exactly 0 while h1 = h2; h2 gets no gradient.
        u_r = nn.functional.linear(
            h, self.h1.weight - self.h2.weight.detach(), self.h1.bias - self.h2.bias.detach()
        )
        return u_r.squeeze(-1)

    # ---------------------------------------------------------------------------------- heads
    def _make_heads(self, d_model: int, like: Tensor, state: dict[str, Tensor] | None, seed: int) -> None:
        """θ's residual value heads h1, h2: loaded from ``state``, else equal random weights."""
        h1, h2 = linear(d_model, 1, like=like), linear(d_model, 1, like=like)
        with torch.no_grad():
            if state is not None:
                try:
                    for name, head in (("h1", h1), ("h2", h2)):
                        head.weight.copy_(state[f"{name}.weight"])
                        head.bias.copy_(state[f"{name}.bias"])
                except (KeyError, RuntimeError) as exc:
                    raise BcoderError(f"{HEADS_WEIGHTS}: bad residual value heads ({exc})") from exc
            else:
                # Paper App. G.2: h1 and h2 start with the same (random) weights, so V^r = h1 − h2 = 0.
                g = torch.Generator().manual_seed(seed)
                lim = d_model**-0.5
                w = (torch.rand(1, d_model, generator=g, dtype=torch.float64) * 2 - 1) * lim
                for head in (h1, h2):
                    head.weight.copy_(w)
                    head.bias.zero_()
        self.h1, self.h2 = h1, h2

    def _make_phi_head(self, d_model: int, like: Tensor, state: dict[str, Tensor] | None) -> None:
        """φ's value head: zero weight and bias ``PHI_HEAD_INIT_BIAS``, or loaded from ``state``."""
        self.phi_head = linear(d_model, 1, like=like)
        with torch.no_grad():
            if state is None:
                nn.init.zeros_(self.phi_head.weight)
                nn.init.constant_(self.phi_head.bias, PHI_HEAD_INIT_BIAS)
                return
            try:
                self.phi_head.weight.copy_(state["head.weight"])
                self.phi_head.bias.copy_(state["head.bias"])
            except (KeyError, RuntimeError) as exc:
                raise BcoderError(f"{PHI_WEIGHTS}: bad value head ({exc})") from exc

    def _save_heads(self, out: Path) -> None:
        from safetensors.torch import save_file

        heads = {
            "h1.weight": self.h1.weight,
            "h1.bias": self.h1.bias,
            "h2.weight": self.h2.weight,
            "h2.bias": self.h2.bias,
        }
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in heads.items()},
            str(out / HEADS_WEIGHTS),
            metadata={"alpha": repr(self.alpha)},
        )


# -------------------------------------------------------------------------------------- helpers
def check_role(stage: str) -> None:
    if stage not in MODEL_ROLES:
        raise BcoderError(f"model stage {stage!r}: expected one of {', '.join(MODEL_ROLES)}")


def check_load(stage: str, phi_path: str | Path | None) -> None:
    """The arguments every family's ``from_pretrained`` refuses alike."""
    check_role(stage)
    if phi_path is not None and stage in ("sft", "theta"):
        raise BcoderError(
            f"model stage {stage}: phi_path is not used (theta reads V_phi from the annotated v_phi column)"
        )


def resolve_dir(path: str | Path) -> str:
    """A local directory for ``path``: local paths as they are, ``s3://`` artifacts fetched."""
    s = str(path)
    if s.startswith("s3://"):
        from bcoder_core import storage

        return str(storage.input_path(s))
    return s


def read_heads(local: str | Path) -> tuple[dict[str, Tensor] | None, float]:
    """θ's saved residual heads and α from ``local``/heads.safetensors ((None, 1.0) when absent)."""
    heads_file = Path(local) / HEADS_WEIGHTS
    if not heads_file.is_file():
        return None, 1.0
    state = files.load_safetensors(heads_file)
    with files.open_safetensors(heads_file) as f:
        alpha_text = (f.metadata() or {}).get("alpha", 1.0)
    try:
        return state, float(alpha_text)
    except ValueError:
        raise BcoderError(f"{heads_file}: metadata alpha {alpha_text!r} is not a number") from None


def embedding_fingerprint(weight: Tensor) -> list[float]:
    """Cheap identity check of a frozen embedding (shape-independent summary numbers)."""
    w = weight.detach().float()
    rows = w[: min(64, w.shape[0])]
    return [float(w.shape[0]), float(w.shape[1]), float(rows.sum()), float(rows.abs().sum())]


def check_fingerprint(saved: list[float] | None, weight: Tensor) -> None:
    """φ joins only the checkpoint it was trained on (the same embedding)."""
    if saved is None:
        return
    now = embedding_fingerprint(weight)
    same = len(saved) == len(now) and saved[:2] == now[:2]
    same = same and all(
        math.isclose(x, y, rel_tol=1e-3, abs_tol=1e-3) for x, y in zip(saved[2:], now[2:], strict=True)
    )
    if not same:
        raise BcoderError(
            "phi weights were trained on a different checkpoint (shared embedding fingerprint differs)"
        )


def linear(d_in: int, d_out: int, *, like: Tensor, bias: bool = True) -> nn.Linear:
    """An uninitialised ``nn.Linear`` on ``like``'s device and dtype (no RNG draw, no wasted init)."""
    return nn.utils.skip_init(nn.Linear, d_in, d_out, bias=bias, device=like.device, dtype=like.dtype)


def load_phi(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """φ's weights and its ``phi_config.json`` (``{}`` when absent) from a saved φ directory."""
    local = Path(resolve_dir(path))
    weights, meta_file = local / PHI_WEIGHTS, local / PHI_CONFIG
    if not weights.is_file():
        raise BcoderError(f"phi {path}: no {PHI_WEIGHTS}")
    meta: dict[str, Any] = {}
    if meta_file.is_file():
        meta = files.read_json_object(meta_file)
        if meta.get("format") != PHI_FORMAT:
            raise BcoderError(f"phi {path}: format {meta.get('format')!r}, expected {PHI_FORMAT!r}")
    return files.load_safetensors(weights), meta
