"""Config loading: YAML + overrides, strict validation, docs, round trip, the shipped presets."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from bcoder_core.config import (
    STAGE_CONFIGS,
    PhiConfig,
    SFTConfig,
    ThetaConfig,
    config_to_dict,
    describe_config,
    field_docs,
    load_config,
    save_config,
)
from bcoder_core.errors import BcoderError, ConfigError

REPO = Path(__file__).resolve().parents[1]
PRESETS = REPO / "configs" / "train"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_yaml_and_overrides(tmp_path):
    path = _write(
        tmp_path,
        "output: /runs/phi\ntransitions: /data/store\noptim:\n  lr: 1e-5\n  schedule: linear\nmax_steps: 7\n",
    )
    cfg = load_config(PhiConfig, path, ["optim.lr=3e-5", "metrics.enable=false", "gamma=0.5", "seed=3"])
    assert cfg.output == "/runs/phi"
    assert cfg.optim.lr == pytest.approx(3e-5) and isinstance(cfg.optim.lr, float)
    assert cfg.optim.schedule == "linear"
    assert cfg.metrics.enable is False
    assert cfg.gamma == 0.5 and cfg.seed == 3 and cfg.max_steps == 7
    # untouched keys keep their documented defaults (the paper's)
    assert cfg.rho_real == 0.5 and cfg.optim.weight_decay == 0.05
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1  # type: ignore[misc]


def test_int_accepted_for_float_and_optional(tmp_path):
    cfg = load_config(PhiConfig, None, ["output=o", "transitions=t", "gamma=1", "dropout=0"])
    assert cfg.gamma == 1.0 and isinstance(cfg.gamma, float)
    assert cfg.dropout == 0.0
    cfg = load_config(PhiConfig, None, ["output=o", "transitions=t", "dropout=null"])
    assert cfg.dropout is None


@pytest.mark.parametrize(
    ("text", "overrides", "needle"),
    [
        ("output: o\ntransitions: t\nlrr: 1\n", [], "unknown key lrr"),
        ("output: o\ntransitions: t\noptim:\n  lrr: 1\n", [], "unknown key optim.lrr"),
        ("output: o\ntransitions: t\nmax_steps: ten\n", [], "max_steps must be int"),
        ("output: o\ntransitions: t\nmax_steps: 1.5\n", [], "max_steps must be int"),
        ("output: o\ntransitions: t\nmetrics:\n  enable: 3\n", [], "metrics.enable must be bool"),
        ("output: o\ntransitions: t\noptim:\n  schedule: cosine\n", [], "optim.schedule must be one of"),
        ("output: o\ntransitions: t\noptim: 3\n", [], "optim must be a mapping"),
        ("transitions: t\n", [], "missing required key output"),
        ("- a\n- b\n", [], "top level must be a mapping"),
        ("output: [\n", [], "invalid YAML"),
    ],
)
def test_file_errors_name_key_and_file(tmp_path, text, overrides, needle):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(PhiConfig, path, overrides)
    msg = str(err.value)
    assert needle in msg
    assert str(path) in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["optim.lrr=1"], "unknown key optim.lrr"),
        (["nosuch.key=1"], "unknown key nosuch"),
        (["seed=x"], "seed must be int"),
        (["optim=1"], "optim is a section"),
        (["seed.sub=1"], "seed is not a section"),
        (["justakey"], "not of the form"),
        (["max_steps=[1"], "not a YAML scalar"),
    ],
)
def test_override_errors(tmp_path, overrides, needle):
    path = _write(tmp_path, "output: o\ntransitions: t\n")
    with pytest.raises(ConfigError) as err:
        load_config(PhiConfig, path, overrides)
    assert needle in str(err.value)
    assert str(err.value).startswith("<override>:")
    assert issubclass(ConfigError, BcoderError)


def test_missing_file():
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read"):
        load_config(PhiConfig, "nope.yaml")


def test_round_trip(tmp_path):
    cfg = load_config(ThetaConfig, None, ["output=s3://b/x", "transitions=t", "phi=p", "optim.lr=3e-5"])
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(ThetaConfig, tmp_path / "saved.yaml") == cfg
    assert config_to_dict(cfg)["optim"]["lr"] == pytest.approx(3e-5)


def test_every_field_is_documented():
    todo = list(STAGE_CONFIGS.values())
    seen = set()
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        docs = field_docs(cls)
        for name, tp in typing.get_type_hints(cls).items():
            assert docs.get(name), f"{cls.__name__}.{name} has no docstring"
            if dataclasses.is_dataclass(tp):  # nested sections are documented too
                todo.append(tp)
    assert len(seen) >= 6
    text = describe_config(PhiConfig)
    assert "# Discount factor." in text and "output: <required>" in text


def test_presets_load_with_paper_settings():
    phi = load_config(PhiConfig, PRESETS / "phi-apps.yaml")
    # DESIGN §2.4: 4 GPUs x 16 x accumulation 4 = 256, constant 1e-5, wd 0.05, 18k steps
    assert (phi.batch_size, phi.grad_accum) == (16, 4)
    assert phi.optim.lr == pytest.approx(1e-5) and phi.optim.schedule == "constant"
    assert phi.optim.weight_decay == 0.05 and phi.max_steps == 18000
    assert phi.gamma == 0.999 and phi.rho_real == 0.5
    theta = load_config(ThetaConfig, PRESETS / "theta-apps.yaml")
    # DESIGN §2.5: 8 GPUs x 16, no accumulation, peak 3e-5 linear decay, no warm-up, 10k steps
    assert (theta.batch_size, theta.grad_accum) == (16, 1)
    assert theta.optim.lr == pytest.approx(3e-5) and theta.optim.schedule == "linear"
    assert theta.optim.warmup_steps == 0 and theta.max_steps == 10000
    weights = (theta.beta_q, theta.beta_adv, theta.beta_ce, theta.alpha, theta.gamma)
    assert weights == (1.0, 0.1, 0.5, 1.0, 0.999)
    for name, cls in (("sft-tiny", SFTConfig), ("phi-tiny", PhiConfig), ("theta-tiny", ThetaConfig)):
        cfg = load_config(cls, PRESETS / f"{name}.yaml")
        assert cfg.device in ("auto", "cpu")


def test_cli_show_config_and_error(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "train", "theta", "--config", str(PRESETS / "theta-apps.yaml"),
         "--show-config", "beta_ce=0.25"],
        capture_output=True, text=True, cwd=REPO, check=True,
    )  # fmt: skip
    assert "beta_ce: 0.25" in out.stdout
    assert "# Weight of the cross-entropy term" in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "train", "phi", "--config", str(PRESETS / "phi-apps.yaml"),
         "optim.lrr=1"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == ["error: <override>: unknown key optim.lrr"]
