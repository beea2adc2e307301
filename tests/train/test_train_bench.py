"""The training-step benchmarks run end to end (tiny shapes, CPU); no timing is asserted."""

from __future__ import annotations

import importlib.util
import math
import sys

import pytest
from helpers.paths import REPO

BENCH = REPO / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_gpu_step_bench_tiny(capsys):
    results = _load("gpu_step_bench").main(["--tiny"])
    assert set(results) == {"sft", "phi", "theta"}
    for r in results.values():
        assert r["seconds"] > 0 and r["tokens_per_s"] > 0 and r["tflops"] > 0
        assert math.isnan(r["mfu"])  # CPU: no peak, so no MFU
    out = capsys.readouterr().out
    assert "theta/sft step time" in out


def test_step_flops_formula():
    gsb = _load("gpu_step_bench")
    sh = gsb.Shape(d=4, vocab=10, n_enc=100, n_dec=200, layers_enc=1, layers_dec=2)
    f_enc = 2 * 100 * 3 + 4 * 1 * 9 * 4
    f_dec = 2 * 200 * 5 + 4 * 2 * (25 + 15) * 4
    f_head = 2 * 4 * 10 * 5
    assert gsb.step_flops("sft", sh, 2, 3, 5) == 2 * 3 * (f_enc + f_dec + f_head)
    assert gsb.step_flops("phi", sh, 2, 3, 5) == 2 * (f_enc + 3 * f_dec)
    assert gsb.step_flops("theta", sh, 2, 3, 5) == 2 * (f_enc + 3 * (f_dec + f_head))


def test_codet5_large_shape_counts():
    """The FLOP formula's parameter counts match the CodeT5-large shape (DESIGN §5: ~770M with θ's head)."""
    gsb = _load("gpu_step_bench")
    from bcoder_core.model.build import model_config

    sh = gsb.shape_of(model_config("codet5-large"))
    total = sh.n_enc + sh.n_dec + 2 * sh.vocab * sh.d  # + shared embedding + untied LM head
    assert total == pytest.approx(770e6, rel=0.01)


def test_bench_train_steps_tiny(capsys):
    ratios = _load("bench_train_steps").main(["--tiny"])
    assert set(ratios) == {"phi/sft", "theta/sft"} and all(v > 0 for v in ratios.values())
    assert "theta/sft:" in capsys.readouterr().out


def test_bench_train_steps_causal_tiny(capsys):
    """The causal path: three stages timed, and a LoRA theta step holds less memory than a full one
    (structurally: no gradients or AdamW state for the frozen base)."""
    results = _load("bench_train_steps").main(["--family", "causal", "--tiny"])
    ratios = ("phi/sft", "theta/sft", "lora/full memory")
    for key in (*ratios, "sft_s", "phi_s", "theta_s", "full_bytes", "lora_bytes"):
        assert math.isfinite(results[key]) and results[key] > 0, key
    assert results["lora/full memory"] < 1.0
    assert results["lora_bytes"] < results["full_bytes"]
    out = capsys.readouterr().out
    assert "theta/sft:" in out and "phi/sft:" in out and "lora/full theta memory:" in out


def test_bench_batches_quick(capsys):
    """Length bucketing's benchmark on small data: window beats off on both length distributions,
    and micro never pads more than off."""
    results = _load("bench_batches").main(["--quick"])
    for data, shape in (("builtin", "theta/32 x 1 x 1"), ("apps", "theta/16 x 1 x 8")):
        off, micro, window = (results[f"{data}/{shape}/{m}"] for m in ("off", "micro", "window"))
        assert window > off and micro >= off - 1e-9
    assert results["apps/theta/16 x 1 x 8/window"] >= 0.9
    out = capsys.readouterr().out
    assert "real-token fraction" in out and "annotate and rank batches" in out
