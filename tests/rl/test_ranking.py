"""Learned-reward ranking (DESIGN §2.8): R̃(W) = Σ_t r̃_θ(s_t, a_t) for samples of any model.

For T5 and for the causal family (a tiny Llama: θ and φ with full fine-tuning, and both as LoRA
adapters of one base).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers.models import LORA, causal_config, save_tiny_checkpoint
from helpers.numeric import f32_tolerance
from helpers.paths import REPO
from helpers.rl import make_problems, one_thread, tiny_t5

from bcoder_core.errors import BcoderError
from bcoder_core.jsonl import read_jsonl
from bcoder_core.model.qmodel import BCoderModel
from bcoder_core.model.tokenizer import encode_program
from bcoder_core.problems import write_problems
from bcoder_core.rl.bounds import bound
from bcoder_core.rl.ranking import RankConfig, run_rank
from bcoder_core.rl.sampling import SamplingConfig, encode_prompt, sample_problems

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)

GAMMA = 0.999


@pytest.fixture(scope="module")
def world(tmp_path_factory, tok):
    """θ and φ moved away from their initialisation, problems, and samples of ANOTHER model."""
    root = tmp_path_factory.mktemp("rank")
    save_tiny_checkpoint(root / "ckpt", tok)
    g = torch.Generator().manual_seed(11)
    theta = BCoderModel.from_pretrained(root / "ckpt", stage="theta")
    with torch.no_grad():
        for p in theta.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        theta.h1.weight.add_(torch.randn(theta.h1.weight.shape, generator=g))  # V^r ≠ 0
    theta.save_pretrained(root / "theta", "theta", tokenizer=tok)
    phi = BCoderModel.from_pretrained(root / "ckpt", stage="phi")
    with torch.no_grad():
        phi.phi_head.weight.copy_(torch.randn(phi.phi_head.weight.shape, generator=g))
        phi.phi_head.bias.fill_(-0.2)
    phi.save_pretrained(root / "phi", "phi")
    problems = make_problems(4)
    write_problems(problems, root / "problems.jsonl")
    other = tiny_t5(len(tok), seed=42)  # a different model wrote these samples
    scfg = SamplingConfig(num_samples=3, temperature=1.0, max_new_tokens=12, batch_size=5, seed=1)
    samples = list(sample_problems(other, tok, problems, scfg, model_name="other-model", progress=False))
    samples.append(
        {"problem_id": problems[0].id, "sample_id": 99, "code": "print(1)\n\tx\n", "extra": [1, 2]}
    )
    (root / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    return {"root": root, "problems": problems, "samples": samples}


def slow_score(model, tok, problem, code, gamma=GAMMA, limit=None):
    """R̃ one token at a time from the definition: Σ_t [A_θ(s_t,a_t) + V_θ(s_t) − γ·V_θ(s_{t+1})]."""
    ids = encode_program(tok, code)
    if limit is not None:
        ids = ids[:limit]
    prompt = torch.tensor([encode_prompt(problem, tok, 600)])
    am = torch.ones_like(prompt)
    labels = torch.tensor([ids])
    with torch.no_grad():
        enc = model.encode(prompt, am)
        logits, u_r = model.theta_outputs(enc, am, labels)
        u_phi = model.phi_values(enc, am, labels)
    total = 0.0
    for t, a in enumerate(ids):
        adv = float(logits[0, t, a] - logits[0, t].max())
        v_t = float(bound(u_r[0, t] + u_phi[0, t]))
        v_next = float(bound(u_r[0, t + 1] + u_phi[0, t + 1])) if t + 1 < len(ids) else 0.0
        total += adv + v_t - gamma * v_next
    return total


def _rank(world, out, **kw):
    r = world["root"]
    args = dict(
        model=str(r / "theta"),
        phi=str(r / "phi"),
        problems=str(r / "problems.jsonl"),
        samples=str(r / "samples.jsonl"),
        out=str(out),
        cfg=RankConfig(batch_size=4, window_batches=2, gamma=GAMMA),
        progress=False,
    )
    args.update(kw)
    return run_rank(**args)


def test_score_is_the_sum_of_per_token_learned_rewards(tmp_path, world, tok):
    summary = _rank(world, tmp_path / "ranked.jsonl")
    ranked = list(read_jsonl(tmp_path / "ranked.jsonl"))
    assert summary.scored == len(world["samples"]) == len(ranked) and summary.truncated == 0
    model = BCoderModel.from_pretrained(world["root"] / "theta", stage="eval", phi_path=world["root"] / "phi")
    problems = {p.id: p for p in world["problems"]}
    for orig, got in zip(world["samples"], ranked, strict=True):
        assert {k: v for k, v in got.items() if k != "score"} == orig  # every field kept, same order
        want = slow_score(model, tok, problems[orig["problem_id"]], orig["code"])
        assert got["score"] == pytest.approx(want, abs=f32_tolerance(want, ulps=1024))  # a sum over tokens
    assert len({round(r["score"], 6) for r in ranked}) > len(ranked) // 2  # scores discriminate


def test_scores_do_not_depend_on_batching(tmp_path, world):
    _rank(world, tmp_path / "a.jsonl", cfg=RankConfig(batch_size=1, gamma=GAMMA))
    _rank(world, tmp_path / "b.jsonl", cfg=RankConfig(batch_size=7, window_batches=1, gamma=GAMMA))
    a = [r["score"] for r in read_jsonl(tmp_path / "a.jsonl")]
    b = [r["score"] for r in read_jsonl(tmp_path / "b.jsonl")]
    assert a == pytest.approx(b, rel=1e-6, abs=1e-5)


def test_too_long_programs_are_scored_on_a_prefix_and_flagged(tmp_path, world, tok):
    limit = 8
    summary = _rank(
        world, tmp_path / "t.jsonl", cfg=RankConfig(batch_size=4, max_target_tokens=limit, gamma=GAMMA)
    )
    ranked = list(read_jsonl(tmp_path / "t.jsonl"))
    model = BCoderModel.from_pretrained(world["root"] / "theta", stage="eval", phi_path=world["root"] / "phi")
    problems = {p.id: p for p in world["problems"]}
    n_long = 0
    for r in ranked:
        long = len(encode_program(tok, r["code"])) > limit
        n_long += long
        assert r.get("score_truncated", False) == long
        want = slow_score(model, tok, problems[r["problem_id"]], r["code"], limit=limit)
        assert r["score"] == pytest.approx(want, abs=f32_tolerance(want, ulps=1024))  # a sum over tokens
    assert summary.truncated == n_long > 0 and "first tokens" in summary.line()


def test_unknown_problem_is_an_error(tmp_path, world):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"problem_id": "nope/7", "sample_id": 0, "code": "x"}) + "\n")
    with pytest.raises(BcoderError, match="nope/7"):
        _rank(world, tmp_path / "o.jsonl", samples=str(bad))
    assert not (tmp_path / "o.jsonl").exists()


def test_cli_rank(tmp_path, world):
    r = world["root"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "jobs.cli", "rank", "--model", str(r / "theta"), "--phi", str(r / "phi"),
        "--problems", str(r / "problems.jsonl"), "--samples", str(r / "samples.jsonl"),
        "--out", str(tmp_path / "ranked.jsonl"), "--batch-size", "8", "--no-progress",
    ]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert f"rank: scored {len(world['samples'])} samples of 4 problems" in run.stderr
    ranked = list(read_jsonl(tmp_path / "ranked.jsonl"))
    assert all(isinstance(x["score"], float) for x in ranked)


def test_bench_sample_rank_runs(tmp_path):
    """The benchmark runs end to end on a tiny setting (its numbers are not asserted)."""

    bench = REPO / "bench" / "bench_sample_rank.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [
        "--shape",
        "tiny",
        "--problems",
        "2",
        "--num-samples",
        "2",
        "--max-new-tokens",
        "6",
        "--repeat",
        "1",
        "--engines",
        "--json",
        str(tmp_path / "sample.json"),
    ]
    run = subprocess.run(
        [sys.executable, str(bench), *args], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    assert "ratio rank/sample = " in run.stdout and "tokens/s reference / ctranslate2 = " in run.stdout
    rates = json.loads((tmp_path / "sample.json").read_text())
    assert rates["device"] == "cpu" and rates["engine"] in ("reference", "ctranslate2")
    assert rates["tokens_per_s"] == max(
        rates["reference"]["tokens_per_s"], rates["ctranslate2"]["tokens_per_s"]
    )
    assert rates["rank"]["rank_over_sample"] > 0


def test_rank_in_shards_scores_each_sample_once(tmp_path, world):
    _rank(world, tmp_path / "whole.jsonl")
    whole = {(r["problem_id"], r["sample_id"]): r["score"] for r in read_jsonl(tmp_path / "whole.jsonl")}
    ids = [p.id for p in world["problems"]]
    parts: dict = {}
    for i in range(2):
        _rank(world, tmp_path / "ranked" / f"part-{i}-of-2.jsonl", shard=f"{i}/2")
        recs = list(read_jsonl(tmp_path / "ranked" / f"part-{i}-of-2.jsonl"))
        assert {r["problem_id"] for r in recs} <= set(ids[i::2])  # only its own problems
        parts.update({(r["problem_id"], r["sample_id"]): r["score"] for r in recs})
    assert parts.keys() == whole.keys()
    for key, score in whole.items():
        assert parts[key] == pytest.approx(score, rel=1e-6, abs=1e-5)


# --------------------------------------------------------------------------------------------------
# The causal family: scores of the saved θ, φ equal program_scores of the trained models in memory


@pytest.fixture(scope="module")
def causal(tmp_path_factory, tok):
    """A random Llama checkpoint and, per kind, a trained-looking θ and φ of it (full fine-tuning, or
    LoRA adapters of the checkpoint), each saved and kept in memory (the reference)."""
    from bcoder_core.model.build import save_random_checkpoint

    root = tmp_path_factory.mktemp("rank-causal")
    ckpt = save_random_checkpoint(causal_config("llama", vocab_size=len(tok)), root / "ckpt", tokenizer=tok)
    models = {}
    for kind, lora in (("full", None), ("lora", LORA)):
        g = torch.Generator().manual_seed(13)
        noise = 0.05 if lora is None else 0.2  # LoRA: B starts at 0, θ = φ's network = the checkpoint
        theta = BCoderModel.from_pretrained(ckpt, stage="theta", lora=lora)
        phi = BCoderModel.from_pretrained(ckpt, stage="phi", lora=lora)
        with torch.no_grad():
            for p in [*theta.trainable_parameters(), *phi.trainable_parameters()]:
                p.add_(noise * torch.randn(p.shape, generator=g))
            theta.h1.weight.add_(torch.randn(theta.h1.weight.shape, generator=g))  # V^r ≠ 0
            phi.phi_head.weight.copy_(torch.randn(phi.phi_head.weight.shape, generator=g))
            phi.phi_head.bias.fill_(-0.2)
        theta.alpha = 0.7  # saved with the heads; rank scores with it
        theta.save_pretrained(root / f"theta-{kind}", "theta", tokenizer=tok)
        phi.save_pretrained(root / f"phi-{kind}", "phi")
        models[kind] = (theta.eval(), phi.eval())
    return {"root": root, "ckpt": ckpt, "models": models}


class _Trained:
    """θ and φ as trained (two models in memory), seen by ``program_scores`` as one eval model."""

    has_phi = True

    def __init__(self, theta, phi) -> None:
        self.theta, self.phi = theta, phi

    def encode(self, input_ids, attention_mask):
        return self.theta.encode(input_ids, attention_mask)

    def theta_outputs(self, ctx, attention_mask, labels):
        return self.theta.theta_outputs(ctx, attention_mask, labels)

    def phi_values(self, ctx, attention_mask, labels):
        return self.phi.phi_values(ctx, attention_mask, labels)


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_causal_scores_equal_program_scores_on_the_fly(tmp_path, world, causal, tok, kind):
    from bcoder_core.model.causal import FAMILY
    from bcoder_core.rl.losses import program_scores

    theta_dir, phi_dir = causal["root"] / f"theta-{kind}", causal["root"] / f"phi-{kind}"
    if kind == "lora":  # a LoRA θ is the merged model + its adapter, naming the checkpoint as its base
        meta = json.loads((theta_dir / "adapter" / "adapter_config.json").read_text())
        assert meta["base_model_name_or_path"] == str(causal["ckpt"].resolve())
    r = world["root"]
    summary = run_rank(
        model=str(theta_dir), phi=str(phi_dir), problems=str(r / "problems.jsonl"),
        samples=str(r / "samples.jsonl"), out=str(tmp_path / "ranked.jsonl"),
        cfg=RankConfig(batch_size=4, window_batches=2, gamma=GAMMA), progress=False,
    )  # fmt: skip
    ranked = list(read_jsonl(tmp_path / "ranked.jsonl"))
    assert summary.scored == len(world["samples"]) == len(ranked) and summary.truncated == 0

    trained = _Trained(*causal["models"][kind])
    loaded = BCoderModel.from_pretrained(theta_dir, stage="eval", phi_path=phi_dir).eval()
    assert loaded.alpha == 0.7
    problems = {p.id: p for p in world["problems"]}
    for orig, got in zip(world["samples"], ranked, strict=True):
        assert {k: v for k, v in got.items() if k != "score"} == orig
        # one program alone (no padding), the causal family's ids
        prompt = FAMILY.prompt_ids(problems[orig["problem_id"]], tok, 600, "completion")
        ids = FAMILY.program_ids(tok, orig["code"], "completion")
        batch = {
            "input_ids": torch.tensor([prompt]),
            "attention_mask": torch.ones(1, len(prompt), dtype=torch.long),
            "labels": torch.tensor([ids]),
        }
        with torch.no_grad():
            for model in (trained, loaded):
                want = float(program_scores(model, batch, GAMMA, 0.7)[0])
                assert got["score"] == pytest.approx(want, abs=f32_tolerance(want, ulps=1024))
    assert len({round(x["score"], 6) for x in ranked}) > len(ranked) // 2  # scores discriminate
