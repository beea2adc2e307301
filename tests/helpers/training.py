"""Shared helpers of the training tests: a tiny T5 config, tiny causal (Llama ...) shapes and
checkpoints, transition stores built through the store's public API, configs for tiny CPU runs
(:func:`model_keys` for every model variant), and running `bcoder train` as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from helpers.paths import REPO

VOCAB = 96

# One thread everywhere: the same float reduction order in every process (bit-exact comparisons)
# and no oversubscription of the shared CI cores.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def write_shape(path: Path, *, d_model: int = 32, layers: int = 2, dropout: float = 0.1) -> Path:
    """A tiny T5 v1.0-shaped config (ReLU FFN, tied embeddings) with CodeT5's special ids."""
    from transformers import T5Config

    cfg = T5Config(
        vocab_size=VOCAB, d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=layers,
        num_decoder_layers=layers, num_heads=4, dropout_rate=dropout, feed_forward_proj="relu",
        pad_token_id=0, eos_token_id=2, bos_token_id=1, decoder_start_token_id=0,
        tie_word_embeddings=True,
    )  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg.to_json_file(str(path))
    return path


# Causal shapes: the tiny ones of the model tests (helpers/models.py), with this module's VOCAB.
# Which dropout fields a shape of each kind has (the RNG-state tests want dropout on).
_CAUSAL_DROPOUT = {
    "llama": ("attention_dropout",),
    "qwen2": ("attention_dropout",),
    "gpt2": ("resid_pdrop", "embd_pdrop", "attn_pdrop"),
}
CAUSAL_LORA = {"enable": True, "r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": "all-linear"}
"""``model.lora`` of the LoRA runs (r = 4 adapters on every linear layer)."""
VARIANTS = ("t5", "llama", "llama-lora")
"""Model variants of the training tests: T5 and a causal Llama with full fine-tuning from a random
init of a shape file, and LoRA adapters on a saved random Llama checkpoint."""


def write_causal_shape(path: Path, *, kind: str = "llama", dropout: float = 0.1) -> Path:
    """A tiny causal shape file (``model_type`` picks the family) with CodeT5's special ids."""
    from helpers.models import CAUSAL_SHAPES

    fields = {
        **CAUSAL_SHAPES[kind],
        "vocab_size": VOCAB,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    fields.update(dict.fromkeys(_CAUSAL_DROPOUT[kind], dropout))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fields, indent=2))
    return path


def save_causal_init(path: Path, *, kind: str = "llama", dropout: float = 0.1, seed: int = 0) -> Path:
    """A saved random causal checkpoint of :func:`write_causal_shape`'s shape (a LoRA run's base)."""
    from bcoder_core.model.build import model_config, save_random_checkpoint

    shape = write_causal_shape(path.parent / f"{path.name}.json", kind=kind, dropout=dropout)
    return save_random_checkpoint(model_config(shape), path, seed=seed)


def model_keys(variant: str, root: Path, *, dropout: float = 0.1) -> tuple[Path, dict]:
    """(shape, extra config keys) of a tiny run of ``variant`` (one of ``VARIANTS``), made under ``root``.

    ``t5``: random init of a T5 shape; ``llama``: random init of a causal Llama shape (full fine-tuning);
    ``llama-lora``: ``model.init`` a saved random Llama checkpoint, ``model.lora`` :data:`CAUSAL_LORA`.
    Pass the keys on to :func:`common` (they hold a ``model`` section, merged with its own).
    """
    root.mkdir(parents=True, exist_ok=True)
    if variant == "t5":
        return write_shape(root / "t5.json", dropout=dropout), {}
    kind, _, rest = variant.partition("-")
    if rest == "":
        return write_causal_shape(root / f"{kind}.json", kind=kind, dropout=dropout), {}
    if rest != "lora":
        raise ValueError(f"unknown model variant {variant!r}")
    init = root / f"{kind}-init"
    if not (init / "config.json").is_file():
        save_causal_init(init, kind=kind, dropout=dropout)
    return root / f"{kind}-init.json", {"model": {"init": str(init), "lora": dict(CAUSAL_LORA)}}


