"""Checkpoints with exact resume (DESIGN §5).

Layout under the run's output URI (a local directory or ``s3://bucket/prefix``)::

    step_N/                     one artifact per save (manifest.json written last by storage.output_path)
      model/                    the model in Hugging Face format (save_pretrained)
      optimizer.pt              AdamW state (identical on every rank under DDP: saved once)
      scheduler.pt              LR scheduler state
      rank_R.pt                 per rank: RNG states (python, numpy, torch, cuda) + data sampler state
      trainer_state.json        {"step": N, "world_size": W, "stage": ..., "fingerprint": sha256,
                                 "settings": {key: value}}  (what a resume must match: fingerprint.py)
      config.yaml               the resolved config
    latest                      "step_N", written LAST: a save is complete once this names it
    final/                      the exported model (plain HF directory for sft and theta)

A restarted job reads ``latest``, fetches that step and continues exactly: on CPU an interrupted and
resumed run ends with the same weights, bit for bit, as an uninterrupted one
(``tests/test_train_resume.py``). Saves are bracketed by barriers; only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from bcoder_core import storage
from bcoder_core.config import config_to_dict
from bcoder_core.errors import BcoderError
from bcoder_core.train import fingerprint
from bcoder_core.train.dist import DistInfo, all_gather_object, barrier

log = logging.getLogger("bcoder.train")

LATEST = storage.LATEST
_STEP_RE = re.compile(r"^step_(\d+)$")


# --------------------------------------------------------------------------------------------------
# RNG state
# --------------------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Every RNG this process draws from: python, numpy, torch CPU and (if used) CUDA."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block without it moving any RNG (saving a model may build modules that draw numbers)."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------------------
# Storage helpers
# --------------------------------------------------------------------------------------------------


def read_latest(output: str) -> int | None:
    """The step named by ``<output>/latest``, or None when no checkpoint was completed."""
    text = storage.read_text(storage.join(output, LATEST))
    if text is None:
        return None
    m = _STEP_RE.match(text.strip())
    if m is None:
        raise BcoderError(f"{storage.join(output, LATEST)}: unreadable marker {text.strip()!r}")
    return int(m.group(1))


def existing_steps(output: str, latest: int) -> list[int]:
    """Steps of the complete checkpoints a resumed run inherits, oldest first (for pruning).

    Outputs on this machine's file system are listed; for remote ones only ``latest`` is known
    (storage lists no prefixes of a remote store).
    """
    if not latest:
        return []
    root = storage.local_path(output)
    if root is None:
        return [latest]
    steps = []
    for path in root.glob("step_*"):
        m = _STEP_RE.match(path.name)
        if m and int(m.group(1)) <= latest and storage.exists(str(path)):
            steps.append(int(m.group(1)))
    return sorted(steps)


def step_uri(output: str, step: int) -> str:
    """URI of the checkpoint of optimiser step ``step``."""
    return storage.join(output, f"step_{step}")


def check_output(output: str) -> None:
    """Fail in one line, before any training, unless ``output`` is a training run's own (DESIGN §1).

    That is: writable, absent or a directory holding only what a run writes (``step_N/``
    checkpoints, ``final/`` models, the ``latest`` marker; hidden staging of interrupted saves is
    ignored). Resuming a run is writing into its own output; a model directory of someone's, or a
    stage's artifact, is refused.
    """
    storage.check_output_root(output, _member_kind)


def _member_kind(name: str) -> str | None:
    if name == LATEST:
        return storage.MARKER
    if name == "final":
        return "model"
    return "checkpoint" if _STEP_RE.match(name) else None


# --------------------------------------------------------------------------------------------------
# Save
# --------------------------------------------------------------------------------------------------


def save_checkpoint(
    info: DistInfo,
    output: str,
    step: int,
    *,
    stage: str,
    write_model: Callable[[Path], None],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    data_state: Any,
    config: Any,
    keep: int,
    history: list[int],
) -> float:
    """Save ``step_<step>`` and point ``latest`` at it; every rank calls this. Returns seconds taken.

    ``write_model(dir)`` writes the model in Hugging Face format into ``dir`` (rank 0 only).
    ``data_state`` is this rank's sampler state. ``history`` lists the steps saved by this run and
    is updated; once the new save is complete, checkpoints beyond the newest ``keep`` are deleted
    (``keep`` 0 keeps all).
    """
    t0 = time.perf_counter()
    barrier(info)
    rank_states = all_gather_object(info, {"rng": rng_state(), "data": data_state})
    if info.is_main:
        cfg_dict = config_to_dict(config)
        # A save killed before publishing leaves no manifest and is not named by `latest`, so it
        # is invisible to readers; a re-run replaces whatever it left at step_N (partial: the
        # name is this run's own, its output was checked when the run started).
        uri = step_uri(output, step)
        with storage.output_path(uri, kind="checkpoint", config=cfg_dict, partial=True) as staging:
            with preserved_rng():  # the saved RNG state must be the one training continues with
                write_model(staging / "model")
            torch.save(optimizer.state_dict(), staging / "optimizer.pt")
            torch.save(scheduler.state_dict(), staging / "scheduler.pt")
            for r, st in enumerate(rank_states):
                torch.save(st, staging / f"rank_{r}.pt")
            state = {"step": step, "world_size": info.world_size, "stage": stage}
            state.update(fingerprint.record(config))
            (staging / "trainer_state.json").write_text(json.dumps(state))
            (staging / "config.yaml").write_text(yaml.safe_dump(cfg_dict, sort_keys=False))
        storage.write_text(storage.join(output, LATEST), f"step_{step}")
        if step not in history:
            history.append(step)
        if keep > 0:
            while len(history) > keep:
                # Manifest first: no reader trusts a half-deleted checkpoint.
                storage.delete(step_uri(output, history.pop(0)))
    barrier(info)
    return time.perf_counter() - t0


# --------------------------------------------------------------------------------------------------
# Load
# --------------------------------------------------------------------------------------------------


def fetch_checkpoint(output: str, step: int) -> Path:
    """A verified local copy of ``step_<step>`` (the directory itself for local outputs)."""
    return storage.fetch(step_uri(output, step))


def load_training_state(
    ckpt: Path,
    info: DistInfo,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> tuple[int, Any]:
    """Restore optimiser, scheduler and this rank's RNG; return (step, this rank's data state).

    Call after the model weights were loaded from ``ckpt / "model"`` and the optimiser was built
    over them. The world size must equal the one that saved (exact resume needs the same shards).
    """
    meta = json.loads((ckpt / "trainer_state.json").read_text())
    if meta["world_size"] != info.world_size:
        raise BcoderError(
            f"{ckpt}: checkpoint was written by {meta['world_size']} processes, this run has "
            f"{info.world_size}; resume with the same number of processes"
        )
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location=info.device, weights_only=False))
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=False))
    rank_state = torch.load(ckpt / f"rank_{info.rank}.pt", weights_only=False)
    set_rng_state(rank_state["rng"])
    return int(meta["step"]), rank_state["data"]


def export_final(
    info: DistInfo,
    output: str,
    write_model: Callable[[Path], None],
    config: Any,
    history: list[dict[str, float]] | None = None,
) -> str:
    """Write the trained model to ``<output>/final`` (rank 0) and return that URI.

    ``history`` (the logged loss windows of this process's run) goes beside it as ``history.json``
    for the pipeline's training-curve plots; a resumed run logs only the steps it ran itself.
    """
    uri = storage.join(output, "final")
    if info.is_main:

        def write_all(target: Path) -> None:
            write_model(target)
            if history is not None:
                (target / "history.json").write_text(json.dumps(history) + "\n")

        _export(uri, write_all, config)
    barrier(info)
    return uri


@preserved_rng()
def _export(uri: str, write_model: Callable[[Path], None], config: Any) -> None:
    with storage.output_path(uri, kind="model", config=config_to_dict(config), partial=True) as target:
        write_model(target)
