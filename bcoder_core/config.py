"""Typed, frozen training configurations loaded from YAML with ``a.b=value`` overrides (DESIGN §5).

Every config is a frozen dataclass whose fields carry *attribute docstrings* (a string literal right
after the field); :func:`field_docs` reads them from the source so ``bcoder train phi --show-config``
can print each resolved value next to what it means. Loading is strict: an unknown key or a value of
the wrong type is one :class:`~bcoder_core.errors.ConfigError` line naming the key and the file (or
``<override>`` for a command-line override).

The stage configs (:class:`SFTConfig`, :class:`PhiConfig`, :class:`ThetaConfig`) share
:class:`TrainConfig`; the paper's APPS presets and the tiny CPU presets live in ``configs/train/``.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import re
import textwrap
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from bcoder_core.errors import ConfigError, ConfigValueError, check

T = TypeVar("T")

_REQUIRED = "<required>"
_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


# --------------------------------------------------------------------------------------------------
# The configurations
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoraSpec:
    """LoRA adapters (peft) for the phi and theta stages of a causal LM (DESIGN §2.2, LoRA)."""

    enable: bool = False
    """Train adapters on one frozen base model instead of full copies of it (phi and theta)."""
    r: int = 16
    """Rank of each adapter's update B·A."""
    alpha: float = 32.0
    """LoRA scaling numerator: the update is (alpha / r)·B·A."""
    dropout: float = 0.0
    """Dropout on the adapters' input."""
    target_modules: list[str] | str = "all-linear"
    """Modules that get adapters: peft's "all-linear" (every linear layer but the LM head) or a list
    of module names (e.g. [q_proj, v_proj])."""

    def __post_init__(self) -> None:
        check(self.r >= 1, "r", f"must be >= 1 (got {self.r})")
        check(self.alpha > 0, "alpha", f"must be > 0 (got {self.alpha})")
        check(0 <= self.dropout < 1, "dropout", f"must lie in [0, 1) (got {self.dropout})")
        check(
            bool(self.target_modules),
            "target_modules",
            "must be all-linear or a non-empty list of module names",
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """Where the model's weights and tokenizer come from."""

    init: str = ""
    """Checkpoint directory or artifact URI to start from: a Hugging Face T5 (CodeT5-large-ntp-py,
    the CodeRL checkpoint) or causal LM (Qwen2.5-Coder, DeepSeek-Coder, ...), or an sft output. The
    family is read from its config.json. Empty: random initialisation from `shape`."""
    shape: str = ""
    """Model shape for random initialisation when `init` is empty: a name in configs/models/ (tiny,
    llama-tiny, ...) or a config JSON file (`model_type` picks the family; T5 when absent); ignored
    when `init` is set."""
    lora: LoraSpec = dataclasses.field(default_factory=LoraSpec)
    """LoRA adapters for phi and theta (causal LMs); off: full fine-tuning."""
    tokenizer: str = "auto"
    """Tokenizer: "auto" (the one saved in `init` if it has one, else "codet5"), "codet5" (bundled),
    "tiny", a tokenizer directory, or "train:<vocab_size>" (sft only: train a tiny byte-level BPE on
    the problem set first). It is saved with the exported model so later stages find it."""

    def __post_init__(self) -> None:
        # A LoRA θ names its base checkpoint; a random init lives in scratch and is gone after the run.
        check(
            not (self.lora.enable and not self.init),
            "lora.enable",
            "LoRA needs init (the base checkpoint the adapters belong to), not a random shape",
        )
        if self.tokenizer.startswith("train:"):
            size = self.tokenizer.removeprefix("train:")
            # The tiny BPE holds 5 specials and 256 bytes before any merge (model/tokenizer.py).
            check(
                size.isdigit() and int(size) >= 261,
                "tokenizer",
                f"train:<vocab_size> needs an integer vocab_size >= 261 (got {self.tokenizer!r})",
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """AdamW and the learning-rate schedule."""

    lr: float = 1e-5
    """Peak learning rate."""
    weight_decay: float = 0.05
    """AdamW decoupled weight decay."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.999
    """AdamW beta2."""
    eps: float = 1e-8
    """AdamW epsilon."""
    schedule: Literal["constant", "linear"] = "constant"
    """Learning-rate schedule after warm-up: constant, or linear decay to 0 at `max_steps`."""
    warmup_steps: int = 0
    """Linear warm-up steps from 0 to `lr` (the paper uses none)."""
    grad_clip: float = 0.0
    """Clip the global gradient norm to this value; 0 disables clipping (the norm is still logged)."""
    value_head_lr_mult: float = 1.0
    """Learning-rate multiplier of the freshly initialised scalar value heads (φ's head in the phi
    stage, h1 in the theta stage); 1 is the paper. A one-unit head on a pre-trained decoder moves
    about lr per Adam step, too slowly to fit returns in a short run."""

    def __post_init__(self) -> None:
        check(self.lr > 0, "lr", f"must be > 0 (got {self.lr})")
        check(self.weight_decay >= 0, "weight_decay", f"must be >= 0 (got {self.weight_decay})")
        check(0 <= self.beta1 < 1, "beta1", f"must lie in [0, 1) (got {self.beta1})")
        check(0 <= self.beta2 < 1, "beta2", f"must lie in [0, 1) (got {self.beta2})")
        check(self.eps > 0, "eps", f"must be > 0 (got {self.eps})")
        check(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0 (got {self.warmup_steps})")
        check(self.grad_clip >= 0, "grad_clip", f"must be >= 0 (got {self.grad_clip})")
        check(
            self.value_head_lr_mult > 0,
            "value_head_lr_mult",
            f"must be > 0 (got {self.value_head_lr_mult})",
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class MetricsConfig:
    """Prometheus metrics served by rank 0 (DESIGN §6)."""

    enable: bool = True
    """Serve /metrics from rank 0 during training."""
    port: int = 9090
    """Port of the /metrics endpoint."""

    def __post_init__(self) -> None:
        check(0 < self.port < 65536, "port", f"must lie in 1..65535 (got {self.port})")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Settings shared by the sft, phi and theta stages."""

    seed: int = 0
    """Seed of every random number generator (python, numpy, torch, data order)."""
    output: str
    """Output URI (local directory or s3://bucket/prefix): step_N/ checkpoints, the `latest` marker,
    and the exported model in final/."""
    model: ModelSpec = dataclasses.field(default_factory=ModelSpec)
    """Model initialisation and tokenizer."""
    max_source_tokens: int = 600
    """Prompt length limit in tokens."""
    max_target_tokens: int = 512
    """Program length limit in tokens."""
    batch_size: int = 16
    """Programs per device per micro-batch; the global batch is batch_size x grad_accum x world size."""
    grad_accum: int = 1
    """Gradient accumulation: micro-batches per optimiser step."""
    length_bucketing: Literal["off", "micro", "window"] = "micro"
    """Batch programs of similar length together (DESIGN §2.7): off (sampling order), micro (each
    step's programs as off, grouped by length into its micro-batches; no effect with one
    micro-batch per step), window (also the steps' batches cut by length within windows of
    bucket_window batches that see off's programs). rho_real stays exact per batch, batch k a pure
    function of k, the loss the token mean of the global batch. Default micro: a step's gradient
    is off's (the paper's batches), with less padding; window also makes whole batches of one
    length, which learned worse on the built-in benchmark (DESIGN §2.7)."""
    bucket_window: int = 64
    """Global batches per length-bucketing window (length_bucketing window): each window of
    bucket_window steps sees exactly off's programs, regrouped by length among its steps."""
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    """Optimiser and schedule."""
    max_steps: int = 1000
    """Optimiser steps to train for."""
    save_every: int = 500
    """Write a checkpoint every this many optimiser steps (and always at the end); 0: only at the end."""
    keep_checkpoints: int = 2
    """Keep at most this many step_N/ checkpoints (older ones are deleted after a successful save);
    0 keeps all."""
    log_every: int = 10
    """Log a line (and record telemetry) every this many optimiser steps."""
    metrics: MetricsConfig = dataclasses.field(default_factory=MetricsConfig)
    """Prometheus metrics."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """Compute precision: "auto" = bf16 autocast on CUDA, fp32 on CPU."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Device: "auto" picks CUDA when available."""
    num_workers: int = 1
    """Background threads that read and collate the next batches while a step runs (0: load in the
    training loop)."""
    dropout: float | None = None
    """Override the model's dropout rate (None keeps the checkpoint's)."""
    ddp_find_unused: bool = False
    """Pass find_unused_parameters=True to DistributedDataParallel."""

    def __post_init__(self) -> None:
        check(bool(self.output), "output", "must be set (a local directory or s3://bucket/prefix)")
        for key in (
            "max_source_tokens", "max_target_tokens", "batch_size", "grad_accum", "max_steps",
            "bucket_window",
        ):  # fmt: skip
            value = getattr(self, key)
            check(value >= 1, key, f"must be >= 1 (got {value})")
        for key in ("save_every", "keep_checkpoints", "num_workers"):
            value = getattr(self, key)
            check(value >= 0, key, f"must be >= 0 (got {value})")
        check(self.log_every >= 1, "log_every", f"must be >= 1 (got {self.log_every})")
        check(
            self.dropout is None or 0 <= self.dropout < 1,
            "dropout",
            f"must lie in [0, 1) (got {self.dropout})",
        )
        # On CPU the trainers compute in fp32 whatever precision says: a run would claim bf16 and not be it.
        check(
            not (self.precision == "bf16" and self.device == "cpu"),
            "precision",
            "bf16 needs CUDA (device auto or cuda); on device cpu training runs in fp32",
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class SFTConfig(TrainConfig):
    """Supervised fine-tuning of the whole model on (prompt, tab re-indented solution) pairs: the
    stand-in checkpoint where no public one exists (the built-in benchmark)."""

    problems: str
    """Problem set URI (JSONL or a directory of shards); every reference solution is a target."""
    max_solutions_per_problem: int = 0
    """Use at most this many reference solutions per problem (0: all)."""
    prompt_format: Literal["completion", "chat"] = "completion"
    """How a causal LM sees a problem (completion prompt or chat template); the sample, annotate
    and rank stages of the run must use the same. T5 takes completion only."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(bool(self.problems), "problems", "must be set (a problem set URI)")
        check(
            self.max_solutions_per_problem >= 0,
            "max_solutions_per_problem",
            f"must be >= 0 (got {self.max_solutions_per_problem})",
        )


def _check_rl(cfg: PhiConfig | ThetaConfig) -> None:
    """The checks the two RL stages share: γ ∈ (0, 1] (γ = 0 makes every target the bare reward and
    the bounds of DESIGN §2.3 divide by 1 − γ), ρ_real ∈ [0, 1], a cache budget ≥ 0."""
    check(0 < cfg.gamma <= 1, "gamma", f"must lie in (0, 1] (got {cfg.gamma})")
    check(0 <= cfg.rho_real <= 1, "rho_real", f"must lie in [0, 1] (got {cfg.rho_real})")
    check(cfg.encoder_cache_mb >= 0, "encoder_cache_mb", f"must be >= 0 (got {cfg.encoder_cache_mb})")
    check(bool(cfg.transitions), "transitions", "must be set (the store `bcoder annotate` wrote)")
    # phi and theta train on the token ids already in the store, made with model.init's tokenizer.
    check(
        not cfg.model.tokenizer.startswith("train:"),
        "model.tokenizer",
        f"{cfg.model.tokenizer!r} is for sft only; use the tokenizer saved with model.init (auto)",
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class PhiConfig(TrainConfig):
    """Phi stage: pre-train V_phi with the conservative TD loss (DESIGN §2.4, paper Eq. 12)."""

    transitions: str
    """Transition store URI written by `bcoder annotate` (needs ckpt_adv)."""
    gamma: float = 0.999
    """Discount factor."""
    rho_real: float = 0.5
    """Fraction of ground-truth programs in every batch (DESIGN §2.7)."""
    encoder_cache_mb: int = 1024
    """Keep the frozen encoder's states of every prompt for the whole run, each prompt encoded once
    (T5; DESIGN §2.6), if the store's prompts fit in this many MiB (fp32 states); else, and with 0,
    every batch runs the encoder."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_rl(self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ThetaConfig(TrainConfig):
    """Theta stage: fine-tune Q_theta with L_Q + beta_adv L_adv + beta_ce L_ce (DESIGN §2.5)."""

    transitions: str
    """Transition store URI written by `bcoder annotate --phi` (needs ckpt_adv, ckpt_greedy, v_phi)."""
    phi: str = ""
    """Phi checkpoint URI (the phi stage's final/ export). V_phi itself comes from the store's v_phi
    column; when set, phi is checked and copied beside θ in final/, so ranking needs one directory."""
    gamma: float = 0.999
    """Discount factor."""
    beta_q: float = 1.0
    """Weight of the TD term L_Q: 1 is B-Coder; 0 is the ablation "theta without RL" (only the
    ground-truth terms L_adv, L_ce train θ)."""
    beta_adv: float = 0.1
    """Weight of the advantage regulariser L_adv."""
    beta_ce: float = 0.5
    """Weight of the cross-entropy term L_ce on ground-truth programs."""
    alpha: float = 1.0
    """Policy temperature alpha of the energy-based policy."""
    rho_real: float = 0.5
    """Fraction of ground-truth programs in every batch (DESIGN §2.7)."""
    encoder_cache_mb: int = 1024
    """Keep the frozen encoder's states of every prompt for the whole run, each prompt encoded once
    (T5; DESIGN §2.6), if the store's prompts fit in this many MiB (fp32 states); else, and with 0,
    every batch runs the encoder."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_rl(self)
        for key in ("beta_q", "beta_adv", "beta_ce"):
            value = getattr(self, key)
            check(value >= 0, key, f"must be >= 0 (got {value})")
        check(
            self.beta_q + self.beta_adv + self.beta_ce > 0,
            "beta_ce",
            "must be > 0 when beta_q and beta_adv are 0 (the loss would be 0: nothing trains)",
        )
        check(self.alpha > 0, "alpha", f"must be > 0 (got {self.alpha})")


STAGE_CONFIGS: dict[str, type] = {"sft": SFTConfig, "phi": PhiConfig, "theta": ThetaConfig}


# --------------------------------------------------------------------------------------------------
# Field documentation
# --------------------------------------------------------------------------------------------------


def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstring of every field of dataclass ``cls`` (base classes included)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # no source (frozen app): fields stay undocumented
            continue
        body = ast.parse(source).body[0]
        assert isinstance(body, ast.ClassDef)
        stmts = body.body
        for prev, nxt in itertools.pairwise(stmts):
            if (
                isinstance(prev, ast.AnnAssign)
                and isinstance(prev.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[prev.target.id] = " ".join(nxt.value.value.split())
    return docs


# --------------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


_YAML_BOOLS = {False: ("off", "no", "false", "n"), True: ("on", "yes", "true", "y")}


def _convert(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check ``value`` against type ``tp`` and return it (ints are accepted for floats)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key} must be a mapping, got {type(value).__name__}")
        return _build(tp, value, where, prefix=f"{key}.")
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {key} must be a list, got {value!r}")
        return [_convert(v, item, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is Literal:
        choices = typing.get_args(tp)
        if type(value) is bool:
            # YAML reads an unquoted off/no/false (on/yes/true) as a bool: give back the choice
            # the user wrote when the field has exactly one such spelling.
            spelled = [c for c in choices if isinstance(c, str) and c.lower() in _YAML_BOOLS[value]]
            if len(spelled) == 1:
                return spelled[0]
        elif value in choices:
            return value
        raise ConfigError(f"{where}: {key} must be one of {_type_name(tp)}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {key} must be {_type_name(tp)}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        # PyYAML follows YAML 1.1, where `1e-5` (no dot) is a string: accept that spelling.
        if isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a config class uses a type this loader does not know
        raise TypeError(f"unsupported config field type {tp!r} for {key}")
    raise ConfigError(f"{where}: {key} must be {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _build(cls: type[T], data: dict, where: str, prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in data:
        if name not in fields:
            known = ", ".join(prefix + f for f in fields)
            raise ConfigError(f"{where}: unknown key {prefix}{name!s} (known: {known})")
    kwargs = {}
    for name, field in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], prefix + name, where)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing required key {prefix}{name}")
    try:
        return cls(**kwargs)
    except ConfigValueError as exc:
        raise ConfigError(f"{where}: {prefix}{exc.key} {exc.message}") from None


def _parse_override(text: str) -> tuple[list[str], Any]:
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"<override>: {text!r} is not of the form key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"<override>: {key}: value {raw!r} is not a YAML scalar ({exc.problem})") from None
    return key.split("."), value


def _section_type(tp: Any) -> Any:
    """The dataclass behind an optional section (``StageTraining | None``), else ``tp`` itself."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        sections = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        if len(sections) == 1:
            return sections[0]
    return tp


def _apply_override(data: dict, cls: type, parts: list[str], value: Any) -> None:
    """Set ``parts`` in the nested mapping, checking each key against the dataclass."""
    node, klass = data, cls
    for i, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(klass)}
        dotted = ".".join(parts[: i + 1])
        if part not in fields:
            raise ConfigError(f"<override>: unknown key {dotted}")
        tp = _section_type(typing.get_type_hints(klass)[part])
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(tp) and not isinstance(value, dict):
                raise ConfigError(f"<override>: {dotted} is a section; set one of its keys")
            node[part] = value
            return
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"<override>: {dotted} is not a section")
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"<override>: {dotted} must be a mapping")
        node, klass = child, tp


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    values: Mapping[str, Any] | None = None,
) -> T:
    """Load ``cls`` from the YAML file ``path`` (optional) with ``a.b=value`` overrides applied.

    Override values are parsed as YAML scalars (``lr=3e-5`` is a float, ``enable=false`` a bool).
    ``values`` (dotted key → Python value, e.g. from a command's flags) are applied last, so a flag
    wins over an override, which wins over the file, which wins over the defaults.
    Raises ConfigError (one line naming the key and the file) on an unknown key, a wrong type, a
    value out of range, a missing required key, or unreadable YAML.
    """
    data: dict = {}
    where = str(path) if path is not None else "<override>"
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f" line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}:{line} invalid YAML ({getattr(exc, 'problem', exc)})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(loaded).__name__}")
        data = loaded
    override_keys = set()
    for text in overrides:
        parts, value = _parse_override(text)
        _apply_override(data, cls, parts, value)
        override_keys.add(".".join(parts))
    for key, value in (values or {}).items():
        _apply_override(data, cls, key.split("."), value)
        override_keys.add(key)
    try:
        return _build(cls, data, where)
    except ConfigError as exc:
        # A bad value that came from an override is the override's fault, not the file's.
        msg = str(exc)
        for key in override_keys:
            if msg.startswith((f"{where}: {key} ", f"{where}: missing required key {key}")) and (
                where != "<override>"
            ):
                raise ConfigError(msg.replace(where, "<override>", 1)) from None
        raise


