"""The LoRA presets for a 7B causal LM: they load, and the memory arithmetic in their comments is the shape's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bcoder_core.config import PhiConfig, ThetaConfig, load_config
from bcoder_core.model.build import count_parameters, model_config

REPO = Path(__file__).resolve().parents[1]
PRESETS = {
    "phi": (PhiConfig, REPO / "configs/train/phi-qwen2.5-coder-7b-lora.yaml"),
    "theta": (ThetaConfig, REPO / "configs/train/theta-qwen2.5-coder-7b-lora.yaml"),
}


def _number(text: str, pattern: str) -> float:
    m = re.search(pattern, text)
    assert m, pattern
    return float(m.group(1).replace(",", ""))


def lora_parameters(cfg, r: int) -> int:
    """LoRA adds r·(d_in + d_out) per adapted linear layer: q, k, v, o, gate, up, down per layer."""
    h, i = cfg.hidden_size, cfg.intermediate_size
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    per_layer = (h + h) + 2 * (h + kv) + (h + h) + 2 * (h + i) + (i + h)
    return r * per_layer * cfg.num_hidden_layers


@pytest.mark.parametrize("stage", sorted(PRESETS))
def test_preset_memory_arithmetic_matches_the_shape(stage: str) -> None:
    cls, path = PRESETS[stage]
    cfg = load_config(cls, path)
    assert cfg.model.lora.enable and cfg.model.init
    text = path.read_text()
    shape = model_config("qwen2.5-coder-7b")
    n_base = count_parameters(shape)
    n_lora = lora_parameters(shape, cfg.model.lora.r)
    assert _number(text, r"N = ([\d,]+) params") == n_base
    assert _number(text, r"n = ([\d,]+) params") == n_lora
    tokens = cfg.max_source_tokens + cfg.max_target_tokens
    gb = {
        "base": n_base * 2 / 1e9,
        "lora": n_lora * 16 / 1e9,
        "act": 50 * shape.hidden_size * shape.num_hidden_layers * cfg.batch_size * tokens / 1e9,
    }
    logits = 2 * cfg.batch_size * cfg.max_target_tokens * shape.vocab_size * 2 / 1e9  # bf16 + its gradient
    gb["logits"] = logits if stage == "theta" else 0
    lines = re.findall(r"= +([\d.]+) GB", text)
    assert [float(x) for x in lines] == pytest.approx(
        [round(v, 2 if v < 10 else 1) for k, v in gb.items() if v], abs=0.051
    )
    total = _number(text, r"total +~ ([\d.]+) GB of 80")
    assert total == pytest.approx(sum(gb.values()), abs=0.1) and total < 80
    # the global batch is the paper's: 128 programs for theta on 8 GPUs, 256 for phi on 4
    gpus = 8 if stage == "theta" else 4
    assert cfg.batch_size * cfg.grad_accum * gpus == (128 if stage == "theta" else 256)
