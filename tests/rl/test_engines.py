"""Sampling engines (``rl/engines.py``): CTranslate2 against the reference loop on the same T5."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.rl import make_problems, one_thread, save_checkpoint, tiny_t5

from bcoder_core.errors import BcoderError
from bcoder_core.rl.configs import SamplingConfig
from bcoder_core.rl.engines import CTranslate2Engine, ReferenceEngine, select_engine

ct2 = pytest.importorskip("ctranslate2")
_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BCODER_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def problems():
    return make_problems(4)


@pytest.fixture(scope="module", params=["sft", "theta"])
def model_dir(request, tok, tmp_path_factory):
    """A plain (tied, scaled) T5 as sft writes it, and a θ as theta writes it (untied, unscaled)."""
    root = tmp_path_factory.mktemp(request.param)
    plain = save_checkpoint(tiny_t5(len(tok), seed=3), tok, root / "ckpt")
    if request.param == "sft":
        return plain
    from bcoder_core.model.qmodel import BCoderModel

    theta = BCoderModel.from_pretrained(plain, stage="theta")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in theta.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
        theta.lm_head.weight.mul_(3.0)  # peaked distributions: varied programs, some ending in EOS
    theta.save_pretrained(root / "theta", tokenizer=tok)
    return root / "theta"


def _records(engine, tok, problems, cfg):
    return list(engine.sample(tok, problems, cfg, progress=False))


def test_greedy_samples_equal_the_reference_loop(model_dir, tok, problems):
    cfg = SamplingConfig(
        num_samples=2, temperature=0.0, max_new_tokens=24, batch_size=3, device="cpu", dtype="fp32"
    )
    ref = _records(ReferenceEngine(str(model_dir), "cpu", "fp32"), tok, problems, cfg)
    fast = _records(CTranslate2Engine(str(model_dir), "cpu", "fp32"), tok, problems, cfg)
    keys = ("problem_id", "sample_id", "code", "num_tokens", "finished")
    assert [tuple(r[k] for k in keys) for r in fast] == [tuple(r[k] for k in keys) for r in ref]
    assert {r["engine"] for r in fast} == {"ctranslate2"} and {r["engine"] for r in ref} == {"reference"}
    assert all(r["engine_version"].startswith("ctranslate2-") for r in fast)


def test_converted_model_gives_the_reference_log_probabilities(model_dir, tok, problems):
    """The whole next-token distribution, not only its argmax: CTranslate2's log-probabilities of a
    program equal the HF model's (a θ whose head were scaled by d_model^-0.5, as CTranslate2 does
    for a tied T5, samples near uniform yet decodes greedily the same)."""
    from bcoder_core.model.t5 import FAMILY
    from bcoder_core.rl.sampling import load_theta

    engine = CTranslate2Engine(str(model_dir), "cpu", "fp32")
    translator = ct2.Translator(str(engine.converted), device="cpu", compute_type="float32")
    hf = load_theta(str(model_dir), device="cpu", dtype="fp32")
    prompt = FAMILY.prompt_ids(problems[0], tok, 600, "completion")
    program = tok("n = int(input())\nprint(n * 2)", add_special_tokens=False)["input_ids"][:12]
    target = [*program, int(tok.eos_token_id)]
    scored = translator.score_batch([[str(t) for t in prompt]], [[str(t) for t in program]])[0]
    with torch.no_grad():
        logits = hf(input_ids=torch.tensor([prompt]), labels=torch.tensor([target])).logits[0]
    want = torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(target)[:, None])[:, 0]
    got = torch.tensor(scored.log_probs)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=2e-3), (got - want).abs().max()


def test_sampling_is_reproducible_and_uses_the_settings(model_dir, tok, problems):
    cfg = SamplingConfig(num_samples=3, temperature=0.8, top_p=0.95, max_new_tokens=16, batch_size=4, seed=7)
    engine = CTranslate2Engine(str(model_dir), "cpu", "fp32")
    a, b = _records(engine, tok, problems, cfg), _records(engine, tok, problems, cfg)
    assert a == b
    other = _records(engine, tok, problems, SamplingConfig(**{**cfg.__dict__, "seed": 8}))
    assert [r["code"] for r in other] != [r["code"] for r in a]
    assert all(r["num_tokens"] <= 16 for r in a) and len(a) == 12


def test_conversion_is_cached_by_the_weights_digest(model_dir, tok, tmp_path):
    CTranslate2Engine(str(model_dir), "cpu", "fp32")
    converted = list((tmp_path / "cache" / "ctranslate2").iterdir())
    assert len(converted) == 1 and (converted[0] / "model.bin").is_file()
    stamp = (converted[0] / "model.bin").stat().st_mtime_ns
    CTranslate2Engine(str(model_dir), "cpu", "fp32")  # the cached conversion, not a new one
    assert (converted[0] / "model.bin").stat().st_mtime_ns == stamp
    assert len(list((tmp_path / "cache" / "ctranslate2").iterdir())) == 1
    vocab = json.loads((converted[0] / "shared_vocabulary.json").read_text())
    assert vocab[:3] == ["0", "1", "2"] and len(vocab) == len(tok)


def test_engine_choice(model_dir, tmp_path):
    assert select_engine("reference", str(model_dir), "cpu", "fp32").name == "reference"
    assert select_engine("auto", str(model_dir), "cpu", "fp32").name == "ctranslate2"
    with pytest.raises(BcoderError, match="--engine 'vllm'"):
        select_engine("vllm", str(model_dir), "cpu", "fp32")


def test_ctranslate2_refuses_a_causal_model(tmp_path):
    from helpers.models import make_checkpoint

    ckpt = make_checkpoint(tmp_path, variant="llama")
    with pytest.raises(BcoderError, match="T5 checkpoints only"):
        CTranslate2Engine(str(ckpt), "cpu", "fp32")
    assert select_engine("auto", str(ckpt), "cpu", "fp32").name == "reference"


def test_run_sample_writes_the_engine_with_every_sample(model_dir, tok, problems, tmp_path):
    from bcoder_core.problems import write_problems
    from bcoder_core.rl.sampling import run_sample

    probs = tmp_path / "problems.jsonl"
    write_problems(problems, probs)
    for engine in ("reference", "ctranslate2"):
        out = tmp_path / f"samples-{engine}.jsonl"
        cfg = SamplingConfig(
            num_samples=2, temperature=0.0, max_new_tokens=12, device="cpu", dtype="fp32", engine=engine
        )
        assert run_sample(str(model_dir), str(probs), str(out), cfg, progress=False) == 2 * len(problems)
        recs = [json.loads(line) for line in out.read_text().splitlines()]
        assert {r["engine"] for r in recs} == {engine}
    ref, fast = ([json.loads(x)["code"] for x in (tmp_path / f"samples-{e}.jsonl").read_text().splitlines()]
                 for e in ("reference", "ctranslate2"))  # fmt: skip
    assert ref == fast  # greedy: the same programs from either engine
