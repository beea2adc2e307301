"""One config tree: every stage's settings load the same way, and rendered command lines read back."""

from __future__ import annotations

import dataclasses

import pytest
from helpers.paths import REPO
from typer.testing import CliRunner

from bcoder_core.benchmark import BenchmarkConfig
from bcoder_core.config import describe_config, load_config, to_argv, to_overrides
from bcoder_core.errors import ConfigError, ConfigValueError
from bcoder_core.evaluation import EvaluateConfig
from bcoder_core.execution import ExecutionConfig
from bcoder_core.pipeline import PipelineConfig, plan
from bcoder_core.rl.configs import AnnotateConfig, RankConfig, SamplingConfig
from jobs.cli import app

SMOKE = REPO / "configs" / "smoke.yaml"
DEMO = REPO / "configs" / "demo.yaml"

# (command words, config class) of every stage command that takes --config/--show-config.
STAGE_COMMANDS = [
    (["sample"], SamplingConfig),
    (["annotate"], AnnotateConfig),
    (["rank"], RankConfig),
    (["execute"], ExecutionConfig),
    (["evaluate"], EvaluateConfig),
    (["benchmark", "generate"], BenchmarkConfig),
]


def _invoke(*words: str):
    return CliRunner().invoke(app, list(words), catch_exceptions=False)


@pytest.mark.parametrize(("words", "cls"), STAGE_COMMANDS, ids=[" ".join(w) for w, _ in STAGE_COMMANDS])
def test_show_config_prints_defaults_with_docs(words, cls):
    result = _invoke(*words, "--show-config")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == describe_config(cls, cls()).strip()
    assert "# " in result.output  # each key is documented


def test_flag_beats_override_beats_file_beats_default(tmp_path):
    cfg_file = tmp_path / "sample.yaml"
    cfg_file.write_text("temperature: 0.3\ntop_p: 0.5\nseed: 4\n")
    result = _invoke(
        "sample", "--config", str(cfg_file), "top_p=0.7", "seed=5", "--seed", "6", "--show-config"
    )
    assert result.exit_code == 0, result.output
    cfg = load_config(SamplingConfig, None, ["temperature=0.3", "top_p=0.7", "seed=6"])
    assert result.output.strip() == describe_config(SamplingConfig, cfg).strip()


def test_bad_setting_is_one_line_naming_the_key_or_flag(tmp_path):
    cfg_file = tmp_path / "rank.yaml"
    cfg_file.write_text("gamma: 3\n")
    for words, expected in [
        (
            ["rank", "--config", str(cfg_file), "--show-config"],
            f"error: {cfg_file}: gamma must lie in [0, 1]",
        ),
        (["rank", "gamma=-1", "--show-config"], "error: <override>: gamma must lie in [0, 1]"),
        (["rank", "--gamma", "-1", "--show-config"], "error: --gamma must lie in [0, 1]"),
        (["sample", "tempreature=1", "--show-config"], "error: <override>: unknown key tempreature"),
        (["evaluate", "ks=[0]", "--show-config"], "error: <override>: ks must be positive integers"),
    ]:
        import subprocess
        import sys

        proc = subprocess.run(
            [sys.executable, "-m", "jobs.cli", *words], capture_output=True, text=True, cwd=REPO, check=False
        )
        assert proc.returncode == 2, (words, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(expected), (words, lines)


def test_nested_value_errors_name_the_whole_key_path():
    with pytest.raises(ConfigError, match=r"^<override>: test_sampling\.top_p must lie in \(0, 1\]"):
        load_config(PipelineConfig, SMOKE, ["test_sampling.top_p=2"])
    with pytest.raises(ConfigError, match=r"^<override>: annotate\.batch_size must be >= 1"):
        load_config(PipelineConfig, SMOKE, ["annotate.batch_size=0"])
    with pytest.raises(ConfigError, match=r"^<override>: execute\.workers must be >= 1"):
        load_config(PipelineConfig, SMOKE, ["execute.workers=0"])
    # built in code, the same check reads as "<key> <message>"
    with pytest.raises(ConfigValueError, match=r"^num_samples must be >= 1 \(got 0\)$"):
        SamplingConfig(num_samples=0)


@pytest.mark.parametrize(
    "cfg",
    [
        SamplingConfig(num_samples=3, temperature=0.0, dtype="bf16", tokenizer="1024", batch_size=7),
        AnnotateConfig(ground_truth=False, alpha=0.1, max_target_tokens=99),
        RankConfig(gamma=0.5, alpha=0.25, device="cpu"),
        EvaluateConfig(ks=[1, 3, 10], split="val", bootstrap=0),
        BenchmarkConfig(n_train=30, n_test=7, n_val=3, seed=9),
    ],
    ids=lambda c: type(c).__name__,
)
def test_rendered_settings_read_back_to_the_same_config(cfg):
    cls = type(cfg)
    assert load_config(cls, None, to_overrides(cfg)) == cfg
    assert to_overrides(cls()) == [o for o in to_overrides(cls(), always_factory=False)]
    words = next(w for w, c in STAGE_COMMANDS if c is cls)
    result = _invoke(*words, *to_argv(cfg), "--show-config")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == describe_config(cls, cfg).strip()


def test_machine_dependent_defaults_are_always_rendered():
    # workers defaults to the CPU count of the machine that builds the config: a pod with another
    # count must still get the run's value.
    assert "--workers" in to_argv(ExecutionConfig(workers=2))


def test_pipeline_round_trips_and_every_planned_command_reads_its_settings_back():
    cfg = load_config(PipelineConfig, SMOKE, ["run_dir=/tmp/x", "alpha=0.25", "rank.batch_size=5"])
    assert load_config(PipelineConfig, None, to_overrides(cfg)) == cfg
    seen = set()
    for stage in plan(cfg):
        if stage.argv[0] == "train":
            continue  # the training stages have their own tests of --show-config
        words = stage.argv[:2] if stage.argv[0] in ("benchmark", "data") else stage.argv[:1]
        if words[0] == "data":
            continue
        cls = next(c for w, c in STAGE_COMMANDS if w == words)
        result = _invoke(*stage.argv, "--show-config")
        assert result.exit_code == 0, (stage.name, result.output)
        expected = {
            "sample": dataclasses.replace(
                cfg.train_sampling if stage.name == "sample-train" else cfg.test_sampling, seed=cfg.seed
            ),
            "annotate": dataclasses.replace(cfg.annotate, alpha=cfg.alpha),
            "rank": cfg.rank,
            "execute": dataclasses.replace(
                cfg.execute, tests="example" if stage.name.startswith("execute-example") else "hidden"
            ),
            "evaluate": cfg.evaluate,
            "benchmark": cfg.benchmark,
        }[words[0]]
        assert result.output.strip() == describe_config(cls, expected).strip(), stage.name
        seen.add(words[0])
    assert seen == {"sample", "annotate", "rank", "execute", "evaluate", "benchmark"}
