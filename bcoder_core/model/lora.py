"""Two LoRA adapters on one frozen causal LM: thin, named helpers over ``peft``.

B-Coder keeps a single frozen base checkpoint in memory and trains only adapters on it:

* adapters disabled: the frozen checkpoint θ_ckpt (the reference policy);
* adapter ``"theta"`` active: the policy θ;
* adapter ``"phi"`` active: the Q-network body (its last hidden state feeds a value head).

This module only names the few ``peft`` operations the trainer needs and pins down the contracts that
``peft`` leaves implicit: deterministic adapter init, switching adapters without touching trainability,
bit-exact adapter state round trips, and exporting θ both as a merged plain Hugging Face model and as a
PEFT adapter directory, without disturbing the live (still training) model.

``peft`` and ``transformers`` are imported inside the functions so that importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from bcoder_core.errors import BcoderError

if TYPE_CHECKING:
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

__all__ = [
    "active",
    "adapter_parameters",
    "adapter_state",
    "attach_adapters",
    "load_adapter_state",
    "merged_state_dict",
    "save_adapter",
    "save_merged",
]

# peft 0.21 probes ``model.is_gradient_checkpointing``, which transformers 5 deprecated in favour of
# ``is_activation_checkpointing``; the FutureWarning is about peft's code, not ours, so it is silenced there.
_GC_DEPRECATION = r"`is_gradient_checkpointing` is deprecated"


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_GC_DEPRECATION, category=FutureWarning)
        yield


def attach_adapters(
    model: nn.Module,
    names: Sequence[str],
    *,
    r: int,
    alpha: float,
    dropout: float,
    target_modules: str | list[str],
    seed: int = 0,
) -> PeftModel:
    """Wrap ``model`` with one LoRA adapter per name (same settings), all base weights frozen.

    The adapters' initial weights are drawn from torch's default generator(s) re-seeded with ``seed``
    inside :func:`torch.random.fork_rng`, so every rank and every run builds bit-identical adapters while
    the caller's global RNG state is left exactly as it was (data order, dropout etc. are unaffected).
    ``lora_B`` starts at zero, so each adapter starts as the identity: θ = φ-body = θ_ckpt at step 0.

    ``target_modules="all-linear"`` is peft's shorthand: every ``nn.Linear`` / GPT-2 ``Conv1D`` except
    the LM head. GPT-2's ``Conv1D`` stores its weight transposed; ``fan_in_fan_out`` is set for such
    models so peft does not have to flip it (with a warning) per layer.

    ``model`` is modified in place (its target layers are replaced by LoRA wrappers); use the returned
    model from now on. ``names[0]`` is the active adapter on return, adapters enabled, and every adapter's
    weights are trainable (``requires_grad=True``): which adapter takes part in a forward pass is chosen
    with :func:`active`, not by toggling trainability.
    """
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers.pytorch_utils import Conv1D

    names = list(names)
    if not names:
        raise BcoderError("attach_adapters: no adapter names given")
    if any(not isinstance(n, str) or not n for n in names) or len(set(names)) != len(names):
        raise BcoderError(f"attach_adapters: adapter names must be distinct non-empty strings (got {names})")
    if isinstance(model, PeftModel):
        raise BcoderError("attach_adapters: the model already has adapters (it is a PeftModel)")
    if r < 1:
        raise BcoderError(f"attach_adapters: r must be >= 1 (got {r})")
    if not 0.0 <= dropout < 1.0:
        raise BcoderError(f"attach_adapters: dropout must be in [0, 1) (got {dropout})")

    fan_in_fan_out = any(isinstance(m, Conv1D) for m in model.modules())

    def config() -> LoraConfig:
        # A fresh config per adapter: peft rewrites fields in place (target_modules, fan_in_fan_out).
        return LoraConfig(
            r=r,
            lora_alpha=alpha,
            lora_dropout=dropout,
            target_modules=target_modules,
            fan_in_fan_out=fan_in_fan_out,
            bias="none",
            task_type="CAUSAL_LM",
        )

    # peft creates the LoRA layers on the default device and moves them to the base layer's device, but
    # seed (and restore) the model's CUDA generators too in case the default device is CUDA.
    cuda = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda, device_type="cuda"), _quiet_peft():
        torch.default_generator.manual_seed(seed)
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        peft_model = get_peft_model(model, config(), adapter_name=names[0])
        for name in names[1:]:
            peft_model.add_adapter(name, config())
        peft_model.set_adapter(names[0])
    # peft makes only the active adapter trainable; both are trained here (in different forward passes).
    peft_model.base_model.set_requires_grad(names, requires_grad=True)
    return peft_model


def _lora_layers(peft_model: PeftModel) -> list[LoraLayer]:
    from peft.tuners.lora import LoraLayer

    return [m for m in peft_model.modules() if isinstance(m, LoraLayer)]


def _require_adapter(peft_model: PeftModel, name: str) -> None:
    known = list(getattr(peft_model, "peft_config", {}))
    if name not in known:
        raise BcoderError(f"no LoRA adapter named {name!r} (the model has: {', '.join(known) or 'none'})")


def _all_adapter_parameters(peft_model: PeftModel) -> list[nn.Parameter]:
    return [p for name in peft_model.peft_config for p in adapter_parameters(peft_model, name)]


def _set_state(peft_model: PeftModel, adapter: str, enabled: bool) -> None:
    """Make ``adapter`` the active one and enable/disable all adapter layers, keeping ``requires_grad``.

    peft's switches also set ``requires_grad`` (only the active adapter trainable, nothing when
    disabled); that would silently freeze the other adapter for the optimizer, so the caller's flags are
    put back: switching adapters only changes which weights the forward pass uses.
    """
    params = _all_adapter_parameters(peft_model)
    flags = [p.requires_grad for p in params]
    peft_model.set_adapter(adapter)
    if enabled:
        peft_model.base_model.enable_adapter_layers()
    else:
        peft_model.base_model.disable_adapter_layers()
    for p, flag in zip(params, flags, strict=True):
        p.requires_grad_(flag)


@contextlib.contextmanager
def active(peft_model: PeftModel, name: str | None) -> Iterator[None]:
    """Within the block only adapter ``name`` is active (``None``: adapters disabled = the base model).

    The previous active adapter and enabled/disabled state are restored on exit (also on error), so
    blocks nest. ``requires_grad`` flags are not changed: a forward pass inside the block only runs
    through the active adapter's weights, so a backward pass (inside or after the block) gives gradients
    to those weights only; with ``None`` the output does not depend on any trainable weight.

    With activation (gradient) checkpointing, the backward pass re-runs the forward of each checkpointed
    layer under whatever adapter is active *then*: call ``backward()`` inside the block in that case.
    """
    if name is not None:
        _require_adapter(peft_model, name)
    layers = _lora_layers(peft_model)
    previous = peft_model.active_adapter
    was_enabled = not any(layer.disable_adapters for layer in layers)
    if name is None:
        _set_state(peft_model, previous, enabled=False)
    else:
        _set_state(peft_model, name, enabled=True)
    try:
        yield
    finally:
        _set_state(peft_model, previous, enabled=was_enabled)


def adapter_parameters(peft_model: PeftModel, name: str) -> list[nn.Parameter]:
    """The trainable parameters of adapter ``name`` (its ``lora_A`` / ``lora_B`` weights).

    In module order, so the order is the same on every rank and every run (optimizer state that is saved
    by position lines up on reload); a parameter shared by two layers is listed once.
    """
    _require_adapter(peft_model, name)
    params: list[nn.Parameter] = []
    seen: set[int] = set()
    for layer in _lora_layers(peft_model):
        for attr in layer.adapter_layer_names:
            container = getattr(layer, attr, None)
            if container is None or name not in container:
                continue
            item = container[name]
            for p in [item] if isinstance(item, nn.Parameter) else item.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
    return params


def adapter_state(peft_model: PeftModel, name: str) -> dict[str, Tensor]:
    """A snapshot of adapter ``name``'s weights (peft's adapter state dict: keys without the adapter name).

    The tensors are copies, so the snapshot does not change as training goes on; because the keys carry
    no adapter name, a state taken from one adapter can be loaded into another (e.g. θ into a new run).
    """
    from peft import get_peft_model_state_dict

    _require_adapter(peft_model, name)
    # save_embedding_layers=False: "auto" may look the base model up on the Hugging Face Hub.
    state = get_peft_model_state_dict(peft_model, adapter_name=name, save_embedding_layers=False)
    return {k: v.detach().clone() for k, v in state.items()}


def load_adapter_state(peft_model: PeftModel, name: str, state: dict[str, Tensor]) -> None:
    """Restore adapter ``name`` exactly (bit-identical) from a state made by :func:`adapter_state`.

    Everything is checked before anything is written, so a bad state leaves the adapter untouched: a
    missing or unexpected key, a non-tensor, or a shape or dtype mismatch is a :class:`BcoderError`
    (a dtype cast would not be an exact restore).
    """
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    _require_adapter(peft_model, name)
    expected = get_peft_model_state_dict(peft_model, adapter_name=name, save_embedding_layers=False)
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]}")
        raise BcoderError(f"adapter {name!r} state does not match the model: {'; '.join(parts)}")
    for key, want in expected.items():
        got = state[key]
        if not isinstance(got, Tensor):
            raise BcoderError(f"adapter {name!r} state: {key} is a {type(got).__name__}, not a tensor")
        if got.shape != want.shape:
            raise BcoderError(
                f"adapter {name!r} state: {key} has shape {tuple(got.shape)}, the model expects {tuple(want.shape)}"
            )
        if got.dtype != want.dtype:
            raise BcoderError(f"adapter {name!r} state: {key} is {got.dtype}, the model expects {want.dtype}")
    result = set_peft_model_state_dict(peft_model, state, adapter_name=name)
    if result.unexpected_keys:  # peft could not place a key it was given (not expected after the checks)
        raise BcoderError(f"adapter {name!r} state: peft could not load {result.unexpected_keys[0]}")


def _owning_layer(key: str, layers: dict[str, LoraLayer]) -> str | None:
    """The name of the LoRA layer whose sub-tree holds state-dict entry ``key`` (None: not under one)."""
    parts = key.split(".")
    for end in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in layers:
            return prefix
    return None


def merged_state_dict(peft_model: PeftModel, name: str) -> dict[str, Tensor]:
    """The base model's state dict with adapter ``name`` merged in (W + ΔW), under plain HF key names.

    This is bit-for-bit what ``peft``'s ``merge_and_unload`` would give (ΔW is peft's ``get_delta_weight``,
    added in the wider of the two dtypes and rounded once to the base weight's dtype), but the live model
    is not modified: it keeps training and serving, and merging + unmerging in place would not restore W
    bit-exactly. Keys are those of the original HF
    model (no ``base_layer`` / ``lora_`` entries); with tied embeddings the tied copy (``lm_head.weight``)
    is left out, as ``save_pretrained`` does. Merged weights are new tensors; every other entry shares
    memory with the live model (no copy of a multi-GB base), so treat the result as read-only.
    """
    from peft.tuners.lora import LoraLayer

    _require_adapter(peft_model, name)
    base = peft_model.get_base_model()
    layers = {n: m for n, m in base.named_modules() if isinstance(m, LoraLayer)}
    state: dict[str, Tensor] = {}
    live_key: dict[str, str] = {}
    for key, tensor in base.state_dict().items():
        owner = _owning_layer(key, layers)
        if owner is None:
            plain = key
        elif key.startswith(f"{owner}.base_layer."):
            plain = f"{owner}.{key.removeprefix(f'{owner}.base_layer.')}"
        else:
            continue  # lora_A / lora_B / ... of some adapter
        state[plain] = tensor
        live_key[plain] = key

    merged: set[str] = set()
    with torch.no_grad():
        for owner, layer in layers.items():
            if name not in layer.lora_A and name not in layer.lora_embedding_A:
                continue  # this adapter does not target this layer
            if layer.merged:
                raise BcoderError(f"{owner}: adapters are merged into the live weights; unmerge them first")
            if layer.use_dora.get(name) or layer.lora_bias.get(name):
                raise BcoderError(
                    f"{owner}: adapter {name!r} uses DoRA or a LoRA bias, which is not supported"
                )
            key = f"{owner}.weight"
            weight = state[key]
            # Add in the wider dtype, round once (fp32 adapters on a bf16 base), like peft's default merge.
            state[key] = torch.add(weight, layer.get_delta_weight(name)).to(weight.dtype)
            merged.add(key)

    tied = getattr(base, "all_tied_weights_keys", None) or getattr(base, "_tied_weights_keys", None) or {}
    if isinstance(tied, dict):
        for target, source in tied.items():
            if target not in state or source not in state:
                continue
            if base.get_parameter(live_key[target]) is not base.get_parameter(live_key[source]):
                continue  # declared tied but not tied in this model: keep both
            if target in merged or source in merged:
                raise BcoderError(
                    f"adapter {name!r} targets the tied weight {target if target in merged else source}; "
                    "a merged model would apply it to both ends of the tie"
                )
            del state[target]
    return state


def save_merged(peft_model: PeftModel, name: str, out_dir: Path) -> None:
    """Write base + adapter ``name`` as a plain HF causal-LM directory (no peft needed to load it).

    The directory has ``config.json``, ``generation_config.json`` (when the model has one) and
    ``model.safetensors``; ``AutoModelForCausalLM.from_pretrained(out_dir)`` gives the logits of the
    base with ``name`` active. Written by the base model's own ``save_pretrained`` with the merged state
    dict (see :func:`merged_state_dict`), so the live model is left as it was.
    """
    state = merged_state_dict(peft_model, name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_model.get_base_model().save_pretrained(out_dir, state_dict=state)


def save_adapter(peft_model: PeftModel, name: str, out_dir: Path) -> None:
    """Write adapter ``name`` as a PEFT adapter directory that ``PeftModel.from_pretrained(base, out_dir)``
    loads on the base model (``adapter_config.json`` + ``adapter_model.safetensors``).

    ``PeftModel.save_pretrained`` puts an adapter not named ``"default"`` in ``<dir>/<name>/``; it saves
    into a temporary directory next to ``out_dir`` and the adapter's files are moved up to ``out_dir``.
    """
    _require_adapter(peft_model, name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.") as tmp:
        peft_model.save_pretrained(tmp, selected_adapters=[name], save_embedding_layers=False)
        written = Path(tmp) if name == "default" else Path(tmp) / name
        for path in written.iterdir():
            if path.is_file() and path.name != "README.md":  # peft's model card, not part of the adapter
                os.replace(path, out_dir / path.name)