def to_overrides(cfg: Any, *, always_factory: bool = False) -> list[str]:
    """``key=value`` overrides that rebuild ``cfg`` from its class defaults (only the keys that differ).

    This is how an executor (the local pipeline, a cluster workflow) renders a stage's settings onto
    the stage command's line: ``load_config(type(cfg), None, to_overrides(cfg)) == cfg``.
    """
    out: list[str] = []
    defaults = _defaults(type(cfg), always_factory)
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if dataclasses.is_dataclass(value):
            out += [f"{field.name}.{o}" for o in to_overrides(value, always_factory=always_factory)]
        elif field.name not in defaults or defaults[field.name] != value:
            out.append(f"{field.name}={_yaml_scalar(value)}")
    return out


def cli_flags(spec: str) -> dict[str, str]:
    """A config class's ``CLI_FLAGS`` (field → flag) from ``"field other_field field_s:--flag"``.

    A field's flag is ``--`` plus its name with dashes unless ``:--spelling`` follows it.
    """
    out = {}
    for item in spec.split():
        key, _, flag = item.partition(":")
        out[key] = flag or "--" + key.replace("_", "-")
    return out


def field_default(field: dataclasses.Field) -> Any:
    """The default value of a dataclass field (computed for a ``default_factory``); MISSING if none."""
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def to_argv(cfg: Any) -> list[str]:
    """Command-line words that rebuild ``cfg`` on a stage command: the keys that differ from the defaults.

    A key the stage command has a flag for (the class's ``CLI_FLAGS``: field → flag) is rendered as
    that flag when its value is a plain scalar (``--num-samples 4``), so a rendered command reads like
    one a person would type; every other key as a ``key=value`` override, which every stage command
    also takes. A field whose default is computed (``default_factory``) is always rendered: its
    default may differ on the machine that runs the command (e.g. the CPU count).
    """
    flags: Mapping[str, str] = getattr(type(cfg), "CLI_FLAGS", {})
    words: list[str] = []
    for item in to_overrides(cfg, always_factory=True):
        key, _, text = item.partition("=")
        value = yaml.safe_load(text)
        if key in flags and isinstance(value, int | float | str) and not isinstance(value, bool):
            words += [flags[key], str(value)]
        else:
            words.append(item)
    return words


