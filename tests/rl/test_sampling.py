"""Batched top-p sampling (DESIGN §2.8): the kernel, determinism, sharding, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from helpers.rl import make_problems, one_thread, save_checkpoint, tiny_config, tiny_t5

from bcoder_core.jsonl import read_jsonl
from bcoder_core.model.t5 import FAMILY as T5_FAMILY
from bcoder_core.model.tokenizer import encode_program, load_tokenizer
from bcoder_core.problems import write_problems
from bcoder_core.rl.sampling import (
    SamplingConfig,
    encode_prompt,
    parse_shard,
    pick_tokens,
    sample_problems,
    sample_uniforms,
)

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


@pytest.fixture(scope="module")
def problems():
    return make_problems(5)


@pytest.fixture(scope="module")
def model(tok):
    return tiny_t5(len(tok), seed=1)


def test_pick_tokens_matches_transformers_top_p_and_temperature():
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    torch.manual_seed(0)
    logits = torch.randn(6, 50) * 3
    for temp, top_p in [(1.0, 1.0), (0.6, 0.95), (0.4, 0.5), (1.3, 0.8)]:
        ref = TopPLogitsWarper(top_p)(None, TemperatureLogitsWarper(temp)(None, logits.clone()))
        ref_p = torch.softmax(ref, dim=-1)
        n = 20000
        u = torch.rand(n, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        for row in range(logits.shape[0]):
            picks = pick_tokens(logits[row].expand(n, -1), u, temp, top_p)
            freq = torch.bincount(picks, minlength=50).double() / n
            assert (freq[ref_p[row] == 0] == 0).all(), "sampled a token outside the top-p set"
            assert torch.allclose(freq, ref_p[row].double(), atol=0.015)
    assert pick_tokens(logits, torch.zeros(6), 0.0, 0.9).tolist() == logits.argmax(-1).tolist()


def test_generate_equals_step_by_step_decoding_without_cache(model, tok, problems):
    prompts = [encode_prompt(p, tok, 600) for p in problems[:2]]
    s = max(map(len, prompts))
    ids = torch.zeros(2, s, dtype=torch.long)
    am = torch.zeros(2, s, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, : len(p)] = torch.tensor(p)
        am[i, : len(p)] = 1
    rows = [0, 1, 0, 1, 1]
    u = sample_uniforms(0, [("x", i) for i in range(5)], 12)
    # eos_id = a frequent token of this random model, so that rows end at different steps
    out = T5_FAMILY.generate(
        model, ids, am, u, temperature=1.0, top_p=0.9, max_new_tokens=12, eos_ids={69}, rows_of_prompt=rows
    )

    for r, p in enumerate(rows):
        dec, want, finished = [0], [], False
        for t in range(12):
            with torch.no_grad():
                lg = model(
                    input_ids=ids[p : p + 1],
                    attention_mask=am[p : p + 1],
                    decoder_input_ids=torch.tensor([dec]),
                )
            nxt = int(pick_tokens(lg.logits[:, -1], u[r : r + 1, t], 1.0, 0.9))
            if nxt == 69:
                finished = True
                break
            want.append(nxt)
            dec.append(nxt)
        assert out[r] == (want, finished)


def test_deterministic_and_independent_of_batching_and_sharding(model, tok, problems):
    cfg = SamplingConfig(num_samples=3, temperature=1.0, top_p=0.95, max_new_tokens=16, batch_size=4, seed=7)
    full = list(sample_problems(model, tok, problems, cfg, progress=False))
    assert len(full) == 15
    assert [(r["problem_id"], r["sample_id"]) for r in full] == [
        (p.id, j) for p in problems for j in range(3)
    ]
    again = list(sample_problems(model, tok, problems, cfg, progress=False))
    assert again == full
    other_batching = SamplingConfig(**{**cfg.__dict__, "batch_size": 5})
    assert list(sample_problems(model, tok, problems, other_batching, progress=False)) == full
    sharded = []
    for i in range(2):
        part = [p for k, p in enumerate(problems) if k % 2 == i]
        sharded += list(sample_problems(model, tok, part, cfg, progress=False))
    key = lambda r: (r["problem_id"], r["sample_id"])  # noqa: E731
    assert sorted(sharded, key=key) == sorted(full, key=key)
    other_seed = SamplingConfig(**{**cfg.__dict__, "seed": 8})
    assert [r["code"] for r in sample_problems(model, tok, problems, other_seed, progress=False)] != [
        r["code"] for r in full
    ]
    assert len({r["code"] for r in full}) > 5  # samples of a problem differ from each other


class ScriptedT5(torch.nn.Module):
    """Stands in for a T5: emits a fixed token script per problem (identified by its prompt length)."""

    def __init__(self, config, scripts: dict[int, list[int]]):
        super().__init__()
        self.config = config
        self.scripts = scripts
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.step = 0

    def get_encoder(self):
        def encoder(input_ids, attention_mask):
            self.step = 0
            ident = attention_mask.sum(1).float()  # the prompt's length
            return SimpleNamespace(last_hidden_state=ident[:, None, None].expand(-1, input_ids.shape[1], 4))

        return encoder

    def forward(self, encoder_outputs, attention_mask, decoder_input_ids, cache, use_cache):
        logits = torch.full((decoder_input_ids.shape[0], 1, self.config.vocab_size), -1e9)
        for b, ident in enumerate(encoder_outputs[0][:, 0, 0].long().tolist()):
            script = self.scripts[ident]
            logits[b, 0, script[min(self.step, len(script) - 1)]] = 0.0
        self.step += 1
        return SimpleNamespace(logits=logits)


@pytest.mark.parametrize("tok_name", ["tiny", "codet5"])
def test_sampled_code_keeps_tabs_and_newlines_exactly(problems, tok_name):
    """The decode path: a model that emits <s> program </s> yields exactly the program's text."""
    tok = load_tokenizer(tok_name)
    scripts = {len(encode_prompt(p, tok, 600)): encode_program(tok, p.solutions[0]) for p in problems}
    assert len(scripts) == len(problems)
    model = ScriptedT5(tiny_config(len(tok)), scripts)
    for temp in (0.0, 0.7):
        cfg = SamplingConfig(num_samples=2, temperature=temp, max_new_tokens=200, batch_size=3)
        got = list(sample_problems(model, tok, problems, cfg, progress=False))
        assert len(got) == 10
        for r in got:
            want = next(p for p in problems if p.id == r["problem_id"]).solutions[0]
            assert "\t" in want and "\n" in want
            assert r["code"] == want
            assert r["finished"] is True


