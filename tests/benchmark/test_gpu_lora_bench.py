"""bench/gpu_lora_bench.py (the one-shot LoRA theta GPU benchmark) runs on a CPU with --tiny; its
FLOP formula and its Qwen2.5-1.5B shape are what the docstring says. No timing is asserted."""

from __future__ import annotations

import math

from helpers.paths import load_bench

_load = load_bench


def test_gpu_lora_bench_tiny_cpu(capsys):
    bench = _load("gpu_lora_bench")
    result = bench.main(["--tiny", "--device", "cpu"])
    for key in ("seconds", "tokens_per_s", "tflops", "step_flops", "held_bytes"):
        assert math.isfinite(result[key]) and result[key] > 0, key
    assert math.isfinite(result["loss"])
    assert math.isnan(result["mfu"]) and math.isnan(result["peak_memory_bytes"])  # CPU: no peak
    lines = capsys.readouterr().out.splitlines()
    for key in bench.KEYS:
        assert any(line.startswith(f"{key}: ") for line in lines), key


def test_lora_theta_flops_formula():
    bench = _load("gpu_lora_bench")
    c = bench.Counts(n_base=100, n_lora=10, layers=2, d_attn=4, d=8, vocab=50)
    p = 3 + 5 - 1
    per_seq = 4 * 100 * p + 6 * 10 * p + 12 * 2 * p * p * 4 + 4 * 8 * 50 * 5
    assert bench.lora_theta_flops(c, 2, 3, 5) == 2 * per_seq


def test_qwen2_1_5b_shape():
    """The GPU bench's shape is Qwen2.5-1.5B: 1,543,714,304 parameters (tied embeddings)."""
    bench = _load("gpu_lora_bench")
    from bcoder_core.model.build import count_parameters
    from bcoder_core.model.causal import FAMILY

    config = FAMILY.build_config(dict(bench.QWEN2_1_5B))
    assert config.tie_word_embeddings and config.rope_parameters["rope_theta"] == 1e6
    assert count_parameters(config) == 1_543_714_304
    # linear layers: 28 x (q, k, v with biases + o + gate, up, down)
    d, kv, ff = 1536, 256, 8960
    per_layer = (d * d + d) + 2 * (d * kv + kv) + d * d + 3 * d * ff
    assert bench.base_linear_params(config) == 28 * per_layer
