"""The settings a resumed run must share with the run that saved its checkpoint (DESIGN §5).

A resumed run that changed, say, ``optim.lr`` would continue one run with another's settings: the
steps before the checkpoint used one value, the steps after it another, and ``config.yaml`` records
only one of them. So every checkpoint records the resolved value of each config key that changes the
weights a run produces (``settings`` in ``trainer_state.json``, with their sha256 as
``fingerprint``), and a run resumes only when its own values match; otherwise it stops, before any
step is trained, with one line naming each key that differs.

Exempt keys, which change where and how a run reports, not what it computes:

- ``output``: where the run lives; a run directory copied or moved elsewhere is the same run.
- ``log_every``, ``save_every``, ``keep_checkpoints``, ``metrics.*``: what is logged, saved, kept.
- ``num_workers``: prefetch threads; a step's batch is a pure function of the step
  (:class:`~bcoder_core.train.loading.Prefetcher`).
- ``device``: a label ("auto" resolves per machine, so the label neither names nor pins the hardware);
  the numerics a device choice changes are ``precision``, which is recorded.
- ``ddp_find_unused``: DDP's bookkeeping of unused parameters; the gradients are the same.
- ``max_steps`` under a constant schedule: step k's update does not depend on it, so a finished run
  may be continued to more steps. Under a linear schedule every step's lr does, and it is recorded.

Everything else is recorded: the seed, the model init and tokenizer, the data URIs, batch size and
accumulation, every optimiser setting, dropout, precision, and the stage's own keys (γ, β, α, ρ_real ...).
Checkpoints written before this existed carry no ``settings``: they resume with a warning.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from bcoder_core.config import STAGE_CONFIGS, config_to_dict, field_default
from bcoder_core.errors import BcoderError

log = logging.getLogger("bcoder.train")

EXEMPT = frozenset(
    {"output", "log_every", "save_every", "keep_checkpoints", "metrics", "num_workers", "device",
     "ddp_find_unused"}
)  # fmt: skip
"""Top-level keys (a section: all its keys) that do not change the weights (module docstring)."""

BEFORE = {"length_bucketing": "off", "encoder_cache_mb": 0}
"""Keys added to the config whose default is not what runs did before them: a checkpoint that does
not record such a key ran with this value (not the default)."""


def settings(cfg: Any) -> dict[str, Any]:
    """The dotted keys of ``cfg`` that change what a run computes, with their values (JSON-able)."""
    out = {k: v for k, v in _flatten(config_to_dict(cfg)) if k.partition(".")[0] not in EXEMPT}
    if out.get("optim.schedule") == "constant":
        out.pop("max_steps", None)
    return json.loads(json.dumps(out))  # the form it has when read back from trainer_state.json


def _flatten(d: dict[str, Any]) -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for k, v in d.items():
        if isinstance(v, dict):
            items += [(f"{k}.{kk}", vv) for kk, vv in _flatten(v)]
        else:
            items.append((k, v))
    return items


def digest(values: dict[str, Any]) -> str:
    """sha256 of ``values`` in a canonical JSON form."""
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


def record(cfg: Any) -> dict[str, Any]:
    """What a checkpoint's ``trainer_state.json`` holds beside the step: ``fingerprint`` and
    ``settings``; nothing for a config that is not a training config."""
    if not dataclasses.is_dataclass(cfg):
        return {}
    values = settings(cfg)
    return {"fingerprint": digest(values), "settings": values}


def check_resume(ckpt: Path, cfg: Any, where: str) -> None:
    """Raise BcoderError unless ``cfg`` may continue the run whose checkpoint is ``ckpt``.

    ``where`` is the run's output, named in the message. A key the checkpoint does not record (added
    to the config after it was written) matches when the run keeps its default, or the value of
    :data:`BEFORE` for a key whose default changed what runs do (``length_bucketing``: off).
    """
    meta = json.loads((ckpt / "trainer_state.json").read_text())
    stage = _stage_of(cfg)
    if stage is not None and meta.get("stage") not in (None, stage):
        raise BcoderError(
            f"{where}: cannot resume: it holds a {meta['stage']} run, this is {stage} "
            f"(use a new output, or delete {where} to start afresh)"
        )
    saved = meta.get("settings")
    if saved is None:
        log.warning(
            "%s: checkpoint %s records no settings fingerprint (written by an earlier version); "
            "resuming without checking that the settings match",
            where, f"step_{meta.get('step')}",
        )  # fmt: skip
        return
    now = settings(cfg)
    if meta.get("fingerprint") == digest(now):
        return
    diffs = []
    for key, value in now.items():
        old = saved[key] if key in saved else BEFORE.get(key, _default(type(cfg), key))
        if old != value:
            diffs.append(f"{key} was {old!r}, now {value!r}")
    if diffs:
        raise BcoderError(
            f"{where}: cannot resume: {'; '.join(diffs)} (use a new output, or delete {where} to start afresh)"
        )


def _stage_of(cfg: Any) -> str | None:
    for stage, cls in STAGE_CONFIGS.items():
        if type(cfg) is cls:
            return stage
    return None


def _default(cls: type, dotted: str) -> Any:
    """The default of field ``dotted`` (``optim.lr``) of dataclass ``cls``; a sentinel if it has none."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    head, _, rest = dotted.partition(".")
    field = fields.get(head)
    value = _NO_DEFAULT if field is None else field_default(field)
    if value is _NO_DEFAULT or value is dataclasses.MISSING:
        return _NO_DEFAULT
    if rest:
        return _default(type(value), rest) if dataclasses.is_dataclass(value) else _NO_DEFAULT
    return json.loads(json.dumps(value))


class _NoDefault:
    def __repr__(self) -> str:
        return "<not recorded>"


_NO_DEFAULT = _NoDefault()
