"""The T5 family (DESIGN §2.2): a frozen encoder shared by θ_ckpt, φ and θ.

One pretrained ``T5ForConditionalGeneration`` (CodeT5-large-ntp-py / the CodeRL checkpoint, or a
small T5) gives every part. A ``BCoderModel`` holds only the parts its *stage* needs:

=========  ==========================================================  =========================
stage      parts                                                       trainable
=========  ==========================================================  =========================
sft        the whole T5 (plain supervised fine-tuning)                 everything
annotate   encoder, θ_ckpt decoder + LM head (+ φ with ``phi_path``)   nothing
phi        encoder, φ = decoder copy + value head (d_model → 1)        φ decoder + φ head
theta      encoder, θ = decoder copy + LM head + residual heads h1,h2  θ decoder, LM head, h1
eval       encoder, θ (+ φ with ``phi_path``), for ranking             nothing
=========  ==========================================================  =========================

Conventions: decoder inputs are the labels shifted right (decoder_start = ``<pad>`` = 0, label
padding −100 read as ``<pad>``); output position t belongs to the state s_t = (D, w_<t) and the
action a_t = labels[t]. No decoder attention mask is needed (labels are right-padded and the
decoder is causal), exactly as ``T5ForConditionalGeneration(labels=...)`` computes it.

**Tied embeddings.** T5 v1.0 / CodeT5 use one embedding matrix E for the encoder input, the decoder
input and the LM head, and scale the decoder output by d_model**-0.5 before the tied head
(verified in transformers 5.24 ``modeling_t5.py``: ``if self.config.scale_decoder_outputs:
sequence_output *= model_dim**-0.5``; ``T5Config`` sets ``scale_decoder_outputs`` from
``tie_word_embeddings`` and always ties). The encoder must stay frozen while θ's LM head trains,
so here:

- E (``shared``) is frozen: it stays the encoder's and every decoder's input embedding;
- θ gets an untied LM head W_θ initialised to E·d_model**-0.5 (no output scaling), so
  ℓ_θ = (h·d**-0.5)·Eᵀ = h·W_θᵀ at init — the checkpoint's logits (bit-exact when d_model is a
  power of 4, e.g. 1024; to float rounding otherwise);
- θ_ckpt keeps the checkpoint's own head and scaling.

**The φ head** (DESIGN §2.2 says "a linear layer d_model → 1, zero-initialised"): its weight is
zero-initialised, its bias is ``PHI_HEAD_INIT_BIAS`` = 0.1, not 0. With an all-zero head u_φ ≡ 0, and
u = 0 is the stationary point of the bound (dV/du = −tanh(u/2)/2 = 0): no gradient would ever reach
the head or the decoder and φ could not learn. With the bias at 0.1, V_φ starts uniform and
optimistic, R_max − log cosh(0.05) ≈ R_max − 0.00125, the TD error has a non-zero gradient
(−tanh(0.05)/2 ≈ −0.025 per unit of error; Adam's normalised steps make its size irrelevant),
and the weight leaves zero on the first step, after which the decoder gets gradients too.

**Saved formats.**

- θ (stage theta/eval): a plain Hugging Face ``T5ForConditionalGeneration`` directory
  (``config.json`` with ``tie_word_embeddings: false`` and ``scale_decoder_outputs: false``,
  ``model.safetensors`` with ``shared``, encoder, θ decoder and ``lm_head``) — it loads with
  ``T5ForConditionalGeneration.from_pretrained`` and gives θ's logits (transformers 5.24 logs a
  notice that it does not tie the two differing matrices, which is what we want) — plus
  ``heads.safetensors`` (``h1.weight``, ``h1.bias``, ``h2.weight``, ``h2.bias``).
- φ (stage phi): ``phi.safetensors`` (``decoder.*``: the decoder stack without its input embedding,
  which is the frozen shared E; ``head.weight``, ``head.bias``) + ``phi_config.json`` (format tag,
  shape, and a fingerprint of E so that φ is only ever joined to an encoder with the same
  embedding). The two files may sit in a θ directory: ``phi_path`` may then equal the θ path.
- sft: the T5 as ``save_pretrained`` writes it (tied, like the checkpoint it started from).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

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
    linear,
    load_phi,
    read_heads,
    resolve_dir,
)

__all__ = ["FAMILY", "T5QModel", "load_t5", "shift_right"]


def shift_right(labels: Tensor, start_id: int = 0, pad_id: int = 0) -> Tensor:
    """Decoder inputs for ``labels`` [B, T]: [start, labels[:, :-1]] with −100 read as ``pad_id``."""
    out = labels.new_full(labels.shape, pad_id)
    out[:, 0] = start_id
    out[:, 1:] = labels[:, :-1]
    return out.masked_fill_(out == -100, pad_id)


def _output_scale(config: Any) -> float:
    scaled = getattr(config, "scale_decoder_outputs", getattr(config, "tie_word_embeddings", True))
    return float(config.d_model) ** -0.5 if scaled else 1.0


class _UntiedNoticeFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "so we will NOT tie them" not in record.getMessage()


@contextlib.contextmanager
def _quiet_untied_notice() -> Iterator[None]:
    """Hide transformers 5.x's notice that a saved θ's head and embedding differ (they must)."""
    logger = logging.getLogger("transformers.modeling_utils")
    filt = _UntiedNoticeFilter()
    logger.addFilter(filt)
    try:
        yield
    finally:
        logger.removeFilter(filt)


def _decoder_state(stack: nn.Module) -> dict[str, Tensor]:
    return {k: v for k, v in stack.state_dict().items() if not k.startswith("embed_tokens.")}


def _new_decoder_like(template: nn.Module, state: dict[str, Tensor], embed: nn.Module) -> nn.Module:
    """A decoder stack with ``template``'s config and the weights in ``state`` (no embedding copy)."""
    from transformers.models.t5.modeling_t5 import T5Stack

    ref = next(template.parameters())
    with torch.device("meta"):
        stack = T5Stack(copy.deepcopy(template.config))
    stack.embed_tokens = embed
    missing, unexpected = stack.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not k.startswith("embed_tokens.")]
    if missing or unexpected:
        raise BcoderError(
            f"phi weights do not fit the decoder: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return stack.to(device=ref.device, dtype=ref.dtype)


class T5QModel(BCoderModel):
    """Encoder + θ_ckpt + φ + θ of DESIGN §2.2, holding only what ``stage`` needs (module docstring)."""

    family = "t5"

    def __init__(
        self,
        t5: nn.Module,
        stage: ModelRole,
        *,
        phi_state: dict[str, Tensor] | None = None,
        phi_fingerprint: list[float] | None = None,
        heads_state: dict[str, Tensor] | None = None,
        head_seed: int = 0,
        alpha: float = 1.0,
    ) -> None:
        super().__init__(stage, alpha=alpha)
        self.config = t5.config
        self.d_model: int = int(t5.config.d_model)
        self.vocab_size: int = int(t5.lm_head.weight.shape[0])
        self.decoder_start_token_id: int = int(getattr(t5.config, "decoder_start_token_id", None) or 0)
        self.pad_token_id: int = int(getattr(t5.config, "pad_token_id", None) or 0)
        self.ckpt_scale: float = _output_scale(t5.config)
        self.t5: nn.Module | None = None
        self.shared: nn.Module | None = None
        self.encoder: nn.Module | None = None
        self.ckpt_decoder: nn.Module | None = None
        self.ckpt_lm_head: nn.Module | None = None
        self.phi_decoder: nn.Module | None = None
        self.theta_decoder: nn.Module | None = None
        self.lm_head: nn.Linear | None = None

        if stage == "sft":
            self.t5 = t5
            for p in t5.parameters():
                p.requires_grad_(True)
            return

        for p in t5.parameters():
            p.requires_grad_(False)
        self.shared = t5.shared
        self.encoder = t5.encoder
        if phi_state is not None:
            check_fingerprint(phi_fingerprint, t5.shared.weight)
        if stage == "annotate":
            self.ckpt_decoder = t5.decoder
            self.ckpt_lm_head = t5.lm_head
            if phi_state is not None:
                self._set_phi(phi_state, template=t5.decoder)
        elif stage == "phi":
            self.phi_decoder = t5.decoder
            if phi_state is not None:  # resume
                self._load_phi_decoder(phi_state)
            self._make_phi_head(self.d_model, t5.shared.weight, phi_state)
        else:  # theta, eval
            self.theta_decoder = t5.decoder
            head = t5.lm_head
            if head.weight is t5.shared.weight or self.ckpt_scale != 1.0:
                head = linear(self.d_model, self.vocab_size, bias=False, like=t5.shared.weight)
                with torch.no_grad():
                    head.weight.copy_(t5.lm_head.weight * self.ckpt_scale)
            self.lm_head = head
            self._make_heads(self.d_model, t5.shared.weight, heads_state, head_seed)
            if stage == "eval" and phi_state is not None:
                self._set_phi(phi_state, template=t5.decoder)

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
    ) -> T5QModel:
        """Build ``stage``'s model from a ``T5ForConditionalGeneration`` directory (or URI / hub id).

        ``path`` is the checkpoint for sft/annotate/phi/theta, or a saved θ for eval (and for
        resuming theta: its ``heads.safetensors`` is loaded when present). ``phi_path`` holds a saved
        φ: required for resuming phi, optional for annotate (adds φ for the ``v_phi`` column) and
        eval (ranking without a ``v_phi`` column). ``dropout`` overrides the config's dropout_rate.
        """
        check_load(stage, phi_path)
        if lora is not None:
            raise BcoderError(
                "model.lora: LoRA is implemented for causal LMs only; T5 trains its decoder copies fully"
            )
        local = resolve_dir(path)
        kwargs: dict[str, Any] = {}
        if dtype is not None:
            kwargs["dtype"] = dtype
        if dropout is not None:
            kwargs["dropout_rate"] = float(dropout)
        t5 = load_t5(local, where=where or path, **kwargs)
        heads_state, alpha = read_heads(local) if stage in ("theta", "eval") else (None, 1.0)
        phi_state = fingerprint = None
        if phi_path is not None:
            phi_state, meta = load_phi(phi_path)
            if meta.get("family", "t5") != "t5":
                raise BcoderError(f"phi {phi_path}: a {meta.get('family')} phi cannot join a T5 checkpoint")
            fingerprint = meta.get("shared_embedding_fingerprint")
        model = cls(
            t5,
            stage,
            phi_state=phi_state,
            phi_fingerprint=fingerprint,
            heads_state=heads_state,
            head_seed=head_seed,
            alpha=alpha,
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
    ) -> T5QModel:
        """A randomly initialised model of ``config``'s shape (a ``T5Config``), for tests and benches."""
        if lora is not None:
            raise BcoderError("model.lora: LoRA is implemented for causal LMs only")
        t5 = FAMILY.random_model(config, seed=seed, dtype=dtype)
        model = cls(t5, stage, head_seed=head_seed)
        return model.to(device) if device is not None else model

    def _set_phi(self, state: dict[str, Tensor], *, template: nn.Module) -> None:
        dec = {k.removeprefix("decoder."): v for k, v in state.items() if k.startswith("decoder.")}
        self.phi_decoder = _new_decoder_like(template, dec, template.embed_tokens)
        for p in self.phi_decoder.parameters():
            p.requires_grad_(False)
        self._make_phi_head(self.d_model, self.shared.weight, state)
        for p in self.phi_head.parameters():
            p.requires_grad_(False)

    def _load_phi_decoder(self, state: dict[str, Tensor]) -> None:
        dec = {k.removeprefix("decoder."): v for k, v in state.items() if k.startswith("decoder.")}
        missing, unexpected = self.phi_decoder.load_state_dict(dec, strict=False)
        missing = [k for k in missing if not k.startswith("embed_tokens.")]
        if missing or unexpected:
            raise BcoderError(
                f"phi weights do not fit the decoder: missing {missing[:3]}, unexpected {unexpected[:3]}"
            )

    # ---------------------------------------------------------------------------------- parts
    def _frozen_modules(self) -> list[nn.Module]:
        if self.stage == "sft":
            return []
        frozen = [self.encoder, self.ckpt_decoder]
        if self.stage != "phi":
            frozen.append(self.phi_decoder)
        if self.stage != "theta":
            frozen.append(self.theta_decoder)
        return [m for m in frozen if m is not None]

    def trainable_parameters(self, stage: str | None = None) -> list[nn.Parameter]:
        """The parameters the optimiser of ``stage`` (default: this model's stage) updates."""
        stage = stage or self.stage
        check_role(stage)
        if stage == "sft":
            if self.t5 is None:
                raise BcoderError(f"a {self.stage}-stage model has no sft parameters")
            return list(self.t5.parameters())
        if stage in ("annotate", "eval"):
            return []
        if stage == "phi":
            if self.phi_decoder is None or self.stage != "phi":
                raise BcoderError(f"a {self.stage}-stage model has no phi parameters to train")
            return [*_own_params(self.phi_decoder), *self.phi_head.parameters()]
        if self.theta_decoder is None or self.stage != "theta":
            raise BcoderError(f"a {self.stage}-stage model has no theta parameters to train")
        return [*_own_params(self.theta_decoder), *self.lm_head.parameters(), *self.h1.parameters()]

    # ---------------------------------------------------------------------------------- compute
    def decoder_input_ids(self, labels: Tensor) -> Tensor:
        """Right-shifted labels: the decoder input whose position t sees w_<t."""
        return shift_right(labels, self.decoder_start_token_id, self.pad_token_id)

    def encode(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Frozen encoder states [B, S, d] of the prompts (no grad)."""
        encoder = self.encoder if self.encoder is not None else self.t5.encoder
        with torch.no_grad():
            return encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def _hidden(
        self, decoder: nn.Module | None, what: str, enc: Tensor, attention_mask: Tensor, labels: Tensor
    ) -> Tensor:
        if decoder is None:
            raise BcoderError(f"a {self.stage}-stage model has no {what}")
        return decoder(
            input_ids=self.decoder_input_ids(labels),
            encoder_hidden_states=enc,
            encoder_attention_mask=attention_mask,
            use_cache=False,
        ).last_hidden_state

    def phi_values(self, enc: Tensor, attention_mask: Tensor, labels: Tensor) -> Tensor:
        """Raw φ head output u_φ(s_t) [B, T] (V_φ = bound(u_φ))."""
        h = self._hidden(self.phi_decoder, "phi", enc, attention_mask, labels)
        return self.phi_head(h).squeeze(-1)

    def theta_outputs(self, enc: Tensor, attention_mask: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """θ's logits ℓ_θ [B, T, V] and raw residual value u^r = h1(x) − h2(x) [B, T]."""
        h = self._hidden(self.theta_decoder, "theta", enc, attention_mask, labels)
        return self.lm_head(h), self.residual_value(h)

    def ckpt_logits(self, enc: Tensor, attention_mask: Tensor, labels: Tensor) -> Tensor:
        """The frozen checkpoint's logits ℓ_ckpt [B, T, V] (no grad)."""
        with torch.no_grad():
            h = self._hidden(self.ckpt_decoder, "checkpoint decoder", enc, attention_mask, labels)
            if self.ckpt_scale != 1.0:
                h = h * self.ckpt_scale
            return self.ckpt_lm_head(h)

    def sft_logits(self, input_ids: Tensor, attention_mask: Tensor, labels: Tensor) -> Tensor:
        """Logits of the full trainable T5 (stage sft); θ's logits in stage theta."""
        if self.t5 is not None:
            return self.t5(
                input_ids=input_ids,
                attention_mask=attention_mask,
                decoder_input_ids=self.decoder_input_ids(labels),
                use_cache=False,
            ).logits
        enc = self.encode(input_ids, attention_mask)
        return self.theta_outputs(enc, attention_mask, labels)[0]

    # ---------------------------------------------------------------------------------- HF views
    def generation_model(
        self, which: Literal["theta", "ckpt"] = "theta", *, eval_mode: bool = True
    ) -> nn.Module:
        """A ``T5ForConditionalGeneration`` sharing this model's weights (no copy), for ``generate``.

        ``which="theta"``: π_θ = softmax(ℓ_θ) (untied head, no output scaling); ``"ckpt"``: the frozen
        checkpoint (annotate stage). In stage sft, the trained T5 itself. With ``eval_mode`` (default)
        the view is switched to eval mode — and with it the modules it shares with this model (call
        ``train()`` on this model to go back); ``eval_mode=False`` leaves every mode as it is.
        """
        from transformers import GenerationConfig, T5ForConditionalGeneration

        if self.t5 is not None:
            return self.t5
        if which == "theta":
            decoder, head, scaled = self.theta_decoder, self.lm_head, False
        elif which == "ckpt":
            decoder, head, scaled = self.ckpt_decoder, self.ckpt_lm_head, self.ckpt_scale != 1.0
        else:
            raise BcoderError(f"generation model {which!r}: expected theta or ckpt")
        if decoder is None:
            raise BcoderError(f"a {self.stage}-stage model has no {which} decoder to generate with")
        cfg = copy.deepcopy(self.config)
        cfg.scale_decoder_outputs = scaled
        with torch.device("meta"):
            view = T5ForConditionalGeneration(cfg)
        view.shared = self.shared
        view.encoder = self.encoder
        view.decoder = decoder
        view.lm_head = head
        view.generation_config = GenerationConfig(
            decoder_start_token_id=self.decoder_start_token_id,
            pad_token_id=self.pad_token_id,
            eos_token_id=getattr(self.config, "eos_token_id", None),
            bos_token_id=getattr(self.config, "bos_token_id", None),
        )
        bad = [n for n, p in view.named_parameters(remove_duplicate=False) if p.device.type == "meta"]
        if bad:  # pragma: no cover - every module is replaced above
            raise RuntimeError(f"generation view left parameters on meta: {bad[:3]}")
        return view.eval() if eval_mode else view

    # ---------------------------------------------------------------------------------- saving
    def save_pretrained(self, path: str | Path, stage: str | None = None, tokenizer: Any = None) -> None:
        """Save ``stage``'s trained part (module docstring: formats) into directory ``path``.

        sft: the T5; theta: θ (HF T5 + heads); phi: φ; eval: θ and, if loaded, φ, side by side.
        ``tokenizer`` (optional) is saved into the same directory.
        """
        stage = stage or self.stage
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        if stage == "sft":
            if self.t5 is None:
                raise BcoderError(f"a {self.stage}-stage model has no sft model to save")
            self.t5.save_pretrained(str(out))
        elif stage in ("theta", "eval"):
            self._save_theta(out)
            if stage == "eval" and self.phi_decoder is not None:
                self._save_phi(out)
        elif stage == "phi":
            if self.phi_decoder is None:
                raise BcoderError(f"a {self.stage}-stage model has no phi to save")
            self._save_phi(out)
        else:
            raise BcoderError(f"save_pretrained: nothing to save for stage {stage!r}")
        if tokenizer is not None:
            tokenizer.save_pretrained(str(out))

    def _save_theta(self, out: Path) -> None:
        if self.theta_decoder is None:
            raise BcoderError(f"a {self.stage}-stage model has no theta to save")
        view = self.generation_model("theta", eval_mode=False)  # saving must not change θ's train mode
        view.config.tie_word_embeddings = False
        view.config.scale_decoder_outputs = False
        view.save_pretrained(str(out))
        cfg_file = out / "config.json"
        cfg = json.loads(cfg_file.read_text())
        # transformers 5.x writes tie_word_embeddings: true whatever it holds; write the truth so every
        # version (4.x reads the flag to decide scaling and tying) loads θ's untied, unscaled head.
        cfg["tie_word_embeddings"] = False
        cfg["scale_decoder_outputs"] = False
        cfg_file.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        self._save_heads(out)

    def _save_phi(self, out: Path) -> None:
        from safetensors.torch import save_file

        state = {f"decoder.{k}": v for k, v in _decoder_state(self.phi_decoder).items()}
        state["head.weight"] = self.phi_head.weight
        state["head.bias"] = self.phi_head.bias
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(out / PHI_WEIGHTS))
        meta = {
            "format": PHI_FORMAT,
            "family": "t5",
            "d_model": self.d_model,
            "num_decoder_layers": int(getattr(self.config, "num_decoder_layers", 0) or 0),
            "vocab_size": self.vocab_size,
            "shared_embedding_fingerprint": embedding_fingerprint(self.shared.weight),
        }
        (out / PHI_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")


def _own_params(stack: nn.Module) -> list[nn.Parameter]:
    """A decoder stack's parameters without its input embedding (the frozen shared one)."""
    return [p for n, p in stack.named_parameters() if not n.startswith("embed_tokens.")]


def load_t5(path: str, *, where: str | Path | None = None, **kwargs: Any) -> nn.Module:
    """``T5ForConditionalGeneration.from_pretrained(path, **kwargs)``, its failures one BcoderError.

    A local directory's JSON files and weight headers are parsed first, so a corrupt file is named;
    ``where`` (default ``path``) is what the message calls the model.
    """
    from safetensors import SafetensorError
    from transformers import T5ForConditionalGeneration

    if Path(path).is_dir():
        files.check_t5_dir(Path(path))
    try:
        with _quiet_untied_notice():
            return T5ForConditionalGeneration.from_pretrained(path, **kwargs)
    # What transformers raises for files that parse but do not describe a T5 of these weights
    # (a config of another shape, a list for a config, a missing tensor).
    except (OSError, ValueError, RuntimeError, TypeError, KeyError, AttributeError, SafetensorError) as exc:
        raise BcoderError(
            f"model {where or path}: cannot load a T5 checkpoint ({files.first_line(exc)})"
        ) from exc


# -------------------------------------------------------------------------------------- the family
def _generate_t5(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    uniforms: Tensor,
    *,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    eos_ids: Collection[int],
    rows_of_prompt: Any = None,
) -> list[tuple[list[int], bool]]:
    """Decode one program per row: (token ids without EOS, ended with EOS) per row.

    ``input_ids``/``attention_mask`` are the distinct prompts [P,S]; ``rows_of_prompt`` [B] maps
    each row to its prompt (None: one row per prompt). ``uniforms`` [B, ≥max_new_tokens]. The
    encoder runs once per prompt; the decoder runs with a KV cache and finished rows leave the batch.
    """
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    from bcoder_core.rl.sampling import collect_steps, pick_tokens

    eos = torch.tensor(sorted(eos_ids))
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    attention_mask = attention_mask.to(device)
    eos = eos.to(device)
    with torch.inference_mode():
        enc = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if rows_of_prompt is not None:
            rows_of_prompt = torch.as_tensor(rows_of_prompt, device=device)
            enc = enc.index_select(0, rows_of_prompt)
            mask = attention_mask.index_select(0, rows_of_prompt)
        else:
            mask = attention_mask
        bsz = enc.shape[0]
        start = model.config.decoder_start_token_id
        if start is None:
            start = model.config.pad_token_id
        cache = EncoderDecoderCache(DynamicCache(config=model.config), DynamicCache(config=model.config))
        alive = torch.arange(bsz, device=device)  # original row of each live row
        tokens = torch.full((bsz, 1), start, dtype=torch.long, device=device)
        u = uniforms.to(device)
        steps: list[tuple[Tensor, Tensor]] = []  # (alive rows, tokens) per step, gathered at the end
        for t in range(max_new_tokens):
            logits = model(
                encoder_outputs=(enc,),
                attention_mask=mask,
                decoder_input_ids=tokens,
                cache=cache,
                use_cache=True,
            ).logits[:, -1, :]
            nxt = pick_tokens(logits, u[alive, t], temperature, top_p)
            steps.append((alive, nxt))
            done = torch.isin(nxt, eos)
            if t + 1 == max_new_tokens:
                break
            if bool(done.any()):
                keep = (~done).nonzero().squeeze(1)
                if keep.numel() == 0:
                    break
                cache.batch_select_indices(keep)
                enc, mask, alive, nxt = enc[keep], mask[keep], alive[keep], nxt[keep]
            tokens = nxt.unsqueeze(1)
    return collect_steps(steps, bsz, set(eos_ids))


def _no_chat(prompt_format: str) -> None:
    if prompt_format != "completion":
        raise BcoderError(f"prompt_format {prompt_format!r}: a T5 checkpoint takes completion prompts only")


class T5Family:
    """``T5ForConditionalGeneration`` checkpoints (CodeT5, the CodeRL checkpoint, small T5 shapes)."""

    name = "t5"

    def handles(self, fields: dict[str, Any]) -> bool:
        return fields.get("model_type", "t5") == "t5" or "T5ForConditionalGeneration" in (
            fields.get("architectures") or []
        )

    def model_class(self) -> type[T5QModel]:
        return T5QModel

    def build_config(self, fields: dict[str, Any]) -> Any:
        from transformers import T5Config

        return T5Config(**{k: v for k, v in fields.items() if k != "model_type"})

    def random_model(self, config: Any, *, seed: int = 0, dtype: Any = None) -> Any:
        from transformers import T5ForConditionalGeneration

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            t5 = T5ForConditionalGeneration(config)
        return t5.to(dtype or torch.float32)

    def load_lm(self, path: str, *, where: str | Path | None = None, **kwargs: Any) -> Any:
        return load_t5(path, where=where, **kwargs)

    def prompt_ids(
        self, problem: Any, tokenizer: Any, max_source_tokens: int, prompt_format: str
    ) -> list[int]:
        """``<s> prompt </s>`` as the encoder reads it (CodeRL's ``encode(..., max_length=600)``)."""
        from bcoder_core.prompts import build_prompt

        _no_chat(prompt_format)
        text = build_prompt(problem, tokenizer, max_source_tokens)
        return list(tokenizer(text, truncation=True, max_length=max_source_tokens)["input_ids"])

    def program_ids(self, tokenizer: Any, code: str, prompt_format: str) -> list[int]:
        from bcoder_core.model.tokenizer import encode_program

        _no_chat(prompt_format)
        return encode_program(tokenizer, code)

    def program_text(self, tokenizer: Any, ids: Sequence[int], prompt_format: str) -> str:
        from bcoder_core.model.tokenizer import decode_program

        return decode_program(tokenizer, ids)

    def eos_ids(self, tokenizer: Any, model: Any) -> set[int]:
        return {int(tokenizer.eos_token_id)}

    generate = staticmethod(_generate_t5)


FAMILY = T5Family()
