"""The annotation pass (DESIGN §2.6): columns equal what the frozen models compute on the fly.

For T5 and for the causal family (a tiny Llama; φ with full fine-tuning and as a LoRA adapter).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers.models import LORA, causal_config, save_tiny_checkpoint
from helpers.numeric import assert_close_f32
from helpers.rl import make_problems, one_thread

from bcoder_core.errors import BcoderError
from bcoder_core.model.qmodel import BCoderModel
from bcoder_core.model.tokenizer import encode_program
from bcoder_core.problems import write_problems
from bcoder_core.prompts import reindent_with_tabs
from bcoder_core.rl.annotate import AnnotateConfig, run_annotate
from bcoder_core.rl.sampling import encode_prompt
from bcoder_core.rl.transitions import TransitionStore

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)

CODES = [
    "print(1)\n",
    "x = input()\nif x:\n\tprint(x)\n",
    "def broken(:\n",
    "for i in range(3):\n\tprint(i)\n",
    "import sys\nsys.exit(0)\n",
]
REWARDS = [1.0, -0.3, -1.0, -0.6, 1.0]


@pytest.fixture(scope="module")
def world(tmp_path_factory, tok):
    """A checkpoint, a trained-looking φ, problems, samples and their results on disk."""
    root = tmp_path_factory.mktemp("annotate")
    ckpt = save_tiny_checkpoint(root / "ckpt", tok)
    phi = BCoderModel.from_pretrained(ckpt, stage="phi")
    with torch.no_grad():  # move φ away from its zero-initialised head and its checkpoint decoder
        g = torch.Generator().manual_seed(5)
        phi.phi_head.weight.copy_(torch.randn(phi.phi_head.weight.shape, generator=g))
        phi.phi_head.bias.fill_(0.3)
        for p in phi.phi_decoder.block.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    phi.save_pretrained(root / "phi", "phi")
    problems = make_problems(4)
    write_problems(problems, root / "problems.jsonl")
    samples, results = [], []
    for k, p in enumerate(problems[:3]):
        for j in range(len(CODES)):
            code = CODES[(j + k) % len(CODES)]
            samples.append({"problem_id": p.id, "sample_id": j, "code": code, "model": "m"})
            results.append(
                {"problem_id": p.id, "sample_id": j, "verdict": "x", "reward": REWARDS[(j + k) % 5]}
            )
    _write_jsonl(root / "samples.jsonl", samples)
    _write_jsonl(root / "results.jsonl", results[::-1])  # results come in any order
    return {
        "root": root,
        "ckpt": ckpt,
        "phi": root / "phi",
        "problems": problems,
        "samples": samples,
        "results": results,
    }


def _write_jsonl(path, recs):
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))


def _run(world, out, **kw):
    args = dict(
        model=str(world["ckpt"]),
        problems=str(world["root"] / "problems.jsonl"),
        samples=str(world["root"] / "samples.jsonl"),
        results=str(world["root"] / "results.jsonl"),
        out=str(out),
        cfg=AnnotateConfig(batch_size=4, window_batches=2, shard_size=7),
        progress=False,
    )
    args.update(kw)
    return run_annotate(**args)


def _on_the_fly(model, tok, problem, ids):
    """The slow reference: one program alone through the frozen models."""
    prompt = torch.tensor([encode_prompt(problem, tok, 600)])
    am = torch.ones_like(prompt)
    labels = torch.tensor([ids])
    with torch.no_grad():
        enc = model.encode(prompt, am)
        logits = model.ckpt_logits(enc, am, labels)[0]
        adv = [float(logits[t, a] - logits[t].max()) for t, a in enumerate(ids)]
        greedy = [int(logits[t].argmax()) for t in range(len(ids))]
        v = model.phi_values(enc, am, labels)[0].tolist() if model.phi_decoder is not None else None
    return adv, greedy, v


def test_columns_equal_the_frozen_models_on_the_fly(tmp_path, world, tok):
    summary = _run(world, tmp_path / "store")
    problems = {p.id: p for p in world["problems"]}
    n_gt = sum(len(p.solutions) for p in world["problems"])
    assert (summary.gt, summary.generated) == (n_gt, len(world["samples"]))
    store = TransitionStore(tmp_path / "store")
    assert len(store) == n_gt + len(world["samples"]) and store.num_gt == n_gt
    assert store.num_shards == -(-len(store) // 7) and not store.has_v_phi
    assert (tmp_path / "store" / "manifest.json").is_file()
    model = BCoderModel.from_pretrained(world["ckpt"], stage="annotate")
    rewards = {(r["problem_id"], r["sample_id"]): r["reward"] for r in world["results"]}
    codes = {(s["problem_id"], s["sample_id"]): s["code"] for s in world["samples"]}
    seen = set()
    for rec in store:
        p = problems[rec.problem_id]
        if rec.is_gt:
            code = reindent_with_tabs(p.solutions[rec.sample_id])
            assert rec.reward == 1.0
        else:
            code = codes[(rec.problem_id, rec.sample_id)]
            assert rec.reward == pytest.approx(rewards[(rec.problem_id, rec.sample_id)])
        seen.add((rec.problem_id, rec.sample_id, rec.is_gt))
        ids = encode_program(tok, code)
        assert rec.program_ids.tolist() == ids and ids[-1] == tok.eos_token_id
        assert rec.prompt_ids.tolist() == encode_prompt(p, tok, 600)
        adv, greedy, _ = _on_the_fly(model, tok, p, ids)
        assert_close_f32(rec.ckpt_adv, adv)
        assert rec.ckpt_greedy.tolist() == greedy
        assert (rec.ckpt_adv <= 0).all()
    assert len(seen) == len(store)


def test_reannotating_with_phi_adds_v_phi(tmp_path, world, tok):
    _run(world, tmp_path / "plain")
    summary = _run(world, tmp_path / "with_phi", phi=str(world["phi"]))
    assert summary.has_v_phi
    plain, with_phi = TransitionStore(tmp_path / "plain"), TransitionStore(tmp_path / "with_phi")
    assert with_phi.has_v_phi and len(plain) == len(with_phi)
    model = BCoderModel.from_pretrained(world["ckpt"], stage="annotate", phi_path=world["phi"])
    problems = {p.id: p for p in world["problems"]}
    for a, b in zip(plain, with_phi, strict=True):
        assert (a.problem_id, a.sample_id, a.is_gt) == (b.problem_id, b.sample_id, b.is_gt)
        assert_close_f32(a.ckpt_adv, b.ckpt_adv)
        assert a.ckpt_greedy.tolist() == b.ckpt_greedy.tolist()
        _, _, v = _on_the_fly(model, tok, problems[b.problem_id], b.program_ids.tolist())
        assert_close_f32(b.v_phi, v)
    assert np.abs(np.concatenate([r.v_phi for r in with_phi])).max() > 0.1  # not the zero head


def test_columns_from_the_first_pass_give_the_second_pass_and_skip_the_checkpoint(
    tmp_path, world, monkeypatch
):
    """``--columns-from``: the pass with φ copies ckpt_adv / ckpt_greedy from the first pass's store
    (sharded here, read whole) and runs no θ_ckpt decoder; the store equals a full second pass."""
    from bcoder_core.model.t5 import T5QModel

    for i in range(2):
        _run(world, tmp_path / "first" / f"part-{i}-of-2", shard=f"{i}/2")
    full = _run(world, tmp_path / "full", phi=str(world["phi"]))

    def no_checkpoint(*args, **kwargs):
        raise AssertionError("the checkpoint's decoder ran")

    monkeypatch.setattr(T5QModel, "ckpt_logits", no_checkpoint)
    reused = _run(world, tmp_path / "reused", phi=str(world["phi"]), columns_from=str(tmp_path / "first"))
    assert (reused.gt, reused.generated, reused.tokens) == (full.gt, full.generated, full.tokens)
    a, b = TransitionStore(tmp_path / "full"), TransitionStore(tmp_path / "reused")
    assert b.has_v_phi and len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert (x.problem_id, x.sample_id, x.is_gt, x.reward) == (
            y.problem_id,
            y.sample_id,
            y.is_gt,
            y.reward,
        )
        np.testing.assert_array_equal(x.program_ids, y.program_ids)
        assert_close_f32(y.ckpt_adv, x.ckpt_adv)
        np.testing.assert_array_equal(x.ckpt_greedy, y.ckpt_greedy)
        np.testing.assert_array_equal(x.v_phi, y.v_phi)
    manifest = json.loads((tmp_path / "reused" / "manifest.json").read_text())
    assert manifest["config"]["columns_from"] == str(tmp_path / "first")

    # shard I/N of the second pass reads only part I of N of the first (the others may be elsewhere)
    import shutil

    shutil.rmtree(tmp_path / "first" / "part-1-of-2")
    part = _run(
        world, tmp_path / "second-0", phi=str(world["phi"]), shard="0/2", columns_from=str(tmp_path / "first")
    )
    assert part.programs == len(TransitionStore(tmp_path / "first" / "part-0-of-2")) > 0


def test_columns_from_a_store_of_other_programs_or_settings_is_refused(tmp_path, world):
    first = tmp_path / "first"
    _run(world, first, samples=None, results=None)  # reference solutions only
    with pytest.raises(BcoderError, match=r"--columns-from .* has no sample 0 of problem") as err:
        _run(world, tmp_path / "a", phi=str(world["phi"]), columns_from=str(first))
    assert "\n" not in str(err.value) and not (tmp_path / "a").exists()
    with pytest.raises(BcoderError, match=r"has alpha 1.0, --alpha is 0.5"):
        _run(world, tmp_path / "b", columns_from=str(first), cfg=AnnotateConfig(batch_size=4, alpha=0.5))
    with pytest.raises(BcoderError, match=r"was annotated with model .*, not elsewhere"):
        _run(world, tmp_path / "c", columns_from=str(first), model="elsewhere")


def test_ground_truth_only_and_generated_only(tmp_path, world):
    s = _run(world, tmp_path / "gt", samples=None, results=None)
    assert s.generated == 0 and TransitionStore(tmp_path / "gt").num_generated == 0
    s = _run(world, tmp_path / "gen", cfg=AnnotateConfig(batch_size=3, ground_truth=False))
    store = TransitionStore(tmp_path / "gen")
    assert s.gt == 0 and store.num_gt == 0 and store.num_generated == len(world["samples"])


def test_too_long_programs_are_dropped_and_counted(tmp_path, world, tok):
    limit = 14
    lens = [len(encode_program(tok, s["code"])) for s in world["samples"]]
    s = _run(world, tmp_path / "short", cfg=AnnotateConfig(batch_size=4, max_target_tokens=limit))
    assert s.dropped_generated == sum(n > limit for n in lens) > 0
    assert s.generated == sum(n <= limit for n in lens) > 0
    assert s.dropped_gt == sum(len(p.solutions) for p in world["problems"])  # all solutions are longer
    store = TransitionStore(tmp_path / "short")
    assert all(r.num_tokens <= limit for r in store)
    assert store.metadata["dropped_generated"] == s.dropped_generated
    assert "dropped" in s.line()


def test_samples_without_results_are_an_error_naming_them(tmp_path, world):
    results = [r for r in world["results"] if not (r["sample_id"] == 2 and r["problem_id"].endswith("0001"))]
    _write_jsonl(tmp_path / "partial.jsonl", results)
    with pytest.raises(BcoderError, match=r"1 sample\(s\) have no execution result: toy/train/0001/2"):
        _run(world, tmp_path / "out", results=str(tmp_path / "partial.jsonl"))
    assert not (tmp_path / "out").exists()
    bad = [*world["samples"], {"problem_id": "nope/1", "sample_id": 0, "code": "x"}]
    _write_jsonl(tmp_path / "bad.jsonl", bad)
    with pytest.raises(BcoderError, match="nope/1"):
        _run(world, tmp_path / "out", samples=str(tmp_path / "bad.jsonl"))


def test_cli_annotate(tmp_path, world):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = world["root"]
    cmd = [
        sys.executable, "-m", "jobs.cli", "annotate", "--model", str(world["ckpt"]), "--phi", str(world["phi"]),
        "--problems", str(r / "problems.jsonl"), "--samples", str(r / "samples.jsonl"),
        "--results", str(r / "results.jsonl"), "--out", str(tmp_path / "store"), "--batch-size", "5",
        "--no-progress",
    ]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert "annotate: wrote 23 programs (8 ground truth, 15 generated" in run.stderr
    store = TransitionStore(tmp_path / "store")
    assert len(store) == 23 and store.has_v_phi
    run = subprocess.run([*cmd[:-7], "--out", str(tmp_path / "x")], capture_output=True, text=True, env=env)
    assert (
        run.returncode == 2 and run.stderr.startswith("error: ") and "--samples and --results" in run.stderr
    )


def _keyed(store):
    return sorted(((r.is_gt, r.problem_id, r.sample_id), r) for r in store)


def test_annotate_in_two_shards_reads_back_as_the_unsharded_store(tmp_path, world):
    from bcoder_core.rl.transitions import open_store

    whole = _run(world, tmp_path / "whole", phi=str(world["phi"]))
    parts = [
        _run(world, tmp_path / "parts" / f"part-{i}-of-2", shard=f"{i}/2", phi=str(world["phi"]))
        for i in range(2)
    ]
    assert sum(p.programs for p in parts) == whole.programs
    one, joined = TransitionStore(tmp_path / "whole"), open_store(tmp_path / "parts")
    assert len(joined) == len(one) and joined.num_gt == one.num_gt and joined.has_v_phi
    # Part 0's records first, then part 1's; each part holds only its own problems (index I mod 2).
    ids = [p.id for p in world["problems"]]
    first = TransitionStore(tmp_path / "parts" / "part-0-of-2")
    assert [r.problem_id for r in list(joined)[: len(first)]] == [r.problem_id for r in first]
    assert {r.problem_id for r in first} <= set(ids[0::2])
    a, b = _keyed(one), _keyed(joined)
    assert [k for k, _ in a] == [k for k, _ in b]
    for (_, x), (_, y) in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.program_ids, y.program_ids)
        np.testing.assert_array_equal(x.prompt_ids, y.prompt_ids)
        np.testing.assert_array_equal(x.ckpt_greedy, y.ckpt_greedy)
        assert x.reward == y.reward
        assert_close_f32(x.ckpt_adv, y.ckpt_adv)
        assert_close_f32(x.v_phi, y.v_phi)
    assert joined.gt_indices().size == one.num_gt and joined[-1].problem_id in ids


def test_a_sharded_store_with_a_missing_part_is_refused_in_one_line(tmp_path, world):
    from bcoder_core.rl.transitions import open_store

    _run(world, tmp_path / "parts" / "part-1-of-2", shard="1/2")
    with pytest.raises(
        BcoderError, match=r"incomplete: 1 of 2 parts not committed yet \(missing part-0-of-2\)"
    ) as err:
        open_store(tmp_path / "parts")
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------------------------------
# The causal family: the same columns, through run_annotate, against plain Hugging Face models


@pytest.fixture(scope="module")
def causal(tmp_path_factory, tok):
    """A random Llama checkpoint (with the tiny tokenizer) and two trained-looking φ of it: full
    fine-tuning and a LoRA adapter, each saved and kept in memory (the reference)."""
    from bcoder_core.model.build import save_random_checkpoint

    root = tmp_path_factory.mktemp("annotate-causal")
    ckpt = save_random_checkpoint(causal_config("llama", vocab_size=len(tok)), root / "ckpt", tokenizer=tok)
    phis = {}
    for kind, lora in (("full", None), ("lora", LORA)):
        phi = BCoderModel.from_pretrained(ckpt, stage="phi", lora=lora)
        g = torch.Generator().manual_seed(7)
        with torch.no_grad():  # away from the zero head and from the checkpoint's network (LoRA: B = 0)
            phi.phi_head.weight.copy_(torch.randn(phi.phi_head.weight.shape, generator=g))
            phi.phi_head.bias.fill_(0.3)
            for p in phi.trainable_parameters():
                if p is not phi.phi_head.weight and p is not phi.phi_head.bias:
                    p.add_((0.05 if lora is None else 0.2) * torch.randn(p.shape, generator=g))
        phi.save_pretrained(root / f"phi-{kind}", "phi")
        phis[kind] = phi.eval()
    return {"root": root, "ckpt": ckpt, "phi": phis}


def _phi_network(phi):
    """φ's network as a plain Hugging Face model (LoRA: the adapter merged into a copy of the base)."""
    if phi.phi_net is not None:
        return phi.phi_net
    from transformers import AutoModelForCausalLM

    from bcoder_core.model import lora as lora_lib

    lm = AutoModelForCausalLM.from_config(phi.config)
    lm.load_state_dict(lora_lib.merged_state_dict(phi.lm, "phi"), strict=False)
    return lm.model.eval()


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_causal_columns_equal_the_frozen_models_on_the_fly(tmp_path, world, causal, tok, kind):
    """ckpt_adv / ckpt_greedy from the plain checkpoint and v_phi from φ's plain network, one program
    at a time on ``prompt ; program[:-1]`` (no padding): the batched, left-aligned pass of
    run_annotate (distinct prompt lengths, padded programs) must give the same columns."""
    from transformers import AutoModelForCausalLM

    from bcoder_core.model.causal import FAMILY

    summary = _run(
        world, tmp_path / "store", model=str(causal["ckpt"]), phi=str(causal["root"] / f"phi-{kind}")
    )
    store = TransitionStore(tmp_path / "store")
    assert summary.has_v_phi and store.has_v_phi
    assert store.metadata["family"] == "causal" and store.metadata["prompt_format"] == "completion"
    n_gt = sum(len(p.solutions) for p in world["problems"])
    assert (summary.gt, summary.generated) == (n_gt, len(world["samples"])) and len(store) == summary.programs

    lm = AutoModelForCausalLM.from_pretrained(str(causal["ckpt"])).eval()
    phi = causal["phi"][kind]
    net = _phi_network(phi)
    problems = {p.id: p for p in world["problems"]}
    codes = {(s["problem_id"], s["sample_id"]): s["code"] for s in world["samples"]}
    lengths = set()
    for rec in store:
        p = problems[rec.problem_id]
        code = (
            reindent_with_tabs(p.solutions[rec.sample_id])
            if rec.is_gt
            else codes[(rec.problem_id, rec.sample_id)]
        )
        # the causal family's ids: the prompt with BOS and no EOS; the program without BOS, then EOS
        prompt = FAMILY.prompt_ids(p, tok, 600, "completion")
        assert rec.prompt_ids.tolist() == prompt and prompt[0] == tok.bos_token_id
        assert tok.eos_token_id not in prompt
        ids = [*tok(code, add_special_tokens=False)["input_ids"], tok.eos_token_id]
        assert rec.program_ids.tolist() == ids and tok.bos_token_id not in ids
        lengths.add(len(prompt))

        seq = torch.tensor([prompt + ids[:-1]])
        s, t = len(prompt), len(ids)
        with torch.no_grad():
            logits = lm(input_ids=seq).logits[0, s - 1 :]
            h = net(input_ids=seq).last_hidden_state[0, s - 1 :]
            v = (h @ phi.phi_head.weight[0] + phi.phi_head.bias[0]).tolist()
        assert logits.shape[0] == t
        assert_close_f32(rec.ckpt_adv, [float(logits[i, a] - logits[i].max()) for i, a in enumerate(ids)])
        assert rec.ckpt_greedy.tolist() == logits.argmax(-1).tolist()
        assert_close_f32(rec.v_phi, v)
    assert len(lengths) > 1  # prompts of several lengths were batched together (left alignment)
    assert np.abs(np.concatenate([r.v_phi for r in store])).max() > 0.1  # not the zero head