def test_unfinished_programs_are_flagged(model, tok, problems):
    cfg = SamplingConfig(num_samples=2, temperature=1.0, max_new_tokens=5, batch_size=8)
    for r in sample_problems(model, tok, problems[:2], cfg, progress=False):
        assert r["num_tokens"] <= 5
        assert r["finished"] or r["num_tokens"] == 5


def test_parse_shard():
    assert parse_shard(None) == (0, 1) and parse_shard("2/4") == (2, 4)
    from bcoder_core.errors import BcoderError

    for bad in ("4/4", "x", "1/0", "-1/2"):
        with pytest.raises(BcoderError):
            parse_shard(bad)


def test_cli_sample_writes_samples_jsonl(tmp_path, model, tok, problems):
    ckpt = save_checkpoint(model, tok, tmp_path / "theta")
    write_problems(problems, tmp_path / "problems.jsonl")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [
        sys.executable,
        "-m",
        "jobs.cli",
        "sample",
        "--model",
        str(ckpt),
        "--problems",
        str(tmp_path / "problems.jsonl"),
    ]
    opts = [
        "--num-samples",
        "3",
        "--temperature",
        "0.8",
        "--top-p",
        "0.9",
        "--max-new-tokens",
        "10",
        "--seed",
        "3",
        "--engine",  # the reference loop: a sample is the same however the problems are sharded
        "reference",
    ]
    run = subprocess.run(
        [*base, "--out", str(tmp_path / "s.jsonl"), *opts], capture_output=True, text=True, env=env
    )
    assert run.returncode == 0, run.stderr
    recs = list(read_jsonl(tmp_path / "s.jsonl"))
    assert len(recs) == 15
    for r in recs:
        assert set(r) >= {"problem_id", "sample_id", "code", "model", "temperature", "top_p"}
        assert r["temperature"] == 0.8 and r["top_p"] == 0.9 and r["model"] == str(ckpt)
    assert sorted({r["sample_id"] for r in recs}) == [0, 1, 2]
    # sharding: shard 1/2 holds problems 1 and 3, with exactly the unsharded samples
    run = subprocess.run(
        [*base, "--out", str(tmp_path / "s1.jsonl"), "--shard", "1/2", *opts], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    part = list(read_jsonl(tmp_path / "s1.jsonl"))
    assert part == [r for r in recs if r["problem_id"] in (problems[1].id, problems[3].id)]
    # a user error is one line and exit status 2
    run = subprocess.run(
        [*base, "--out", str(tmp_path / "x.jsonl"), "--top-p", "0"], capture_output=True, text=True
    )
    assert run.returncode == 2 and run.stderr.strip().startswith("error: ") and "top-p" in run.stderr
    assert not (tmp_path / "x.jsonl").exists()


def test_samples_file_is_json_lines(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"problem_id": "p", "sample_id": 0, "code": "x"}) + "\n\n")
    assert list(read_jsonl(tmp_path / "a.jsonl")) == [{"problem_id": "p", "sample_id": 0, "code": "x"}]


def test_run_sample_reports_samples_to_telemetry(tmp_path, model, tok, problems, monkeypatch):
    from bcoder_core import telemetry
    from bcoder_core.rl.sampling import run_sample

    counted = []
    monkeypatch.setattr(telemetry, "record_samples", counted.append)
    ckpt = save_checkpoint(model, tok, tmp_path / "theta")
    write_problems(problems, tmp_path / "problems.jsonl")
    cfg = SamplingConfig(num_samples=2, max_new_tokens=4, batch_size=3)
    n = run_sample(str(ckpt), str(tmp_path / "problems.jsonl"), str(tmp_path / "out"), cfg, progress=False)
    assert n == 10 and sum(counted) == 10 and len(counted) == 4  # one call per batch
    # an output URI without a suffix is an artifact directory holding samples.jsonl
    assert len(list(read_jsonl(tmp_path / "out" / "samples.jsonl"))) == 10
    assert (tmp_path / "out" / "manifest.json").is_file()
