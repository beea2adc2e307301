"""The causal-LM family: B-Coder on any Hugging Face ``AutoModelForCausalLM`` (Llama, Qwen2, GPT-2 ...).

The equations of DESIGN §2 read Q from the language model's logits; nothing in them needs an
encoder. For a decoder-only model the state s_t is the prompt followed by the program's first t
tokens, so one teacher-forced pass runs over ``[prompt ; program[:-1]]`` and the outputs for the
program's T tokens are read at the T positions ending the sequence — the last prompt token
predicts a_0. Prompt positions never reach a loss.

**Padding.** Prompts are left-aligned (left padding; the batch's prompts may come right-padded
from the store, :func:`~bcoder_core.model.causal_generate.left_align` moves them), so the program
starts at the same column in every row, and the position ids are taken from the attention mask
(``cumsum − 1``): with a mask alone the positions of a padded row are shifted by its pad count,
which moves its logits (about 4e-2 in bf16 with 40 pads on Llama and Qwen2 shapes). Programs are
right-padded; a causal model never looks ahead, so right padding changes nothing before it.

**Parts per stage** (``qmodel`` table). Full fine-tuning (the default; small models): θ_ckpt and θ
are whole language models, φ is a language model's network (no LM head) + the value head;
everything of the trained part trains, embeddings included (nothing is shared between the parts,
unlike T5's frozen encoder). **LoRA** (``lora=`` settings; ``model/lora.py`` over peft): one frozen
base model in memory; adapters disabled it is θ_ckpt, adapter ``phi`` + the value head is φ,
adapter ``theta`` + the residual heads is θ. Only adapters and heads train; LoRA's B = 0 at
init, so φ's network is the checkpoint's and π_θ = π_ckpt exactly when a stage starts.

**Logits** are the network's last hidden state times the output embedding, as in Llama, Qwen2,
Mistral, StarCoder2, DeepSeek-Coder and GPT-2. Architectures that post-process logits (Gemma's soft
capping, Cohere's logit scale) are refused: they need their own family module.

**Saved formats.**

- sft: the language model as ``save_pretrained`` writes it.
- θ, full: the language model (``save_pretrained``) + ``heads.safetensors``. θ, LoRA: the merged
  model (loads with ``AutoModelForCausalLM.from_pretrained`` and gives θ's logits; what ``sample``
  reads) + ``adapter/`` (a PEFT adapter directory; ``PeftModel.from_pretrained(base, dir/adapter)``;
  its ``base_model_name_or_path`` is the base checkpoint's URI, which is how rank and a resumed
  run find the base) + ``heads.safetensors``.
- φ: ``phi.safetensors`` (full: ``decoder.*`` = φ's network; LoRA: ``adapter.*`` = φ's adapter;
  both: ``head.weight``, ``head.bias``) + ``phi_config.json`` (format, ``family: causal``, the LoRA
  settings or null, the base embedding's fingerprint).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bcoder_core.errors import BcoderError
from bcoder_core.model import files
from bcoder_core.model.qmodel import (
    PHI_CONFIG,
    PHI_FORMAT,
    PHI_WEIGHTS,
    BCoderModel,
    ModelRole,
    check_fingerprint,
    check_load,
    check_role,
    embedding_fingerprint,
    load_phi,
    read_heads,
    resolve_dir,
)

__all__ = ["FAMILY", "CausalPrompt", "CausalQModel", "LoraSettings", "load_causal_lm"]

ADAPTER_DIR = "adapter"
CHAT_INSTRUCTION = "\nWrite the program in one ```python code block."
"""Appended to the problem text in a chat prompt: chat models answer with prose unless asked."""
_ADAPTER = {"phi": "phi", "theta": "theta", "ckpt": None}
# Config fields that post-process logits: such a model is not "hidden state × output embedding".
_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling")
_DROPOUT_FIELDS = (
    "attention_dropout",
    "hidden_dropout",
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
    "dropout",
)


@dataclasses.dataclass(frozen=True)
class LoraSettings:
    """LoRA adapter settings (``ModelSpec.lora`` in the training configs; ``phi_config.json``)."""

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: str | tuple[str, ...] = "all-linear"

    @classmethod
    def from_any(cls, spec: Any) -> LoraSettings | None:
        """From a config section (``enable`` false → None), a dict, or LoraSettings itself."""
        if spec is None or isinstance(spec, LoraSettings):
            return spec
        if isinstance(spec, dict):
            spec = dict(spec)
            if not spec.pop("enable", True):
                return None
            target = spec.get("target_modules", "all-linear")
            return cls(
                r=int(spec.get("r", 16)),
                alpha=float(spec.get("alpha", 32.0)),
                dropout=float(spec.get("dropout", 0.0)),
                target_modules=target if isinstance(target, str) else tuple(target),
            )
        if not getattr(spec, "enable", True):
            return None
        target = spec.target_modules
        return cls(
            r=int(spec.r),
            alpha=float(spec.alpha),
            dropout=float(spec.dropout),
            target_modules=target if isinstance(target, str) else tuple(target),
        )

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not isinstance(self.target_modules, str):
            d["target_modules"] = list(self.target_modules)
        return d


@dataclasses.dataclass
class CausalPrompt:
    """A causal model's "encoded" prompts: the left-aligned token ids and mask [B, S] (no compute)."""

    ids: Tensor
    mask: Tensor

    def index_select(self, dim: int, rows: Tensor) -> CausalPrompt:
        return CausalPrompt(self.ids.index_select(dim, rows), self.mask.index_select(dim, rows))


