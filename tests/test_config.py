"""Config loading: YAML + overrides, strict validation, docs, round trip, the shipped presets."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from helpers.paths import REPO

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


def test_an_unquoted_off_is_the_choice_off_not_a_bool(tmp_path):
    # YAML 1.1 reads `off` as false; a Literal field with the choice "off" takes it as written.
    cfg = load_config(SFTConfig, _write(tmp_path, "length_bucketing: off\n"), ["output=o", "problems=p"])
    assert cfg.length_bucketing == "off"
    cfg = load_config(SFTConfig, None, ["output=o", "problems=p", "length_bucketing=off"])
    assert cfg.length_bucketing == "off"
    with pytest.raises(ConfigError, match="length_bucketing must be one of"):
        load_config(SFTConfig, None, ["output=o", "problems=p", "length_bucketing=true"])


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


# --------------------------------------------------------------------------------------------------
# Values out of range: one line naming the key and where the value came from (the file or <override>)

_BASE = {"sft": {"output": "o", "problems": "p"}, "phi": {"output": "o", "transitions": "t"},
         "theta": {"output": "o", "transitions": "t"}}  # fmt: skip

RANGE_CHECKS = [
    # stage, dotted key, bad value (as YAML), other keys in the file, the message after "<source>: "
    ("phi", "optim.lr", "0", {}, "optim.lr must be > 0 (got 0.0)"),
    ("phi", "optim.weight_decay", "-0.1", {}, "optim.weight_decay must be >= 0 (got -0.1)"),
    ("phi", "optim.beta1", "1", {}, "optim.beta1 must lie in [0, 1) (got 1.0)"),
    ("phi", "optim.beta2", "-0.5", {}, "optim.beta2 must lie in [0, 1) (got -0.5)"),
    ("phi", "optim.eps", "0", {}, "optim.eps must be > 0 (got 0.0)"),
    ("phi", "optim.warmup_steps", "-1", {}, "optim.warmup_steps must be >= 0 (got -1)"),
    ("phi", "optim.grad_clip", "-1", {}, "optim.grad_clip must be >= 0 (got -1.0)"),
    ("phi", "optim.value_head_lr_mult", "0", {}, "optim.value_head_lr_mult must be > 0 (got 0.0)"),
    ("phi", "metrics.port", "0", {}, "metrics.port must lie in 1..65535 (got 0)"),
    ("phi", "metrics.port", "65536", {}, "metrics.port must lie in 1..65535 (got 65536)"),
    ("phi", "output", "''", {}, "output must be set (a local directory or s3://bucket/prefix)"),
    ("phi", "max_source_tokens", "0", {}, "max_source_tokens must be >= 1 (got 0)"),
    ("phi", "max_target_tokens", "0", {}, "max_target_tokens must be >= 1 (got 0)"),
    ("phi", "batch_size", "0", {}, "batch_size must be >= 1 (got 0)"),
    ("phi", "grad_accum", "0", {}, "grad_accum must be >= 1 (got 0)"),
    ("phi", "max_steps", "0", {}, "max_steps must be >= 1 (got 0)"),
    ("phi", "save_every", "-1", {}, "save_every must be >= 0 (got -1)"),
    ("phi", "keep_checkpoints", "-1", {}, "keep_checkpoints must be >= 0 (got -1)"),
    ("phi", "num_workers", "-1", {}, "num_workers must be >= 0 (got -1)"),
    ("phi", "log_every", "0", {}, "log_every must be >= 1 (got 0)"),
    ("phi", "dropout", "1", {}, "dropout must lie in [0, 1) (got 1.0)"),
    ("phi", "dropout", "-0.1", {}, "dropout must lie in [0, 1) (got -0.1)"),
    ("phi", "precision", "bf16", {"device": "cpu"},
     "precision bf16 needs CUDA (device auto or cuda); on device cpu training runs in fp32"),
    ("sft", "problems", "''", {}, "problems must be set (a problem set URI)"),
    ("sft", "max_solutions_per_problem", "-1", {}, "max_solutions_per_problem must be >= 0 (got -1)"),
    ("sft", "model.tokenizer", "train:100", {},
     "model.tokenizer train:<vocab_size> needs an integer vocab_size >= 261 (got 'train:100')"),
    ("sft", "model.tokenizer", "train:big", {},
     "model.tokenizer train:<vocab_size> needs an integer vocab_size >= 261 (got 'train:big')"),
    ("phi", "gamma", "0", {}, "gamma must lie in (0, 1] (got 0.0)"),
    ("theta", "gamma", "1.5", {}, "gamma must lie in (0, 1] (got 1.5)"),
    ("phi", "rho_real", "-0.1", {}, "rho_real must lie in [0, 1] (got -0.1)"),
    ("theta", "rho_real", "1.5", {}, "rho_real must lie in [0, 1] (got 1.5)"),
    ("phi", "transitions", "''", {}, "transitions must be set (the store `bcoder annotate` wrote)"),
    ("theta", "model.tokenizer", "train:300", {},
     "model.tokenizer 'train:300' is for sft only; use the tokenizer saved with model.init (auto)"),
    ("theta", "beta_q", "-1", {}, "beta_q must be >= 0 (got -1.0)"),
    ("theta", "beta_adv", "-0.1", {}, "beta_adv must be >= 0 (got -0.1)"),
    ("theta", "beta_ce", "-0.5", {}, "beta_ce must be >= 0 (got -0.5)"),
    ("theta", "beta_ce", "0", {"beta_q": 0.0, "beta_adv": 0.0},
     "beta_ce must be > 0 when beta_q and beta_adv are 0 (the loss would be 0: nothing trains)"),
    ("theta", "alpha", "0", {}, "alpha must be > 0 (got 0.0)"),
]  # fmt: skip


def _nested(key: str, value) -> dict:
    head, _, rest = key.partition(".")
    return {head: _nested(rest, value) if rest else value}


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.mark.parametrize(("stage", "key", "value", "others", "message"), RANGE_CHECKS)
def test_value_out_of_range_names_the_key_and_its_source(tmp_path, stage, key, value, others, message):
    import yaml

    cls = STAGE_CONFIGS[stage]
    base = _merge(_BASE[stage], others)
    from_file = _write(tmp_path, yaml.safe_dump(_merge(base, _nested(key, yaml.safe_load(value)))))
    with pytest.raises(ConfigError) as err:
        load_config(cls, from_file)
    assert str(err.value) == f"{from_file}: {message}"
    good_file = tmp_path / "good.yaml"
    good_file.write_text(yaml.safe_dump(base))
    with pytest.raises(ConfigError) as err:
        load_config(cls, good_file, [f"{key}={value}"])
    assert str(err.value) == f"<override>: {message}"


@pytest.mark.parametrize(
    ("stage", "overrides"),
    [
        (
            "phi",
            ["gamma=1", "rho_real=0", "dropout=0", "save_every=0", "keep_checkpoints=0", "num_workers=0"],
        ),
        ("theta", ["rho_real=1", "beta_q=0", "beta_adv=0", "precision=bf16"]),  # the ablation; bf16 on "auto"
        ("theta", ["precision=bf16", "device=cuda", "optim.beta1=0", "optim.grad_clip=0"]),
        ("sft", ["model.tokenizer=train:261", "max_solutions_per_problem=0"]),
    ],
)
def test_values_at_the_edge_of_their_range_load(stage, overrides):
    load_config(STAGE_CONFIGS[stage], None, [f"{k}={v}" for k, v in _BASE[stage].items()] + overrides)