def make_store(
    path: Path,
    *,
    n_problems: int = 6,
    per_problem: int = 8,
    v_phi: bool,
    seed: int = 0,
    adv_scale: float = 1.0,
    metadata: dict | None = None,
) -> Path:
    """A small store through the public writer: per problem 2 ground-truth and some generated programs.

    Rewards follow the programs' content (a program starting with token 7 passes), so a value model
    has something to learn; ``ckpt_adv`` ≤ 0 with 0 where ``ckpt_greedy`` equals the token taken
    (elsewhere exponential with mean ``adv_scale``: small for a checkpoint that likes its samples).
    """
    from bcoder_core.rl.transitions import Transition, write_transitions

    rng = np.random.default_rng(seed)
    records = []
    for p in range(n_problems):
        prompt = rng.integers(5, VOCAB, size=int(rng.integers(6, 14)))
        for s in range(per_problem):
            is_gt = s < 2
            n = int(rng.integers(4, 12))
            prog = rng.integers(5, VOCAB, size=n)
            if is_gt or rng.random() < 0.3:
                prog[0] = 7
            prog[-1] = 2  # EOS
            greedy = np.where(rng.random(n) < 0.6, prog, rng.integers(5, VOCAB, size=n))
            adv = np.where(greedy == prog, 0.0, -rng.exponential(adv_scale, size=n)).astype(np.float32)
            reward = 1.0 if prog[0] == 7 else float(rng.choice([-0.3, -0.6, -1.0]))
            records.append(
                Transition(
                    problem_id=f"p{p}", sample_id=s, prompt_ids=prompt, program_ids=prog, reward=reward,
                    is_gt=is_gt, ckpt_adv=adv, ckpt_greedy=greedy,
                    v_phi=rng.normal(0.0, 0.3, size=n).astype(np.float32) if v_phi else None,
                )
            )  # fmt: skip
    write_transitions(path, records, shard_size=16, metadata=metadata)
    return path


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))  # JSON is YAML
    return path


def common(output: Path, shape: Path, **extra) -> dict:
    """Config keys every tiny CPU run shares; dict values in ``extra`` are merged one level deep."""
    data = {
        "seed": 0, "output": str(output), "model": {"shape": str(shape), "tokenizer": "tiny"},
        "batch_size": 4, "grad_accum": 1, "max_steps": 8, "save_every": 2, "keep_checkpoints": 2,
        "log_every": 2, "metrics": {"enable": False}, "precision": "fp32", "device": "cpu",
        "optim": {"lr": 1e-3, "schedule": "linear"},
    }  # fmt: skip
    for key, value in extra.items():
        if isinstance(value, dict):
            data[key] = {**data.get(key, {}), **value}
        else:
            data[key] = value
    return data


def train_cmd(stage: str, config: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "jobs.cli", "train", stage, "--config", str(config), *overrides]


def run_train(stage: str, config: Path, *overrides: str, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        train_cmd(stage, config, *overrides), cwd=REPO, env=ENV, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def weights(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every safetensors file under ``directory``, keyed by file and name."""
    out: dict[str, torch.Tensor] = {}
    files = sorted(Path(directory).rglob("*.safetensors"))
    assert files, f"no safetensors under {directory}"
    for f in files:
        for k, v in load_file(str(f)).items():
            out[f"{f.relative_to(directory)}:{k}"] = v
    return out


def training_state(checkpoint_dir: Path) -> dict:
    """The optimiser and scheduler state of a ``step_N`` checkpoint (to compare two runs exactly)."""
    return {
        name: torch.load(Path(checkpoint_dir) / f"{name}.pt", map_location="cpu", weights_only=False)
        for name in ("optimizer", "scheduler")
    }


def assert_same_state(want, got, where: str = "") -> None:
    """Nested dicts / lists / tensors equal exactly (tensors bit for bit, same dtype and shape)."""
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor) and want.dtype == got.dtype, f"{where}: {got!r}"
        assert torch.equal(want, got), f"{where} differs"
    elif isinstance(want, dict):
        assert isinstance(got, dict) and want.keys() == got.keys(), f"{where}: keys differ"
        for k in want:
            assert_same_state(want[k], got[k], f"{where}.{k}")
    elif isinstance(want, list | tuple):
        assert isinstance(got, list | tuple) and len(want) == len(got), f"{where}: lengths differ"
        for i, (a, b) in enumerate(zip(want, got, strict=True)):
            assert_same_state(a, b, f"{where}[{i}]")
    else:
        assert want == got, f"{where}: {want!r} != {got!r}"