def backbone(lm: nn.Module) -> nn.Module:
    """The network of a ``*ForCausalLM`` without its LM head (``model``, ``transformer`` ...)."""
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    return getattr(base, base.base_model_prefix)


def _base_lm(lm: nn.Module) -> nn.Module:
    return lm.get_base_model() if hasattr(lm, "get_base_model") else lm


class CausalQModel(BCoderModel):
    """θ_ckpt, φ and θ on a causal language model (module docstring), holding what ``stage`` needs."""

    family = "causal"

    def __init__(
        self,
        lm: nn.Module,
        stage: ModelRole,
        *,
        lora: LoraSettings | None = None,
        phi_state: dict[str, Tensor] | None = None,
        phi_meta: dict[str, Any] | None = None,
        heads_state: dict[str, Tensor] | None = None,
        theta_adapter: dict[str, Tensor] | None = None,
        head_seed: int = 0,
        alpha: float = 1.0,
        base_ref: str = "",
        seed: int = 0,
    ) -> None:
        super().__init__(stage, alpha=alpha)
        config = lm.config
        bad = [k for k in _LOGIT_POSTPROCESSING if getattr(config, k, None) not in (None, 1, 1.0)]
        if bad:
            raise BcoderError(
                f"model type {config.model_type!r} post-processes its logits ({bad[0]}); "
                "the causal family reads logits as hidden state x output embedding"
            )
        self.config = config
        self.d_model: int = int(lm.get_input_embeddings().weight.shape[1])
        self.vocab_size: int = int(lm.get_output_embeddings().weight.shape[0])
        pad = getattr(config, "pad_token_id", None)
        if pad is None:
            pad = getattr(config, "eos_token_id", None)
        if isinstance(pad, list):
            pad = pad[0]
        self.pad_token_id: int = int(pad or 0)
        self.lora: LoraSettings | None = lora if stage != "sft" else None
        # The base checkpoint's URI: written into θ's adapter directory so that rank and a resumed
        # run find the base the adapters belong to.
        self.base_ref = base_ref
        self.lm: nn.Module | None = None  # θ_ckpt, θ, sft's model; with LoRA the PeftModel
        self.phi_net: nn.Module | None = None  # φ's network with full fine-tuning
        self._adapters: set[str] = set()
        phi_meta = phi_meta or {}
        phi_lora = LoraSettings.from_any(phi_meta.get("lora")) if phi_state is not None else None

        if stage == "sft":
            self.lm = lm
            for p in lm.parameters():
                p.requires_grad_(True)
            return
        for p in lm.parameters():
            p.requires_grad_(False)
        if phi_state is not None:
            if phi_lora is not None:
                check_fingerprint(
                    phi_meta.get("base_embedding_fingerprint"), lm.get_input_embeddings().weight
                )
            elif int(phi_meta.get("vocab_size", self.vocab_size)) != self.vocab_size:
                raise BcoderError("phi weights were trained on a model of another vocabulary")

        names: list[str] = []
        if stage in ("theta", "eval") and (self.lora is not None or theta_adapter is not None):
            names.append("theta")
        if stage == "phi" and self.lora is not None:
            names.append("phi")
        if phi_lora is not None and stage in ("annotate", "eval"):
            names.append("phi")
        if stage == "phi" and phi_state is not None and (self.lora is None) != (phi_lora is None):
            raise BcoderError("phi checkpoint and config disagree on LoRA (resume with the same model.lora)")

        if names:
            from bcoder_core.model import lora as lora_lib

            settings = {(phi_lora or self.lora) if n == "phi" else self.lora for n in names}
            if len(settings) > 1:
                raise BcoderError("theta's and phi's LoRA settings differ; one base takes one adapter shape")
            (spec,) = settings
            lm = lora_lib.attach_adapters(
                lm,
                names,
                r=spec.r,
                alpha=spec.alpha,
                dropout=spec.dropout,
                target_modules=_targets(spec),
                seed=seed,
            )
            self._adapters = set(names)
            if theta_adapter is not None:
                lora_lib.load_adapter_state(lm, "theta", theta_adapter)
            if "phi" in names and phi_state is not None:
                lora_lib.load_adapter_state(lm, "phi", _strip(phi_state, "adapter."))
        self.lm = lm

        # value heads in fp32 whatever the base's dtype (a LoRA base may sit in bf16 on the GPU)
        emb = _base_lm(lm).get_input_embeddings().weight
        like = torch.empty(0, dtype=torch.promote_types(emb.dtype, torch.float32), device=emb.device)
        if stage == "phi":
            if self.lora is None:
                self.phi_net = backbone(lm)
                self.lm = None  # φ does not need the LM head, nor the checkpoint
                if phi_state is not None:
                    _load_net(self.phi_net, _strip(phi_state, "decoder."))
            self._make_phi_head(self.d_model, like, phi_state)
        elif stage in ("annotate", "eval") and phi_state is not None:
            if phi_lora is None:
                self.phi_net = _new_net_like(backbone(lm), _strip(phi_state, "decoder."))
            self._make_phi_head(self.d_model, like, phi_state)
        if stage in ("theta", "eval"):
            self._make_heads(self.d_model, like, heads_state, head_seed)
        self._freeze_all_but(stage)
        self.train(self.training)

    # ---------------------------------------------------------------------------------- building
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        stage: ModelRole,
        phi_path: str | Path | None = None,
        dtype: torch.dtype | None = torch.float32,
        device: str | torch.device | None = None,
        dropout: float | None = None,
        head_seed: int = 0,
        lora: Any = None,
        where: str | Path | None = None,
        seed: int = 0,
    ) -> CausalQModel:
        """Build ``stage``'s model from a causal-LM directory (or URI / hub id).

        ``path``: the checkpoint (sft, annotate, phi, theta), or a saved θ (eval; resuming theta). A
        LoRA θ (a directory with ``adapter/``) is read as base (its ``base_model_name_or_path``) +
        θ's adapter. ``phi_path``: a saved φ (resuming phi; annotate's ``v_phi``; eval). ``lora``:
        LoRA settings for phi/theta (``LoraSettings``, a config section, or None for full
        fine-tuning). ``dropout`` overrides every dropout field of the config.
        """
        check_load(stage, phi_path)
        settings = LoraSettings.from_any(lora)
        if settings is not None and stage == "sft":
            raise BcoderError(
                "model.lora: the sft stage fine-tunes the whole model (LoRA is for phi and theta)"
            )
        local = resolve_dir(path)
        base_ref = str(where or path)
        theta_adapter = None
        adapter_cfg = Path(local) / ADAPTER_DIR / "adapter_config.json"
        if stage in ("theta", "eval") and adapter_cfg.is_file():
            # a LoRA θ: the base it was trained on + θ's adapter (the merged weights are for sampling)
            meta = files.read_json_object(adapter_cfg)
            base_ref = str(meta.get("base_model_name_or_path") or "")
            if not base_ref:
                raise BcoderError(f"{adapter_cfg}: no base_model_name_or_path (the base checkpoint)")
            saved = LoraSettings(
                r=int(meta.get("r", 16)),
                alpha=float(meta.get("lora_alpha", 32)),
                dropout=float(meta.get("lora_dropout", 0.0)),
                target_modules=_saved_targets(meta.get("target_modules")),
            )
            settings = settings or saved
            theta_adapter = files.load_safetensors(Path(local) / ADAPTER_DIR / "adapter_model.safetensors")
            heads_dir = local
            local = resolve_dir(base_ref)
        else:
            heads_dir = local
        lm = load_causal_lm(local, where=base_ref, dtype=dtype, dropout=dropout)
        heads_state, alpha = read_heads(heads_dir) if stage in ("theta", "eval") else (None, 1.0)
        phi_state = phi_meta = None
        if phi_path is not None:
            phi_state, phi_meta = load_phi(phi_path)
            if phi_meta.get("family", "t5") != "causal":
                raise BcoderError(
                    f"phi {phi_path}: a {phi_meta.get('family', 't5')} phi cannot join a causal LM"
                )
            if stage == "eval" and phi_meta.get("lora") and theta_adapter is None:
                raise BcoderError(
                    f"phi {phi_path} is a LoRA adapter of the checkpoint; rank it with a LoRA theta "
                    "(a directory with adapter/), whose base is that checkpoint"
                )
        model = cls(
            lm,
            stage,
            lora=settings,
            phi_state=phi_state,
            phi_meta=phi_meta,
            heads_state=heads_state,
            theta_adapter=theta_adapter,
            head_seed=head_seed,
            alpha=alpha,
            base_ref=_absolute(base_ref),
            seed=seed,
        )
        return model.to(device) if device is not None else model

    @classmethod
    def from_config(
        cls,
        config: Any,
        *,
        stage: ModelRole,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device | None = None,
        head_seed: int = 0,
        lora: Any = None,
    ) -> CausalQModel:
        """A randomly initialised model of ``config``'s shape, for tests and benches."""
        lm = FAMILY.random_model(config, seed=seed, dtype=dtype)
        model = cls(lm, stage, lora=LoraSettings.from_any(lora), head_seed=head_seed, seed=seed)
        return model.to(device) if device is not None else model

    # ---------------------------------------------------------------------------------- parts
    @property
    def base_lm(self) -> nn.Module:
        """The Hugging Face language model (inside the PeftModel with LoRA)."""
        if self.lm is None:
            raise BcoderError(f"a {self.stage}-stage model has no language model")
        return _base_lm(self.lm)

    def _frozen_modules(self) -> list[nn.Module]:
        if self.stage in ("annotate", "eval"):
            return [m for m in (self.lm, self.phi_net) if m is not None]
        return []

    def trainable_parameters(self, stage: str | None = None) -> list[nn.Parameter]:
        """The parameters the optimiser of ``stage`` (default: this model's stage) updates."""
        from bcoder_core.model import lora as lora_lib

        stage = stage or self.stage
        check_role(stage)
        if stage in ("annotate", "eval"):
            return []
        if stage != self.stage:
            raise BcoderError(f"a {self.stage}-stage model has no {stage} parameters to train")
        if stage == "sft":
            return list(self.lm.parameters())
        if stage == "phi":
            net = (
                lora_lib.adapter_parameters(self.lm, "phi") if self.lora else list(self.phi_net.parameters())
            )
            return [*net, *self.phi_head.parameters()]
        net = lora_lib.adapter_parameters(self.lm, "theta") if self.lora else list(self.lm.parameters())
        return [*net, *self.h1.parameters()]

    # ---------------------------------------------------------------------------------- compute
    def encode(self, input_ids: Tensor, attention_mask: Tensor) -> CausalPrompt:
        """The prompts, left-aligned (module docstring): a causal model has no separate encoder."""
        from bcoder_core.model.causal_generate import left_align

        ids, mask = left_align(input_ids, attention_mask)
        return CausalPrompt(ids, mask)

    def _hidden(self, which: str, ctx: CausalPrompt, labels: Tensor) -> Tensor:
        """Last hidden states [B, T, d] of network ``which`` (ckpt, phi, theta) at the program positions."""
        from bcoder_core.model import lora as lora_lib
        from bcoder_core.model.causal_generate import position_ids

        if which == "phi" and self.phi_net is not None:
            net, adapter = self.phi_net, None
        else:
            if self.lm is None or (which != "ckpt" and self._adapters and which not in self._adapters):
                raise BcoderError(f"a {self.stage}-stage model has no {which}")
            if which == "phi" and "phi" not in self._adapters:
                raise BcoderError(f"a {self.stage}-stage model has no phi")
            if which == "ckpt" and self.stage not in ("annotate",):
                raise BcoderError(f"a {self.stage}-stage model has no checkpoint decoder")
            if which == "theta" and self.stage not in ("theta", "eval"):
                raise BcoderError(f"a {self.stage}-stage model has no theta")
            net, adapter = backbone(self.lm), _ADAPTER[which]
        s = ctx.ids.shape[1]
        valid = labels != -100
        program = labels.masked_fill(~valid, self.pad_token_id)
        ids = torch.cat([ctx.ids, program[:, :-1]], dim=1)
        mask = torch.cat([ctx.mask.to(valid.dtype), valid[:, :-1]], dim=1).long()
        pos = position_ids(mask)
        use = lora_lib.active(self.lm, adapter) if self._adapters and net is not self.phi_net else _nullctx()
        with use:
            h = net(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state
        return h[:, s - 1 :]

    def _logits(self, h: Tensor) -> Tensor:
        return self.base_lm.get_output_embeddings()(h)

    def phi_values(self, ctx: CausalPrompt, attention_mask: Tensor, labels: Tensor) -> Tensor:
        """Raw φ head output u_φ(s_t) [B, T] (V_φ = bound(u_φ))."""
        return self.phi_head(self._hidden("phi", ctx, labels)).squeeze(-1)

    def theta_outputs(
        self, ctx: CausalPrompt, attention_mask: Tensor, labels: Tensor
    ) -> tuple[Tensor, Tensor]:
        """θ's logits ℓ_θ [B, T, V] and raw residual value u^r = h1(x) − h2(x) [B, T]."""
        h = self._hidden("theta", ctx, labels)
        return self._logits(h), self.residual_value(h)

    def ckpt_logits(self, ctx: CausalPrompt, attention_mask: Tensor, labels: Tensor) -> Tensor:
        """The frozen checkpoint's logits ℓ_ckpt [B, T, V] (no grad)."""
        with torch.no_grad():
            return self._logits(self._hidden("ckpt", ctx, labels))

    def sft_logits(self, input_ids: Tensor, attention_mask: Tensor, labels: Tensor) -> Tensor:
        """Logits of the trainable model at the program positions (stage sft; θ's in stage theta)."""
        ctx = self.encode(input_ids, attention_mask)
        if self.stage == "sft":
            from bcoder_core.model.causal_generate import position_ids

            s = ctx.ids.shape[1]
            valid = labels != -100
            program = labels.masked_fill(~valid, self.pad_token_id)
            ids = torch.cat([ctx.ids, program[:, :-1]], dim=1)
            mask = torch.cat([ctx.mask.to(valid.dtype), valid[:, :-1]], dim=1).long()
            h = backbone(self.lm)(
                input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False
            ).last_hidden_state
            return self._logits(h[:, s - 1 :])
        return self.theta_outputs(ctx, attention_mask, labels)[0]

    # ---------------------------------------------------------------------------------- HF views
    def generation_model(self, which: str = "theta", *, eval_mode: bool = True) -> nn.Module:
        """The plain language model of θ (full fine-tuning), the checkpoint (annotate) or sft's model."""
        if self._adapters:
            raise BcoderError(
                "generation_model: a LoRA model samples from its merged export (save_pretrained)"
            )
        if self.lm is None:
            raise BcoderError(f"a {self.stage}-stage model has no {which} to generate with")
        return self.lm.eval() if eval_mode else self.lm

    # ---------------------------------------------------------------------------------- saving
    def save_pretrained(self, path: str | Path, stage: str | None = None, tokenizer: Any = None) -> None:
        """Save ``stage``'s trained part (module docstring: formats) into directory ``path``."""
        from bcoder_core.model import lora as lora_lib

        stage = stage or self.stage
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        if stage == "sft":
            if self.stage != "sft":
                raise BcoderError(f"a {self.stage}-stage model has no sft model to save")
            self.lm.save_pretrained(str(out))
        elif stage in ("theta", "eval"):
            if self.h1 is None:
                raise BcoderError(f"a {self.stage}-stage model has no theta to save")
            if "theta" in self._adapters:
                lora_lib.save_merged(self.lm, "theta", out)
                lora_lib.save_adapter(self.lm, "theta", out / ADAPTER_DIR)
                cfg_file = out / ADAPTER_DIR / "adapter_config.json"
                meta = json.loads(cfg_file.read_text())
                meta["base_model_name_or_path"] = self.base_ref
                cfg_file.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
            else:
                self.base_lm.save_pretrained(str(out))
            self._save_heads(out)
            if stage == "eval" and self.has_phi:
                self._save_phi(out)
        elif stage == "phi":
            if not self.has_phi:
                raise BcoderError(f"a {self.stage}-stage model has no phi to save")
            self._save_phi(out)
        else:
            raise BcoderError(f"save_pretrained: nothing to save for stage {stage!r}")
        if tokenizer is not None:
            tokenizer.save_pretrained(str(out))

    def _save_phi(self, out: Path) -> None:
        from safetensors.torch import save_file

        from bcoder_core.model import lora as lora_lib

        phi_lora = None
        if self.phi_net is not None:
            state = {f"decoder.{k}": v for k, v in self.phi_net.state_dict().items()}
        else:
            state = {f"adapter.{k}": v for k, v in lora_lib.adapter_state(self.lm, "phi").items()}
            phi_lora = self._phi_lora_settings()
        state["head.weight"] = self.phi_head.weight
        state["head.bias"] = self.phi_head.bias
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(out / PHI_WEIGHTS))
        meta = {
            "format": PHI_FORMAT,
            "family": "causal",
            "model_type": getattr(self.config, "model_type", ""),
            "d_model": self.d_model,
            "vocab_size": self.vocab_size,
            "lora": phi_lora.as_dict() if phi_lora else None,
            # a LoRA φ joins only the base it was trained on; a full φ carries its own network
            "base_embedding_fingerprint": (
                embedding_fingerprint(self.base_lm.get_input_embeddings().weight) if phi_lora else None
            ),
        }
        (out / PHI_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")

    def _phi_lora_settings(self) -> LoraSettings:
        cfg = self.lm.peft_config["phi"]
        return LoraSettings(
            r=int(cfg.r),
            alpha=float(cfg.lora_alpha),
            dropout=float(cfg.lora_dropout),
            target_modules=_saved_targets(cfg.target_modules),
        )


# -------------------------------------------------------------------------------------- helpers
class _nullctx:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _targets(settings: LoraSettings) -> str | list[str]:
    t = settings.target_modules
    return t if isinstance(t, str) else list(t)


def _saved_targets(value: Any) -> str | tuple[str, ...]:
    if value is None:
        return "all-linear"
    if isinstance(value, str):
        return value
    return tuple(sorted(value))


def _strip(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def _absolute(ref: str) -> str:
    if "://" in ref or not Path(ref).exists():
        return ref
    return str(Path(ref).resolve())


def _load_net(net: nn.Module, state: dict[str, Tensor]) -> None:
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise BcoderError(
            f"phi weights do not fit the network: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )


def _new_net_like(template: nn.Module, state: dict[str, Tensor]) -> nn.Module:
    """A network of ``template``'s class and config holding the weights in ``state`` (φ, frozen)."""
    import copy

    ref = next(template.parameters())
    with torch.device("meta"):
        net = type(template)(copy.deepcopy(template.config))
    missing, unexpected = net.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise BcoderError(
            f"phi weights do not fit the network: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    # buffers that are not in the state dict (rotary inv_freq) are rebuilt on the real device
    for name, buf in list(net.named_buffers()):
        if buf.device.type == "meta":
            owner = net.get_submodule(name.rsplit(".", 1)[0]) if "." in name else net
            tmpl = template.get_buffer(name)
            owner.register_buffer(name.rsplit(".", 1)[-1], tmpl.clone(), persistent=False)
    for p in net.parameters():
        p.requires_grad_(False)
    return net.to(device=ref.device, dtype=ref.dtype)


def load_causal_lm(
    path: str, *, where: str | Path | None = None, dtype: Any = None, dropout: float | None = None
) -> nn.Module:
    """``AutoModelForCausalLM.from_pretrained(path)``, its failures one BcoderError naming the model."""
    from safetensors import SafetensorError
    from transformers import AutoConfig, AutoModelForCausalLM

    if Path(path).is_dir():
        files.check_t5_dir(Path(path))
    try:
        config = AutoConfig.from_pretrained(path)
        if dropout is not None:
            for key in _DROPOUT_FIELDS:
                if hasattr(config, key):
                    setattr(config, key, float(dropout))
        kwargs: dict[str, Any] = {"config": config}
        if dtype is not None:
            kwargs["dtype"] = dtype
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError, RuntimeError, TypeError, KeyError, AttributeError, SafetensorError) as exc:
        raise BcoderError(
            f"model {where or path}: cannot load a causal LM ({files.first_line(exc)})"
        ) from exc


# -------------------------------------------------------------------------------------- the family
def _strip_eos(ids: list[int], tokenizer: Any) -> list[int]:
    eos = tokenizer.eos_token_id
    return ids[:-1] if ids and eos is not None and ids[-1] == eos else ids


class CausalFamily:
    """Decoder-only language models of transformers' ``AutoModelForCausalLM`` (module docstring)."""

    name = "causal"

    def handles(self, fields: dict[str, Any]) -> bool:
        """A decoder-only LM: transformers has a causal-LM class for its type, and it is not an encoder
        (BERT-like types are listed for causal LM too, as decoders of encoder-decoder models: their
        checkpoints attend both ways and put a transform before the output embedding)."""
        if fields.get("is_encoder_decoder"):
            return False
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
            MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        )

        kind = fields.get("model_type")
        if kind is None:
            archs = fields.get("architectures") or []
            return any(str(a).endswith("ForCausalLM") for a in archs)
        return kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES

    def model_class(self) -> type[CausalQModel]:
        return CausalQModel

    def build_config(self, fields: dict[str, Any]) -> Any:
        from transformers import AutoConfig

        fields = {k: v for k, v in fields.items() if k != "decoder_start_token_id"}
        return AutoConfig.for_model(fields.pop("model_type"), **fields)

    def random_model(self, config: Any, *, seed: int = 0, dtype: Any = None) -> Any:
        from transformers import AutoModelForCausalLM

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            lm = AutoModelForCausalLM.from_config(config)
        return lm.to(dtype or torch.float32).eval()

    def load_lm(self, path: str, *, where: str | Path | None = None, **kwargs: Any) -> Any:
        return load_causal_lm(path, where=where, **kwargs)

    def prompt_ids(
        self, problem: Any, tokenizer: Any, max_source_tokens: int, prompt_format: str
    ) -> list[int]:
        """The completion prompt (``build_prompt``'s text, the tokenizer's BOS if it adds one, no EOS),
        or the chat prompt: the text as the user turn of the tokenizer's chat template with the
        generation prompt. At most ``max_source_tokens``; the question is what gets truncated."""
        from bcoder_core.prompts import build_prompt

        if prompt_format == "completion":
            text = build_prompt(problem, tokenizer, max_source_tokens)
            ids = _strip_eos(list(tokenizer(text)["input_ids"]), tokenizer)
        elif prompt_format == "chat":
            if not getattr(tokenizer, "chat_template", None):
                raise BcoderError("prompt_format chat: the tokenizer has no chat template")
            overhead = len(self._chat_ids(tokenizer, ""))  # the template and the instruction line
            text = build_prompt(problem, tokenizer, max(1, max_source_tokens - overhead))
            ids = self._chat_ids(tokenizer, text)
        else:
            raise BcoderError(f"prompt_format {prompt_format!r}: expected completion or chat")
        if len(ids) > max_source_tokens:  # keep the end (the format line next to the program) and BOS
            keep = 1 if ids[0] == tokenizer.bos_token_id else 0
            ids = ids[:keep] + ids[len(ids) - max_source_tokens + keep :]
        return ids

    @staticmethod
    def _chat_ids(tokenizer: Any, text: str) -> list[int]:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": text + CHAT_INSTRUCTION}], tokenize=False, add_generation_prompt=True
        )
        return list(tokenizer(rendered, add_special_tokens=False)["input_ids"])

    def program_ids(self, tokenizer: Any, code: str, prompt_format: str) -> list[int]:
        """The program as the model writes it (fenced for chat), then EOS: no BOS inside a sequence."""
        from bcoder_core.model.completions import render_program

        text = render_program(code, prompt_format)
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        return [*ids, int(tokenizer.eos_token_id)]

    def program_text(self, tokenizer: Any, ids: Sequence[int], prompt_format: str) -> str:
        from bcoder_core.model.completions import extract_program

        text = tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return extract_program(text, prompt_format)

    def eos_ids(self, tokenizer: Any, model: Any) -> set[int]:
        ids = {int(tokenizer.eos_token_id)}
        gen = getattr(model, "generation_config", None)
        extra = getattr(gen, "eos_token_id", None) if gen is not None else None
        if isinstance(extra, int):
            ids.add(extra)
        elif isinstance(extra, list):
            ids.update(int(i) for i in extra)
        return ids

    def generate(
        self,
        model: Any,
        input_ids: Any,
        attention_mask: Any,
        uniforms: Any,
        *,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        eos_ids: Collection[int],
        rows_of_prompt: Any = None,
    ) -> list[tuple[list[int], bool]]:
        from bcoder_core.model.causal_generate import generate_causal

        return generate_causal(
            model,
            input_ids,
            attention_mask,
            uniforms,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            eos_ids=eos_ids,
            rows_of_prompt=rows_of_prompt,
        )


FAMILY = CausalFamily()