def _defaults(cls: type, always_factory: bool = False) -> dict[str, Any]:
    return {
        f.name: field_default(f)
        for f in dataclasses.fields(cls)
        if f.default is not dataclasses.MISSING
        or (f.default_factory is not dataclasses.MISSING and not always_factory)
    }


def _yaml_scalar(value: Any) -> str:
    """``value`` as the YAML text :func:`_parse_override` reads back to an equal value."""
    if isinstance(value, float) and value.is_integer():
        return repr(value)  # "2.0", never "2": an int would not round-trip through a float field's check
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6)
    return text.removesuffix("\n...\n").strip()


def config_to_dict(cfg: Any) -> dict:
    """Plain nested dict of a config (YAML/JSON-able)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write ``cfg`` as YAML; :func:`load_config` reads it back to an equal config."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def describe_config(cls: type, cfg: Any | None = None, indent: int = 0) -> str:
    """The resolved config (or the defaults of ``cls``) as commented YAML: each key with its doc."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    lines: list[str] = []
    pad = " " * indent
    for field in dataclasses.fields(cls):
        doc = docs.get(field.name, "")
        tp = hints[field.name]
        for doc_line in textwrap.wrap(f"{doc} [{_type_name(tp)}]" if doc else f"[{_type_name(tp)}]", 96):
            lines.append(f"{pad}# {doc_line}")
        if cfg is not None:
            value = getattr(cfg, field.name)
        elif field.default is not dataclasses.MISSING:
            value = field.default
        elif field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
        else:
            value = _REQUIRED
        if dataclasses.is_dataclass(tp):
            lines.append(f"{pad}{field.name}:")
            lines.append(describe_config(tp, value, indent + 2))
        else:
            rendered = yaml.safe_dump({field.name: value}, default_flow_style=True, width=10**6).strip()
            lines.append(pad + rendered.strip("{}"))
    return "\n".join(lines)
