"""bench/apps_walltime.py: hours follow the rates and GPUs given, unmeasured stays unmeasured, and every
row says where its rate comes from. Synthetic step JSON in the format gpu_step_bench --json writes."""

from __future__ import annotations

import json
import sys

import pytest
from helpers.paths import load_bench

_load = load_bench


def _record(tokens_per_s: float, device: str = "NVIDIA H200", peak: float = 989.4, **extra) -> dict:
    return {"variant": "base", "seconds": 16 * 1112 / tokens_per_s, "tokens_per_s": tokens_per_s,
            "tflops": 100.0, "mfu": 0.1, "peak_gib": 20.0, "batch": 16, "src": 600, "tgt": 512,
            "device": device, "peak_tflops": peak, **extra}  # fmt: skip


def _step_json(tmp_path, name: str, theta: float, phi: float | None = None, **kw) -> str:
    results = {"theta": {"base": _record(theta, **kw)}}
    if phi is not None:
        results["phi"] = {"base": _record(phi, **kw)}
    path = tmp_path / name
    path.write_text(json.dumps({"device": kw.get("device", "NVIDIA H200"), "results": results, "best": {}}))
    return str(path)


def _rows(aw, argv: list[str]) -> dict[str, dict]:
    return {r["stage"]: r for r in aw.main(argv)}


def test_hours_follow_rate_and_gpus(tmp_path, capsys):
    aw = _load("apps_walltime")
    one = _step_json(tmp_path, "one.json", theta=10_000.0, phi=12_000.0)
    two = _step_json(tmp_path, "two.json", theta=20_000.0, phi=24_000.0)
    base = _rows(aw, ["--step-json", one])
    fast = _rows(aw, ["--step-json", two])
    four = _rows(aw, ["--step-json", one, "--gpus", "4"])
    for stage in ("train phi", "train theta", "train theta ablation (L_ce only)"):
        assert fast[stage]["hours"] == pytest.approx(base[stage]["hours"] / 2), stage  # double rate
        assert four[stage]["hours"] == pytest.approx(base[stage]["hours"] * 2), stage  # half the GPUs
        assert (base[stage]["gpus"], four[stage]["gpus"]) == (8, 4)
    # The arithmetic itself: 10k steps x 128 programs x 1112 tokens at 8 GPUs x (10k tokens/s x 312/989.4).
    expected = 10_000 * 128 * 1112 / (8 * 10_000.0 * 312 / 989.4) / 3600
    assert base["train theta"]["hours"] == pytest.approx(expected)
    out = capsys.readouterr().out
    assert "scaled from H200, assumes the same MFU" in out and one in out


def test_unmeasured_rows_stay_unmeasured(tmp_path, capsys):
    aw = _load("apps_walltime")
    rows = _rows(aw, ["--step-json", _step_json(tmp_path, "s.json", theta=10_000.0)])
    for stage in ("sample train", "sample test (x3 methods)"):
        assert rows[stage]["hours"] is None and "unmeasured" in rows[stage]["source"]
    # phi is not in the JSON: it runs at theta's MFU, and says so
    assert rows["train phi"]["hours"] > 0 and "theta's MFU" in rows["train phi"]["source"]
    out = capsys.readouterr().out
    assert "| sample train |" in out and "| 8 | unmeasured |" in out
    assert "unmeasured (sample train" in out  # the total does not pretend to cover them

    sample = tmp_path / "sample.json"
    sample.write_text(json.dumps({"device": "NVIDIA H200", "tokens_per_s": 1000.0}))
    rows = _rows(aw, ["--step-json", str(tmp_path / "s.json"), "--sample-json", str(sample)])
    expected = 5000 * 20 * 512 / (8 * 1000.0 * 312 / 989.4) / 3600
    assert rows["sample train"]["hours"] == pytest.approx(expected)
    assert str(sample) in rows["sample train"]["source"]


def test_a_cpu_measurement_is_not_scaled(tmp_path):
    aw = _load("apps_walltime")
    path = _step_json(tmp_path, "cpu.json", theta=500.0, device="cpu", peak=None)
    rows = _rows(aw, ["--step-json", path])
    assert rows["train theta"]["hours"] is None and "CPU" in rows["train theta"]["source"]


def test_measured_on_the_target_card_is_not_scaled(tmp_path):
    aw = _load("apps_walltime")
    path = _step_json(tmp_path, "a100.json", theta=10_000.0, device="NVIDIA A100-SXM4-80GB", peak=312.0)
    rows = _rows(aw, ["--step-json", path])
    assert rows["train theta"]["hours"] == pytest.approx(10_000 * 128 * 1112 / (8 * 10_000.0) / 3600)
    assert "measured on A100" in rows["train theta"]["source"]


def test_theta_mfu_override_uses_the_step_bench_formula(capsys):
    aw = _load("apps_walltime")
    gsb = sys.modules["gpu_step_bench"]
    from bcoder_core.model.build import model_config

    rows = _rows(aw, ["--theta-mfu", "0.118", "--measured-on", "h200"])
    sh = gsb.shape_of(model_config("codet5-large"))
    step_s = gsb.step_flops("theta", sh, 16, 600, 512) / (0.118 * 312e12)  # same MFU on the A100
    assert rows["train theta"]["hours"] == pytest.approx(10_000 * step_s / 3600)  # 16 programs per GPU
    half = _rows(aw, ["--theta-mfu", "0.236", "--measured-on", "h200"])
    assert half["train theta"]["hours"] == pytest.approx(rows["train theta"]["hours"] / 2)
    assert half["rank test (x3 methods)"]["hours"] == pytest.approx(
        rows["rank test (x3 methods)"]["hours"] / 2
    )
    out = capsys.readouterr().out
    assert "theta MFU 11.8% given" in out and "scaled from H200, assumes the same MFU" in out
    assert "DESIGN §2.4" in out and "DESIGN §2.5" in out and "paper card" in out
